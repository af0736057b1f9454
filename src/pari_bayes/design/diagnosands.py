"""DeclareDesign-style diagnosands of a replicate table, each with its Monte Carlo SE.

Per grid point, dimension, estimand and estimator, over the replicates that produced an
estimate (for ``bayes``: that also passed the convergence gate):

========================  ==========================================  ===========================
diagnosand                 definition                                  Monte Carlo SE
========================  ==========================================  ===========================
bias                       mean(estimate - truth)                      sd(est - truth) / sqrt(n)
rmse                       sqrt(mean((estimate - truth)^2))            sd(err^2) / (2 rmse sqrt(n))
coverage                   mean(lower <= truth <= upper)               sqrt(c (1 - c) / n)
power                      mean(detected): p < alpha (frequentist);    sqrt(p (1 - p) / n)
                           interval excludes 0 in the true direction
                           (Bayes: the assurance)
type_s                     share of rejections with the wrong sign     sqrt(s (1 - s) / n_rejected)
mean_width                 mean(upper - lower)                         sd(width) / sqrt(n)
gate_failure_rate          failed fits / attempted (Bayes), errors     sqrt(f (1 - f) / attempted)
                           / attempted (OLS)
========================  ==========================================  ===========================

The ``rmse`` SE is the delta method. Estimators without an interval (``ols_wild``) get
NaN coverage and width.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = ["DIAGNOSAND_COLUMNS", "GROUP_COLUMNS", "diagnosands", "smallest_designs"]

GROUP_COLUMNS = (
    "point",
    "communities",
    "cbo_communities",
    "cbo_share",
    "households",
    "participation",
    "dimension",
    "estimand",
    "estimator",
)
DIAGNOSAND_COLUMNS = (
    *GROUP_COLUMNS,
    "attempted",
    "n",
    "mean_truth",
    "bias",
    "bias_se",
    "rmse",
    "rmse_se",
    "coverage",
    "coverage_se",
    "power",
    "power_se",
    "type_s",
    "type_s_se",
    "n_rejected",
    "mean_width",
    "mean_width_se",
    "gate_failure_rate",
    "gate_failure_rate_se",
)


def _prop(values: np.ndarray) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    p = float(np.mean(values))
    return p, math.sqrt(p * (1 - p) / n)


def _mean(values: np.ndarray) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    sd = float(np.std(values, ddof=1)) if n > 1 else math.nan
    return float(np.mean(values)), sd / math.sqrt(n)


def _group(sub: pd.DataFrame) -> dict[str, float]:
    attempted = len(sub)
    ok = (sub["error"].fillna("") == "") & sub["gate_passed"].astype(bool)
    ok &= np.isfinite(sub["estimate"].to_numpy(dtype=float))
    fails = (~ok).to_numpy()
    used = sub[ok]
    n = len(used)
    err = (used["estimate"] - used["truth"]).to_numpy(dtype=float)
    bias, bias_se = _mean(err)
    if n:
        rmse = float(np.sqrt(np.mean(err**2)))
        sq_sd = float(np.std(err**2, ddof=1)) if n > 1 else math.nan
        rmse_se = sq_sd / (2 * rmse * math.sqrt(n)) if rmse > 0 else math.nan
    else:
        rmse = rmse_se = math.nan
    lower = used["lower"].to_numpy(dtype=float)
    upper = used["upper"].to_numpy(dtype=float)
    has_interval = np.isfinite(lower) & np.isfinite(upper)
    truth = used["truth"].to_numpy(dtype=float)
    if n and has_interval.all():
        coverage, coverage_se = _prop((lower <= truth) & (truth <= upper))
        width, width_se = _mean(upper - lower)
    else:
        coverage = coverage_se = width = width_se = math.nan
    power, power_se = _prop(used["detected"].to_numpy(dtype=bool))
    rejected = used["rejected"].to_numpy(dtype=bool)
    wrong = (np.sign(used["estimate"].to_numpy(dtype=float)) != np.sign(truth)) & (truth != 0)
    type_s, type_s_se = _prop(wrong[rejected])
    failure, failure_se = _prop(fails)
    return {
        "attempted": attempted,
        "n": n,
        "mean_truth": float(np.mean(truth)) if n else math.nan,
        "bias": bias,
        "bias_se": bias_se,
        "rmse": rmse,
        "rmse_se": rmse_se,
        "coverage": coverage,
        "coverage_se": coverage_se,
        "power": power,
        "power_se": power_se,
        "type_s": type_s,
        "type_s_se": type_s_se,
        "n_rejected": int(rejected.sum()),
        "mean_width": width,
        "mean_width_se": width_se,
        "gate_failure_rate": failure,
        "gate_failure_rate_se": failure_se,
    }


def diagnosands(replicates: pd.DataFrame) -> pd.DataFrame:
    """Diagnosands of a replicate table (one row per replicate x dimension x estimand x estimator).

    Parameters
    ----------
    replicates
        Rows with at least the grouping columns and truth, estimate, lower, upper,
        rejected, detected, gate_passed, error.

    Returns
    -------
    pandas.DataFrame
        One row per group with :data:`DIAGNOSAND_COLUMNS`.

    Examples
    --------
    >>> import pandas as pd
    >>> rows = pd.DataFrame({"point": 0, "communities": 8, "cbo_communities": 4,
    ...     "cbo_share": .5, "households": 10, "participation": .3, "dimension": "d",
    ...     "estimand": "IE", "estimator": "ols_cr2", "truth": [1.0, 1.0],
    ...     "estimate": [0.5, 1.5], "lower": [0.0, 1.1], "upper": [1.0, 1.9],
    ...     "rejected": [False, True], "detected": [False, True], "gate_passed": True,
    ...     "error": ""})
    >>> float(diagnosands(rows)["coverage"].iloc[0])
    0.5
    """
    keys = list(GROUP_COLUMNS)
    out = []
    for values, sub in replicates.groupby(keys, sort=True, dropna=False):
        out.append({**dict(zip(keys, values, strict=True)), **_group(sub)})
    return pd.DataFrame(out, columns=list(DIAGNOSAND_COLUMNS))


def smallest_designs(table: pd.DataFrame, target: float) -> pd.DataFrame:
    """Return the smallest J reaching ``target``, per estimand, estimator and other design.

    Returns
    -------
    pandas.DataFrame
        Columns dimension, estimand, estimator, cbo_share, households, participation,
        communities (NaN when no grid point reaches the target), power, power_se,
        largest_power (the best power on the grid).
    """
    rows = []
    keys = ["dimension", "estimand", "estimator", "cbo_share", "households", "participation"]
    for values, sub in table.groupby(keys, sort=False):
        sub = sub.sort_values("communities")
        hit = sub[sub["power"] >= target]
        best = sub.loc[sub["power"].idxmax()] if sub["power"].notna().any() else None
        first = hit.iloc[0] if len(hit) else None
        rows.append(
            {
                **dict(zip(keys, values, strict=True)),
                "communities": first["communities"] if first is not None else math.nan,
                "power": first["power"] if first is not None else math.nan,
                "power_se": first["power_se"] if first is not None else math.nan,
                "largest_power": best["power"] if best is not None else math.nan,
                "largest_power_communities": best["communities"] if best is not None else math.nan,
            }
        )
    return pd.DataFrame(rows)
