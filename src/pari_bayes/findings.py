"""The findings of a run: one preferred estimate per dimension and estimand, and sentences.

Built only from the files of a run folder (``effects_all.csv``, ``gate.csv``,
``identification/estimands.csv`` and ``identification.json``, the latent fit's
``diagnostics.csv``), so ``pari-bayes report --out DIR`` rebuilds it without refitting.

The rule that picks the preferred estimate (:data:`PREFERRED_RULE`) is stated on the
report's first screen: the joint latent model where it passed the convergence gate and the
dimension's factor is measured, else the multilevel model of the paper's Table 4
specification, else the multivariate multilevel model; never an unconverged fit, never a
frequentist interval (CR2 or IPW sandwich) that rests on 2 + 2 communities. A dimension and
estimand with no eligible estimate gets an empty estimate and a status that says why.

Every number in the sentences (:func:`findings_sentences`) is a cell of the findings table
as the report prints it (:func:`format_findings`); ``tests/test_report.py`` checks it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pari_bayes.effects import ESTIMANDS, EffectTable
from pari_bayes.errors import OutputError
from pari_bayes.io import write_csv

__all__ = [
    "FINDINGS_COLUMNS",
    "PREFERENCE",
    "PREFERRED_RULE",
    "Findings",
    "build_findings",
    "write_findings",
    "format_findings",
    "findings_sentences",
    "cbo_communities",
    "design_caveat",
    "design_words",
    "plain_summary",
    "sensitivity_sentences",
    "fmt_number",
    "fmt_p",
]

#: Columns of ``findings.csv``, in order.
FINDINGS_COLUMNS = (
    "dimension",
    "estimand",
    "alpha",
    "method",
    "scale",
    "estimate",
    "q05",
    "q95",
    "prob_benefit",
    "identification",
    "convergence",
    "measurement",
    "status",
)

#: Methods eligible as the preferred estimate, most preferred first.
PREFERENCE = ("bayes:latent", "bayes:table4", "bayes:multivariate")

#: The rule, as the report states it.
PREFERRED_RULE = (
    "Preferred estimate: the joint latent model (bayes:latent) where it passed the "
    "convergence gate and the dimension's factor is measured (measurement information "
    "at least {weak}); otherwise the multilevel model of the paper's Table 4 specification "
    "(bayes:table4); otherwise the multivariate multilevel model (bayes:multivariate). "
    "A fit that failed the gate is never used, and neither are the CR2 or IPW intervals, "
    "which rest on {design} communities. A benefit is a higher integration score "
    "(effect > 0)."
)

#: Scale of each method's effects, in words (units of the forest plots' x-axes).
SCALES = {
    "bayes:latent": "latent factor (sd of the household disturbance)",
    "default": "PCA score (sd of the first-component score)",
}

_ESTIMAND_WORDS = {
    "DE": "own participation (DE, participants vs non-participants where CBOs exist)",
    "IE": "spillover on non-participants (IE)",
    "TE": "participating in a CBO community vs living without CBOs (TE)",
    "OE": "bringing CBOs to a community (OE)",
}


@dataclass
class Findings:
    """The findings table and what it was built from.

    Attributes
    ----------
    table
        One row per dimension and estimand, columns :data:`FINDINGS_COLUMNS`.
    alpha
        The observed participation share at which OE is evaluated (``None`` if unknown).
    weak_threshold
        Measurement information below which a latent factor counts as weakly measured.
    """

    table: pd.DataFrame
    alpha: float | None
    weak_threshold: float


def scale_of(method: str) -> str:
    """Return the scale (units) of a method's effects, in words."""
    return SCALES.get(method, SCALES["default"])


def _truthy(value: object) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def _read(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path, keep_default_na=False, dtype=str) if path.exists() else None


def observed_alpha(run_dir: str | os.PathLike) -> float | None:
    """Return the observed participation share in the CBO communities (identification.json)."""
    path = Path(run_dir) / "identification" / "identification.json"
    if not path.exists():
        return None
    coding = json.loads(path.read_text(encoding="utf-8")).get("exposure_coding", {})
    value = coding.get("OE", {}).get("alpha_observed")
    return None if value is None else float(value)


def measurement_information(run_dir: str | os.PathLike) -> dict[str, float]:
    """Measurement information of each latent factor (``fit/latent/diagnostics.csv``)."""
    path = Path(run_dir) / "fit" / "latent" / "diagnostics.csv"
    if not path.exists():
        return {}
    diag = pd.read_csv(path, keep_default_na=False, dtype=str)
    if "value" not in diag.columns:
        return {}
    rows = diag[diag["parameter"].str.startswith("measurement_information.")]
    return {
        p.removeprefix("measurement_information."): float(v)
        for p, v in zip(rows["parameter"], rows["value"], strict=True)
        if v != ""
    }


def _identification(run_dir: Path) -> dict[tuple[str, str], tuple[bool, str]]:
    """``(dimension, estimand) -> (identified on the DAG, what it rests on)``."""
    table = _read(run_dir / "identification" / "estimands.csv")
    out: dict[tuple[str, str], tuple[bool, str]] = {}
    if table is None:
        return out
    for row in table.itertuples(index=False):
        blocked = str(getattr(row, "blocked_by", "")).replace("_", " ").strip()
        out[(row.dimension, row.estimand)] = (_truthy(row.identified_dag), blocked)
    return out


def _gate(run_dir: Path) -> dict[str, bool]:
    gate = _read(run_dir / "gate.csv")
    if gate is None:
        return {}
    return {row["model"]: _truthy(row["passed"]) for _, row in gate.iterrows()}


def _pick_rows(effects: pd.DataFrame, estimand: str, alpha: float | None) -> pd.DataFrame:
    rows = effects[(effects["estimand"] == estimand) & (effects["scope"] == "observed")]
    if estimand == "OE":
        if alpha is None:
            return rows.iloc[0:0]
        rows = rows[np.isclose(pd.to_numeric(rows["alpha"]), alpha, atol=1e-6)]
    return rows


def build_findings(run_dir: str | os.PathLike) -> Findings:
    """Pick the preferred estimate of every dimension and estimand of a run.

    Parameters
    ----------
    run_dir
        A folder written by ``pari-bayes run``.

    Returns
    -------
    Findings

    Raises
    ------
    OutputError
        If the run folder has no ``effects_all.csv``.
    """
    from pari_bayes.estimation.latent import WEAK_MEASUREMENT

    run_dir = Path(run_dir)
    path = run_dir / "effects_all.csv"
    if not path.exists():
        raise OutputError(f"{path}: no effects in this run folder (run the fit steps first)")
    effects = EffectTable.read_csv(path).frame
    alpha = observed_alpha(run_dir)
    gate = _gate(run_dir)
    info = measurement_information(run_dir)
    ident = _identification(run_dir)
    dims = list(dict.fromkeys([*effects["dimension"], *(d for d, _ in ident)]))
    rows = []
    for dim in dims:
        for estimand in ESTIMANDS:
            rows.append(
                _finding(
                    dim,
                    estimand,
                    _pick_rows(effects[effects["dimension"] == dim], estimand, alpha),
                    alpha,
                    gate,
                    info,
                    ident.get((dim, estimand)),
                    WEAK_MEASUREMENT,
                )
            )
    table = pd.DataFrame(rows, columns=list(FINDINGS_COLUMNS))
    return Findings(table=table, alpha=alpha, weak_threshold=WEAK_MEASUREMENT)


def _finding(
    dim: str,
    estimand: str,
    rows: pd.DataFrame,
    alpha: float | None,
    gate: dict[str, bool],
    info: dict[str, float],
    ident: tuple[bool, str] | None,
    weak: float,
) -> dict:
    skipped = []
    chosen = None
    for method in PREFERENCE:
        model = method.split(":", 1)[1]
        cand = rows[rows["method"] == method]
        if model not in gate and cand.empty:
            continue  # not fitted in this run
        if not gate.get(model, False):
            skipped.append(f"{method} failed the convergence gate")
            continue
        if cand.empty:
            skipped.append(f"{method} has no {estimand} row")
            continue
        if "UNCONVERGED" in str(cand.iloc[0]["note"]).upper():
            skipped.append(f"{method} unconverged")
            continue
        if method == "bayes:latent":
            share = info.get(dim)
            if share is not None and share < weak:
                skipped.append(f"latent factor weakly measured (information {share:.2f})")
                continue
        chosen = (method, cand.iloc[0])
        break
    if ident is None:
        identification = "not assessed (no identification step in this run)"
    elif ident[0]:
        identification = "identified by the causal graph"
    else:
        why = f" ({ident[1]})" if ident[1] else ""
        identification = f"rests on an assumption: no unmeasured confounder of participation{why}"
    if chosen is None:
        return {
            "dimension": dim,
            "estimand": estimand,
            "alpha": alpha if estimand == "OE" else np.nan,
            "method": "",
            "scale": "",
            "estimate": np.nan,
            "q05": np.nan,
            "q95": np.nan,
            "prob_benefit": np.nan,
            "identification": identification,
            "convergence": "no converged fit" if skipped else "no Bayesian fit in this run",
            "measurement": "; ".join(s for s in skipped if "measured" in s),
            "status": "no estimate: " + ("; ".join(skipped) or "no Bayesian fit in this run"),
        }
    method, row = chosen
    if method == "bayes:latent":
        share = info.get(dim)
        measurement = (
            f"latent factor measured (information {share:.2f})"
            if share is not None
            else "latent factor"
        )
    else:
        weak_note = [s for s in skipped if "measured" in s]
        measurement = "PCA score" + (f"; {weak_note[0]}" if weak_note else "")
    # short: identification . convergence . measurement (the long forms are own columns)
    status = (
        "identified"
        if identification.startswith("identified")
        else (
            "assumes no unmeasured confounder"
            if identification.startswith("rests")
            else "identification not assessed"
        )
    )
    status += " · converged"
    if method == "bayes:latent":
        share = info.get(dim)
        status += " · factor measured" + (f" ({share:.2f})" if share is not None else "")
    elif any("measured" in s for s in skipped):
        share = info.get(dim)
        status += (
            " · latent factor weakly measured"
            + (f" ({share:.2f})" if share is not None else "")
            + ": PCA score used"
        )
    else:
        status += " · PCA score"
    prob = pd.to_numeric(pd.Series([row["prob_positive"]]), errors="coerce").iloc[0]
    return {
        "dimension": dim,
        "estimand": estimand,
        "alpha": alpha if estimand == "OE" else np.nan,
        "method": method,
        "scale": scale_of(method),
        "estimate": float(row["mean"]),
        "q05": float(row["q05"]),
        "q95": float(row["q95"]),
        "prob_benefit": float(prob),
        "identification": identification,
        "convergence": "passed the gate",
        "measurement": measurement,
        "status": status,
    }


def write_findings(findings: Findings, run_dir: str | os.PathLike) -> Path:
    """Write ``findings.csv`` into the run folder (atomically)."""
    return write_csv(findings.table, Path(run_dir) / "findings.csv")


# ---- formatting ----------------------------------------------------------------------


def fmt_number(value: object, digits: int = 3) -> str:
    """Format a number to ``digits`` significant digits, without exponent for 0.001-99,999.

    Empty cells and non-numbers come back as text (``""`` for missing).

    Examples
    --------
    >>> fmt_number(0.0523417), fmt_number(12.3456), fmt_number(2.35889e-35)
    ('0.0523', '12.3', '2.4e-35')
    """
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "" if value is None else str(value)
    if math.isnan(x):
        return ""
    if x == 0:
        return "0"
    if x.is_integer() and abs(x) < 1e6:
        return str(int(x))
    if 1e-3 <= abs(x) < 1e5:
        return np.format_float_positional(x, precision=digits, fractional=False, trim="-")
    return f"{x:.1e}"


def fmt_p(value: object) -> str:
    """Format a p-value as ``< 0.001``, ``0.004``, ``0.042`` or ``0.42``."""
    try:
        p = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    if math.isnan(p):
        return ""
    if p < 0.001:
        return "< 0.001"
    if p < 0.01:
        return f"{p:.3f}"
    return np.format_float_positional(p, precision=2, fractional=False, trim="-")


def _decimals(width: float) -> int:
    """Decimals that show an interval of this width to about two significant digits."""
    if not np.isfinite(width) or width <= 0:
        return 2
    return int(min(4, max(0, 1 - math.floor(math.log10(width)))))


def format_findings(table: pd.DataFrame) -> pd.DataFrame:
    """Return the findings table as the report prints it (text, rounded to the interval).

    Estimate and interval share one number of decimals, chosen so the interval's width
    has about two significant digits; P(benefit) has two decimals.
    """
    out = table.copy().astype(object)
    for i, row in table.iterrows():
        if pd.isna(row["estimate"]):
            for col in ("estimate", "q05", "q95", "prob_benefit"):
                out.at[i, col] = ""
        else:
            k = _decimals(float(row["q95"]) - float(row["q05"]))
            for col in ("estimate", "q05", "q95"):
                out.at[i, col] = _fixed(float(row[col]), k)
            out.at[i, "prob_benefit"] = (
                "" if pd.isna(row["prob_benefit"]) else f"{float(row['prob_benefit']):.2f}"
            )
        out.at[i, "alpha"] = "" if pd.isna(row["alpha"]) else f"{float(row['alpha']):.2f}"
    return out


def _fixed(x: float, k: int) -> str:
    text = f"{x:.{k}f}"
    return "0" + text[2:] if text.startswith("-0") and float(text) == 0 else text


# ---- sentences -----------------------------------------------------------------------


def _dim(name: str) -> str:
    return name.replace("_", " ")


def _describe(row: pd.Series) -> str:
    return (
        f"{_dim(row['dimension'])} ({row['estimate']}; 90% interval {row['q05']} to "
        f"{row['q95']}; P(benefit) {row['prob_benefit']})"
    )


def _estimand_sentence(shown: pd.DataFrame, raw: pd.DataFrame, estimand: str) -> str | None:
    sel = raw[(raw["estimand"] == estimand) & raw["estimate"].notna()]
    if sel.empty:
        return None
    up = sel[sel["q05"] > 0]
    down = sel[sel["q95"] < 0]
    unclear = sel[(sel["q05"] <= 0) & (sel["q95"] >= 0)]
    words = _ESTIMAND_WORDS[estimand]
    if estimand == "OE":
        alpha = shown.loc[sel.index[0], "alpha"]
        words = f"bringing CBOs to a community (OE, at its observed participation share {alpha})"
    parts = []
    if len(up):
        parts.append("raises " + "; ".join(_describe(shown.loc[i]) for i in up.index))
    if len(down):
        parts.append("lowers " + "; ".join(_describe(shown.loc[i]) for i in down.index))
    text = "The effect of " + words + " " + " and ".join(parts) if parts else ""
    if len(unclear):
        names = ", ".join(_dim(d) for d in unclear["dimension"])
        if text:
            text += f"; for {names} the 90% interval includes zero"
        else:
            text = f"For {words} every 90% interval includes zero ({names})"
    ident = sel["identification"].iloc[0]
    if ident.startswith("rests on"):
        text += "; this rests on assuming no unmeasured confounder of participation"
    elif ident.startswith("identified"):
        text += "; the causal graph identifies this effect"
    return text + "."


def findings_sentences(findings: Findings) -> list[str]:
    """Three to five plain-language sentences, each true of the findings table.

    Every number in them is a cell of :func:`format_findings`.
    """
    raw = findings.table
    shown = format_findings(raw)
    lines = []
    for estimand in ("OE", "IE", "DE", "TE"):
        sentence = _estimand_sentence(shown, raw, estimand)
        if sentence:
            lines.append(sentence)
    missing = raw[raw["estimate"].isna()]
    if len(missing):
        pairs = sorted({f"{r.estimand} of {_dim(r.dimension)}" for r in missing.itertuples()})
        if len(pairs) == len(raw):
            lines.append(
                "No estimate is reported: no Bayesian model passed the convergence gate "
                "(see the status column and the convergence section)."
            )
        else:
            lines.append(
                "No estimate is reported for "
                + ", ".join(pairs[:6])
                + (f" and {len(pairs) - 6} more" if len(pairs) > 6 else "")
                + " (see the status column)."
            )
    if len(lines) > 5:  # TE = DE + IE: the first to go when there is too much to say
        lines = [s for s in lines if "(TE" not in s][:5]
    return lines


def cbo_communities(run_dir: str | os.PathLike) -> tuple[list[str], list[str]] | None:
    """Return the communities with and without CBOs (from data_summary.csv), or ``None``."""
    table = _read(Path(run_dir) / "data_summary.csv")
    if table is None or "cbo_presence" not in table.columns:
        return None
    with_cbo = table.loc[table["cbo_presence"] == "1", "community"].tolist()
    without = table.loc[table["cbo_presence"] == "0", "community"].tolist()
    return with_cbo, without


def design_words(run_dir: str | os.PathLike) -> str:
    """Return the run's design in the report's words: ``"2 + 2"`` (with + without CBOs)."""
    split = cbo_communities(run_dir)
    return "the surveyed" if split is None else f"{len(split[0])} + {len(split[1])}"


def design_caveat(run_dir: str | os.PathLike) -> str:
    """Return the design caveat (communities with vs without CBOs), from data_summary.csv."""
    split = cbo_communities(run_dir)
    if split is None:
        return ""
    with_cbo, without = split
    text = (
        f"Design caveat: CBO presence varies only between communities, {len(with_cbo)} with "
        f"CBOs ({', '.join(with_cbo)}) and {len(without)} without ({', '.join(without)}). "
        "Every effect of CBO presence (IE, TE, OE) compares these communities, so any other "
        "difference between them (formation date, location, management) is mixed into it."
    )
    if min(len(with_cbo), len(without)) < 5:
        text += (
            " With this few communities, cluster-robust (CR2) and IPW sandwich intervals are "
            "unreliable; the Bayesian intervals lean on the community-sd prior (see prior "
            "sensitivity) and the wild cluster bootstrap is the honest frequentist check."
        )
    return text


def sensitivity_sentences(run_dir: str | os.PathLike, estimand: str = "DE") -> list[str]:
    """Return the sensitivity step's sentences for one estimand (``sensitivity/ovb.csv``).

    "For the direct effect on <dimension> to vanish, an unobserved trait would have to be X
    times as strong as <benchmark>; ..." per dimension; empty when the step did not run.
    """
    table = _read(Path(run_dir) / "sensitivity" / "ovb.csv")
    if table is None or not {"estimand", "sentence"} <= set(table.columns):
        return []
    return [s for s in table.loc[table["estimand"] == estimand, "sentence"] if s]


def plain_summary(run_dir: str | os.PathLike) -> list[str]:
    """Return the run's plain-language summary (run.json's ``plain_summary``).

    The findings sentences, how strong an unobserved confounder would have to be for each
    direct effect to vanish (the sensitivity step), then the design caveat.
    """
    run_dir = Path(run_dir)
    lines = []
    if (run_dir / "effects_all.csv").exists():
        lines += findings_sentences(build_findings(run_dir))
    lines += sensitivity_sentences(run_dir)
    caveat = design_caveat(run_dir)
    return [*lines, caveat] if caveat else lines
