"""Bayesian multilevel models of direct and spillover effects (households in communities).

Lifecycle, in file order: spec -> design -> build -> fit -> predictive -> effects ->
outputs. One model per outcome (``kind = "multilevel"``, the Bayesian counterparts of Table
4's Models 1-8) or the outcomes jointly (``kind = "multivariate"``, LKJ-correlated
household residuals). The PyMC model is written out here (it is the model a Bambi formula
``y ~ cbo_participation + cbo_presence + <adjustment set> + (1 | community)`` builds) so
that:

* CBO presence enters at the community level: community effect
  ``u_c = IE * presence_c + tau * z_c`` (non-centred), so the spillover effect and the
  community intercepts are not confounded in the sampler;
* the data are ``pm.Data`` containers, so nutpie compiles once per spec and refits every
  outcome and every prior-sensitivity variant without recompiling;
* the number of communities is read from the data: a fifth community in the registry and
  the survey is one more level, with no code change.

Outcomes and covariates are standardized before fitting, so every prior is on the scale of
the standardized outcome; effects are reported back on the outcome's scale.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from pari_bayes._version import __version__
from pari_bayes.errors import (
    EstimationError,
    IdentificationError,
    SpecError,
)
from pari_bayes.estimation.posterior import load_posterior, write_posterior
from pari_bayes.estimation.spec import ModelSpec, load_spec
from pari_bayes.priors import resolve_priors

__all__ = [
    "TREATMENT",
    "PRESENCE",
    "MultilevelDesign",
    "FitResult",
    "outcome_scores",
    "adjustment_sets",
    "build_design",
    "build_model",
    "sample_model",
    "fit_spec",
    "potential_means",
    "write_fit",
    "load_posterior",
]

#: Household-level exposure (own participation, a) and community-level exposure (s).
TREATMENT = "cbo_participation"
PRESENCE = "cbo_presence"


# --------------------------------------------------------------------------------------
# Design: outcomes, adjustment set, standardization
# --------------------------------------------------------------------------------------


def outcome_scores(survey) -> tuple[pd.DataFrame, str]:
    """Outcome scores per dimension and where they came from.

    The paper's PCA scores (:func:`pari_bayes.measurement.pca.pca_scores`); if the
    measurement module is missing, a clearly labelled stand-in (standardized mean of the
    standardized items).
    """
    try:
        from pari_bayes.measurement.pca import pca_scores
    except ImportError:  # FALLBACK until pari_bayes.measurement.pca exists
        data, book = survey.data, survey.codebook
        out = {}
        for dim in book.dimensions:
            items = data[list(book.indicators[dim])].astype(float)
            z = (items - items.mean()) / items.std(ddof=0).replace(0, 1)
            m = z.mean(axis=1)
            out[dim] = (m - m.mean()) / m.std(ddof=0)
        return pd.DataFrame(out, index=data.index), "fallback: standardized mean of items"
    return pca_scores(survey.data, survey.codebook).scores, "pca"


def adjustment_sets(
    survey, spec: ModelSpec, identification: Any = None
) -> tuple[dict[str, tuple[str, ...]], str]:
    """Covariates per outcome from the identification layer.

    Parameters
    ----------
    survey
        A validated survey.
    spec
        The model spec (``spec.identification`` names the estimand whose set is used).
    identification
        An :class:`~pari_bayes.identification.identify.IdentificationResult` (the pipeline
        passes the one it computed from the run's DAG); ``None`` identifies on the bundled
        ``models/dag.dot`` here.

    Returns
    -------
    dict, str
        The adjustment set for each outcome and its source (``"identification"``).
    """
    if identification is None:
        from pari_bayes.identification.identify import identify

        identification = identify(survey, refute=False)
    sets: dict[str, tuple[str, ...]] = {}
    for dim in spec.for_dimensions(survey.codebook.dimensions).outcomes:
        chosen = tuple(identification.adjustment_set(spec.identification, dim))
        sets[dim] = chosen
    return sets, "identification"


@dataclass
class MultilevelDesign:
    """Everything a multilevel model needs, as arrays (standardized scales).

    Attributes
    ----------
    household_ids, communities, dimensions, covariates
        Coordinates.
    y
        Standardized outcomes, shape (household, dimension).
    y_mean, y_sd
        Used to standardize each outcome (effects are multiplied back by ``y_sd``).
    X
        Standardized covariates (union of the per-outcome adjustment sets).
    covariate_mask
        1 where a covariate is in the outcome's adjustment set, shape (covariate, dimension).
    treatment
        Own participation (0/1) per household.
    presence
        CBO presence (0/1) per community.
    community_index
        Community of each household (index into ``communities``).
    extra_community_terms
        Other community-level terms of the formula (columns constant within community).
    adjustment, adjustment_source, outcome_source
        Provenance of the covariates and outcomes.
    data_hash
        Hash of the survey.
    """

    household_ids: tuple[str, ...]
    communities: tuple[str, ...]
    dimensions: tuple[str, ...]
    covariates: tuple[str, ...]
    y: np.ndarray
    y_mean: np.ndarray
    y_sd: np.ndarray
    X: np.ndarray
    x_mean: np.ndarray
    x_sd: np.ndarray
    covariate_mask: np.ndarray
    treatment: np.ndarray
    presence: np.ndarray
    community_index: np.ndarray
    adjustment: dict[str, tuple[str, ...]]
    adjustment_source: str
    outcome_source: str
    data_hash: str
    has_treatment: bool = True
    has_presence: bool = True
    treatment_center: float = 0.0
    presence_center: float = 0.0

    @property
    def n(self) -> int:
        """Number of households."""
        return len(self.household_ids)

    def with_dimensions(self, dims: tuple[str, ...]) -> MultilevelDesign:
        """Return the design restricted to some outcomes."""
        idx = [self.dimensions.index(d) for d in dims]
        return replace(
            self,
            dimensions=tuple(dims),
            y=self.y[:, idx],
            y_mean=self.y_mean[idx],
            y_sd=self.y_sd[idx],
            covariate_mask=self.covariate_mask[:, idx],
        )

    def observed_participation_rate(self) -> float:
        """Share of participants among households in CBO communities."""
        in_cbo = self.presence[self.community_index] == 1
        return float(self.treatment[in_cbo].mean()) if in_cbo.any() else float("nan")


def build_design(
    survey,
    spec: ModelSpec,
    scores: pd.DataFrame | None = None,
    adjustment: dict[str, tuple[str, ...]] | None = None,
    identification: Any = None,
) -> MultilevelDesign:
    """Turn a survey and a spec into arrays.

    Parameters
    ----------
    survey
        A validated :class:`pari_bayes.survey.Survey`.
    spec
        The model spec.
    scores
        Outcome scores (one column per dimension); the PCA scores by default.
    adjustment
        Covariates per outcome; the identification layer's adjustment sets by default.
    identification
        The identification result whose adjustment sets are used (see
        :func:`adjustment_sets`).

    Raises
    ------
    SpecError
        If a formula term, covariate or outcome is not in the data.
    EstimationError
        If an exposure or covariate does not vary.
    """
    data = survey.data.reset_index(drop=True)
    spec = spec.for_dimensions(survey.codebook.dimensions)
    spec.check_columns(list(data.columns))
    if scores is None:
        scores, outcome_source = outcome_scores(survey)
    else:
        outcome_source = "given"
    scores = scores.reset_index(drop=True)
    missing = [d for d in spec.outcomes if d not in scores.columns]
    if missing:
        raise SpecError(
            f"{spec.path}: key outcomes: no scores for {', '.join(missing)}; allowed: "
            f"{', '.join(scores.columns)}"
        )
    if adjustment is None:
        adjustment, adjustment_source = adjustment_sets(survey, spec, identification)
    else:
        adjustment_source = "given"
    exposures = {TREATMENT, PRESENCE, "cbo_existence", spec.group}
    extra = [t for t in spec.terms if t not in (TREATMENT, PRESENCE)]
    covariates: list[str] = []
    for dim in spec.outcomes:
        for col in (*adjustment.get(dim, ()), *extra):
            if col in exposures or col in covariates:
                continue
            if col not in data.columns:
                raise IdentificationError(
                    f"the adjustment set for {spec.identification} on {dim} names {col!r}, "
                    f"which is not a survey column; allowed: {', '.join(data.columns)}"
                )
            covariates.append(col)
    mask = np.zeros((len(covariates), len(spec.outcomes)))
    for k, dim in enumerate(spec.outcomes):
        for j, col in enumerate(covariates):
            mask[j, k] = float(col in adjustment.get(dim, ()) or col in extra)
    X = data[covariates].astype(float).to_numpy() if covariates else np.zeros((len(data), 0))
    x_mean = X.mean(axis=0)
    x_sd = X.std(axis=0)
    flat = [c for c, s in zip(covariates, x_sd, strict=True) if s == 0]
    if flat:
        raise EstimationError(
            f"covariate(s) {', '.join(flat)} do not vary in this survey; drop them from the "
            "adjustment set or use a survey where they vary"
        )
    X = (X - x_mean) / np.where(x_sd > 0, x_sd, 1.0)
    y_raw = scores[list(spec.outcomes)].astype(float).to_numpy()
    if not np.isfinite(y_raw).all():
        raise EstimationError("outcome scores contain missing or infinite values")
    y_mean = y_raw.mean(axis=0)
    y_sd = y_raw.std(axis=0)
    y = (y_raw - y_mean) / y_sd
    communities = tuple(survey.communities)
    cidx = np.array([communities.index(c) for c in data[spec.group]], dtype=np.int64)
    presence = np.array([survey.registry[c].has_cbo for c in communities], dtype=float)
    treatment = data[TREATMENT].astype(float).to_numpy()
    has_t, has_p = TREATMENT in spec.terms, PRESENCE in spec.terms
    if has_p and len(set(presence)) < 2:
        raise EstimationError(
            "CBO presence does not vary across the surveyed communities, so the spillover "
            "effect is not identified; survey communities with and without CBOs"
        )
    if has_t and len(set(treatment[presence[cidx] == 1])) < 2:
        raise EstimationError(
            "participation does not vary within CBO communities, so the direct effect is "
            "not identified"
        )
    return MultilevelDesign(
        household_ids=tuple(data["household_id"].astype(str)),
        communities=communities,
        dimensions=tuple(spec.outcomes),
        covariates=tuple(covariates),
        y=y,
        y_mean=y_mean,
        y_sd=y_sd,
        X=X,
        x_mean=x_mean,
        x_sd=x_sd,
        covariate_mask=mask,
        treatment=treatment,
        presence=presence,
        community_index=cidx,
        adjustment={d: tuple(adjustment.get(d, ())) for d in spec.outcomes},
        adjustment_source=adjustment_source,
        outcome_source=outcome_source,
        data_hash=survey.data_hash,
        has_treatment=has_t,
        has_presence=has_p,
        # Exposures are centred in the linear predictor (contrasts are unchanged) so the
        # intercept is not correlated with DE and IE in the posterior.
        treatment_center=float(treatment.mean()),
        presence_center=float(presence.mean()),
    )


# --------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------


def community_counts(design: Any) -> np.ndarray:
    """Households per community (float, at least 1 so empty levels cannot divide by 0).

    ``design`` is any design with ``community_index`` and ``communities`` (the multilevel
    and the latent design).
    """
    counts = np.bincount(design.community_index, minlength=len(design.communities))
    return np.maximum(counts, 1).astype(float)


def marginal_loglik(resid, community_index, counts, chol, tau, n_dims: int, zero_sum: bool = False):
    """Log-likelihood with the community deviations integrated out (PyTensor graph).

    Household ``i`` of community ``c`` has ``r_i = y_i - m_i = u_c + e_i`` with
    ``u_c ~ Normal(0, T)``, ``T = diag(tau^2)``, and ``e_i ~ Normal(0, Sigma)``,
    ``Sigma = chol chol'``. Integrating ``u_c`` out, the likelihood of a community splits
    into the deviations from its mean, which do not involve ``u_c``, and its mean::

        log p(r_c) = sum_i log N(r_i - rbar_c; 0, Sigma) [on n_c - 1 degrees of freedom]
                     - (K / 2) log n_c + log N(rbar_c; 0, T + Sigma / n_c)

    (Gaussian conjugacy; every term is a K x K computation per community, so the cost is
    O(n K^2 + C K^3) per gradient). With few communities ``tau`` is weakly identified and
    the sampled deviations of the usual (centred or non-centred) parameterization form a
    funnel with ``tau``; integrated out, no funnel is left. The deviations are drawn after
    sampling from their exact conditional posterior (:func:`draw_community_deviations`).

    Parameters
    ----------
    resid
        (n, K) tensor ``y - m`` without the community deviations.
    community_index
        (n,) integer community of each household.
    counts
        (C,) households per community.
    chol
        (K, K) lower Cholesky factor of the household-level residual covariance.
    tau
        (K,) sd of the community deviations.
    n_dims
        K, the number of outcomes (the substitution is unrolled over them).
    zero_sum
        The deviations are ``ZeroSumNormal`` over the communities instead of independent
        (``u = e - mean(e)``, ``e_c ~ Normal(0, T)``), the latent model's location
        restriction. Their law is that of independent ``e_c`` conditioned on
        ``S = sum_c e_c = 0``, so the density is the independent one times
        ``p(S = 0 | r) / p(S = 0)``. Given ``r`` the ``e_c`` are independent Gaussians, so
        ``S | r`` is Gaussian and the correction is one more K x K computation, done in
        the standardized ``s = T^{-1/2} S / sqrt(C)`` (prior ``Normal(0, I)``), which
        stays finite as ``tau -> 0`` (the constraint then does nothing) and as ``tau`` grows.
    """
    import pytensor.tensor as pt

    n, K = resid.shape[0], n_dims
    C = counts.shape[0]
    sums = pt.inc_subtensor(pt.zeros((C, K))[community_index], resid)
    rbar = sums / counts[:, None]
    dev = resid - rbar[community_index]
    log2pi = np.log(2 * np.pi)
    if K == 1:  # one outcome: every matrix is a scalar
        sd = chol[0, 0]
        within = -0.5 * pt.sum(dev**2) / sd**2 - (n - C) * pt.log(sd)
        within = within - 0.5 * pt.sum(pt.log(counts)) - 0.5 * (n - C) * log2pi
        return within + community_mean_logdensity(rbar, counts, chol, tau, 1, zero_sum)
    # check_finite=False: a non-finite proposal (early tuning) gives a NaN log density,
    # which the sampler rejects, instead of an exception that stops the chain
    chol_inv = pt.linalg.solve_triangular(chol, pt.eye(K), lower=True, check_finite=False)
    z_within = pt.dot(dev, chol_inv.T)
    within = (
        -0.5 * pt.sum(z_within**2)
        - (n - C) * pt.sum(pt.log(pt.diag(chol)))
        - 0.5 * K * pt.sum(pt.log(counts))
    )
    between = _between_loglik(rbar, counts, chol, tau, n_dims, zero_sum)
    return within + between - 0.5 * n * K * log2pi


def _between_loglik(rbar, counts, chol, tau, n_dims: int, zero_sum: bool):
    """``sum_c log N(rbar_c; 0, T + Sigma / n_c)`` without its ``2 pi`` constant (K > 1).

    With ``zero_sum``, times the ZeroSumNormal correction of :func:`marginal_loglik`.
    """
    import pytensor.tensor as pt

    C = counts.shape[0]
    sigma = pt.dot(chol, chol.T)
    m = pt.diag(tau**2)[None, :, :] + sigma[None, :, :] / counts[:, None, None]
    lc = pt.linalg.cholesky(m, check_finite=False, on_error="nan")  # batched over communities
    # forward substitution lc x = rbar, unrolled over the (few) dimensions: the batched
    # triangular solve has no compiled numba kernel, this is K vectorized steps
    xs = []
    for k in range(n_dims):
        acc = rbar[:, k]
        for j in range(k):
            acc = acc - lc[:, k, j] * xs[j]
        xs.append(acc / lc[:, k, k])
    x = pt.stack(xs, axis=1)
    between = -0.5 * pt.sum(x**2) - pt.sum(pt.log(pt.diagonal(lc, axis1=1, axis2=2)))
    if zero_sum:
        between = between + _zero_sum_correction(lc, x, tau, n_dims, C)
    return between


def community_mean_logdensity(b, counts, chol, tau, n_dims: int, zero_sum: bool = False):
    """Log density of the community means of the residuals (PyTensor graph).

    ``b_c = u_c + ebar_c``: the community deviation plus the mean of its ``n_c`` household
    disturbances, so ``b_c ~ Normal(0, T + Sigma / n_c)`` independently over communities
    (``T = diag(tau^2)``, ``Sigma = chol chol'``), and with ``zero_sum`` the deviations
    ``u`` are ZeroSumNormal, which multiplies the density by the correction of
    :func:`marginal_loglik`. This is the between-community factor of
    :func:`marginal_loglik`: the latent model's non-centred household parameterization
    samples ``b`` with this density and the within-community part non-centred. Its variance
    never falls below ``Sigma / n_c``, so ``tau -> 0`` makes no funnel.

    Parameters
    ----------
    b
        (C, K) community means of the residuals.
    counts
        (C,) households per community.
    chol
        (K, K) lower Cholesky factor of the household-level covariance.
    tau
        (K,) sd of the community deviations.
    n_dims
        K.
    zero_sum
        ZeroSumNormal deviations (the latent model's location restriction).
    """
    import pytensor.tensor as pt

    C, K = counts.shape[0], n_dims
    const = -0.5 * C * K * np.log(2 * np.pi)
    if K > 1:
        return _between_loglik(b, counts, chol, tau, n_dims, zero_sum) + const
    sd = chol[0, 0]
    m = tau[0] ** 2 + sd**2 / counts
    total = -0.5 * pt.sum(b[:, 0] ** 2 / m) - 0.5 * pt.sum(pt.log(m)) + const
    if zero_sum:  # s | b ~ Normal(h / sqrt(C), 1 - g / C)
        g = pt.sum(tau[0] ** 2 / m)
        h = pt.sum(tau[0] * b[:, 0] / m)
        v = 1.0 - g / C
        total = total - 0.5 * pt.log(v) - 0.5 * h**2 / (C * v)
    return total


def _zero_sum_correction(lc, w, tau, n_dims: int, n_comm: int):
    """``log p(s = 0 | r) - log p(s = 0)`` of :func:`marginal_loglik` with ``zero_sum``.

    With ``lc_c lc_c' = T + Sigma / n_c``, ``w_c = lc_c^{-1} rbar_c`` and
    ``B_c = lc_c^{-1} T^{1/2}``: ``E[T^{-1/2} e_c | r] = B_c' w_c`` and
    ``Var[T^{-1/2} e_c | r] = I - B_c' B_c``, so ``s | r`` has mean ``sum_c B_c' w_c / sqrt(C)``
    and covariance ``V = I - sum_c B_c' B_c / C``.
    """
    import pytensor.tensor as pt

    K, C = n_dims, n_comm
    cols = []
    for j in range(K):  # B_c e_j = lc_c^{-1} tau_j e_j, forward substitution unrolled
        xs = []
        for k in range(K):
            if k < j:
                xs.append(pt.zeros_like(lc[:, 0, 0]))
                continue
            acc = tau[j] * pt.ones_like(lc[:, 0, 0]) if k == j else pt.zeros_like(lc[:, 0, 0])
            for i in range(j, k):
                acc = acc - lc[:, k, i] * xs[i]
            xs.append(acc / lc[:, k, k])
        cols.append(pt.stack(xs, axis=1))
    b = pt.stack(cols, axis=2)  # (C, K, K): b[c, k, j] = (B_c)_{kj}
    g = (b[:, :, :, None] * b[:, :, None, :]).sum(axis=(0, 1))
    h = (b * w[:, :, None]).sum(axis=(0, 1))
    v = pt.eye(K) - g / C
    lv = pt.linalg.cholesky(v, check_finite=False, on_error="nan")
    q = pt.linalg.solve_triangular(lv, h / np.sqrt(C), lower=True, check_finite=False)
    return -pt.sum(pt.log(pt.diag(lv))) - 0.5 * pt.sum(q**2)


def mean_terms(design: MultilevelDesign, priors: Mapping[str, Any]) -> SimpleNamespace:
    """Build the data containers and mean terms of the multilevel model (in a ``pm.Model``).

    Shared by :func:`build_model` and the sensitivity model
    (:mod:`pari_bayes.sensitivity.bayes`), which adds an unobserved confounder to ``mu``.

    Returns
    -------
    SimpleNamespace
        ``y``, ``X`` and ``cidx`` (``pm.Data``), ``mu`` (household mean: intercept,
        covariates, direct effect), ``community`` (the spillover term per community, 0
        without presence) and ``tau`` (community sd).
    """
    import pymc as pm
    import pytensor.tensor as pt

    from pari_bayes.priors import prior_variable

    K = len(design.dimensions)
    y = pm.Data("y", design.y, dims=("household", "dimension"))
    X = pm.Data("X", design.X, dims=("household", "covariate"))
    mask = pm.Data("covariate_mask", design.covariate_mask, dims=("covariate", "dimension"))
    cidx = pm.Data("community_index", design.community_index, dims="household")
    tau_scale = pm.Data(
        "community_sd_prior_scale",
        np.full(
            K,
            priors["community_sd"].params.get(
                "sigma", 1.0 / priors["community_sd"].params.get("lam", 1.0)
            ),
        ),
        dims="dimension",
    )
    intercept = prior_variable("intercept", priors["intercept"], dims="dimension")
    mu = intercept[None, :]
    if design.covariates:
        beta = prior_variable("beta", priors["coefficients"], dims=("covariate", "dimension"))
        mu = mu + pt.dot(X, beta * mask)
    community = 0.0
    if design.has_treatment:
        a = pm.Data("participation", design.treatment - design.treatment_center, dims="household")
        de = prior_variable("direct_effect", priors["direct_effect"], dims="dimension")
        mu = mu + a[:, None] * de[None, :]
    if design.has_presence:
        s = pm.Data("presence", design.presence - design.presence_center, dims="community")
        ie = prior_variable("spillover_effect", priors["spillover_effect"], dims="dimension")
        community = s[:, None] * ie[None, :]
    tau = prior_variable("community_sd", priors["community_sd"], dims="dimension", scale=tau_scale)
    return SimpleNamespace(y=y, X=X, cidx=cidx, mu=mu, community=community, tau=tau)


def build_model(design: MultilevelDesign, spec: ModelSpec, multivariate: bool | None = None):
    """Build the PyMC model of a design.

    Household ``i`` in community ``c``, outcome ``k`` (standardized)::

        y_ik = b0_k + x_i' beta_k + DE_k * a_i + IE_k * presence_c + d_ck + e_ik
        d_ck ~ Normal(0, tau_k)   (community deviation, integrated out)

    with ``e_i ~ MvNormal(0, Sigma)`` (LKJ prior on the correlations) when multivariate,
    else independent Normal(0, sigma_k). The deviations ``d_c`` are not sampled: the
    likelihood is :func:`marginal_loglik` (exact), and :func:`draw_community_deviations`
    draws them from their conditional posterior after sampling. Data (outcomes, prior scale
    of tau, community sizes) are ``pm.Data`` so a compiled model can be refitted with new
    values.

    Returns
    -------
    pymc.Model
    """
    import pymc as pm
    import pytensor.tensor as pt

    from pari_bayes.priors import prior_variable

    if multivariate is None:
        multivariate = spec.kind == "multivariate"
    priors = resolve_priors(spec.priors)
    coords = {
        "household": list(design.household_ids),
        "community": list(design.communities),
        "dimension": list(design.dimensions),
        "covariate": list(design.covariates),
    }
    K = len(design.dimensions)
    with pm.Model(coords=coords) as model:
        terms = mean_terms(design, priors)
        y, cidx, mu, community, tau = terms.y, terms.cidx, terms.mu, terms.community, terms.tau
        resid = priors["residual_sd"]
        if multivariate:
            sd_dist = {
                "halfnormal": lambda: pm.HalfNormal.dist(resid.params.get("sigma", 1.0), shape=K),
                "halfstudent_t": lambda: pm.HalfStudentT.dist(
                    nu=resid.params.get("nu", 3.0), sigma=resid.params.get("sigma", 1.0), shape=K
                ),
                "exponential": lambda: pm.Exponential.dist(resid.params.get("lam", 1.0), shape=K),
            }[resid.family]()
            chol, corr, stds = pm.LKJCholeskyCov(
                "residual_chol",
                n=K,
                eta=priors["residual_corr"].params["eta"],
                sd_dist=sd_dist,
                compute_corr=True,
            )
            pm.Deterministic("residual_sd", stds, dims="dimension")
            model.add_coord("dimension_bis", list(design.dimensions))
            pm.Deterministic("residual_corr", corr, dims=("dimension", "dimension_bis"))
        else:
            sigma = prior_variable("residual_sd", resid, dims="dimension")
            chol = pt.diag(sigma)
        # The community deviations tau * z_c are integrated out of the likelihood
        # (marginal_loglik) and drawn afterwards from their exact conditional posterior.
        counts = pm.Data("community_size", community_counts(design), dims="community")
        m = mu + community[cidx] if design.has_presence else mu
        pm.Potential("y_obs_loglik", marginal_loglik(y - m, cidx, counts, chol, tau, K))
    return model


# --------------------------------------------------------------------------------------
# Fit
# --------------------------------------------------------------------------------------

#: Posterior variables that the convergence gate checks (when present).
GATED_VARIABLES = (
    "intercept",
    "beta",
    "direct_effect",
    "spillover_effect",
    "community_sd",
    "community_z",
    "community_effect",
    "residual_sd",
    "residual_corr",
)


class _Sampler:
    """Compile once, sample many times with new data (nutpie) or set_data (PyMC)."""

    def __init__(self, model, spec: ModelSpec, seed: int) -> None:
        self.model = model
        self.spec = spec
        self.seed = seed
        self.compile_time = 0.0
        self._compiled = None
        if spec.sampler.sampler == "nutpie":
            import nutpie

            start = time.perf_counter()
            self._compiled = nutpie.compile_pymc_model(model)
            self.compile_time = time.perf_counter() - start

    def sample(self, **data: np.ndarray):
        """Sample with some ``pm.Data`` replaced; returns (InferenceData, seconds)."""
        s = self.spec.sampler
        start = time.perf_counter()
        if self._compiled is not None:
            from pari_bayes.estimation.sampling import nutpie_sample

            idata = nutpie_sample(
                self._compiled.with_data(**data) if data else self._compiled,
                draws=s.draws,
                tune=s.tune,
                chains=s.chains,
                cores=s.cores,
                seed=self.seed,
                target_accept=s.target_accept,
            )
        else:
            import pymc as pm

            from pari_bayes.estimation.sampling import pymc_sample

            if data:
                with self.model:
                    pm.set_data(data)
            idata = pymc_sample(
                self.model,
                draws=s.draws,
                tune=s.tune,
                chains=s.chains,
                cores=s.cores,
                seed=self.seed,
                target_accept=s.target_accept,
            )
        seconds = time.perf_counter() - start
        keep = [
            v
            for v in idata.posterior.data_vars
            if not v.endswith(("__", "_log__"))
            and "_interval__" not in v
            and "cholesky-cov-packed" not in v
        ]
        posterior = idata.posterior[keep]
        stats = idata.sample_stats
        return posterior, stats, seconds


def sample_model(model, spec: ModelSpec, seed: int, **data):
    """Compile (nutpie) and sample a model once; returns (posterior, sample_stats, seconds)."""
    return _Sampler(model, spec, seed).sample(**data)


def _rename_dim(ds: xr.Dataset, dim: str) -> xr.Dataset:
    return ds.assign_coords(dimension=[dim]) if "dimension" in ds.dims else ds


@dataclass
class _Fitted:
    posterior: xr.Dataset
    sample_stats: xr.Dataset
    sampling_time: float
    compile_time: float
    per_outcome: tuple[float, ...] = ()  # sampling seconds of each univariate outcome


def _fit_design(
    design: MultilevelDesign,
    spec: ModelSpec,
    seed: int,
    tau_multiplier: float = 1.0,
    sampler: _Sampler | None = None,
    compiled_design: MultilevelDesign | None = None,
) -> tuple[_Fitted, _Sampler]:
    """Fit one design: jointly (multivariate) or one outcome at a time (compiled once).

    ``compiled_design`` is the design the sampler's model was built from when ``design``
    is a reduced version of it (the LOO comparison model): terms the reduced design lacks
    are switched off through the model's data (zero participation / presence, a zero
    covariate mask), so the reduced model reuses the compiled one. Their coefficients then
    only see their prior and are dropped from the returned posterior.
    """
    priors = resolve_priors(spec.priors)
    base_scale = priors["community_sd"].params.get(
        "sigma", 1.0 / priors["community_sd"].params.get("lam", 1.0)
    )
    full = compiled_design or design
    # Exposure data are always passed (PyMC's set_data persists between calls).
    off: dict[str, np.ndarray] = {}
    dropped: list[str] = []
    if full.has_treatment:
        off["participation"] = design.treatment - design.treatment_center
        if not design.has_treatment:
            off["participation"] = np.zeros(design.n)
            dropped.append("direct_effect")
    if full.has_presence:
        off["presence"] = design.presence - design.presence_center
        if not design.has_presence:
            off["presence"] = np.zeros(len(design.communities))
            dropped.append("spillover_effect")
    if spec.kind == "multivariate":
        if sampler is None:
            sampler = _Sampler(build_model(design, spec), spec, seed)
        K = len(design.dimensions)
        post, stats, secs = sampler.sample(
            community_sd_prior_scale=np.full(K, base_scale * tau_multiplier),
            covariate_mask=design.covariate_mask,
            **off,
        )
        post = draw_community_deviations(post.drop_vars(dropped), design, _deviation_rng(seed))
        return _Fitted(post, stats, secs, sampler.compile_time), sampler
    first = design.with_dimensions(design.dimensions[:1])
    if sampler is None:
        sampler = _Sampler(build_model(first, spec, multivariate=False), spec, seed)
    posts, stats_list, seconds = [], [], []
    for k, dim in enumerate(design.dimensions):
        post, stats, secs = sampler.sample(
            y=design.y[:, [k]],
            covariate_mask=design.covariate_mask[:, [k]],
            community_sd_prior_scale=np.array([base_scale * tau_multiplier]),
            **off,
        )
        posts.append(_rename_dim(post.drop_vars(dropped), dim))
        stats_list.append(stats.expand_dims(dimension=[dim]))
        seconds.append(secs)
    posterior = draw_community_deviations(
        xr.concat(posts, dim="dimension"), design, _deviation_rng(seed)
    )
    stats = xr.concat(stats_list, dim="dimension")
    fitted = _Fitted(posterior, stats, sum(seconds), sampler.compile_time, tuple(seconds))
    return fitted, sampler


def _deviation_rng(seed: int) -> np.random.Generator:
    """Return the generator of the community-deviation draws (own stream of the seed)."""
    return np.random.default_rng([int(seed), 1])


def reduced_design(design: MultilevelDesign, drop: tuple[str, ...]) -> MultilevelDesign:
    """Return the design without the terms in ``drop`` (exposures and/or covariates)."""
    mask = design.covariate_mask.copy()
    for j, col in enumerate(design.covariates):
        if col in drop:
            mask[j, :] = 0.0
    return replace(
        design,
        has_treatment=design.has_treatment and TREATMENT not in drop,
        has_presence=design.has_presence and PRESENCE not in drop,
        covariate_mask=mask,
    )


# --------------------------------------------------------------------------------------
# Predictive quantities (numpy, from the posterior)
# --------------------------------------------------------------------------------------


def _arr(posterior: xr.Dataset, name: str, *dims: str) -> np.ndarray:
    return posterior[name].transpose("chain", "draw", *dims).to_numpy()


def _residual_cov(posterior: xr.Dataset) -> np.ndarray:
    """Household-level residual covariance per draw, shape (chain, draw, K, K)."""
    sd = _arr(posterior, "residual_sd", "dimension")
    if "residual_corr" in posterior:
        corr = _arr(posterior, "residual_corr", "dimension", "dimension_bis")
        return corr * sd[..., :, None] * sd[..., None, :]
    return sd[..., :, None] ** 2 * np.eye(sd.shape[-1])


def _presence_term(posterior: xr.Dataset, design: MultilevelDesign) -> np.ndarray:
    """``IE * (presence_c - centre)`` per draw, shape (chain, draw, community, dimension)."""
    tau = _arr(posterior, "community_sd", "dimension")
    if not (design.has_presence and "spillover_effect" in posterior):
        return np.zeros((*tau.shape[:2], len(design.communities), tau.shape[-1]))
    ie = _arr(posterior, "spillover_effect", "dimension")
    s = design.presence - design.presence_center
    return s[None, None, :, None] * ie[:, :, None, :]


def draw_community_deviations(
    posterior: xr.Dataset, design: MultilevelDesign, rng: np.random.Generator
) -> xr.Dataset:
    """Add exact posterior draws of the community deviations to a posterior.

    The sampler integrates the deviations ``d_c ~ Normal(0, T)`` out
    (:func:`marginal_loglik`); given a draw of the other parameters their conditional
    posterior is Gaussian, and a draw of it is taken by Matheron's rule (no covariance
    factorization that could break when ``tau`` is near 0)::

        d_c = d0 + T (T + Sigma / n_c)^{-1} (rbar_c - d0 - ebar),
        d0 ~ Normal(0, T),  ebar ~ Normal(0, Sigma / n_c)

    where ``rbar_c`` is the community's mean residual. The (parameter, deviation) pairs are
    then draws of the joint posterior of the model with the deviations sampled.

    Returns
    -------
    xarray.Dataset
        ``posterior`` with ``community_deviation`` (``d_c``) and ``community_effect``
        (``IE * presence_c + d_c``, centred presence), dims (chain, draw, community,
        dimension).
    """
    counts = community_counts(design)
    C = len(design.communities)
    idx = design.community_index

    def community_mean(values: np.ndarray) -> np.ndarray:
        out = np.zeros((C, values.shape[1]))
        np.add.at(out, idx, values)
        return out / counts[:, None]

    ybar = community_mean(design.y)
    tau = _arr(posterior, "community_sd", "dimension")
    m = _arr(posterior, "intercept", "dimension")[:, :, None, :]
    if design.covariates:
        beta = _arr(posterior, "beta", "covariate", "dimension") * design.covariate_mask
        m = m + np.einsum("cj,hdjk->hdck", community_mean(design.X), beta)
    if design.has_treatment and "direct_effect" in posterior:
        abar = community_mean((design.treatment - design.treatment_center)[:, None])[:, 0]
        m = (
            m
            + abar[None, None, :, None]
            * _arr(posterior, "direct_effect", "dimension")[:, :, None, :]
        )
    presence = _presence_term(posterior, design)
    rbar = ybar[None, None] - m - presence
    dev = conditional_deviations(rbar, counts, _residual_cov(posterior), tau, rng)
    dims = ("chain", "draw", "community", "dimension")
    coords = {"community": list(design.communities)}
    return posterior.assign(
        community_deviation=xr.DataArray(dev, dims=dims, coords=coords),
        community_effect=xr.DataArray(dev + presence, dims=dims, coords=coords),
    )


def conditional_deviations(
    rbar: np.ndarray,
    counts: np.ndarray,
    cov: np.ndarray,
    tau: np.ndarray,
    rng: np.random.Generator,
    zero_sum: bool = False,
) -> np.ndarray:
    """Draw community deviations from their conditional posterior given mean residuals.

    For each posterior draw, community ``c``'s mean residual is ``rbar_c = d_c + ebar_c``
    with ``ebar_c ~ Normal(0, Sigma / n_c)``. With independent ``d_c ~ Normal(0, T)`` the
    conditional draw is Matheron's rule (no factorization of a covariance that could be
    singular as ``tau -> 0``)::

        d_c = d0 + T M_c^{-1} (rbar_c - d0 - e0),  d0 ~ Normal(0, T),
        e0 ~ Normal(0, Sigma / n_c),  M_c = T + Sigma / n_c

    With ``zero_sum`` the deviations are ``ZeroSumNormal`` (the independent ones given
    ``S = sum_c d_c = 0``), and the same rule conditions on ``S``:
    ``d_c - V_c (sum_c V_c)^{-1} S`` with ``V_c = T - T M_c^{-1} T`` the conditional
    covariance of ``d_c``, which makes the draws sum to zero exactly.

    Parameters
    ----------
    rbar
        (chain, draw, C, K) community mean residuals without the deviations.
    counts
        (C,) households per community.
    cov
        (chain, draw, K, K) household-level residual covariance ``Sigma``.
    tau
        (chain, draw, K) sd of the deviations.
    rng
        Source of the draws.
    zero_sum
        Condition on the deviations summing to zero over the communities.

    Returns
    -------
    numpy.ndarray
        (chain, draw, C, K) draws of ``d``.
    """
    chol = np.linalg.cholesky(cov)
    T = tau**2
    eye = np.eye(T.shape[-1])
    dev = np.empty_like(rbar)
    for c in range(tau.shape[0]):  # one chain at a time bounds the memory of the solves
        d0 = tau[c][:, None, :] * rng.standard_normal(rbar[c].shape)
        ebar = np.einsum("dkl,dcl->dck", chol[c], rng.standard_normal(rbar[c].shape))
        ebar = ebar / np.sqrt(counts)[None, :, None]
        t_mat = np.einsum("dk,kl->dkl", T[c], eye)[:, None]  # (draw, 1, K, K)
        M = t_mat + cov[c][:, None] / counts[None, :, None, None]
        sol = np.linalg.solve(M, (rbar[c] - d0 - ebar)[..., None])[..., 0]
        d = d0 + T[c][:, None, :] * sol
        if zero_sum:
            v = t_mat - T[c][:, None, :, None] * np.linalg.solve(M, t_mat)  # (draw, C, K, K)
            v = 0.5 * (v + np.swapaxes(v, -1, -2))
            total = d.sum(axis=1)  # (draw, K)
            adj = np.linalg.solve(v.sum(axis=1), total[..., None])[..., 0]  # (draw, K)
            d = d - np.einsum("dckl,dl->dck", v, adj)
        dev[c] = d
    return dev


def _prior_community(prior: xr.Dataset, design: MultilevelDesign, rng: np.random.Generator):
    """Add prior draws of the community deviations and effects to a prior dataset."""
    tau = _arr(prior, "community_sd", "dimension")
    dev = tau[:, :, None, :] * rng.standard_normal(
        (*tau.shape[:2], len(design.communities), tau.shape[-1])
    )
    dims = ("chain", "draw", "community", "dimension")
    coords = {"community": list(design.communities)}
    return prior.assign(
        community_deviation=xr.DataArray(dev, dims=dims, coords=coords),
        community_effect=xr.DataArray(
            dev + _presence_term(prior, design), dims=dims, coords=coords
        ),
    )


def _linear_predictor(
    posterior: xr.Dataset,
    design: MultilevelDesign,
    treatment: np.ndarray | None = None,
    presence_of_household: np.ndarray | None = None,
    community_term: np.ndarray | None = None,
) -> np.ndarray:
    """Mean outcome (standardized), shape (chain, draw, household, dimension)."""
    mu = _arr(posterior, "intercept", "dimension")[:, :, None, :]
    if design.covariates:
        beta = _arr(posterior, "beta", "covariate", "dimension") * design.covariate_mask
        mu = mu + np.einsum("ij,cdjk->cdik", design.X, beta)
    a = (design.treatment if treatment is None else treatment) - design.treatment_center
    if design.has_treatment:
        mu = (
            mu
            + a[None, None, :, None] * _arr(posterior, "direct_effect", "dimension")[:, :, None, :]
        )
    if community_term is None:
        u = _arr(posterior, "community_effect", "community", "dimension")
        community_term = u[:, :, design.community_index, :]
    mu = mu + community_term
    return mu


def potential_means(
    posterior: xr.Dataset,
    design: MultilevelDesign,
    a: int,
    s: int,
    scope: str,
    rng: np.random.Generator | None = None,
    new_z: np.ndarray | None = None,
) -> np.ndarray:
    """Posterior mean outcome of every household under exposure (a, s).

    Parameters
    ----------
    posterior
        Posterior with the multilevel model's variables.
    design
        The design fitted.
    a, s
        Own participation and community CBO presence.
    scope
        ``"observed"``: each household keeps its own community's deviation ``d_c``;
        ``"new"``: every household is placed in one new community whose
        effect is drawn from the population of communities (``tau * z_new``).
    rng, new_z
        Source of ``z_new`` (shape (chain, draw, dimension)); pass the same ``new_z`` to
        every exposure so contrasts compare the same new community.

    Returns
    -------
    numpy.ndarray
        Shape (chain, draw, household, dimension), on the outcome's own scale.
    """
    tau = _arr(posterior, "community_sd", "dimension")
    ie = (
        _arr(posterior, "spillover_effect", "dimension")
        if design.has_presence
        else np.zeros_like(tau)
    )
    if scope == "observed":
        if "community_deviation" in posterior:
            dev = _arr(posterior, "community_deviation", "community", "dimension")
        else:  # a posterior with the deviations sampled non-centred (tau * z)
            dev = tau[:, :, None, :] * _arr(posterior, "community_z", "community", "dimension")
        dev = dev[:, :, design.community_index]
    elif scope == "new":
        if new_z is None:
            rng = rng or np.random.default_rng(0)
            new_z = rng.standard_normal(tau.shape)
        dev = tau[:, :, None, :] * new_z[:, :, None, :]
    else:
        raise ValueError(f"scope {scope!r}; allowed: observed, new")
    term = (s - design.presence_center) * ie[:, :, None, :] + dev
    mu = _linear_predictor(
        posterior, design, treatment=np.full(design.n, float(a)), community_term=term
    )
    return mu * design.y_sd + design.y_mean


def _predictive_groups(
    posterior: xr.Dataset, design: MultilevelDesign, rng: np.random.Generator, multivariate: bool
) -> tuple[xr.Dataset, xr.Dataset]:
    """Posterior predictive draws and pointwise log-likelihood (standardized scale)."""
    mu = _linear_predictor(posterior, design)
    resid = design.y[None, None] - mu
    coords = {
        "chain": posterior.chain,
        "draw": posterior.draw,
        "household": list(design.household_ids),
        "dimension": list(design.dimensions),
    }
    if multivariate:
        L = np.linalg.cholesky(_residual_cov(posterior))
        K = len(design.dimensions)
        sol = np.linalg.solve(L[:, :, None], resid[..., None])[..., 0]
        logdet = np.log(np.diagonal(L, axis1=-2, axis2=-1)).sum(-1)
        ll = -0.5 * (sol**2).sum(-1) - logdet[:, :, None] - 0.5 * K * np.log(2 * np.pi)
        eps = np.einsum("cdkl,cdil->cdik", L, rng.standard_normal(mu.shape))
        loglik = xr.Dataset(
            {"y_obs": (("chain", "draw", "household"), ll)},
            coords={k: v for k, v in coords.items() if k != "dimension"},
        )
    else:
        sd = _arr(posterior, "residual_sd", "dimension")[:, :, None, :]
        ll = -0.5 * (resid / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)
        eps = sd * rng.standard_normal(mu.shape)
        loglik = xr.Dataset(
            {"y_obs": (("chain", "draw", "household", "dimension"), ll)}, coords=coords
        )
    pp = xr.Dataset(
        {"y_obs": (("chain", "draw", "household", "dimension"), mu + eps)}, coords=coords
    )
    return pp, loglik


# --------------------------------------------------------------------------------------
# The whole fit
# --------------------------------------------------------------------------------------


@dataclass
class FitResult:
    """What :func:`fit_spec` / :func:`write_fit` produce.

    Attributes
    ----------
    spec, design
        What was fitted.
    idata
        One InferenceData: prior, posterior, posterior_predictive, log_likelihood,
        observed_data, constant_data (dims household, community, dimension).
    idata_without
        The comparison model without ``spec.loo_drop`` terms (for LOO), if any.
    effects, diagnostics, comparison, loo, sensitivity
        The tables written to CSV.
    converged
        Whether the convergence gate passed.
    failures
        The gate's failure messages.
    timings
        Seconds: compile, sampling, total.
    files
        Files written (by :func:`write_fit`).
    """

    spec: ModelSpec
    design: MultilevelDesign
    idata: Any
    idata_without: Any = None
    effects: pd.DataFrame = field(default_factory=pd.DataFrame)
    diagnostics: pd.DataFrame = field(default_factory=pd.DataFrame)
    comparison: pd.DataFrame = field(default_factory=pd.DataFrame)
    loo: pd.DataFrame = field(default_factory=pd.DataFrame)
    sensitivity: pd.DataFrame = field(default_factory=pd.DataFrame)
    converged: bool = True
    failures: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


def _prior_groups(
    model, design: MultilevelDesign, spec: ModelSpec, seed: int, multivariate: bool
) -> tuple[xr.Dataset, xr.Dataset]:
    """Prior draws of the parameters and community deviations, and the prior predictive.

    The likelihood is a Potential (the deviations are integrated out), which constrains no
    parameter a priori; the prior predictive is drawn with the posterior predictive's own
    code (:func:`_predictive_groups`) from the prior draws.
    """
    import pymc as pm

    with model, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The effect of Potentials on other parameters")
        prior = pm.sample_prior_predictive(draws=spec.sampler.prior_draws, random_seed=seed)
    keep = [v for v in prior.prior.data_vars if v in GATED_VARIABLES]
    prior_ds = prior.prior[keep]
    if not multivariate:  # the one-outcome model's prior, labelled per outcome
        dims = list(design.dimensions)
        prior_ds = xr.concat([prior_ds.assign_coords(dimension=[d]) for d in dims], dim="dimension")
    rng = np.random.default_rng([int(seed), 2])
    prior_ds = _prior_community(prior_ds, design, rng)
    prior_pred, _ = _predictive_groups(prior_ds, design, rng, multivariate=multivariate)
    return prior_ds, prior_pred


def _provenance(spec: ModelSpec, design: MultilevelDesign, seed: int, status: str) -> dict:
    return {
        "model_name": spec.name,
        "model_kind": spec.kind,
        "package": "pari_bayes",
        "package_version": __version__,
        "spec_json": spec.to_json(),
        "spec_path": str(spec.path),
        "data_hash": design.data_hash,
        "seed": int(seed),
        "sampler": spec.sampler.sampler,
        "adjustment_source": design.adjustment_source,
        "adjustment_sets": json.dumps(design.adjustment, sort_keys=True),
        "outcome_source": design.outcome_source,
        "outcome_scale": "standardized; multiply by constant_data.y_sd and add y_mean",
        "status": status,
    }


def _assemble(
    fitted: _Fitted,
    design: MultilevelDesign,
    spec: ModelSpec,
    seed: int,
    prior=None,
    prior_pred=None,
    multivariate: bool = False,
):
    import arviz as az

    rng = np.random.default_rng(seed)
    pp, loglik = _predictive_groups(fitted.posterior, design, rng, multivariate)
    hh = {"household": list(design.household_ids)}
    observed = xr.Dataset(
        {"y_obs": (("household", "dimension"), design.y)},
        coords={**hh, "dimension": list(design.dimensions)},
    )
    constant = xr.Dataset(
        {
            "X": (("household", "covariate"), design.X),
            "participation": (("household",), design.treatment),
            "community_index": (("household",), design.community_index),
            "presence": (("community",), design.presence),
            "covariate_mask": (("covariate", "dimension"), design.covariate_mask),
            "y_mean": (("dimension",), design.y_mean),
            "y_sd": (("dimension",), design.y_sd),
            "x_mean": (("covariate",), design.x_mean),
            "x_sd": (("covariate",), design.x_sd),
        },
        coords={
            **hh,
            "community": list(design.communities),
            "covariate": list(design.covariates),
            "dimension": list(design.dimensions),
        },
    )
    groups = {
        "posterior": fitted.posterior,
        "sample_stats": fitted.sample_stats,
        "posterior_predictive": pp,
        "log_likelihood": loglik,
        "observed_data": observed,
        "constant_data": constant,
    }
    if prior is not None:
        groups["prior"] = prior
        groups["prior_predictive"] = prior_pred
    idata = az.InferenceData(**groups)
    idata.attrs.update(_provenance(spec, design, seed, "ok"))
    idata.attrs["compile_time_s"] = float(fitted.compile_time)
    idata.attrs["sampling_time_s"] = float(fitted.sampling_time)
    return idata


def fit_spec(
    survey,
    spec: ModelSpec | str | Path,
    seed: int | None = None,
    scores: pd.DataFrame | None = None,
    adjustment: dict[str, tuple[str, ...]] | None = None,
    sensitivity: bool = True,
    compare: bool = True,
    prior: bool = True,
    identification: Any = None,
) -> FitResult:
    """Fit a multilevel or multivariate spec (no files written; no gate applied).

    Parameters
    ----------
    survey
        A validated survey.
    spec
        A :class:`ModelSpec` or the path of a spec file.
    seed
        Seed of every sampler call and predictive draw; the spec's by default.
    scores, adjustment
        Override the outcome scores / adjustment sets (tests, simulations).
    sensitivity
        Refit with the community-sd prior scale multiplied by ``spec.sensitivity``.
    compare
        Fit the comparison model without ``spec.loo_drop`` for LOO.
    prior
        Draw the prior and prior predictive.
    identification
        Identification result supplying the adjustment sets (the run's DAG); ``None``
        identifies on the bundled DAG.

    Returns
    -------
    FitResult
    """
    from pari_bayes.diagnostics import diagnostics_table
    from pari_bayes.effects import effects_table

    if not isinstance(spec, ModelSpec):
        spec = load_spec(spec)
    if spec.kind not in ("multilevel", "multivariate"):
        raise SpecError(
            f"{spec.path}: key kind: {spec.kind!r} is not fitted by the multilevel "
            "module; allowed: multilevel, multivariate"
        )
    seed = spec.sampler.seed if seed is None else int(seed)
    start = time.perf_counter()
    design = build_design(
        survey, spec, scores=scores, adjustment=adjustment, identification=identification
    )
    multivariate = spec.kind == "multivariate"
    fitted, sampler = _fit_design(design, spec, seed)
    prior_ds = prior_pred = None
    if prior:
        prior_ds, prior_pred = _prior_groups(sampler.model, design, spec, seed, multivariate)
    idata = _assemble(fitted, design, spec, seed, prior_ds, prior_pred, multivariate)
    effects = (
        effects_table(
            lambda a, s, scope, new_z: potential_means(
                idata.posterior, design, a, s, scope, new_z=new_z
            ),
            design.dimensions,
            alphas=(design.observed_participation_rate(), 0.25, 0.5),
            rng=np.random.default_rng(seed),
            shape=(idata.posterior.sizes["chain"], idata.posterior.sizes["draw"]),
        )
        if design.has_treatment and design.has_presence
        else pd.DataFrame()
    )
    diag = diagnostics_table(
        idata,
        var_names=[v for v in GATED_VARIABLES if v in idata.posterior],
        sampling_time=fitted.sampling_time,
    )
    result = FitResult(spec=spec, design=design, idata=idata, effects=effects, diagnostics=diag)
    result.timings = {
        "compile_s": fitted.compile_time,
        "sampling_s": fitted.sampling_time,
        "sampling_per_outcome_s": fitted.per_outcome,
    }
    if compare and spec.loo_drop:
        reduced = replace(spec, terms=tuple(t for t in spec.terms if t not in spec.loo_drop))
        d2 = reduced_design(design, tuple(spec.loo_drop))
        f2, _ = _fit_design(d2, spec, seed, sampler=sampler, compiled_design=design)
        result.idata_without = _assemble(f2, d2, reduced, seed, multivariate=multivariate)
        result.loo = loo_table(result.idata, result.idata_without, design, multivariate)
        result.timings["sampling_s"] += f2.sampling_time
    if sensitivity and spec.sensitivity and design.has_presence:
        result.sensitivity = sensitivity_table(design, spec, seed, sampler, fitted, effects)
    result.timings["total_s"] = time.perf_counter() - start
    return result


# --------------------------------------------------------------------------------------
# LOO and prior sensitivity
# --------------------------------------------------------------------------------------


def _loo_idata(idata, dim: str | None):
    import arviz as az

    ll = idata.log_likelihood["y_obs"]
    if dim is not None:
        ll = ll.sel(dimension=dim)
    post = idata.posterior[["intercept"]]
    return az.InferenceData(posterior=post, log_likelihood=xr.Dataset({"y_obs": ll}))


def loo_table(idata_with, idata_without, design: MultilevelDesign, multivariate: bool):
    """LOO-CV (PSIS) of the models with and without the CBO terms, per outcome."""
    import arviz as az

    rows = []
    targets = ["all dimensions (joint)"] if multivariate else list(design.dimensions)
    for target in targets:
        dim = None if multivariate else target
        models = {
            "with_cbo_terms": _loo_idata(idata_with, dim),
            "without_cbo_terms": _loo_idata(idata_without, dim),
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cmp = az.compare(models, ic="loo")
            loos = {k: az.loo(v, pointwise=True) for k, v in models.items()}
        for name, row in cmp.iterrows():
            k = loos[name].pareto_k.to_numpy()
            rows.append(
                {
                    "dimension": target,
                    "model": name,
                    "rank": int(row["rank"]),
                    "elpd_loo": row["elpd_loo"],
                    "se": row["se"],
                    "p_loo": row["p_loo"],
                    "elpd_diff": row["elpd_diff"],
                    "dse": row["dse"],
                    "weight": row["weight"],
                    "pareto_k_max": float(np.max(k)),
                    "n_pareto_k_gt_0_7": int((k > 0.7).sum()),
                }
            )
    return pd.DataFrame(rows)


#: Pareto k above which importance weights are not trusted (Vehtari et al. 2024) and the
#: sensitivity variant is refitted instead.
PARETO_K_MAX = 0.7


def _importance_weights(
    log_ratio: np.ndarray, reff: float = 1.0
) -> tuple[np.ndarray, float, float]:
    """PSIS-smoothed normalized weights of flat draws; returns (weights, khat, ESS)."""
    import arviz as az

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lw, khat = az.psislw(np.asarray(log_ratio, float)[None, :], reff=reff)
    w = np.exp(lw[0] - lw[0].max())
    w /= w.sum()
    return w, float(np.asarray(khat).ravel()[0]), float(1.0 / np.sum(w**2))


def sensitivity_table(design, spec, seed, sampler, fitted, effects) -> pd.DataFrame:
    """Effects (DE, IE, TE, observed scope) with the community-sd prior scale multiplied.

    Each variant reweights the posterior by the prior ratio ``p_new(tau) / p_old(tau)``
    with Pareto-smoothed importance sampling (:func:`arviz.psislw`): no refit, so a
    variant costs milliseconds. Where the Pareto k of the weights exceeds
    :data:`PARETO_K_MAX` the weights are not trusted and the variant is refitted with the
    compiled model (``method = refit``). Univariate specs are reweighted one outcome at a
    time (each outcome is its own posterior); the multivariate spec jointly.
    """
    from pari_bayes.effects import EXPOSURES, estimand_draws, weighted_summary
    from pari_bayes.priors import prior_logpdf

    priors = resolve_priors(spec.priors)
    tau_prior = priors["community_sd"]
    base = tau_prior.params.get("sigma", 1.0 / tau_prior.params.get("lam", 1.0))
    multivariate = spec.kind == "multivariate"
    dims = design.dimensions
    keep = ("DE", "IE", "TE")

    def draws_of(post):
        means = {e: potential_means(post, design, e[0], e[1], "observed") for e in EXPOSURES}
        out = {}
        for k, dim in enumerate(dims):
            d = estimand_draws({e: m[..., k] for e, m in means.items()})
            out[dim] = {est: d[(est, None)].ravel() for est in keep}
        return out

    base_draws = draws_of(fitted.posterior)
    tau = fitted.posterior["community_sd"].transpose("chain", "draw", "dimension").to_numpy()
    n_chain, n_draw = tau.shape[:2]
    tau = tau.reshape(n_chain * n_draw, -1)
    div_base = int(fitted.sample_stats["diverging"].sum())
    ess_base = {
        dim: float(effects.loc[effects["dimension"] == dim, "ess_bulk"].min()) for dim in dims
    }
    rows = []
    for mult in sorted({1.0, *spec.sensitivity}):
        log_ratio = prior_logpdf(tau_prior, tau, mult) - prior_logpdf(tau_prior, tau, 1.0)
        weights, khats, ess = {}, {}, {}
        if mult != 1.0:
            groups = [list(dims)] if multivariate else [[d] for d in dims]
            for group in groups:
                idx = [dims.index(d) for d in group]
                reff = min(ess_base[d] for d in group) / tau.shape[0]
                w, k, e = _importance_weights(log_ratio[:, idx].sum(axis=1), reff=min(reff, 1.0))
                for d in group:
                    weights[d], khats[d], ess[d] = w, k, e
        refit = None
        if any(k > PARETO_K_MAX for k in khats.values()):
            f, _ = _fit_design(design, spec, seed, tau_multiplier=mult, sampler=sampler)
            refit = (draws_of(f.posterior), f.posterior, int(f.sample_stats["diverging"].sum()))
        for k_dim, dim in enumerate(dims):
            method = "posterior" if mult == 1.0 else "psis"
            draws, w, div = base_draws[dim], weights.get(dim), div_base
            tau_k = tau[:, k_dim]
            if refit is not None and khats.get(dim, 0.0) > PARETO_K_MAX:
                method = "refit"
                draws, w, div = refit[0][dim], None, refit[2]
                tau_k = refit[1]["community_sd"].sel(dimension=dim).to_numpy().ravel()
            tau_mean = float(np.average(tau_k, weights=w))
            for est in keep:
                summary = weighted_summary(draws[est], w)
                rows.append(
                    {
                        "dimension": dim,
                        "estimand": est,
                        "prior_scale_multiplier": mult,
                        "community_sd_prior_sigma": base * mult,
                        "method": method,
                        "pareto_k": khats.get(dim, float("nan")),
                        "importance_ess": ess.get(dim, float(len(draws[est]))),
                        "mean": summary["mean"],
                        "sd": summary["sd"],
                        "q05": summary["q05"],
                        "q95": summary["q95"],
                        "prob_positive": summary["prob_positive"],
                        "community_sd_mean": tau_mean * design.y_sd[k_dim],
                        "divergences": div,
                    }
                )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------


def write_fit(
    survey,
    spec: ModelSpec | str | Path,
    directory: str | Path,
    seed: int | None = None,
    allow_unconverged: bool = False,
    plots: bool = True,
    identification: Any = None,
) -> FitResult:
    """Fit a spec and write its files into an existing folder.

    Writes ``posterior.nc`` (and ``posterior_without_cbo.nc`` when the spec compares
    models), ``effects.csv``, ``diagnostics.csv``, ``comparison.csv``, ``loo.csv``,
    ``prior_sensitivity.csv`` and the plots ``forest.png``, ``ppc.png``,
    ``prior_sensitivity.png``.

    Parameters
    ----------
    survey
        A validated survey.
    spec
        Spec object or file of kind ``multilevel`` or ``multivariate`` (other kinds go
        through :func:`pari_bayes.estimation.fitting.fit_model` and the registry).
    directory
        Existing output folder.
    seed
        Seed of everything (spec's seed by default).
    allow_unconverged
        Write the outputs even if the convergence gate fails; every file is then marked
        ``UNCONVERGED``.
    plots
        Draw the PNG plots.
    identification
        Identification result supplying the adjustment sets (the run's DAG).

    Returns
    -------
    FitResult

    Raises
    ------
    ConvergenceError
        If the gate fails and ``allow_unconverged`` is false (nothing is written).
    """
    from pari_bayes.diagnostics import check_convergence
    from pari_bayes.effects import comparison_table

    directory = Path(directory)
    if not isinstance(spec, ModelSpec):
        spec = load_spec(spec)
    result = fit_spec(survey, spec, seed=seed, identification=identification)
    seed = spec.sampler.seed if seed is None else int(seed)
    failures = check_convergence(
        result.diagnostics, result.effects, allow_unconverged=allow_unconverged
    )
    result.failures = failures
    result.converged = not failures
    status = "ok" if result.converged else "UNCONVERGED"
    result.comparison = (
        comparison_table(result.effects, survey) if len(result.effects) else (pd.DataFrame())
    )
    result.idata.attrs["status"] = _posterior_status(status)
    result.idata.attrs["gate_failures"] = json.dumps(failures)
    _write_all(result, directory, status, plots)
    return result


def _write_all(result: FitResult, directory: Path, status: str, plots: bool) -> None:
    from pari_bayes.diagnostics import mark_unconverged
    from pari_bayes.io import write_csv

    written = []
    nc = directory / "posterior.nc"
    _write_posterior(result.idata, nc, result.spec, status)
    written.append(nc.name)
    if result.idata_without is not None:
        result.idata_without.attrs["status"] = _posterior_status(status)
        # the comparison model is kept for LOO: its posterior predictive is not stored
        _write_posterior(
            result.idata_without,
            directory / "posterior_without_cbo.nc",
            result.spec,
            status,
            drop_groups=("posterior_predictive",),
        )
        written.append("posterior_without_cbo.nc")
    tables = {
        "effects.csv": result.effects,
        "diagnostics.csv": result.diagnostics,
        "comparison.csv": result.comparison,
        "loo.csv": result.loo,
        "prior_sensitivity.csv": result.sensitivity,
    }
    for name, frame in tables.items():
        write_csv(mark_unconverged(frame, status), directory / name)
        written.append(name)
    if plots:
        from pari_bayes.estimation import multilevel_plots as mp

        title = "" if status == "ok" else "UNCONVERGED - "
        for name, fn in (
            ("forest.png", mp.forest_plot),
            ("ppc.png", mp.ppc_plot),
            ("prior_sensitivity.png", mp.sensitivity_plot),
        ):
            if fn(result, directory / name, title_prefix=title):
                written.append(name)
    result.files = written


#: Posterior variables not written to ``posterior.nc``: ``pm.LKJCholeskyCov``'s own
#: deterministics, exact copies of ``residual_corr`` / ``residual_sd`` with unlabelled dims.
POSTERIOR_NOT_STORED = ("residual_chol_corr", "residual_chol_stds")


def _posterior_status(status: str) -> str:
    """Return the posterior file's ``status`` attribute (``converged`` / ``UNCONVERGED``)."""
    return "converged" if status == "ok" else "UNCONVERGED"


def _write_posterior(
    idata, path: Path, spec: ModelSpec, status: str, drop_groups: tuple[str, ...] = ()
) -> None:
    """Write one posterior file through the shared writer (provenance schema, compression).

    The multilevel posterior holds no per-household deterministic (the linear predictor is
    recomputed from the parameters, see :func:`potential_means`); only the exact duplicates
    in :data:`POSTERIOR_NOT_STORED` are left out, and the shared writer thins the
    per-household predictive and log-likelihood groups.
    """
    if drop_groups:
        import arviz as az

        idata_out = az.InferenceData(
            **{g: getattr(idata, g) for g in idata.groups() if g not in drop_groups}
        )
        idata_out.attrs.update(dict(idata.attrs))
    else:
        idata_out = idata
    attrs = dict(idata.attrs)
    write_posterior(
        idata_out,
        path,
        model_name=attrs.get("model_name", spec.name),
        kind=attrs.get("model_kind", spec.kind),
        spec_json=attrs.get("spec_json", spec.to_json()),
        data_hash=attrs["data_hash"],
        seed=int(attrs["seed"]),
        status=_posterior_status(status),
        drop=POSTERIOR_NOT_STORED,
    )
