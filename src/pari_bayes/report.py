"""The HTML report: one self-contained file that answers the question on its first screen.

The report is built only from the files of a run folder (CSV, JSON, Markdown, PNG), so it
can be rebuilt with ``pari-bayes report --out DIR``. It opens with the findings (one
preferred estimate per dimension and estimand, :mod:`pari_bayes.findings`), the sentences
they support and the design caveat; the evidence follows. Tables show numbers rounded to
what they support, at most :data:`MAX_ROWS` rows each (longer files are summarised, the
full CSV is embedded as a download link), and never more than :data:`MAX_COLUMNS` columns.

Tables that show cells of a CSV carry ``data-source`` (the CSV's path in the run folder);
their rows carry ``data-row`` (the CSV row) and their header cells ``data-col`` (the CSV
column), or a cell carries ``data-ref="ROW:COL,COL"`` naming the CSV cells whose numbers it
shows, in order, so tests can check every number against the files.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from pari_bayes._version import __version__
from pari_bayes.findings import (
    PREFERRED_RULE,
    Findings,
    build_findings,
    cbo_communities,
    design_caveat,
    design_words,
    findings_sentences,
    fmt_number,
    fmt_p,
    format_findings,
    measurement_information,
    write_findings,
)
from pari_bayes.io import atomic_write_text

__all__ = ["build_report", "SECTIONS", "MAX_ROWS", "MAX_COLUMNS", "GLOSSARY"]

#: Section ids, in the order they appear (a section without its files is left out).
SECTIONS = (
    "findings",
    "sensitivity",
    "gate",
    "effects",
    "table4",
    "measurement",
    "identification",
    "data",
    "calibration",
    "diagnostics",
)
#: Most rows of any table on the page.
MAX_ROWS = 30
#: Most columns of any table on the page (the 1,100 px column at 1280 px; tests also
#: check each table's minimum width from its longest words).
MAX_COLUMNS = 12

#: Every method and estimand name the report uses, in words.
GLOSSARY = {
    "DE": "direct effect of own participation: participants vs non-participants where CBOs "
    "exist, E[Y(1,1) - Y(0,1)]",
    "IE": "spillover (indirect) effect of CBO presence on non-participants, E[Y(0,1) - Y(0,0)]",
    "TE": "total effect, DE + IE: a participant vs a household in a community without CBOs",
    "OE": "overall effect of bringing CBOs to a community where a share alpha participates",
    "bayes:latent": "joint Bayesian model of the items and the effects (one latent factor per "
    "dimension; effects in sd of the household disturbance)",
    "bayes:table4": "Bayesian multilevel model of the PCA score with the paper's Table 4 "
    "covariates and a community random intercept",
    "bayes:multivariate": "the same multilevel model for all dimensions at once, with "
    "correlated residuals",
    "bayes:formula": "Bambi formula model (models/*.toml of kind formula)",
    "ols": "ordinary least squares on the PCA score with classical SEs, as in the paper",
    "ols_cr2": "the same OLS with CR2 cluster-robust SEs and Bell-McCaffrey t degrees of "
    "freedom; with {design} communities these intervals are far too narrow",
    "ols_dag_cr2": "OLS adjusted for the causal graph's adjustment set, CR2 SEs",
    "wild bootstrap": "wild cluster bootstrap p-value (Webb weights, {clusters} clusters): the "
    "honest "
    "few-cluster test of a coefficient",
    "ipw": "inverse probability weighting under partial interference (communities are the "
    "units; with {clusters} of them a description, not inference)",
}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:1.2em auto;
padding:0 1em;color:#222;line-height:1.4;font-size:15px}
h1{font-size:1.5em;margin:.2em 0}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;
margin-top:1.6em;font-size:1.25em}h3{font-size:1.05em;margin:1em 0 .3em}
table{border-collapse:collapse;font-size:13px;margin:.4em 0 .8em;max-width:100%}
th,td{border:1px solid #ccc;padding:.2em .45em;text-align:right;vertical-align:top;
overflow-wrap:break-word}.nw{white-space:nowrap}
th{background:#f3f3f3;font-weight:600}td.t,th.t,.md td:first-child,.md th:first-child{
text-align:left}
table.findings td{font-size:13.5px}table.findings td.est{font-weight:600}
tr.none td{color:#888}.ok{color:#1a7d2e}.warn{color:#9a5b00}
.pass{background:#e5f5e0;border-left:6px solid #31a354;padding:.4em .8em}
.fail{background:#fde0dd;border-left:6px solid #de2d26;padding:.4em .8em}
.note{background:#fff7dc;border-left:6px solid #f0b400;padding:.4em .8em}
.meta{color:#666;font-size:.85em}.small{font-size:.88em}
img{max-width:100%;border:1px solid #eee;margin:.3em 0}figure{margin:.5em 0}
figcaption{font-size:.9em;color:#444}
details{margin:.4em 0}pre{background:#f7f7f7;padding:.6em;white-space:pre-wrap;font-size:.85em}
ul.sentences li{margin:.25em 0}
"""


def _esc(text: object) -> str:
    return html.escape(str(text))


# ---- building blocks -------------------------------------------------------------------


def download_link(run_dir: Path, rel: str, text: str | None = None) -> str:
    """Return a CSV of the run as an embedded download link (the report stays one file)."""
    path = run_dir / rel
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = rel.replace("/", "_")
    label = text or f"Download the full {rel}"
    return (
        f'<p class="small"><a download="{_esc(name)}" href="data:text/csv;base64,{data}">'
        f"{_esc(label)}</a>"
        + (f" ({len(pd.read_csv(path, dtype=str))} rows)" if text is None else "")
        + ".</p>"
    )


def _is_p(column: str) -> bool:
    return column in ("p", "p_value") or column.startswith("p_") or column.endswith("_p")


def _cell(value: object, column: str) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    text = str(value)
    if text in ("", "nan"):
        return ""
    if text in ("True", "False", "true", "false"):
        return text.lower()
    if _is_p(column):
        out = fmt_p(text)
        return out if out else text
    try:
        float(text)
    except ValueError:
        return text
    return fmt_number(text)


def csv_table(
    run_dir: Path,
    rel: str,
    columns: Sequence[str] | None = None,
    rows: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    """Render (part of) a CSV of the run as an HTML table, numbers rounded.

    Parameters
    ----------
    run_dir, rel
        The run folder and the CSV's path in it.
    columns
        Columns to show (those the file has), all by default.
    rows
        A function selecting the rows to show (at most :data:`MAX_ROWS`); a file with more
        rows than shown gets a download link to the whole file.
    headers
        Header text per column (the CSV name by default).
    """
    path = run_dir / rel
    if not path.exists():
        return f'<p class="note">Not available in this run: <code>{_esc(rel)}</code>.</p>'
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    shown = rows(frame) if rows is not None else frame
    if columns:
        frame = frame[[c for c in columns if c in frame.columns]]
    if len(shown) > MAX_ROWS:
        shown = shown.head(MAX_ROWS)
    if frame.empty or not len(frame.columns):
        # e.g. a quick run's prior-sensitivity and LOO files: no refits, only a status
        return f'<p class="note">No rows to show in <code>{_esc(rel)}</code> in this run.</p>'
    cut = len(frame.columns) > MAX_COLUMNS
    frame = frame[list(frame.columns[:MAX_COLUMNS])]
    shown = shown[list(frame.columns)]
    headers = headers or {}
    numeric = {c: _numeric(frame[c]) for c in frame.columns}
    head = "".join(
        f'<th data-col="{_esc(c)}"{"" if numeric[c] else " class=t"}>{_esc(headers.get(c, c))}</th>'
        for c in frame.columns
    )
    body = "".join(
        f'<tr data-row="{idx}">'
        + "".join(
            f"<td{'' if numeric[c] else ' class=t'}>{_esc(_cell(row[c], c))}</td>"
            for c in frame.columns
        )
        + "</tr>"
        for idx, row in shown.iterrows()
    )
    more = ""
    if len(frame) > len(shown) or cut:
        more = download_link(
            run_dir,
            rel,
            f"Showing {len(shown)} of {len(frame)} rows"
            + (f" and {MAX_COLUMNS} columns" if cut else "")
            + f"; download all of {rel}",
        )
    return (
        f'<table data-source="{_esc(rel)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>{more}"
    )


def _numeric(column: pd.Series) -> bool:
    values = [v for v in column if v != ""]
    if not values:
        return True
    return bool(pd.to_numeric(pd.Series(values), errors="coerce").notna().all())


def _png_figure(data: bytes, caption: str) -> str:
    b64 = base64.b64encode(data).decode("ascii")
    return (
        f'<figure><img alt="{_esc(caption)}" src="data:image/png;base64,{b64}">'
        f"<figcaption>{_esc(caption)}</figcaption></figure>"
    )


def image(run_dir: Path, rel: str, alt: str) -> str:
    """Embed a PNG of the run as a data URI."""
    path = run_dir / rel
    if not path.exists():
        return ""
    return _png_figure(path.read_bytes(), alt)


def markdown_html(run_dir: Path, rel: str) -> str:
    """Render a Markdown file of the run (markdown-it-py, tables on, raw HTML off)."""
    from markdown_it import MarkdownIt

    path = run_dir / rel
    if not path.exists():
        return ""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    text = path.read_text(encoding="utf-8")
    # headings of the file sit below the report's own h2
    lines = text.split("\n")
    text = "\n".join("###" + ln.lstrip("#") if ln.startswith("#") else ln for ln in lines)
    rendered = re.sub(
        r"<table>.*?</table>", lambda m: _cap_table(m.group(0), rel), md.render(text), flags=re.S
    )
    return f'<div class="md">{rendered}</div>'


def _cap_table(table: str, rel: str) -> str:
    """Leave out a Markdown table over :data:`MAX_ROWS` rows (its CSV is in the run)."""
    rows = table.count("<tr>") - 1
    if rows <= MAX_ROWS:
        return table
    return (
        f'<p class="note">A table of {rows} rows of <code>{_esc(rel)}</code> is not shown '
        "here; its rows are in the CSV files of the same folder.</p>"
    )


def _list_items(items: Sequence[str], cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<ul{attr}>" + "".join(f"<li>{_esc(i)}</li>" for i in items) + "</ul>"


def _read(run_dir: Path, rel: str) -> pd.DataFrame | None:
    path = run_dir / rel
    return pd.read_csv(path, dtype=str, keep_default_na=False) if path.exists() else None


# ---- sections --------------------------------------------------------------------------


def _findings_table(findings: Findings) -> str:
    shown = format_findings(findings.table)
    head = (
        "<tr><th class=t>Dimension</th><th class='t nw'>Estimand</th><th>Estimate</th>"
        "<th class=nw>90% interval</th><th class=nw>P(benefit)</th>"
        "<th class=t>Preferred method</th><th class=t>Status</th></tr>"
    )
    rows = []
    span = shown.groupby("dimension", sort=False).size()
    first = set(shown.drop_duplicates("dimension").index)
    for idx, row in shown.iterrows():
        estimand = row["estimand"] + (f" at alpha {row['alpha']}" if row["alpha"] else "")
        none = row["estimate"] == ""
        ok = row["identification"].startswith("identified") and not none
        status_class = "ok" if ok else "warn"
        interval = "" if none else f"{row['q05']} to {row['q95']}"
        dim_cell = (
            f"<td class=t rowspan={span[row['dimension']]}>"
            f"{_esc(row['dimension'].replace('_', ' '))}</td>"
            if idx in first
            else ""
        )
        rows.append(
            f'<tr data-row="{idx}"{" class=none" if none else ""}>{dim_cell}'
            f'<td class="t nw" data-ref="{idx}:alpha">{_esc(estimand)}</td>'
            f'<td class=est data-ref="{idx}:estimate">{_esc(row["estimate"])}</td>'
            f'<td class=nw data-ref="{idx}:q05,q95">{_esc(interval)}</td>'
            f'<td data-ref="{idx}:prob_benefit">{_esc(row["prob_benefit"])}</td>'
            f'<td class=t><abbr title="{_esc(GLOSSARY.get(row["method"], ""))}">'
            f"{_esc(row['method'])}</abbr></td>"
            f'<td class="t {status_class}">{_esc(row["status"])}</td></tr>'
        )
    return (
        f'<table class="findings" data-source="findings.csv"><thead>{head}</thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _glossary(used: set[str], run_dir: Path) -> str:
    split = cbo_communities(run_dir)
    words = {
        "design": design_words(run_dir),
        "clusters": "all" if split is None else str(len(split[0]) + len(split[1])),
    }
    rows = "".join(
        f"<tr><td class=t><code>{_esc(k)}</code></td><td class=t>{_esc(v.format(**words))}</td>"
        "</tr>"
        for k, v in GLOSSARY.items()
        if k in used
    )
    return (
        "<details open><summary>What the estimand and method names mean</summary>"
        f'<table class="glossary"><tbody>{rows}</tbody></table></details>'
    )


def _findings_section(run_dir: Path, findings: Findings | None) -> str:
    if findings is None:
        return (
            '<p class="note">No effects in this run (no <code>effects_all.csv</code>): '
            "run the fit steps to get findings.</p>"
        )
    parts = [
        "<p class=small>"
        + _esc(PREFERRED_RULE.format(weak=findings.weak_threshold, design=design_words(run_dir)))
        + "</p>",
        _findings_table(findings),
        _list_items(findings_sentences(findings), "sentences"),
    ]
    caveat = design_caveat(run_dir)
    if caveat:
        parts.append(f'<p class="note">{_esc(caveat)}</p>')
    effects = _read(run_dir, "effects_all.csv")
    used = set(GLOSSARY) if effects is None else {*effects["method"], "DE", "IE", "TE", "OE"}
    if (run_dir / "ols" / "ols_table4.csv").exists():
        used.add("wild bootstrap")
    parts.append(_glossary(used, run_dir))
    parts.append(download_link(run_dir, "findings.csv", "Download findings.csv"))
    return "".join(parts)


def _sensitivity_section(run_dir: Path) -> str:
    path = run_dir / "sensitivity" / "ovb.csv"
    error = run_dir / "sensitivity" / "ERROR.txt"
    if not path.exists() and error.exists():
        return (
            '<p class="note">Sensitivity analysis: not computed in this run: '
            f"{_esc(error.read_text(encoding='utf-8').strip())}</p>"
        )
    if not path.exists():
        return (
            '<p class="note">Sensitivity analysis: not run (no <code>sensitivity/ovb.csv'
            "</code> in this run folder).</p>"
        )
    ovb = pd.read_csv(path, dtype=str, keep_default_na=False)
    parts = []
    if "sentence" in ovb.columns:
        parts.append(_list_items([s for s in ovb["sentence"] if s.strip()]))
    cols = [
        "dimension",
        "estimand",
        "estimate",
        "se",
        "partial_r2",
        "rv_q1",
        "rv_q1_alpha",
        "benchmark",
        "k_vanish",
        "k_cover_zero",
    ]
    parts.append(csv_table(run_dir, "sensitivity/ovb.csv", columns=cols))
    for png in sorted((run_dir / "sensitivity").glob("contour_*.png")):
        dim = png.stem.removeprefix("contour_").replace("_", " ")
        parts.append(image(run_dir, f"sensitivity/{png.name}", f"Sensitivity contours: {dim}"))
    return "".join(parts)


def _gate_section(run_dir: Path) -> str:
    gate = _read(run_dir, "gate.csv")
    if gate is None:
        return '<p class="note">No Bayesian model was fitted in this run.</p>'
    failed = gate[gate["passed"].str.lower() != "true"]
    if failed.empty:
        banner = (
            f'<p class="pass"><b>Convergence gate: PASSED</b> for all {len(gate)} Bayesian '
            "model(s): zero divergences, R-hat &le; 1.01, bulk and tail ESS &ge; 400 on every "
            "reported quantity.</p>"
        )
    else:
        withheld = [
            m
            for m, pub in zip(failed["model"], failed.get("effects_published", ""), strict=False)
            if str(pub).lower() != "true"
        ]
        banner = (
            f'<p class="fail"><b>Convergence gate: FAILED</b> for '
            f"{_esc(', '.join(failed['model']))}; these fits are never a finding and every "
            "other result is unaffected."
            + (
                f" Effect rows withheld for {_esc(', '.join(withheld))} (diagnostics and "
                "worst_parameters.png published)."
                if withheld
                else " Their effect rows are published marked UNCONVERGED."
            )
            + " What to try: more draws and tuning or a higher target_accept in the spec's "
            "[sampler]; a reparameterization or a tighter prior where the worst parameters "
            "are a variance or a weakly measured factor.</p>"
        )
    columns = [
        "model",
        "passed",
        "rung",
        "effects_max_r_hat",
        "effects_min_ess_bulk",
        "params_max_r_hat",
        "params_min_ess_tail",
        "divergences",
        "reason",
    ]
    banner += csv_table(
        run_dir,
        "gate.csv",
        columns=[c for c in columns if c in gate.columns],
        headers={
            "effects_max_r_hat": "effects: max R-hat",
            "effects_min_ess_bulk": "effects: min bulk ESS",
            "params_max_r_hat": "all parameters, gated or not: max R-hat",
            "params_min_ess_tail": "all parameters: min tail ESS",
        },
    )
    warnings = _dedupe_warnings(gate)
    if warnings:
        banner += "<h3>Warnings from the fits</h3>" + _list_items(warnings)
    return banner


def _dedupe_warnings(gate: pd.DataFrame) -> list[str]:
    """Each warning once, with the models that raised it."""
    seen: dict[str, list[str]] = {}
    for _, row in gate.iterrows():
        model = str(row["model"])
        for text in str(row.get("warnings", "")).split(" | "):
            text = text.strip()
            if not text:
                continue
            # the same warning of two models differs only by the quoted model name
            key = text.replace(f" {model!r}", "").replace(f' "{model}"', "")
            seen.setdefault(key, []).append(model)
    return [f"{', '.join(dict.fromkeys(models))}: {key}" for key, models in seen.items()]


def _effects_section(run_dir: Path, findings: Findings | None) -> str:
    from pari_bayes.effects import EffectTable
    from pari_bayes.report_figures import forest_figures

    path = run_dir / "effects_all.csv"
    if not path.exists():
        return '<p class="note">No effects in this run.</p>'
    effects = EffectTable.read_csv(path).frame
    alpha = findings.alpha if findings else None
    gate = _read(run_dir, "gate.csv")
    failed = set() if gate is None else set(gate.loc[gate["passed"].str.lower() != "true", "model"])
    ident = _read(run_dir, "identification/estimands.csv")
    identified = (
        {}
        if ident is None
        else {
            (r.dimension, r.estimand): str(r.identified_dag).lower() == "true"
            for r in ident.itertuples()
        }
    )
    weak_at = findings.weak_threshold if findings else 0.2
    weak = {d: v for d, v in measurement_information(run_dir).items() if v < weak_at}
    parts = [
        "<p>Each method on its own scale: the PCA-score methods share one axis, the latent "
        "model another (its unit is the sd of the household disturbance), IPW a third. "
        "Hollow markers: the causal graph does not identify the effect (it rests on an "
        "assumption), the fit failed the convergence gate (dashed, labelled) or the latent "
        f"factor is weakly measured (labelled). CR2 intervals on {design_words(run_dir)} "
        "communities "
        "(<code>ols_cr2</code>, <code>ols_dag_cr2</code>) are not drawn: they are in the "
        "table below and, with the wild bootstrap p-values, in the Table 4 section.</p>"
    ]
    for caption, png in forest_figures(
        effects, alpha=alpha, identified=identified, failed=failed, weak=weak
    ):
        parts.append(_png_figure(png, caption))
    parts.append(_effects_summary(effects, alpha))
    parts.append(download_link(run_dir, "effects_all.csv", "Download every effect row"))
    return "".join(parts)


def _effects_summary(effects: pd.DataFrame, alpha: float | None) -> str:
    """Methods side by side: estimate and 90% interval per dimension and estimand."""
    import numpy as np

    obs = effects[effects["scope"] == "observed"]
    keep = obs["estimand"].isin(["DE", "IE", "TE"])
    if alpha is not None:
        keep |= (obs["estimand"] == "OE") & np.isclose(
            pd.to_numeric(obs["alpha"], errors="coerce"), alpha, atol=1e-6
        )
    obs = obs[keep]
    methods = list(dict.fromkeys(obs["method"]))[: MAX_COLUMNS - 2]
    head = (
        "<tr><th class=t>Dimension</th><th class=t>Estimand</th>"
        + "".join(f"<th>{_esc(m)}</th>" for m in methods)
        + "</tr>"
    )
    body = []
    for (dim, est), grp in obs.groupby(["dimension", "estimand"], sort=False):
        cells = []
        for method in methods:
            sel = grp[grp["method"] == method]
            if sel.empty:
                cells.append("<td></td>")
                continue
            idx = sel.index[0]
            r = sel.iloc[0]
            mark = " *" if "UNCONVERGED" in str(r["note"]).upper() else ""
            cells.append(
                f'<td data-ref="{idx}:mean,q05,q95">{_esc(fmt_number(r["mean"], 2))}{mark}'
                f"<br><span class=small>[{_esc(fmt_number(r['q05'], 2))}, "
                f"{_esc(fmt_number(r['q95'], 2))}]</span></td>"
            )
        body.append(
            f"<tr><td class=t>{_esc(dim.replace('_', ' '))}</td><td class=t>{_esc(est)}</td>"
            + "".join(cells)
            + "</tr>"
        )
    return (
        "<h3>Every method side by side (estimate, [90% interval]; * = unconverged fit, "
        "OE at the observed participation share)</h3>"
        f'<table data-source="effects_all.csv"><thead>{head}</thead>'
        f"<tbody>{''.join(body[:MAX_ROWS])}</tbody></table>"
    )


_CBO_TERMS = ("cbo_participation", "cbo_existence", "direct_effect")


def _table4_section(run_dir: Path) -> str:
    if not (run_dir / "ols" / "ols_table4.csv").exists():
        return '<p class="note">The OLS step was not run.</p>'
    parts = [
        "<p>The CBO terms of the paper's Models 2, 4, 6 and 8 (TE = participation, IE = "
        "existence, DE = their difference). Stars are the paper's (classical SEs: * p &lt; 0.1,"
        f" ** p &lt; 0.05, *** p &lt; 0.01). With {design_words(run_dir)} communities the "
        "classical and CR2 "
        "p-values overstate the evidence; the wild cluster bootstrap p-value "
        "(<code>p_wild</code>) is the honest few-cluster test.</p>",
        csv_table(
            run_dir,
            "ols/ols_table4.csv",
            columns=[
                "dimension",
                "term",
                "coef",
                "se",
                "stars",
                "p",
                "p_cr2",
                "p_wild",
                "published_coef",
                "published_stars",
            ],
            rows=lambda f: f[f["term"].isin(_CBO_TERMS)],
            headers={
                "se": "classical SE",
                "stars": "stars (classical)",
                "p": "p classical",
                "p_cr2": "p CR2",
                "p_wild": "p wild bootstrap",
                "published_coef": "paper coef",
                "published_stars": "paper stars",
            },
        ),
        "<h3>Model fit</h3>",
        csv_table(
            run_dir,
            "ols/ols_fit.csv",
            columns=[
                "model",
                "dimension",
                "n",
                "adj_r2",
                "published_adj_r2",
                "aic",
                "published_aic",
                "n_clusters",
                "n_treated_clusters",
            ],
        ),
        markdown_html(run_dir, "ols/table4.md"),
    ]
    return "".join(parts)


def _measurement_section(run_dir: Path) -> str:
    parts = []
    pca = _read(run_dir, "ols/pca.csv")
    if pca is not None:
        parts.append("<h3>PCA scores (the paper's measurement)</h3>")
        stats = ["n_items", "eigenvalue_1", "variance_explained_pct", "kmo", "bartlett_p"]
        parts.append(
            csv_table(
                run_dir,
                "ols/pca.csv",
                columns=["dimension", "statistic", "value", "published"],
                rows=lambda f: (
                    f[(f["statistic"].isin(stats))]
                    .sort_values(["dimension", "statistic"], kind="stable")
                    .head(MAX_ROWS)
                ),
            )
        )
        parts.append(download_link(run_dir, "ols/pca.csv", "Download every PCA statistic"))
    info = measurement_information(run_dir)
    if (run_dir / "fit" / "latent").is_dir():
        parts.append("<h3>Latent model: how well the items measure each factor</h3>")
        if info:
            parts.append(
                "<p>Measurement information (share of a factor's household-level variance "
                "the items pin down; below 0.2 the factor's scale rests on the loading prior "
                "and its effects are not identified by the data): "
                + _esc("; ".join(f"{d.replace('_', ' ')} {v:.2f}" for d, v in info.items()))
                + ".</p>"
            )
        parts.append(
            image(run_dir, "fit/latent/loadings.png", "Latent model: item loadings, 90% intervals")
        )
        if (run_dir / "fit" / "latent" / "loadings.csv").exists():
            parts.append(_loading_threshold_note(run_dir))
            parts.append(
                csv_table(
                    run_dir,
                    "fit/latent/loadings.csv",
                    columns=[
                        c
                        for c in ("lhs", "rhs", "mean", "sd", "q05", "q95", "r_hat", "ess_bulk")
                        if c in _read(run_dir, "fit/latent/loadings.csv").columns
                    ],
                    rows=lambda f: f[f["parameter"] == "standardized_loading"],
                    headers={"lhs": "factor", "rhs": "item", "ess_bulk": "bulk ESS"},
                )
            )
        else:
            parts.append(
                '<p class="note">Latent loadings: not available '
                "(<code>fit/latent/loadings.csv</code> missing: the fit's effect files were "
                "withheld or the fit did not finish).</p>"
            )
    return "".join(parts) or '<p class="note">No measurement outputs in this run.</p>'


def _loading_threshold_note(run_dir: Path) -> str:
    """Name the latent loadings that miss the gate's thresholds (they are not gated)."""
    from pari_bayes.diagnostics import GATE

    table = _read(run_dir, "fit/latent/loadings.csv")
    if table is None or "r_hat" not in table:
        return ""
    rows = table[table["parameter"] == "loading"].copy()
    for col in ("r_hat", "ess_bulk", "ess_tail"):
        rows[col] = pd.to_numeric(rows[col], errors="coerce") if col in rows else float("nan")
    bad = rows[
        (rows["r_hat"] > GATE["r_hat_max"])
        | (rows["ess_bulk"] < GATE["ess_bulk_min"])
        | (rows["ess_tail"] < GATE["ess_tail_min"])
    ]
    if bad.empty:
        return ""
    named = "; ".join(
        f"{r.rhs} (R-hat {r.r_hat:.3f}, bulk/tail ESS {r.ess_bulk:.0f}/{r.ess_tail:.0f})"
        for r in bad.itertuples()
    )
    return (
        '<p class="fail">Loadings that miss the thresholds (R-hat &le; 1.01, ESS &ge; 400): '
        f"{_esc(named)}. The gate applies to the effects, which passed or are marked; "
        "these loadings' intervals are less certain than printed.</p>"
    )


def _identification_section(run_dir: Path) -> str:
    parts = [_dag_figure(run_dir)]
    parts.append(
        csv_table(
            run_dir,
            "identification/estimands.csv",
            columns=[
                "estimand",
                "dimension",
                "identified_dag",
                "blocked_by",
                "minimal_adjustment_set",
            ],
            headers={
                "identified_dag": "identified by the graph",
                "minimal_adjustment_set": "minimal adjustment set",
            },
        )
    )
    parts.append("<h3>Covariate balance (standardized mean differences)</h3>")
    parts.append(
        csv_table(
            run_dir,
            "identification/positivity.csv",
            columns=["estimand", "treated", "control", "covariate", "smd", "imbalanced"],
        )
    )
    ref = _read(run_dir, "identification/refutations.csv")
    if ref is not None and "refuter" in ref.columns:
        parts.append("<h3>Refutations (DoWhy)</h3>")
        passed = ref["passed"].str.lower() if "passed" in ref else pd.Series("", index=ref.index)
        summary = (
            ref.assign(_pass=passed == "true", _run=passed != "")
            .groupby("refuter", sort=False)
            .agg(rows=("refuter", "size"), tested=("_run", "sum"), passed=("_pass", "sum"))
            .reset_index()
        )
        parts.append(
            "<table><thead><tr><th class=t>refuter</th><th>rows</th><th>tested</th>"
            "<th>passed</th></tr></thead><tbody>"
            + "".join(
                f"<tr><td class=t>{_esc(r.refuter)}</td><td>{r.rows}</td><td>{r.tested}</td>"
                f"<td>{r.passed}</td></tr>"
                for r in summary.itertuples()
            )
            + "</tbody></table>"
        )
        parts.append(download_link(run_dir, "identification/refutations.csv"))
    if (run_dir / "identification" / "identification.md").exists():
        parts.append(
            "<details><summary>The identification write-up (identification.md)</summary>"
            + markdown_html(run_dir, "identification/identification.md")
            + "</details>"
        )
    return "".join(parts)


def _dag_figure(run_dir: Path) -> str:
    """Draw the causal graph from the run's DAG file; the run's dag.png otherwise."""
    path = run_dir / "identification" / "identification.json"
    if path.exists():
        dag_file = json.loads(path.read_text(encoding="utf-8")).get("dag")
        if dag_file and Path(dag_file).exists():
            from pari_bayes.errors import PariBayesError
            from pari_bayes.identification.dag import load_dag
            from pari_bayes.report_figures import dag_png

            try:
                return _png_figure(
                    dag_png(load_dag(dag_file)), f"Assumed causal graph ({dag_file})"
                )
            except PariBayesError:
                pass
    return image(run_dir, "identification/dag.png", "Assumed causal graph")


def _data_section(run_dir: Path, meta: dict) -> str:
    parts = [f"<p>{_esc(meta.get('summary', ''))}</p>"]
    notices = meta.get("notices", [])
    if notices:
        parts.append("<p>Validation notices:</p>" + _list_items(notices))
    parts.append(csv_table(run_dir, "data_summary.csv"))
    return "".join(parts)


def _calibration_section(run_dir: Path) -> str:
    cal = _read(run_dir, "calibration/calibration.csv")
    parts = []
    if cal is not None and "within_tolerance" in cal.columns:
        ok = cal["within_tolerance"].str.lower() == "true"
        parts.append(
            f"<p>{int(ok.sum())} of {len(cal)} published statistics are matched within "
            "their tolerance (2 standard errors at the survey's size). "
            + ("The others:" if (~ok).any() else "")
            + "</p>"
        )
        if (~ok).any():
            parts.append(
                csv_table(
                    run_dir,
                    "calibration/calibration.csv",
                    columns=[
                        "source",
                        "variable",
                        "statistic",
                        "published",
                        "achieved",
                        "difference",
                        "tolerance",
                        "audit",
                    ],
                    rows=lambda f: f[f["within_tolerance"].str.lower() != "true"],
                )
            )
        parts.append(download_link(run_dir, "calibration/calibration.csv"))
    audit = _read(run_dir, "calibration/audit.csv")
    if audit is not None:
        parts.append(
            f"<h3>Audit of the published figures</h3><p>{len(audit)} published figures "
            "cannot be reproduced exactly (by table):</p>"
        )
        counts = audit.groupby(["table", "action"], sort=False).size().reset_index(name="n")
        parts.append(
            "<table><thead><tr><th class=t>table</th><th class=t>action</th><th>figures</th>"
            "</tr></thead><tbody>"
            + "".join(
                f"<tr><td class=t>{_esc(r.table)}</td><td class=t>{_esc(r.action)}</td>"
                f"<td>{r.n}</td></tr>"
                for r in counts.head(MAX_ROWS).itertuples()
            )
            + "</tbody></table>"
        )
        parts.append(download_link(run_dir, "calibration/audit.csv"))
    return "".join(parts)


def _diagnostics_section(run_dir: Path) -> str:
    parts = []
    fit_dir = run_dir / "fit"
    if not fit_dir.is_dir():
        return '<p class="note">No Bayesian diagnostics in this run.</p>'
    for model in sorted(p.name for p in fit_dir.iterdir() if p.is_dir()):
        parts.append(f"<h3>{_esc(model)}</h3>")
        rel = f"fit/{model}/diagnostics.csv"
        diag = _read(run_dir, rel)
        if diag is not None and "r_hat" in diag.columns:
            parts.append("<p>The 10 parameters with the highest R-hat:</p>")
            parts.append(
                csv_table(
                    run_dir,
                    rel,
                    columns=["parameter", "r_hat", "ess_bulk", "ess_tail", "divergences"],
                    rows=lambda f: (
                        f.assign(_r=pd.to_numeric(f["r_hat"], errors="coerce"))
                        .sort_values("_r", ascending=False, kind="stable")
                        .head(10)
                        .drop(columns="_r")
                    ),
                )
            )
        body = []
        for png in sorted((fit_dir / model).glob("*.png")):
            if png.name == "loadings.png":
                continue  # in the measurement section
            body.append(image(run_dir, f"fit/{model}/{png.name}", f"{model}: {png.stem}"))
        shown_columns = {
            "prior_sensitivity.csv": [
                "dimension",
                "estimand",
                "prior_scale_multiplier",
                "community_sd_prior_sigma",
                "pareto_k",
                "mean",
                "q05",
                "q95",
                "prob_positive",
            ],
            "loo.csv": [
                "dimension",
                "model",
                "rank",
                "elpd_loo",
                "se",
                "elpd_diff",
                "dse",
                "weight",
                "pareto_k_max",
            ],
        }
        for name, cols in shown_columns.items():
            if (fit_dir / model / name).exists():
                body.append(f"<p><code>{_esc(name)}</code></p>")
                body.append(csv_table(run_dir, f"fit/{model}/{name}", columns=cols))
        if body:
            parts.append(
                f"<details><summary>{_esc(model)}: figures, prior sensitivity, LOO</summary>"
                + "".join(body)
                + "</details>"
            )
    return "".join(parts) or '<p class="note">No Bayesian diagnostics in this run.</p>'


def _compared_with_paper(run_dir: Path) -> bool:
    """Whether the run's OLS baseline was compared with the published Table 4."""
    md = run_dir / "ols" / "table4.md"
    return md.exists() and md.read_text(encoding="utf-8").startswith("# Table 4 reproduced")


def build_report(run_dir: str | os.PathLike, target: str | os.PathLike | None = None) -> Path:
    """Write ``report.html`` (and ``findings.csv``) for a run folder.

    Parameters
    ----------
    run_dir
        A folder written by ``pari-bayes run``.
    target
        Where to write the report; ``run_dir/report.html`` by default.

    Returns
    -------
    pathlib.Path
        The report's path.
    """
    run_dir = Path(run_dir)
    meta_path = run_dir / "run.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    findings = None
    if (run_dir / "effects_all.csv").exists():
        findings = build_findings(run_dir)
        write_findings(findings, run_dir)
    sections = {
        "findings": (
            "Findings: do CBOs help, whom, and how sure are we?",
            lambda: _findings_section(run_dir, findings),
        ),
        "sensitivity": (
            "How strong would an unobserved confounder have to be?",
            lambda: _sensitivity_section(run_dir),
        ),
        "gate": ("Convergence gate and warnings", lambda: _gate_section(run_dir)),
        "effects": (
            "Effects by method, one scale per figure",
            lambda: _effects_section(run_dir, findings),
        ),
        "table4": (
            "Table 4: ours vs published, with few-cluster inference"
            if _compared_with_paper(run_dir)
            else "PCA + OLS baseline (the paper's Table 4 models), with few-cluster inference",
            lambda: _table4_section(run_dir),
        ),
        "measurement": (
            "Measurement: PCA scores and latent loadings",
            lambda: _measurement_section(run_dir),
        ),
        "identification": (
            "Causal graph, identification and refutations",
            lambda: _identification_section(run_dir),
        ),
        "data": ("Data and validation", lambda: _data_section(run_dir, meta)),
        "calibration": (
            "Calibration to the published tables and audit",
            lambda: _calibration_section(run_dir),
        ),
        "diagnostics": ("Diagnostics and prior sensitivity", lambda: _diagnostics_section(run_dir)),
    }
    if not (run_dir / "calibration").is_dir():  # the paper's survey only
        del sections["calibration"]
    body = []
    for key in SECTIONS:
        if key not in sections:
            continue
        title, content = sections[key]
        body.append(f'<section id="{key}"><h2>{_esc(title)}</h2>{content()}</section>')
    quick = (
        " <b>Quick run (tiny MCMC): wiring check only, no result is a finding.</b>"
        if (meta.get("quick"))
        else ""
    )
    doc = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>pari_bayes report</title><style>{_CSS}</style></head><body>"
        "<h1>Do community-based organizations help passive migrants integrate?</h1>"
        f'<p class="meta">pari_bayes {__version__}; survey '
        f"<code>{_esc(meta.get('data', ''))}</code>; seed {_esc(meta.get('seed', ''))}; "
        f"data hash <code>{_esc(str(meta.get('data_hash', ''))[:16])}</code>.{quick}</p>"
        + "".join(body)
        + "</body></html>\n"
    )
    target = Path(target) if target is not None else run_dir / "report.html"
    return atomic_write_text(target, doc)
