"""Bayesian sensitivity model: the multilevel model with an explicit unobserved confounder.

Household ``i`` in community ``c``, one standardized outcome at a time (the ``multilevel``
kind, :func:`pari_bayes.estimation.multilevel.build_model`), plus a household trait
``U_i ~ Normal(0, 1)`` that nobody measured::

    y_i  = b0 + x_i' beta + DE a_i + IE s_c + delta_U U_i + d_c + e_i     (d_c integrated out)
    a_i ~ Bernoulli(logit^-1(g0 + x_i' gamma + gamma_U U_i))   (households in CBO communities)

The sensitivity parameters are fixed, not estimated (the data cannot identify them):
``gamma_U`` is U's effect on the log-odds of participation per sd of U, ``delta_U`` its
effect on the integration score in outcome sd units. Each ``U_i`` is sampled with the rest
(its posterior is informed by the household's participation and outcome), so the fit
integrates over U exactly. With ``gamma_U = delta_U = 0`` U decouples and the DE/IE
posterior is the ordinary multilevel model's.

Strength is expressed against an observed covariate: ``k`` times as strong as covariate
``x_j`` means ``gamma_U = k |gamma_j|`` and ``delta_U = k |delta_j|`` (signed to move DE
towards zero), with ``gamma_j`` the log-odds coefficient of the standardized ``x_j`` in a
logistic regression of participation (CBO communities) and ``delta_j`` its coefficient in
the least-squares regression of the standardized outcome on the model's terms. The
default benchmark is the *strongest* covariate (largest ``|gamma_j delta_j|``, which sets
the bias a confounder like it would cause). The sensitivity curve is the posterior of DE
and IE over a grid of ``k``; :func:`summarize_curve` reports the smallest ``k`` whose 90%
interval of DE covers 0. Every grid point carries the convergence gate
(:mod:`pari_bayes.diagnostics`); a grid point that fails it is reported as failed and never
used for ``k_cover_zero``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from pari_bayes.diagnostics import diagnostics_table, gate_failures
from pari_bayes.errors import EstimationError
from pari_bayes.estimation.multilevel import (
    MultilevelDesign,
    community_counts,
    marginal_loglik,
    mean_terms,
)
from pari_bayes.estimation.spec import ModelSpec
from pari_bayes.io import write_csv
from pari_bayes.priors import prior_variable, resolve_priors

__all__ = [
    "CURVE_COLUMNS",
    "SUMMARY_COLUMNS",
    "DEFAULT_GRID",
    "Benchmark",
    "benchmark_strengths",
    "build_sensitivity_model",
    "sensitivity_curve",
    "summarize_curve",
    "survey_sensitivity_curve",
    "write_bayes",
]

#: Columns of ``bayes.csv``: one row per dimension x estimand x grid point.
CURVE_COLUMNS = (
    "dimension",
    "estimand",
    "k",
    "benchmark",
    "u_participation",
    "u_outcome",
    "mean",
    "sd",
    "q05",
    "q50",
    "q95",
    "prob_positive",
    "covers_zero",
    "r_hat",
    "ess_bulk",
    "ess_tail",
    "divergences",
    "passed",
    "reason",
)
#: Columns of ``bayes_summary.csv``: one row per dimension x estimand.
SUMMARY_COLUMNS = ("dimension", "estimand", "benchmark", "k_cover_zero", "grid_max", "sentence")
#: Default grid of strengths (multiples of the benchmark covariate).
DEFAULT_GRID = (0.0, 0.5, 1.0, 2.0, 3.0)
#: Priors of the participation model (standardized covariates, log-odds scale).
PARTICIPATION_PRIORS = {"intercept_sd": 2.5, "coef_sd": 1.0}
#: Posterior variables the gate checks (every structural parameter; not the U_i).
GATED = (
    "intercept",
    "beta",
    "direct_effect",
    "spillover_effect",
    "community_sd",
    "residual_sd",
    "participation_intercept",
    "participation_coef",
)


def build_sensitivity_model(design: MultilevelDesign, spec: ModelSpec):
    """Build the PyMC model of one outcome with an explicit unobserved confounder U.

    Parameters
    ----------
    design
        A one-dimension multilevel design (``design.with_dimensions((dim,))``).
    spec
        The multilevel spec whose priors and sampler are used (``models/table4.toml``).

    Returns
    -------
    pymc.Model
        With ``pm.Data`` ``u_participation`` (gamma_U) and ``u_outcome`` (delta_U), both
        0 until set, so one compiled model serves the whole grid.
    """
    import pymc as pm
    import pytensor.tensor as pt

    if len(design.dimensions) != 1:
        raise EstimationError("the sensitivity model takes one outcome at a time.")
    if not (design.has_treatment and design.has_presence):
        raise EstimationError("the sensitivity model needs participation and presence terms.")
    priors = resolve_priors(spec.priors)
    in_cbo = np.flatnonzero(design.presence[design.community_index] == 1)
    coords = {
        "household": list(design.household_ids),
        "community": list(design.communities),
        "dimension": list(design.dimensions),
        "covariate": list(design.covariates),
    }
    with pm.Model(coords=coords) as model:
        # the multilevel model's data and mean (intercept, covariates, DE, IE, tau) ...
        terms = mean_terms(design, priors)
        # ... plus the unobserved confounder, in the outcome (delta_U, sd units)
        u_part = pm.Data("u_participation", np.zeros(1))
        u_out = pm.Data("u_outcome", np.zeros(1), dims="dimension")
        confounder = pm.Normal("confounder", 0.0, 1.0, dims="household")
        mu = terms.mu + confounder[:, None] * u_out[None, :]
        sigma = prior_variable("residual_sd", priors["residual_sd"], dims="dimension")
        counts = pm.Data("community_size", community_counts(design), dims="community")
        cidx = terms.cidx
        m = mu + terms.community[cidx]
        pm.Potential(
            "y_obs_loglik",
            marginal_loglik(terms.y - m, cidx, counts, pt.diag(sigma), terms.tau, 1),
        )
        X = terms.X
        # participation: only possible where CBOs exist (a = 0 elsewhere by design)
        g0 = pm.Normal("participation_intercept", 0.0, PARTICIPATION_PRIORS["intercept_sd"])
        logit = g0 + u_part[0] * confounder[in_cbo]
        if design.covariates:
            gamma = pm.Normal(
                "participation_coef", 0.0, PARTICIPATION_PRIORS["coef_sd"], dims="covariate"
            )
            logit = logit + pt.dot(X[in_cbo], gamma)
        pm.Bernoulli("participation_obs", logit_p=logit, observed=design.treatment[in_cbo])
    return model


@dataclass(frozen=True)
class Benchmark:
    """An observed covariate's strength, the yardstick of U.

    Attributes
    ----------
    covariate
        Column name.
    gamma
        Log-odds coefficient of the standardized covariate on participation.
    delta
        Coefficient of the standardized covariate on the standardized outcome.
    de_sign
        Sign of the least-squares DE (U is signed to move DE towards zero).
    """

    covariate: str
    gamma: float
    delta: float
    de_sign: float

    def strength(self, k: float) -> tuple[float, float]:
        """``(gamma_U, delta_U)`` of a U ``k`` times as strong as this covariate."""
        return k * abs(self.gamma), k * abs(self.delta) * self.de_sign


def benchmark_strengths(design: MultilevelDesign) -> dict[str, list[Benchmark]]:
    """Strength of every covariate of the design, per dimension, strongest first.

    Raises
    ------
    EstimationError
        If the design has no covariates or the participation regression fails (e.g.
        perfect separation).
    """
    import statsmodels.api as sm

    if not design.covariates:
        raise EstimationError("no observed covariate to benchmark the confounder against.")
    in_cbo = design.presence[design.community_index] == 1
    Xc = sm.add_constant(design.X[in_cbo], has_constant="add")
    try:
        logit = sm.Logit(design.treatment[in_cbo], Xc).fit(disp=0)
    except Exception as exc:  # perfect separation, singular matrix
        raise EstimationError(
            f"the participation regression on {', '.join(design.covariates)} failed ({exc}); "
            "the benchmark strengths cannot be computed."
        ) from exc
    gamma = np.asarray(logit.params)[1:]
    out: dict[str, list[Benchmark]] = {}
    for k, dim in enumerate(design.dimensions):
        cols = [j for j in range(len(design.covariates)) if design.covariate_mask[j, k]]
        Z = np.column_stack(
            [
                np.ones(design.n),
                design.treatment,
                design.presence[design.community_index],
                design.X[:, cols],
            ]
        )
        coef, *_ = np.linalg.lstsq(Z, design.y[:, k], rcond=None)
        de_sign = 1.0 if coef[1] >= 0 else -1.0
        rows = [
            Benchmark(design.covariates[j], float(gamma[j]), float(coef[3 + i]), de_sign)
            for i, j in enumerate(cols)
        ]
        out[dim] = sorted(rows, key=lambda b: -abs(b.gamma * b.delta))
    return out


def _effect_row(draws: np.ndarray) -> dict[str, float]:
    flat = draws.reshape(-1)
    q05, q50, q95 = np.quantile(flat, [0.05, 0.5, 0.95])
    return {
        "mean": float(flat.mean()),
        "sd": float(flat.std(ddof=1)),
        "q05": float(q05),
        "q50": float(q50),
        "q95": float(q95),
        "prob_positive": float((flat > 0).mean()),
        "covers_zero": bool(q05 <= 0 <= q95),
    }


def sensitivity_curve(
    design: MultilevelDesign,
    spec: ModelSpec,
    grid: Sequence[float] = DEFAULT_GRID,
    benchmark: str | None = None,
    seed: int = 20240611,
    strengths: dict[str, Sequence[tuple[float, float, float]]] | None = None,
) -> pd.DataFrame:
    """Fit the sensitivity model on a grid of U strengths; the posterior DE and IE per point.

    Parameters
    ----------
    design
        The multilevel design (every dimension; each is fitted on its own).
    spec
        Multilevel spec (priors, sampler settings).
    grid
        Multiples ``k`` of the benchmark covariate's strength.
    benchmark
        Covariate to benchmark against; ``None``: the strongest per dimension.
    seed
        One seed for every fit.
    strengths
        Explicit ``{dimension: [(k, gamma_U, delta_U), ...]}`` instead of benchmark x grid
        (the benchmark column then reads ``given``).

    Returns
    -------
    pandas.DataFrame
        :data:`CURVE_COLUMNS`; effects on the outcome's scale (coefficient x ``y_sd``).
    """
    from pari_bayes.estimation.multilevel import _Sampler

    first = design.with_dimensions(design.dimensions[:1])
    sampler = _Sampler(build_sensitivity_model(first, spec), spec, seed)
    plan: dict[str, list[tuple[float, float, float, str]]] = {}
    if strengths is not None:
        for dim, points in strengths.items():
            plan[dim] = [(float(k), float(g), float(d), "given") for k, g, d in points]
    else:
        bench = benchmark_strengths(design)
        for dim in design.dimensions:
            choices = bench[dim]
            if benchmark is not None:
                named = [b for b in choices if b.covariate == benchmark]
                if not named:
                    raise EstimationError(
                        f"benchmark {benchmark!r} is not a covariate of the model for {dim}; "
                        f"allowed: {', '.join(b.covariate for b in choices)}"
                    )
                chosen = named[0]
            else:
                chosen = choices[0]
            plan[dim] = [(float(k), *chosen.strength(k), chosen.covariate) for k in grid]
    rows = []
    for kdim, dim in enumerate(design.dimensions):
        if dim not in plan:
            continue
        for k, gamma_u, delta_u, bench_name in plan[dim]:
            post, stats, secs = sampler.sample(
                y=design.y[:, [kdim]],
                covariate_mask=design.covariate_mask[:, [kdim]],
                u_participation=np.array([gamma_u]),
                u_outcome=np.array([delta_u]),
            )
            names = [v for v in GATED if v in post]
            idata = SimpleNamespace(posterior=post, sample_stats=stats)
            diag = diagnostics_table(idata, var_names=names, sampling_time=secs)
            failures = gate_failures(diag)
            y_sd = float(design.y_sd[kdim])
            for estimand, var in (("DE", "direct_effect"), ("IE", "spillover_effect")):
                draws = post[var].isel(dimension=0).to_numpy() * y_sd
                sub = diag[diag["parameter"].str.startswith(var)]
                rows.append(
                    {
                        "dimension": dim,
                        "estimand": estimand,
                        "k": k,
                        "benchmark": bench_name,
                        "u_participation": gamma_u,
                        "u_outcome": delta_u,
                        **_effect_row(draws),
                        "r_hat": float(sub["r_hat"].max()),
                        "ess_bulk": float(sub["ess_bulk"].min()),
                        "ess_tail": float(sub["ess_tail"].min()),
                        "divergences": int(diag["divergences"].max()) if len(diag) else 0,
                        "passed": not failures,
                        "reason": "; ".join(failures),
                    }
                )
    return pd.DataFrame(rows, columns=list(CURVE_COLUMNS))


def _crossing(ks: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """Smallest k at which [lo, hi] reaches 0, linear between grid points; inf if never."""
    inside = (lo <= 0) & (hi >= 0)
    if not inside.any():
        return math.inf
    j = int(np.flatnonzero(inside)[0])
    if j == 0:
        return float(ks[0])
    # the interval excluded 0 at ks[j-1]: interpolate the bound nearest to 0
    bound = lo if lo[j - 1] > 0 else hi
    b0, b1 = bound[j - 1], bound[j]
    return float(ks[j - 1] + (ks[j] - ks[j - 1]) * b0 / (b0 - b1)) if b0 != b1 else float(ks[j])


def summarize_curve(curve: pd.DataFrame) -> pd.DataFrame:
    """Per dimension and estimand: the smallest k whose 90% interval covers 0.

    Grid points are read in order of k up to the first that failed the convergence gate;
    a crossing found before it is reported, otherwise ``k_cover_zero`` is NaN and the
    sentence says UNCONVERGED. ``inf``: no grid point (all converged) covers 0.
    """
    rows = []
    for (dim, estimand), grp in curve.groupby(["dimension", "estimand"], sort=False):
        grp = grp.sort_values("k")
        bench = str(grp["benchmark"].iloc[0]).replace("_", " ")
        what = "direct effect" if estimand == "DE" else "spillover effect"
        top = float(grp["k"].max())
        # grid points in order of k, up to the first that failed the gate
        failed = np.flatnonzero(~grp["passed"].to_numpy(bool))
        usable = grp.iloc[: failed[0]] if len(failed) else grp
        k_cover = (
            _crossing(
                usable["k"].to_numpy(float),
                usable["q05"].to_numpy(float),
                usable["q95"].to_numpy(float),
            )
            if len(usable)
            else math.inf
        )
        head = f"The 90% posterior interval of the {what} on {dim.replace('_', ' ')}"
        if math.isinf(k_cover) and len(failed):
            k_cover = math.nan
            bad = ", ".join(f"{k:g}" for k in grp["k"].iloc[failed])
            sentence = (
                f"UNCONVERGED: {head} excludes 0 on every converged grid point, but the "
                f"sensitivity model failed the convergence gate at k = {bad}; no strength "
                "is reported."
            )
        elif k_cover == 0:
            sentence = f"{head} covers 0 even without an unobserved confounder."
        elif math.isinf(k_cover):
            sentence = (
                f"{head} excludes 0 for every strength up to {top:g} times {bench} "
                "(the largest on the grid)."
            )
        else:
            sentence = (
                f"{head} covers 0 once an unobserved household trait is {k_cover:.2f} "
                f"times as strong as {bench} (on participation and on the outcome)."
            )
        rows.append(
            {
                "dimension": dim,
                "estimand": estimand,
                "benchmark": grp["benchmark"].iloc[0],
                "k_cover_zero": k_cover,
                "grid_max": top,
                "sentence": sentence,
            }
        )
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def survey_sensitivity_curve(
    survey,
    spec: ModelSpec,
    grid: Sequence[float] = DEFAULT_GRID,
    benchmark: str | None = None,
    seed: int = 20240611,
    identification: Any = None,
    dimensions: Sequence[str] | None = None,
) -> pd.DataFrame:
    """:func:`sensitivity_curve` on a survey: the spec's design (DAG adjustment set, PCA scores).

    Parameters
    ----------
    survey
        A validated survey.
    spec
        A ``multilevel`` spec (``models/table4.toml``).
    grid, benchmark, seed
        See :func:`sensitivity_curve`.
    identification
        The identification result whose adjustment sets are the covariates (identified
        on ``models/dag.dot`` when omitted).
    dimensions
        Outcomes to fit (every dimension by default).
    """
    from pari_bayes.estimation.multilevel import build_design

    design = build_design(survey, spec, identification=identification)
    if dimensions is not None:
        unknown = [d for d in dimensions if d not in design.dimensions]
        if unknown:
            raise EstimationError(
                f"unknown dimension(s) {', '.join(unknown)}; allowed: "
                f"{', '.join(design.dimensions)}"
            )
        design = design.with_dimensions(tuple(dimensions))
    return sensitivity_curve(design, spec, grid=grid, benchmark=benchmark, seed=seed)


def write_bayes(curve: pd.DataFrame, directory: str | Path) -> pd.DataFrame:
    """Write ``bayes.csv`` (the curve) and ``bayes_summary.csv``; return the summary."""
    directory = Path(directory)
    summary = summarize_curve(curve)
    write_csv(curve, directory / "bayes.csv")
    write_csv(summary, directory / "bayes_summary.csv")
    return summary
