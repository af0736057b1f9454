"""The HTML report: one self-contained file a person can read without Python.

The report is built only from the files of a run folder (CSV, JSON, Markdown, PNG), so it
can be rebuilt with ``pari-bayes report --out DIR`` and every number in it is the text of a
CSV cell. Tables carry a ``data-source`` attribute naming the CSV they come from.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

import pandas as pd

from pari_bayes._version import __version__
from pari_bayes.effects import EFFECT_COLUMNS
from pari_bayes.io import atomic_write_text

__all__ = ["build_report", "SECTIONS"]

#: Section ids, in the order they appear.
SECTIONS = (
    "gate",
    "summary",
    "data",
    "calibration",
    "measurement",
    "identification",
    "table4",
    "effects",
    "diagnostics",
)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.7em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.82em;margin:.6em 0 1.2em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.pass{background:#e5f5e0;border-left:6px solid #31a354;padding:.6em 1em}
.fail{background:#fde0dd;border-left:6px solid #de2d26;padding:.6em 1em}
.note{background:#fff7dc;border-left:6px solid #f0b400;padding:.6em 1em}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
details{margin:.5em 0}pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.85em}
.scroll{max-height:420px;overflow:auto}
"""


def _esc(text: object) -> str:
    return html.escape(str(text))


def csv_table(
    run_dir: Path, rel: str, columns: list[str] | None = None, max_rows: int = 400
) -> str:
    """Render a CSV of the run as an HTML table, cell text exactly as in the file."""
    path = run_dir / rel
    if not path.exists():
        return f'<p class="note">Not available in this run: <code>{_esc(rel)}</code>.</p>'
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if columns:
        frame = frame[[c for c in columns if c in frame.columns]]
    shown = frame.head(max_rows)
    head = "".join(f"<th>{_esc(c)}</th>" for c in shown.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in row) + "</tr>"
        for row in shown.itertuples(index=False)
    )
    more = (
        f"<p>Showing {len(shown)} of {len(frame)} rows; "
        f"the rest are in <code>{_esc(rel)}</code>.</p>"
        if len(frame) > len(shown)
        else ""
    )
    return (
        f'<div class="scroll"><table data-source="{_esc(rel)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>{more}"
    )


def image(run_dir: Path, rel: str, alt: str) -> str:
    """Embed a PNG of the run as a data URI."""
    path = run_dir / rel
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_esc(alt)}</figcaption></figure>"
    )


def markdown_block(run_dir: Path, rel: str) -> str:
    """Show a Markdown file of the run as preformatted text (no Markdown dependency)."""
    path = run_dir / rel
    if not path.exists():
        return ""
    return (
        f"<details><summary><code>{_esc(rel)}</code></summary>"
        f"<pre>{_esc(path.read_text())}</pre></details>"
    )


def _gate_section(run_dir: Path) -> str:
    path = run_dir / "gate.csv"
    if not path.exists():
        return '<p class="note">No Bayesian model was fitted in this run.</p>'
    gate = pd.read_csv(path, dtype=str, keep_default_na=False)
    failed = gate[gate["passed"].str.lower() != "true"]
    rungs = []
    if "rung" in gate:
        rungs = [
            f"{row['model']} passed on escalation rung {row['rung']} ({row.get('ladder', '')})"
            for _, row in gate.iterrows()
            if str(row.get("passed", "")).lower() == "true" and row["rung"] not in ("", "0")
        ]
    if failed.empty:
        banner = (
            f'<p class="pass"><b>Convergence gate: PASSED</b> for all {len(gate)} Bayesian '
            "model(s): zero divergences, R-hat &le; 1.01, bulk and tail ESS &ge; 400 on every "
            "reported quantity.</p>"
        )
    else:
        items = []
        for _, row in failed.iterrows():
            published = str(row.get("effects_published", "")).lower() == "true"
            items.append(
                f"{row['model']}: {str(row.get('reason', ''))[:300]} "
                f"[{row.get('ladder', '') or 'one attempt'}] "
                + (
                    "Its effect rows are published marked UNCONVERGED."
                    if published
                    else "Its effect rows are withheld; its diagnostics and "
                    f"fit/{row['model']}/worst_parameters.png are published."
                )
            )
        banner = (
            f'<p class="fail"><b>Convergence gate: FAILED</b> for '
            f"{_esc(', '.join(failed['model']))}; every other result below is unaffected. "
            "What to try: more draws and tuning, or a higher target_accept, in the spec's "
            "[sampler]; a reparameterization or a tighter prior where the worst parameters "
            "are a variance or a weakly measured factor.</p>" + _list_items(items)
        )
    if rungs:
        banner += "<p>Escalation: " + _esc("; ".join(rungs)) + ".</p>"
    notes = [
        f"{row['model']}: {text}"
        for _, row in gate.iterrows()
        for text in str(row.get("warnings", "")).split(" | ")
        if text.strip()
    ]
    if notes:
        banner += "<p><b>Warnings from the fits</b> (read before the effects):</p>" + _list_items(
            notes
        )
    return banner + csv_table(run_dir, "gate.csv")


def _list_items(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{_esc(i)}</li>" for i in items) + "</ul>"


def _summary_section(run_dir: Path, meta: dict) -> str:
    lines = list(meta.get("plain_summary", []))
    if not lines:
        return '<p class="note">No plain-language summary was produced.</p>'
    return _list_items(lines)


def _data_section(run_dir: Path, meta: dict) -> str:
    parts = [f"<p>{_esc(meta.get('summary', ''))}</p>"]
    notices = meta.get("notices", [])
    if notices:
        parts.append("<p>Validation notices:</p>" + _list_items(notices))
    parts.append(csv_table(run_dir, "data_summary.csv"))
    return "".join(parts)


def _identification_section(run_dir: Path) -> str:
    parts = [image(run_dir, "identification/dag.png", "Assumed causal graph (models/dag.dot)")]
    path = run_dir / "identification" / "identification.json"
    parts.append(csv_table(run_dir, "identification/estimands.csv"))
    parts.append(csv_table(run_dir, "identification/positivity.csv"))
    parts.append(csv_table(run_dir, "identification/refutations.csv"))
    if path.exists():
        parts.append(markdown_block(run_dir, "identification/identification.md"))
    return "".join(parts)


def _effects_section(run_dir: Path) -> str:
    parts = [
        "<p>DE = direct effect (participants vs non-participants where CBOs exist), IE = "
        "spillover on non-participants of CBO presence, TE = DE + IE, OE(alpha) = overall "
        "effect of bringing CBOs to a community with participation rate alpha. OLS and IPW "
        "are on the PCA-score scale (sd 1); the latent model is on the latent-factor scale "
        "(unit disturbance variance).</p>",
        image(run_dir, "effects_forest.png", "Effects by method (90% intervals)"),
        "<p>One row per method, dimension, estimand (alpha) and scope, in the one effects "
        "schema (<code>pari_bayes.effects.EffectTable</code>): q05/q50/q95 are posterior "
        "quantiles (interval <code>posterior</code>) or 90% Wald intervals "
        "(<code>normal</code>, or <code>t</code> with <code>df</code>); prob_positive, "
        "ESS and R-hat exist only for posterior draws.</p>",
        csv_table(run_dir, "effects_all.csv", columns=list(EFFECT_COLUMNS)),
    ]
    return "".join(parts)


def _diagnostics_section(run_dir: Path) -> str:
    parts = []
    fit_dir = run_dir / "fit"
    if fit_dir.is_dir():
        for model in sorted(p.name for p in fit_dir.iterdir() if p.is_dir()):
            parts.append(f"<h3>{_esc(model)}</h3>")
            parts.append(csv_table(run_dir, f"fit/{model}/diagnostics.csv", max_rows=60))
            for png in sorted((fit_dir / model).glob("*.png")):
                parts.append(image(run_dir, f"fit/{model}/{png.name}", f"{model}: {png.stem}"))
            if (fit_dir / model / "prior_sensitivity.csv").exists():
                parts.append(csv_table(run_dir, f"fit/{model}/prior_sensitivity.csv"))
            if (fit_dir / model / "loo.csv").exists():
                parts.append(csv_table(run_dir, f"fit/{model}/loo.csv"))
    return "".join(parts) or '<p class="note">No Bayesian diagnostics in this run.</p>'


def _compared_with_paper(run_dir: Path) -> bool:
    """Whether the run's OLS baseline was compared with the published Table 4."""
    md = run_dir / "ols" / "table4.md"
    return md.exists() and md.read_text(encoding="utf-8").startswith("# Table 4 reproduced")


def build_report(run_dir: str | os.PathLike, target: str | os.PathLike | None = None) -> Path:
    """Write ``report.html`` for a run folder.

    Parameters
    ----------
    run_dir
        A folder written by ``pari-bayes run``.
    target
        Where to write; ``run_dir/report.html`` by default.

    Returns
    -------
    pathlib.Path
        The report's path.
    """
    run_dir = Path(run_dir)
    meta_path = run_dir / "run.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    sections = {
        "gate": ("Convergence gate", _gate_section(run_dir)),
        "summary": ("What the data can and cannot support", _summary_section(run_dir, meta)),
        "data": ("Data and validation", _data_section(run_dir, meta)),
        "calibration": (
            "Calibration to the published tables and audit",
            csv_table(run_dir, "calibration/calibration.csv")
            + "<h3>Audit of the published figures</h3>"
            + csv_table(run_dir, "calibration/audit.csv"),
        ),
        "measurement": (
            "Measurement: PCA diagnostics and latent loadings",
            csv_table(run_dir, "ols/pca.csv")
            + "<h3>Latent model loadings</h3>"
            + image(run_dir, "fit/latent/loadings.png", "latent model loadings")
            + csv_table(
                run_dir,
                "fit/latent/loadings.csv",
                columns=["parameter", "lhs", "op", "rhs", "mean", "sd", "q05", "q95", "r_hat"],
            ),
        ),
        "identification": (
            "Causal graph, identification and refutations",
            _identification_section(run_dir),
        ),
        "table4": (
            "Table 4: ours vs published, with few-cluster inference"
            if _compared_with_paper(run_dir)
            else "PCA + OLS baseline (the paper's Table 4 models), with few-cluster inference",
            csv_table(run_dir, "ols/ols_table4.csv")
            + csv_table(run_dir, "ols/ols_fit.csv")
            + markdown_block(run_dir, "ols/table4.md"),
        ),
        "effects": (
            "Effects: OLS, IPW, multilevel and latent models side by side",
            _effects_section(run_dir),
        ),
        "diagnostics": ("Diagnostics and prior sensitivity", _diagnostics_section(run_dir)),
    }
    if not (run_dir / "calibration").is_dir():  # the paper's survey only
        del sections["calibration"]
    body = []
    for key in SECTIONS:
        if key not in sections:
            continue
        title, content = sections[key]
        body.append(f'<section id="{key}"><h2>{_esc(title)}</h2>{content}</section>')
    doc = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>pari_bayes report</title><style>{_CSS}</style></head><body>"
        f"<h1>pari_bayes report</h1><p>pari_bayes {__version__}; survey "
        f"<code>{_esc(meta.get('data', ''))}</code>; seed {_esc(meta.get('seed', ''))}; "
        f"data hash <code>{_esc(str(meta.get('data_hash', ''))[:16])}</code>.</p>"
        + "".join(body)
        + "</body></html>\n"
    )
    target = Path(target) if target is not None else run_dir / "report.html"
    return atomic_write_text(target, doc)
