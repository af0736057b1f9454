"""Omitted-variable-bias sensitivity of an OLS coefficient, cluster-aware.

Cinelli and Hazlett (2020, JRSS-B 82(1)) express the bias from an omitted confounder Z
through two partial R2: ``R2_{D~Z|X}`` (Z with the treatment) and ``R2_{Y~Z|D,X}`` (Z with
the outcome). The bias of the treatment coefficient is at most::

    |bias| = se * sqrt(dof) * sqrt(R2_{Y~Z|D,X} R2_{D~Z|X} / (1 - R2_{D~Z|X}))

and the robustness value RV_q is the strength (the same partial R2 with both) that moves
the estimate by ``q`` times itself. These are properties of the least-squares fit, so they
hold with clustered data too. What changes with clusters is the *sampling* part: the
alpha-adjusted robustness value and the adjusted confidence interval. Here they use the
few-cluster standard error (CR2, Bell-McCaffrey degrees of freedom,
:mod:`pari_bayes.estimation.few_clusters`):

* the adjusted robust standard error is the robust standard error times sensemakr's
  adjustment factor ``sqrt((1 - R2_yz) / (1 - R2_dz)) sqrt(dof / (dof - 1))`` (the
  confounder changes the residual and treatment variances in the same proportion for the
  robust as for the classical standard error: an assumption, stated in docs/sensitivity.md);
* the critical value is Student's t on the Bell-McCaffrey degrees of freedom.

Then the adjusted robust t-statistic is the classical one divided by
``se_robust / se_classical``, and RV_{q, alpha} is sensemakr's formula with its critical
partial Cohen's f ``t_{alpha/2, dof-1} / sqrt(dof - 1)`` replaced by
``t_{alpha/2, df_BM} (se_robust / se_classical) / sqrt(dof - 1)``. Without clusters every
function here reduces exactly to PySensemakr 0.0.8 (``robustness_value``,
``ovb_partial_r2_bound``, ``ovb_bounds``; checked to 1e-6 on its darfur example in
tests/test_sensitivity.py).

For Table 4 the design is rewritten as ``y ~ participation + presence + controls``:
participation + existence = presence, so the participation coefficient of this design is
the paper's direct effect (participation - existence coefficients) and the presence
coefficient is its spillover (existence) coefficient, each a single coefficient whose
sensitivity sensemakr's algebra covers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize, stats

from pari_bayes.errors import EstimationError, SurveyDataError
from pari_bayes.estimation.few_clusters import cluster_codes, cr2_tests
from pari_bayes.io import atomic_path, write_csv

__all__ = [
    "OVB_COLUMNS",
    "BOUND_COLUMNS",
    "TABLE4_CONTROLS",
    "ESTIMANDS",
    "partial_r2",
    "robustness_value",
    "bias_bound",
    "adjusted_estimate",
    "adjusted_se",
    "partial_r2_bounds",
    "OVBResult",
    "ovb_sensitivity",
    "survey_ovb",
    "write_ovb",
    "contour_plot",
]

#: Columns of ``RUN/sensitivity/ovb.csv`` (read by the report; keep the names).
OVB_COLUMNS = (
    "dimension",
    "estimand",
    "estimate",
    "se",
    "se_type",
    "df",
    "partial_r2",
    "rv_q1",
    "rv_q1_alpha",
    "benchmark",
    "k_vanish",
    "k_cover_zero",
    "sentence",
)
#: Columns of ``ovb_bounds.csv``: sensemakr's ``ovb_bounds`` per dimension, estimand and k.
BOUND_COLUMNS = (
    "dimension",
    "estimand",
    "benchmark",
    "k",
    "r2dz_x",
    "r2yz_dx",
    "adjusted_estimate",
    "adjusted_se",
    "adjusted_t",
    "adjusted_lower",
    "adjusted_upper",
    "se_type",
    "df",
)
#: Table 4's controls (the paper's regressors besides the CBO terms).
TABLE4_CONTROLS = (
    "residence_months",
    "age",
    "gender",
    "offfarm_employed",
    "income_scale",
    "urban_hukou",
)
#: Estimand -> (treatment column of the ``participation + presence`` design, wording).
ESTIMANDS = {
    "DE": ("cbo_participation", "direct effect"),
    "IE": ("cbo_presence", "spillover effect"),
}
_KD_DEFAULT = (1.0, 2.0, 3.0)


# ----------------------------------------------------------------------------- core


def partial_r2(t_statistic: float | np.ndarray, dof: float) -> float | np.ndarray:
    """Partial R2 of a regressor with the outcome: ``t^2 / (t^2 + dof)``.

    Parameters
    ----------
    t_statistic
        The regressor's classical t-statistic.
    dof
        Residual degrees of freedom of the regression.
    """
    t = np.asarray(t_statistic, dtype=float)
    return t**2 / (t**2 + dof)


def _critical_f(dof: float, alpha: float, se_ratio: float, df_crit: float | None) -> float:
    """Partial Cohen's f a bias-adjusted estimate needs to stay significant at ``alpha``."""
    nu = dof - 1 if df_crit is None else df_crit
    return abs(stats.t.ppf(alpha / 2, nu)) * se_ratio / math.sqrt(dof - 1)


def robustness_value(
    t_statistic: float,
    dof: float,
    q: float = 1.0,
    alpha: float | None = None,
    se_ratio: float = 1.0,
    df_crit: float | None = None,
) -> float:
    """Robustness value RV_q (``alpha=None``) or RV_{q, alpha} of a coefficient.

    The partial R2 a confounder must have with both the treatment and the outcome to move
    the estimate by ``q`` times itself (``alpha=None``) or to make the bias-adjusted
    ``1 - alpha`` interval reach that value.

    Parameters
    ----------
    t_statistic
        Classical t-statistic of the coefficient.
    dof
        Residual degrees of freedom.
    q
        Share of the estimate to explain away (1: down to zero).
    alpha
        Significance level, or ``None`` for the point estimate's RV_q.
    se_ratio
        Robust over classical standard error (1: classical inference, sensemakr's case).
    df_crit
        Degrees of freedom of the critical value; ``None``: ``dof - 1`` (sensemakr's).

    Returns
    -------
    float

    Examples
    --------
    >>> round(robustness_value(4.18445, 783), 4)  # Cinelli & Hazlett's darfur example
    0.1388
    """
    if q <= 0:
        raise EstimationError(f"q must be positive; got {q}.")
    fq = q * abs(t_statistic) / math.sqrt(dof)
    if alpha is None:
        return float(0.5 * (math.sqrt(fq**4 + 4 * fq**2) - fq**2))
    if not 0 < alpha < 1:
        raise EstimationError(f"alpha must lie in (0, 1); got {alpha}.")
    f_crit = _critical_f(dof, alpha, se_ratio, df_crit)
    fqa = fq - f_crit
    if fqa < 0:
        return 0.0
    if fq > 1 / f_crit:  # the outcome side reaches R2 = 1 first
        return float((fq**2 - f_crit**2) / (1 + fq**2))
    return float(0.5 * (math.sqrt(fqa**4 + 4 * fqa**2) - fqa**2))


def bias_bound(r2dz_x, r2yz_dx, se: float, dof: float):
    """Largest bias of a confounder with these partial R2: ``se sqrt(dof) sqrt(R2y R2d/(1-R2d))``.

    ``se`` is the classical standard error (the bias is a property of the fit).
    """
    r2d, r2y = np.asarray(r2dz_x, dtype=float), np.asarray(r2yz_dx, dtype=float)
    return np.sqrt(r2y * r2d / (1 - r2d)) * se * math.sqrt(dof)


def adjusted_estimate(r2dz_x, r2yz_dx, estimate: float, se: float, dof: float):
    """Estimate moved towards zero by :func:`bias_bound` (sensemakr's ``reduce=True``)."""
    return np.sign(estimate) * (abs(estimate) - bias_bound(r2dz_x, r2yz_dx, se, dof))


def adjusted_se(r2dz_x, r2yz_dx, se: float, dof: float):
    """Adjust a standard error for the added confounder (sensemakr's ``adjusted_se``).

    ``se sqrt((1 - R2y) / (1 - R2d)) sqrt(dof / (dof - 1))``; ``se`` may be robust (CR2):
    it is scaled by the same factor as the classical one.
    """
    r2d, r2y = np.asarray(r2dz_x, dtype=float), np.asarray(r2yz_dx, dtype=float)
    return np.sqrt((1 - r2y) / (1 - r2d)) * se * math.sqrt(dof / (dof - 1))


def _k_limit(r2dxj_x: float) -> float:
    """Largest admissible k for a benchmark with partial R2 ``r2dxj_x`` with the treatment."""
    if r2dxj_x <= 0:
        return math.inf
    # sensemakr's two checks, r2dz_x < 1 and r2zxj_xd < 1, both reduce to k r < 1 - r
    return (1 - r2dxj_x) / r2dxj_x


def partial_r2_bounds(
    r2dxj_x: float, r2yxj_dx: float, kd: float | Sequence[float], ky=None
) -> pd.DataFrame:
    """Partial R2 of a confounder ``kd`` (``ky``) times as strong as a benchmark covariate.

    Sensemakr's ``ovb_partial_r2_bound``: a confounder that explains ``kd`` times as much
    residual variance of the treatment, and ``ky`` times as much of the outcome, as the
    benchmark covariate ``X_j`` does (Cinelli and Hazlett 2020, section 6.2).

    Parameters
    ----------
    r2dxj_x
        Partial R2 of the benchmark with the treatment (given the other covariates).
    r2yxj_dx
        Partial R2 of the benchmark with the outcome (given treatment and other covariates).
    kd, ky
        Multipliers (``ky`` defaults to ``kd``).

    Returns
    -------
    pandas.DataFrame
        Columns ``kd``, ``ky``, ``r2dz_x``, ``r2yz_dx`` (the latter capped at 1, as sensemakr).

    Raises
    ------
    EstimationError
        If a multiplier implies a partial R2 of 1 or more with the treatment.
    """
    kd_arr = np.atleast_1d(np.asarray(kd, dtype=float))
    ky_arr = kd_arr if ky is None else np.atleast_1d(np.asarray(ky, dtype=float))
    r2dz_x, r2yz_dx = _bounds(r2dxj_x, r2yxj_dx, kd_arr, ky_arr)
    return pd.DataFrame({"kd": kd_arr, "ky": ky_arr, "r2dz_x": r2dz_x, "r2yz_dx": r2yz_dx})


def _bounds(
    r2dxj_x: float, r2yxj_dx: float, kd: np.ndarray, ky: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Numpy core of :func:`partial_r2_bounds` (arrays of multipliers)."""
    r2dz_x = kd * (r2dxj_x / (1 - r2dxj_x))
    if np.any(r2dz_x >= 1):
        raise EstimationError(
            f"kd = {kd.max():g} implies a partial R2 with the treatment >= 1 "
            f"(benchmark's is {r2dxj_x:.4g}); allowed: kd < {_k_limit(r2dxj_x):.4g}."
        )
    r2zxj_xd = kd * r2dxj_x**2 / ((1 - kd * r2dxj_x) * (1 - r2dxj_x))
    if np.any(r2zxj_xd >= 1) or np.any(r2zxj_xd < 0):
        raise EstimationError(
            f"kd = {kd.max():g} is impossible for this benchmark; allowed: kd < "
            f"{_k_limit(r2dxj_x):.4g}."
        )
    r2yz_dx = ((np.sqrt(ky) + np.sqrt(r2zxj_xd)) / np.sqrt(1 - r2zxj_xd)) ** 2 * (
        r2yxj_dx / (1 - r2yxj_dx)
    )
    return r2dz_x, np.minimum(r2yz_dx, 1.0)


# ----------------------------------------------------------------------------- one coefficient


@dataclass
class OVBResult:
    """Sensitivity of one coefficient to an omitted confounder.

    Attributes
    ----------
    treatment
        Regressor whose coefficient is studied.
    estimate, se_classical, dof
        The least-squares estimate, its classical standard error and residual df.
    se, se_type, df
        The standard error used for inference (``CR2`` with clusters, else
        ``classical``) and the degrees of freedom of its critical value (Bell-McCaffrey
        with clusters; sensemakr's ``dof - 1`` for RV_{q, alpha} and ``dof`` for the
        adjusted interval without).
    alpha
        Significance level of ``rv_q1_alpha`` and the adjusted intervals.
    partial_r2, rv_q1, rv_q1_alpha
        Partial R2 of the treatment with the outcome; robustness values.
    benchmark, r2dxj_x, r2yxj_dx
        Benchmark covariate and its partial R2 with treatment and outcome.
    bounds
        sensemakr's ``ovb_bounds`` table for the requested multipliers (:data:`BOUND_COLUMNS`
        without dimension and estimand).
    k_vanish, k_cover_zero
        Smallest k (``kd = ky = k``) at which the bias-adjusted estimate reaches 0, and at
        which its ``1 - alpha`` interval includes 0 (0 if it already does); ``inf`` when no
        admissible k (partial R2 below 1) does.
    k_max
        The largest admissible k for this benchmark.
    """

    treatment: str
    estimate: float
    se_classical: float
    dof: float
    se: float
    se_type: str
    df: float
    alpha: float
    partial_r2: float
    rv_q1: float
    rv_q1_alpha: float
    benchmark: str
    r2dxj_x: float
    r2yxj_dx: float
    bounds: pd.DataFrame = field(repr=False)
    k_vanish: float = math.nan
    k_cover_zero: float = math.nan
    k_max: float = math.inf

    @property
    def t_classical(self) -> float:
        """Classical t-statistic."""
        return self.estimate / self.se_classical

    @property
    def ci_df(self) -> float:
        """Degrees of freedom of the adjusted interval (sensemakr: ``dof``)."""
        return self.dof if self.se_type == "classical" else self.df

    def adjusted(self, r2dz_x, r2yz_dx) -> dict[str, np.ndarray]:
        """Bias-adjusted estimate, standard error, t and ``1 - alpha`` interval."""
        est = adjusted_estimate(r2dz_x, r2yz_dx, self.estimate, self.se_classical, self.dof)
        se = adjusted_se(r2dz_x, r2yz_dx, self.se, self.dof)
        crit = abs(stats.t.ppf(self.alpha / 2, self.ci_df))
        with np.errstate(divide="ignore", invalid="ignore"):
            t = est / se
        return {
            "estimate": est,
            "se": se,
            "t": t,
            "lower": est - crit * se,
            "upper": est + crit * se,
        }


def _ols(y: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    n, p = X.shape
    xtx = X.T @ X
    # rank check on the p x p cross-product (an SVD of the n x p matrix costs seconds)
    eig = np.linalg.eigvalsh(xtx)
    if eig[0] <= eig[-1] * p * 1e-13:
        raise EstimationError("the regressors are collinear; drop a column.")
    xtx_inv = np.linalg.inv(xtx)
    beta = xtx_inv @ (X.T @ y)
    resid = y - X @ beta
    dof = n - p
    sigma2 = resid @ resid / dof
    return beta, np.sqrt(np.diag(xtx_inv) * sigma2), resid, dof


def _first_k(g, k_max: float) -> float:
    """Smallest k in [0, k_max) with ``g(k) <= 0``, or ``inf``.

    ``g`` is continuous and vectorized over an array of k: scanned on a fine grid, then
    the first sign change is refined by Brent's method.
    """
    top = k_max * (1 - 1e-9) if math.isfinite(k_max) else 1e6
    grid = np.concatenate([[0.0], np.geomspace(1e-4, top, 400)])
    values = g(grid)
    below = np.flatnonzero(values <= 0)
    if not len(below):
        return math.inf
    j = below[0]
    if j == 0:
        return 0.0
    scalar = lambda k: float(g(np.array([k]))[0])  # noqa: E731
    return float(optimize.brentq(scalar, grid[j - 1], grid[j], xtol=1e-12, rtol=1e-12))


def ovb_sensitivity(
    y,
    X: pd.DataFrame,
    treatment: str,
    benchmark: str,
    clusters=None,
    kd: Sequence[float] = _KD_DEFAULT,
    alpha: float = 0.05,
) -> OVBResult:
    """Cinelli-Hazlett sensitivity of one OLS coefficient, cluster-aware.

    Parameters
    ----------
    y
        Outcome (N).
    X
        Regressors as columns, a constant included (N x K).
    treatment
        Column of ``X`` whose coefficient is studied.
    benchmark
        Column of ``X`` against which confounder strength is expressed.
    clusters
        Cluster of each row, or ``None`` for independent rows (sensemakr's classical case).
    kd
        Multipliers of the benchmark's strength for the bounds table.
    alpha
        Significance level of RV_{1, alpha} and of the adjusted intervals.

    Returns
    -------
    OVBResult

    Raises
    ------
    EstimationError
        If a column is missing, the regressors are collinear, or there are too few
        clusters.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(1)
    >>> X = pd.DataFrame({"const": 1.0, "d": rng.normal(size=200), "x": rng.normal(size=200)})
    >>> y = 0.5 * X["d"] + X["x"] + rng.normal(size=200)
    >>> r = ovb_sensitivity(y, X, "d", "x")
    >>> 0 < r.rv_q1_alpha < r.rv_q1 < 1
    True
    """
    for name, role in ((treatment, "treatment"), (benchmark, "benchmark")):
        if name not in X.columns:
            raise EstimationError(
                f"{role} {name!r} is not a regressor; allowed: {', '.join(map(str, X.columns))}"
            )
    if benchmark == treatment:
        raise EstimationError(f"the benchmark must differ from the treatment ({treatment!r}).")
    names = list(X.columns)
    Xv = X.to_numpy(dtype=float)
    yv = np.asarray(y, dtype=float)
    j_t, j_b = names.index(treatment), names.index(benchmark)
    beta, se_c, resid, dof = _ols(yv, Xv)
    if dof < 2:
        raise EstimationError(f"{dof} residual degrees of freedom; the sensitivity needs >= 2.")
    estimate, se_classical = float(beta[j_t]), float(se_c[j_t])
    t_y = beta / se_c
    # benchmark in the treatment regression D ~ X (treatment column removed)
    others = [k for k in range(len(names)) if k != j_t]
    beta_d, se_d, _, dof_d = _ols(Xv[:, j_t], Xv[:, others])
    j_bd = others.index(j_b)
    r2dxj_x = float(partial_r2(beta_d[j_bd] / se_d[j_bd], dof_d))
    r2yxj_dx = float(partial_r2(t_y[j_b], dof))
    if clusters is not None:
        labels, _ = cluster_codes(clusters)
        if len(labels) < 2:
            raise EstimationError("cluster-aware sensitivity needs at least 2 clusters.")
        contrast = np.zeros(len(names))
        contrast[j_t] = 1.0
        _, se_r, df_r = cr2_tests(Xv, resid, np.asarray(clusters), contrast)
        se, se_type, df = float(se_r[0]), "CR2", float(df_r[0])
        df_crit = df
    else:
        se, se_type, df, df_crit = se_classical, "classical", float(dof), None
    t_cl = estimate / se_classical
    result = OVBResult(
        treatment=treatment,
        estimate=estimate,
        se_classical=se_classical,
        dof=float(dof),
        se=se,
        se_type=se_type,
        df=df,
        alpha=alpha,
        partial_r2=float(partial_r2(t_cl, dof)),
        rv_q1=robustness_value(t_cl, dof),
        rv_q1_alpha=robustness_value(
            t_cl, dof, alpha=alpha, se_ratio=se / se_classical, df_crit=df_crit
        ),
        benchmark=benchmark,
        r2dxj_x=r2dxj_x,
        r2yxj_dx=r2yxj_dx,
        bounds=pd.DataFrame(),
        k_max=_k_limit(r2dxj_x),
    )
    kd_ok = [k for k in kd if k < result.k_max]
    rows = []
    if kd_ok:
        b = partial_r2_bounds(r2dxj_x, r2yxj_dx, kd_ok)
        adj = result.adjusted(b["r2dz_x"].to_numpy(), b["r2yz_dx"].to_numpy())
        for i, k in enumerate(kd_ok):
            rows.append(
                {
                    "benchmark": benchmark,
                    "k": float(k),
                    "r2dz_x": float(b["r2dz_x"].iloc[i]),
                    "r2yz_dx": float(b["r2yz_dx"].iloc[i]),
                    "adjusted_estimate": float(adj["estimate"][i]),
                    "adjusted_se": float(adj["se"][i]),
                    "adjusted_t": float(adj["t"][i]),
                    "adjusted_lower": float(adj["lower"][i]),
                    "adjusted_upper": float(adj["upper"][i]),
                    "se_type": se_type,
                    "df": result.ci_df,
                }
            )
    result.bounds = pd.DataFrame(rows, columns=[c for c in BOUND_COLUMNS[2:]])

    def at(k: np.ndarray) -> dict[str, np.ndarray]:
        return result.adjusted(*_bounds(r2dxj_x, r2yxj_dx, k, k))

    sign = 1.0 if estimate >= 0 else -1.0
    result.k_vanish = _first_k(lambda k: sign * at(k)["estimate"], result.k_max)

    def outside(k: np.ndarray) -> np.ndarray:
        a = at(k)
        return np.maximum(a["lower"], -a["upper"])  # > 0: the interval excludes 0

    result.k_cover_zero = _first_k(outside, result.k_max)
    return result


# ----------------------------------------------------------------------------- the survey


def _pretty(name: str) -> str:
    return name.replace("_", " ")


def _fmt_k(k: float) -> str:
    return f"{k:.2f}" if k < 10 else f"{k:.1f}"


def _sentence(dim: str, estimand: str, r: OVBResult) -> str:
    what = ESTIMANDS[estimand][1]
    bench = _pretty(r.benchmark)
    level = f"{100 * (1 - r.alpha):g}%"
    if r.k_vanish == 0:
        head = f"The {what} on {_pretty(dim)} is estimated at exactly zero"
    elif math.isinf(r.k_vanish):
        head = (
            f"For the {what} on {_pretty(dim)} to vanish, no unobserved trait up to "
            f"{_fmt_k(r.k_max)} times as strong as {bench} would suffice (stronger is impossible)"
        )
    else:
        head = (
            f"For the {what} on {_pretty(dim)} to vanish, an unobserved trait would have to be "
            f"{_fmt_k(r.k_vanish)} times as strong as {bench}"
        )
    inference = f"{r.se_type}" + (f", Bell-McCaffrey df {r.df:.1f}" if r.se_type == "CR2" else "")
    if r.k_cover_zero == 0:
        tail = f"its {level} interval ({inference}) includes zero even without confounding"
    elif math.isinf(r.k_cover_zero):
        tail = f"its {level} interval ({inference}) excludes zero for every admissible strength"
    else:
        tail = (
            f"its {level} interval ({inference}) includes zero from {_fmt_k(r.k_cover_zero)} times"
        )
    return f"{head}; {tail}."


def table4_sensitivity_design(
    data: pd.DataFrame, covariates: Sequence[str] = TABLE4_CONTROLS
) -> pd.DataFrame:
    """Regressors ``participation, presence, covariates, const`` of the sensitivity regressions.

    Raises
    ------
    SurveyDataError
        If a column is missing or holds missing values.
    """
    columns = ["cbo_participation", "cbo_presence", *covariates]
    missing = [c for c in columns if c not in data.columns]
    if missing:
        raise SurveyDataError(
            f"the sensitivity analysis needs column(s) {', '.join(missing)}; pass Survey.data "
            f"from pari_bayes.load_survey (allowed covariates: {', '.join(data.columns)})."
        )
    X = data[columns].astype(float).reset_index(drop=True)
    bad = [c for c in columns if not np.isfinite(X[c].to_numpy()).all()]
    if bad:
        raise SurveyDataError(f"column(s) {', '.join(bad)} hold missing or infinite values.")
    X["const"] = 1.0
    return X


def survey_ovb(
    data: pd.DataFrame,
    scores: pd.DataFrame,
    benchmark: str = "residence_months",
    covariates: Sequence[str] = TABLE4_CONTROLS,
    cluster: str | None = "community",
    estimands: Sequence[str] = ("DE", "IE"),
    kd: Sequence[float] = _KD_DEFAULT,
    alpha: float = 0.05,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[tuple[str, str], OVBResult]]:
    """OVB sensitivity of the OLS direct and spillover effects, one row per dimension x estimand.

    Parameters
    ----------
    data
        Validated survey rows (``Survey.data``).
    scores
        Outcome scores, one column per dimension, in the rows' order (PCA scores).
    benchmark
        Covariate the confounder's strength is expressed against.
    covariates
        Controls of the regression (Table 4's by default).
    cluster
        Cluster column (CR2 inference), or ``None`` for classical inference.
    estimands
        ``DE`` and/or ``IE``.
    kd
        Multipliers of the bounds table.
    alpha
        Significance level.

    Returns
    -------
    ovb, bounds, results
        The ``ovb.csv`` table (:data:`OVB_COLUMNS`), the ``ovb_bounds.csv`` table
        (:data:`BOUND_COLUMNS`) and the :class:`OVBResult` per (dimension, estimand).

    Raises
    ------
    SurveyDataError
        If a column is missing.
    EstimationError
        If the benchmark is not a covariate, or an estimand is unknown.
    """
    unknown = [e for e in estimands if e not in ESTIMANDS]
    if unknown:
        raise EstimationError(
            f"unknown estimand(s) {', '.join(unknown)}; allowed: {', '.join(ESTIMANDS)}"
        )
    if benchmark not in covariates:
        raise EstimationError(
            f"benchmark {benchmark!r} is not among the covariates; allowed: {', '.join(covariates)}"
        )
    X = table4_sensitivity_design(data, covariates)
    clusters = None
    if cluster is not None:
        if cluster not in data.columns:
            raise SurveyDataError(f"cluster column {cluster!r} is not in the survey.")
        clusters = data[cluster].astype(str).to_numpy()
    scores = scores.reset_index(drop=True)
    rows, bound_rows, results = [], [], {}
    for dim in scores.columns:
        y = scores[dim].to_numpy(dtype=float)
        for estimand in estimands:
            treatment = ESTIMANDS[estimand][0]
            r = ovb_sensitivity(y, X, treatment, benchmark, clusters=clusters, kd=kd, alpha=alpha)
            results[(dim, estimand)] = r
            rows.append(
                {
                    "dimension": dim,
                    "estimand": estimand,
                    "estimate": r.estimate,
                    "se": r.se,
                    "se_type": r.se_type,
                    "df": r.df,
                    "partial_r2": r.partial_r2,
                    "rv_q1": r.rv_q1,
                    "rv_q1_alpha": r.rv_q1_alpha,
                    "benchmark": benchmark,
                    "k_vanish": r.k_vanish,
                    "k_cover_zero": r.k_cover_zero,
                    "sentence": _sentence(dim, estimand, r),
                }
            )
            bound_rows.append(r.bounds.assign(dimension=dim, estimand=estimand))
    bounds = (
        pd.concat(bound_rows, ignore_index=True)[list(BOUND_COLUMNS)]
        if bound_rows
        else pd.DataFrame(columns=list(BOUND_COLUMNS))
    )
    return pd.DataFrame(rows, columns=list(OVB_COLUMNS)), bounds, results


# ----------------------------------------------------------------------------- figures


def contour_plot(
    results: Sequence[OVBResult], titles: Sequence[str], path: str | Path, suptitle: str = ""
) -> Path:
    """Sensemakr-style contour plot of the bias-adjusted estimate, one panel per result.

    Axes: partial R2 of the confounder with the treatment (x) and with the outcome (y);
    contours of the adjusted estimate, the zero contour dashed red, the unadjusted
    estimate at the origin and the benchmark bounds (k = 1, 2, 3 x benchmark) as points.
    Written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.6), squeeze=False)
    for ax, r, title in zip(axes[0], results, titles, strict=True):
        pts = r.bounds
        top = max(0.4, 1.15 * float(pts[["r2dz_x", "r2yz_dx"]].to_numpy().max()) if len(pts) else 0)
        top = min(top, 0.99)
        grid = np.linspace(0, top, 201)
        gx, gy = np.meshgrid(grid, grid)
        z = adjusted_estimate(gx, gy, r.estimate, r.se_classical, r.dof)
        cs = ax.contour(gx, gy, z, levels=12, colors="grey", linewidths=0.7)
        ax.clabel(cs, fontsize=8, fmt="%.2f")
        if np.nanmin(z) < 0 < np.nanmax(z) or r.estimate == 0:
            ax.contour(gx, gy, z, levels=[0.0], colors="red", linestyles="--", linewidths=1.4)
        ax.plot(0, 0, "^", color="black")
        # Points are labelled "1x", "2x", ... (staggered: they often sit close together);
        # what they mean, with the adjusted estimates, is in one box.
        legend = [f"unadjusted: {r.estimate:.3f}"]
        for i, (_, b) in enumerate(pts.iterrows()):
            ax.plot(b.r2dz_x, b.r2yz_dx, "o", color="red", ms=4)
            ax.annotate(
                f"{b.k:g}x",
                (b.r2dz_x, b.r2yz_dx),
                (5, 3 + 9 * i),
                textcoords="offset points",
                fontsize=9,
                color="darkred",
            )
            legend.append(f"{b.k:g}x {_pretty(r.benchmark)}: {b.adjusted_estimate:.3f}")
        ax.text(
            0.98,
            0.98,
            "\n".join(legend),
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=9,
            bbox={"boxstyle": "round,pad=0.3", "fc": "white", "ec": "#999999", "alpha": 0.9},
        )
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel("partial R2 of confounder with treatment")
        ax.set_ylabel("partial R2 of confounder with outcome")
        ax.set_title(
            f"{title}\nRV = {r.rv_q1:.3f}, RV(alpha={r.alpha:g}, {r.se_type}) = "
            f"{r.rv_q1_alpha:.3f}",
            fontsize=9,
        )
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


def write_ovb(
    survey,
    directory: str | Path,
    scores: pd.DataFrame | None = None,
    benchmark: str = "residence_months",
    cluster: str | None = "community",
    alpha: float = 0.05,
    plots: bool = True,
) -> pd.DataFrame:
    """Write ``ovb.csv``, ``ovb_bounds.csv`` and ``contour_<dimension>.png`` into ``directory``.

    Parameters
    ----------
    survey
        A validated :class:`pari_bayes.survey.Survey`.
    directory
        An existing folder (a staging folder of :func:`pari_bayes.io.output_dir`).
    scores
        Outcome scores (the PCA scores of Table 4 by default).
    benchmark, cluster, alpha
        See :func:`survey_ovb`.
    plots
        Write the contour figures.

    Returns
    -------
    pandas.DataFrame
        The ``ovb.csv`` table.
    """
    directory = Path(directory)
    if scores is None:
        from pari_bayes.measurement.pca import pca_scores

        scores = pca_scores(survey.data, survey.codebook).scores
    ovb, bounds, results = survey_ovb(
        survey.data, scores, benchmark=benchmark, cluster=cluster, alpha=alpha
    )
    write_csv(ovb, directory / "ovb.csv")
    write_csv(bounds, directory / "ovb_bounds.csv")
    if plots:
        for dim in dict.fromkeys(ovb["dimension"]):
            keys = [k for k in results if k[0] == dim]
            contour_plot(
                [results[k] for k in keys],
                [f"{ESTIMANDS[k[1]][1]} ({k[1]})" for k in keys],
                directory / f"contour_{dim}.png",
                suptitle=f"{_pretty(dim)}: sensitivity to an unobserved household confounder",
            )
    return ovb
