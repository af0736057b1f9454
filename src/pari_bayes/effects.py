"""Causal effects from posterior draws by g-computation (partial interference).

Estimands (Hudgens & Halloran 2008), ``Y(a, s)`` = outcome under own participation ``a`` and
community CBO presence ``s``:

* DE = E[Y(1,1) - Y(0,1)] (direct), IE = E[Y(0,1) - Y(0,0)] (spillover),
* TE = E[Y(1,1) - Y(0,0)] = DE + IE (total),
* OE(alpha) = alpha Y(1,1) + (1 - alpha) Y(0,1) - Y(0,0) (overall effect of bringing CBOs
  to a community where a share ``alpha`` participates).

The expectation is standardization over the sample's covariate distribution: for every
posterior draw, the model's mean outcome of *every* household under (a, s) is averaged
over households. Any model can use this module: it only needs, per draw, the potential
means of every household under the three exposures (a function or arrays). The latent
model (issue 6) and the multilevel models share :func:`estimand_draws`,
:func:`summarize_draws` and :func:`effects_table`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from pari_bayes.errors import EstimationError

__all__ = [
    "EFFECT_COLUMNS",
    "ESTIMANDS",
    "SCOPES",
    "EXPOSURES",
    "estimand_draws",
    "summarize_draws",
    "weighted_summary",
    "effects_table",
    "comparison_table",
]

EFFECT_COLUMNS = (
    "dimension",
    "estimand",
    "alpha",
    "scope",
    "mean",
    "sd",
    "q05",
    "q50",
    "q95",
    "prob_positive",
    "ess_bulk",
    "r_hat",
)
ESTIMANDS = ("DE", "IE", "TE", "OE")
SCOPES = ("observed", "new")
#: The exposures (a, s) the estimands need; (1, 0) is never used (positivity).
EXPOSURES = ((1, 1), (0, 1), (0, 0))


def estimand_draws(
    means: Mapping[tuple[int, int], np.ndarray],
    alphas: Sequence[float] = (),
    weights: np.ndarray | None = None,
) -> dict[tuple[str, float | None], np.ndarray]:
    """Draws of DE, IE, TE and OE(alpha) from potential means.

    Parameters
    ----------
    means
        ``{(a, s): array}`` for (1, 1), (0, 1), (0, 0); each array has shape
        (chain, draw, household): the model's mean outcome of each household.
    alphas
        Participation rates for OE.
    weights
        Household weights of the standardization (equal by default).

    Returns
    -------
    dict
        ``{(estimand, alpha): array (chain, draw)}``; alpha is None except for OE.

    Examples
    --------
    >>> m = {(1, 1): np.full((1, 2, 3), 3.0), (0, 1): np.full((1, 2, 3), 1.0),
    ...      (0, 0): np.zeros((1, 2, 3))}
    >>> d = estimand_draws(m, alphas=[0.5])
    >>> float(d[("DE", None)].mean()), float(d[("OE", 0.5)].mean())
    (2.0, 2.0)
    """
    missing = [e for e in EXPOSURES if e not in means]
    if missing:
        raise EstimationError(
            f"potential means missing for exposure(s) {missing}; needed: {list(EXPOSURES)}"
        )
    shape = np.shape(means[(1, 1)])
    if any(np.shape(means[e]) != shape for e in EXPOSURES) or len(shape) != 3:
        raise EstimationError("potential means must all have shape (chain, draw, household)")
    w = np.full(shape[-1], 1.0 / shape[-1]) if weights is None else np.asarray(weights, float)
    w = w / w.sum()
    avg = {e: np.tensordot(np.asarray(means[e], float), w, axes=([-1], [0])) for e in EXPOSURES}
    y11, y01, y00 = avg[(1, 1)], avg[(0, 1)], avg[(0, 0)]
    out: dict[tuple[str, float | None], np.ndarray] = {
        ("DE", None): y11 - y01,
        ("IE", None): y01 - y00,
        ("TE", None): y11 - y00,
    }
    for alpha in alphas:
        out[("OE", float(alpha))] = alpha * y11 + (1 - alpha) * y01 - y00
    return out


def summarize_draws(draws: np.ndarray) -> dict[str, float]:
    """Mean, sd, 5/50/95% quantiles, P(> 0), bulk ESS and R-hat of (chain, draw) draws."""
    import arviz as az

    x = np.asarray(draws, float)
    if x.ndim == 1:
        x = x[None, :]
    flat = x.ravel()
    q05, q50, q95 = np.quantile(flat, [0.05, 0.5, 0.95])
    if np.ptp(flat) == 0:
        ess, rhat = float(flat.size), 1.0
    else:
        ess = float(az.ess(x, method="bulk"))
        rhat = float(az.rhat(x)) if x.shape[0] > 1 else float("nan")
    return {
        "mean": float(flat.mean()),
        "sd": float(flat.std(ddof=1)) if flat.size > 1 else 0.0,
        "q05": float(q05),
        "q50": float(q50),
        "q95": float(q95),
        "prob_positive": float((flat > 0).mean()),
        "ess_bulk": ess,
        "r_hat": rhat,
    }


def weighted_summary(draws: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float]:
    """Mean, sd, 5/50/95% quantiles and P(> 0) of flat draws under normalized weights.

    With ``weights=None`` the draws count equally. Quantiles interpolate the weighted
    empirical distribution function at the midpoints of each draw's weight.

    Examples
    --------
    >>> s = weighted_summary(np.array([0.0, 1.0]), np.array([0.25, 0.75]))
    >>> s["mean"], s["prob_positive"]
    (0.75, 0.75)
    """
    x = np.asarray(draws, float).ravel()
    w = np.full(x.size, 1.0 / x.size) if weights is None else np.asarray(weights, float).ravel()
    w = w / w.sum()
    order = np.argsort(x, kind="stable")
    xs, ws = x[order], w[order]
    cdf = np.cumsum(ws) - ws / 2
    mean = float(np.sum(w * x))
    var = float(np.sum(w * (x - mean) ** 2)) / max(1.0 - float(np.sum(w**2)), 1e-12)
    q05, q50, q95 = np.interp([0.05, 0.5, 0.95], cdf, xs)
    return {
        "mean": mean,
        "sd": float(np.sqrt(var)),
        "q05": float(q05),
        "q50": float(q50),
        "q95": float(q95),
        "prob_positive": float(np.sum(w[x > 0])),
    }


def effects_table(
    predict: Callable[[int, int, str, np.ndarray | None], np.ndarray],
    dimensions: Sequence[str],
    alphas: Sequence[float] = (),
    rng: np.random.Generator | None = None,
    shape: tuple[int, int] | None = None,
    scopes: Sequence[str] = SCOPES,
    weights: np.ndarray | None = None,
) -> pd.DataFrame:
    """Compute the effects table (``effects.csv`` format) by g-computation.

    Parameters
    ----------
    predict
        ``predict(a, s, scope, new_z)`` -> array (chain, draw, household, dimension) of
        mean outcomes under exposure (a, s). For ``scope = "new"`` the caller's model
        places every household in one new community whose random effects are
        ``new_z`` (standard normal draws, shape (chain, draw, dimension)); the same
        ``new_z`` is passed for every exposure, so contrasts compare the same community.
    dimensions
        Names of the last axis of ``predict``'s output.
    alphas
        Participation rates of OE (the observed rate, 0.25, 0.5).
    rng
        Source of ``new_z`` (seeded by the caller).
    shape
        (chain, draw), needed for ``new_z``.
    scopes
        ``observed`` and/or ``new``.
    weights
        Household weights of the standardization.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`EFFECT_COLUMNS`; one row per dimension x estimand (x alpha) x scope.
    """
    rows = []
    for scope in scopes:
        if scope not in SCOPES:
            raise EstimationError(f"scope {scope!r}; allowed: {', '.join(SCOPES)}")
        new_z = None
        if scope == "new":
            if shape is None:
                raise EstimationError("effects_table needs shape=(chain, draw) for scope new")
            rng = rng or np.random.default_rng(0)
            new_z = rng.standard_normal((*shape, len(dimensions)))
        means = {e: np.asarray(predict(e[0], e[1], scope, new_z)) for e in EXPOSURES}
        for k, dim in enumerate(dimensions):
            draws = estimand_draws({e: m[..., k] for e, m in means.items()}, alphas, weights)
            for (estimand, alpha), x in draws.items():
                rows.append(
                    {
                        "dimension": dim,
                        "estimand": estimand,
                        "alpha": alpha,
                        "scope": scope,
                        **summarize_draws(x),
                    }
                )
    frame = pd.DataFrame(rows, columns=list(EFFECT_COLUMNS))
    order = {e: i for i, e in enumerate(ESTIMANDS)}
    frame["_d"] = frame["dimension"].map({d: i for i, d in enumerate(dimensions)})
    frame["_e"] = frame["estimand"].map(order)
    frame["_s"] = frame["scope"].map({s: i for i, s in enumerate(SCOPES)})
    frame = frame.sort_values(["_d", "_s", "_e", "alpha"], kind="stable", na_position="first")
    return frame.drop(columns=["_d", "_e", "_s"]).reset_index(drop=True)


#: Table 4 term of each estimand (participation = TE, existence = IE, DE = difference).
_OLS_TERM = {"TE": "cbo_participation", "IE": "cbo_existence", "DE": "direct_effect"}


def _ols_rows(survey) -> pd.DataFrame | None:
    """OLS estimates (classical and cluster-robust) from the OLS module."""
    try:
        from pari_bayes.estimation.ols import fit_table4
    except ImportError:
        return None
    try:
        res = fit_table4(survey.data, n_boot=0)
    except Exception:  # noqa: BLE001 - a comparison column must not sink the fit
        return None
    return res.coefficients


def comparison_table(effects: pd.DataFrame, survey=None, ols: pd.DataFrame | None = None):
    """Bayesian DE/IE/TE beside OLS (classical, cluster-robust) and the published values.

    Parameters
    ----------
    effects
        An effects table (scope ``observed`` rows are used).
    survey
        The survey, to fit Table 4 by OLS (``pari_bayes.estimation.ols.fit_table4``).
    ols
        Precomputed OLS coefficients (``ols_table4.csv`` format) instead of ``survey``.
    """
    from pari_bayes._paths import PUBLISHED_DIR

    if ols is None and survey is not None:
        ols = _ols_rows(survey)
    published = pd.read_csv(PUBLISHED_DIR / "table4_ols.csv")
    rows = []
    sub = effects[(effects["scope"] == "observed") & effects["estimand"].isin(["DE", "IE", "TE"])]
    for _, r in sub.iterrows():
        dim, est = r["dimension"], r["estimand"]
        row = {
            "dimension": dim,
            "estimand": est,
            "bayes_mean": r["mean"],
            "bayes_sd": r["sd"],
            "bayes_q05": r["q05"],
            "bayes_q95": r["q95"],
        }
        o = None
        if ols is not None:
            m = ols[
                (ols["dimension"] == dim)
                & (ols["term"] == _OLS_TERM[est])
                & (ols["with_cbo_terms"].astype(int) == 1)
            ]
            o = m.iloc[0] if len(m) else None
        row.update(
            {
                "ols_coef": o["coef"] if o is not None else np.nan,
                "ols_se": o["se"] if o is not None else np.nan,
                "ols_se_cluster": o["se_cluster"] if o is not None else np.nan,
                "ols_p_cluster": o["p_cluster"] if o is not None else np.nan,
            }
        )
        p = published[(published["dimension"] == dim) & (published["with_cbo_terms"] == 1)]
        te = p[p["term"] == "cbo_participation"]
        ie = p[p["term"] == "cbo_existence"]
        if est == "TE" and len(te):
            pub, pub_se = te["coef"].iloc[0], te["se"].iloc[0]
        elif est == "IE" and len(ie):
            pub, pub_se = ie["coef"].iloc[0], ie["se"].iloc[0]
        elif est == "DE" and len(te) and len(ie):
            pub, pub_se = te["coef"].iloc[0] - ie["coef"].iloc[0], np.nan  # no covariance printed
        else:
            pub, pub_se = np.nan, np.nan
        row.update({"published_coef": pub, "published_se": pub_se})
        rows.append(row)
    return pd.DataFrame(rows)
