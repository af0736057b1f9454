"""Priors of the multilevel models, in one place.

Precedence: a prior stated in the spec (``[priors]`` of ``models/*.toml``) overrides the
default below; there is no data-informed layer because every prior is stated on the scale
of the *standardized* outcome (mean 0, sd 1) and standardized covariates, so the defaults
mean the same thing for every survey. The reasons are repeated in ``docs/priors.md``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pari_bayes.estimation.spec import PriorSpec

__all__ = [
    "DEFAULT_PRIORS",
    "resolve_priors",
    "prior_variable",
    "prior_logpdf",
    "describe_priors",
]

#: Default priors on the standardized-outcome scale, with the reason for each.
DEFAULT_PRIORS: dict[str, PriorSpec] = {
    "intercept": PriorSpec(
        "normal",
        {"mu": 0.0, "sigma": 1.0},
        "The outcome is standardized, so the mean of the reference group lies within about "
        "1 sd of 0.",
    ),
    "coefficients": PriorSpec(
        "normal",
        {"mu": 0.0, "sigma": 0.5},
        "Covariates are standardized; a 1-sd change in one covariate moving integration by "
        "more than 1 sd is implausible (95% prior mass within +-1 sd).",
    ),
    "direct_effect": PriorSpec(
        "normal",
        {"mu": 0.0, "sigma": 1.0},
        "Participation effects of more than 2 sd of an integration score are implausible; "
        "centred on 0 so the prior does not favour a benefit.",
    ),
    "spillover_effect": PriorSpec(
        "normal",
        {"mu": 0.0, "sigma": 1.0},
        "Same scale as the direct effect: a CBO's spillover beyond 2 sd is implausible.",
    ),
    "community_sd": PriorSpec(
        "halfnormal",
        {"sigma": 0.25},
        "The communities are four batches of one resettlement site in one county; once CBO "
        "presence and residence months are in the model, remaining between-community sd "
        "above 0.5 outcome-sd (an ICC above 20%) is implausible. With 4 communities the "
        "data cannot bound this sd, so a vague prior lets it wander into a funnel "
        "(divergences); this prior keeps 95% of its mass below 0.49.",
    ),
    "residual_sd": PriorSpec(
        "halfnormal",
        {"sigma": 1.0},
        "The outcome has sd 1, so the residual sd is at most about 1.",
    ),
    "residual_corr": PriorSpec(
        "lkj",
        {"eta": 4.0},
        "The four dimensions are distinct PCA scales; eta = 4 shrinks the household-level "
        "residual correlations mildly towards 0 and rules out near +-1 correlations.",
    ),
}


def resolve_priors(spec_priors: dict[str, PriorSpec]) -> dict[str, PriorSpec]:
    """Merge the spec's priors over the defaults (spec wins)."""
    return {**DEFAULT_PRIORS, **spec_priors}


def prior_variable(name: str, prior: PriorSpec, dims: Any = None, scale: Any = None):
    """Create the PyMC random variable of one prior slot (inside a model context).

    Parameters
    ----------
    name
        Variable name.
    prior
        Family and parameters.
    dims
        PyMC dims of the variable.
    scale
        Optional tensor replacing the scale parameter (``sigma``), e.g. a ``pm.Data``
        holding the prior scale, so sensitivity refits need no recompilation.
    """
    import pymc as pm

    p = dict(prior.params)
    if scale is not None:
        p["sigma"] = scale
    family = prior.family
    if family == "normal":
        return pm.Normal(name, mu=p["mu"], sigma=p["sigma"], dims=dims)
    if family == "student_t":
        return pm.StudentT(name, nu=p["nu"], mu=p["mu"], sigma=p["sigma"], dims=dims)
    if family == "halfnormal":
        return pm.HalfNormal(name, sigma=p["sigma"], dims=dims)
    if family == "halfstudent_t":
        return pm.HalfStudentT(name, nu=p["nu"], sigma=p["sigma"], dims=dims)
    if family == "exponential":
        lam = p["lam"] if scale is None else 1.0 / scale
        return pm.Exponential(name, lam=lam, dims=dims)
    raise ValueError(f"prior family {family!r} cannot be used for {name}")


def prior_logpdf(prior: PriorSpec, x: Any, scale_multiplier: float = 1.0) -> np.ndarray:
    """Log density of a prior at ``x`` with its scale multiplied (scipy.stats).

    Used to reweight a posterior to another prior scale (prior sensitivity). The scale is
    ``sigma`` (normal, student_t, halfnormal, halfstudent_t) or ``1 / lam``
    (exponential).

    Examples
    --------
    >>> p = PriorSpec("halfnormal", {"sigma": 0.25}, "")
    >>> bool(prior_logpdf(p, 0.1, 2.0) < prior_logpdf(p, 0.1, 1.0))
    True
    """
    from scipy import stats

    p = prior.params
    m = float(scale_multiplier)
    x = np.asarray(x, float)
    family = prior.family
    if family == "normal":
        return stats.norm.logpdf(x, loc=p["mu"], scale=p["sigma"] * m)
    if family == "student_t":
        return stats.t.logpdf(x, df=p["nu"], loc=p["mu"], scale=p["sigma"] * m)
    if family == "halfnormal":
        return stats.halfnorm.logpdf(x, scale=p["sigma"] * m)
    if family == "halfstudent_t":
        return np.log(2.0) + stats.t.logpdf(x, df=p["nu"], scale=p["sigma"] * m)
    if family == "exponential":
        return stats.expon.logpdf(x, scale=m / p["lam"])
    raise ValueError(f"prior family {family!r} has no density here")


def describe_priors(priors: dict[str, PriorSpec]) -> list[dict[str, Any]]:
    """Rows (slot, family, parameters, reason) for reports and provenance."""
    return [
        {
            "slot": slot,
            "family": p.family,
            "params": ", ".join(f"{k}={v:g}" for k, v in p.params.items()),
            "reason": p.reason,
        }
        for slot, p in priors.items()
    ]
