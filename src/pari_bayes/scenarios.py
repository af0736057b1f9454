"""Designed simulated surveys for the robustness suite, with their ground truth.

This is an *independent* generator: it is not :mod:`pari_bayes.simulate` (which is
calibrated to the paper's published tables) and none of its parameters are taken from the
bundled calibration. What real surveys differ in is set by design in a :class:`Scenario`
(size, number of communities and how many have CBOs, participation rate, loading strength,
category sparsity, zero share and scale of the amount item, between-community sd, the true
effects); every nuisance parameter (covariate distributions, structural coefficients,
confounding of participation by covariates, disturbance correlations, item loadings and
direct item effects) is drawn from the scenario's seed, so it varies across the suite by
design too. The item types and levels are the codebook's (``data/codebook.toml``): category
sparsity varies through threshold placement, never the number of levels.

The model
---------
Design
    ``n_communities`` communities ``C01, C02, ...`` (formed 6-110 months before the survey
    month), ``n_cbo_communities`` of them (chosen at random) with 1-3 CBOs. Households:
    at least 3 per community, the rest split by Dirichlet(2) weights.
Covariates
    age (community-shifted normal, clipped to 16-100), gender, education (1-3, Dirichlet
    shares), household size (1 + Poisson, at most 15), urban hukou (community-shifted
    logistic), off-farm work (logistic in age and education), monthly household income
    (log-normal in size, off-farm work and hukou), residence months (uniform up to the
    community's age). Every covariate distribution's parameters are drawn from the seed.
Participation (CBO communities only)
    a ~ Bernoulli(logistic(c + g'z)), z = the eight standardized covariates of the DAG's
    adjustment set (``models/dag.dot``: residence_months, age, gender, urban_hukou,
    education, offfarm_employed, income_scale, household_size), g ~ N(0, 0.35) per
    covariate (observed confounding), c solved so that the expected share of participants
    among CBO-community households is ``participation_rate``. There is *no* unobserved
    confounder: under the default DAG with its unobserved node removed, DE and IE are
    identified, so coverage of the truth is a fair test of the estimators.
Latent factors, d = 1..4 (:data:`pari_bayes.codebook.DIMENSIONS`)
    eta_d = u_{c,d} + z'beta_d + DE_d a + IE_d s + e_d, u_{c,d} ~ N(0, community_sd^2),
    beta ~ N(0, 0.25^2) per sd of each covariate, e ~ MVN(0, R), unit variances, R a
    random correlation matrix (off-diagonals about 0-0.5). Effects are therefore in sd
    units of the household-level disturbance.
Measurement (m = lambda eta_d + direct terms; lambda > 0, higher = more integrated)
    ordinal items: P(y <= k) = logistic(tau_k - m), thresholds solved so that the
    category shares of the observed survey are a target profile (``thresholds``:
    ``balanced`` equal shares, ``skewed`` geometric shares (ratio 2), ``sparse`` one
    extreme category at 4%, the others equal; alternate items put the rare end at the
    top); option counts: Binomial(trials, logistic(c + m)) with c solved for a target mean
    share (0.45 / 0.2 / 0.06, flipped for alternate items); human_capital = employed /
    household_size, employed ~ Binomial(size, logistic(c + m)) with c solved so that the
    expected share of households with nobody employed is ``zero_share``;
    per_capita_employment_income = 0 if nobody is employed, else exp(mu + m + sigma Z) /
    employed (a household total per employed member, as ``models/latent.toml`` models it),
    mu = ``amount_log_mean``, sigma = ``amount_log_sd``, rounded to 0.01 (at least 0.01).
    Direct (MIMIC) item effects exist where the shipped latent spec declares them:
    income on economic_pressure and human_capital, off-farm work on human_capital and the
    employment income. Loadings: base values per item jittered by the seed, times the
    factor's ``loading_strength`` multiplier (weak 0.45, medium 1, strong 1.8).

Every random number is drawn up front (common random numbers), so the potential-outcome
surveys under (a, s) = (1, 1), (0, 1), (0, 0) are the same households with the same
covariates, community effects, disturbances and measurement noise; thresholds and
intercepts are solved once, on the observed survey, and held fixed.

Truth (:class:`ScenarioTruth`)
------------------------------
latent
    DE_d, IE_d and TE_d = DE_d + IE_d: the structural coefficients, in sd units of the
    household-level disturbance -- the estimand of the latent spec
    (``pari_bayes.estimation.latent.latent_effects``, scope ``observed``: the average over
    the sample's households of eta(1, 1) - eta(0, 1), resp. eta(0, 1) - eta(0, 0); the
    structural model is linear without interactions, so this average is the coefficient
    itself and does not depend on which households are averaged or on community effects).
score (:meth:`ScenarioTruth.score_effects`)
    The effect on each dimension's first-principal-component score used by the table4 and
    multivariate specs: with the PCA *fitted on the observed survey* (``transform`` =
    ``pari_bayes.measurement.pca.pca_scores(survey.data, codebook).transform``: the fitted
    item standardization, weights, sign and score scaling), DE = mean over all households
    of score(Y(1, 1)) - score(Y(0, 1)), IE = mean of score(Y(0, 1)) - score(Y(0, 0)),
    TE = DE + IE, where Y(a, s) are the potential-outcome item draws above. This is how
    the bundled survey's score truth is defined with ``pari_bayes.simulate``
    (``simulate_potential_outcomes``) and matches the specs' g-computation (average over
    every household of the sample). The PCA lives in a later layer than this module, so
    the caller passes its ``transform``.

The bundled survey at other seeds (:func:`bundled_seeds`) is drawn by
:func:`pari_bayes.simulate.simulate_survey` with the calibrated parameters of
``data/generator_params.json``: its latent truth is DE_d / sqrt(1 + gamma_d^2) (the
household disturbance of the fitted model absorbs the unobserved sociability term
gamma_d S, S ~ N(0, 1)), and participation there *is* confounded by S, so its coverage is
not expected to be nominal; it is reported apart from the suite.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, special

from pari_bayes.codebook import DIMENSIONS, Codebook, load_codebook
from pari_bayes.errors import PariBayesError
from pari_bayes.income import income_scale
from pari_bayes.io import atomic_write_text, write_csv
from pari_bayes.registry import (
    CBO,
    DEFAULT_KINDS,
    Community,
    Registry,
    load_registry,
    registry_toml,
)

__all__ = [
    "ADJUSTMENT_COVARIATES",
    "LOADING_LEVELS",
    "THRESHOLD_PLACEMENTS",
    "Scenario",
    "ScenarioError",
    "ScenarioTruth",
    "simulate_scenario",
    "suite",
    "bundled_seeds",
    "registry_toml",
    "write_scenario",
]

#: The DAG's adjustment set (``models/dag.dot``), which the generator's structural and
#: participation models use: so the shipped specs are correctly specified structurally.
ADJUSTMENT_COVARIATES = (
    "residence_months",
    "age",
    "gender",
    "urban_hukou",
    "education",
    "offfarm_employed",
    "income_scale",
    "household_size",
)

#: Loading multipliers by name (per factor).
LOADING_LEVELS = {"weak": 0.45, "medium": 1.0, "strong": 1.8}

#: Ordinal threshold placements (category sparsity).
THRESHOLD_PLACEMENTS = ("balanced", "skewed", "sparse")

#: Target mean share of the option-count items per placement (flipped for alternate items).
_COUNT_MEAN = {"balanced": 0.45, "skewed": 0.2, "sparse": 0.06}

#: Base loadings at "medium" (logit scale; for the amount item, in units of amount_log_sd).
_BASE_LOADING = {"ordinal": 1.3, "binomial": 0.7, "employment_share": 0.8, "amount": 0.6}

_COUNT_TRIALS = {"activities_with_new_friends": 9, "lifestyle_changes": 5}
_SHARE_ITEM = "human_capital"
_AMOUNT_ITEM = "per_capita_employment_income"
#: Direct covariate effects, as declared by models/latent.toml (item -> covariates).
_DIRECT = {
    "economic_pressure": ("income_scale",),
    "human_capital": ("income_scale", "offfarm_employed"),
    "per_capita_employment_income": ("offfarm_employed",),
}
MAX_HOUSEHOLD_SIZE = 15
MAX_RESIDENCE_MONTHS = 120
SURVEY_MONTH = (2023, 9)
MIN_PER_COMMUNITY = 3
BUNDLED_SEED = 20240611
_EXPOSURES = ((1, 1), (0, 1), (0, 0))


class ScenarioError(PariBayesError, ValueError):
    """A scenario's design cannot give an identified survey (or is out of range)."""


Strength = str | float


@dataclass(frozen=True)
class Scenario:
    """Design parameters of one simulated survey.

    Attributes
    ----------
    name
        Short unique label (used in file and table names).
    n_households
        Households surveyed (at least 3 per community and 50 in all).
    n_communities
        Communities (at least 2).
    n_cbo_communities
        Communities with CBOs: 1 to ``n_communities - 1`` (otherwise participation or CBO
        presence does not vary and DE or IE is not identified).
    participation_rate
        Expected share of participants among households of CBO communities, in (0, 1).
    loading_strength
        ``"weak"``, ``"medium"``, ``"strong"`` or a positive multiplier, for every factor or
        a tuple of four (one per factor, :data:`~pari_bayes.codebook.DIMENSIONS` order).
    thresholds
        Ordinal threshold placement: ``"balanced"``, ``"skewed"`` or ``"sparse"``.
    zero_share
        Expected share of households with nobody employed (zero amounts), in (0, 1).
    amount_log_mean, amount_log_sd
        Log-scale location and spread of the per-employed amount (the bundled survey's are
        about 6.3 and 0.6 in yuan; other values mimic other currencies or units).
    community_sd
        Sd of the community effect of every factor, in disturbance sd units (0 allowed).
    de, ie
        True direct and spillover effects per factor, in disturbance sd units.
    seed
        Seed of every random number and nuisance parameter.
    generator
        ``"independent"`` (this module) or ``"bundled"`` (:mod:`pari_bayes.simulate` with the
        calibrated parameters; only ``n_households`` and ``seed`` are used).
    group
        Label used to report groups of scenarios apart (``"suite"``, ``"bundled"``).
    description
        One line saying what the scenario varies.
    """

    name: str
    n_households: int = 800
    n_communities: int = 12
    n_cbo_communities: int = 6
    participation_rate: float = 0.3
    loading_strength: Strength | tuple[Strength, ...] = "medium"
    thresholds: str = "balanced"
    zero_share: float = 0.3
    amount_log_mean: float = 8.5
    amount_log_sd: float = 0.9
    community_sd: float = 0.3
    de: tuple[float, ...] = (0.4, 0.3, 0.5, 0.3)
    ie: tuple[float, ...] = (0.3, 0.4, 0.25, 0.35)
    seed: int = 1
    generator: str = "independent"
    group: str = "suite"
    description: str = ""

    def __post_init__(self) -> None:
        def bad(message: str) -> None:
            raise ScenarioError(f"scenario {self.name!r}: {message}")

        if not isinstance(self.name, str) or not self.name or "," in self.name:
            bad("name must be a non-empty string without commas")
        if self.generator not in ("independent", "bundled"):
            bad(f"generator {self.generator!r}; allowed: independent, bundled")
        if not isinstance(self.n_households, int | np.integer) or self.n_households < 50:
            bad(f"n_households must be an integer of at least 50, got {self.n_households!r}")
        if self.generator == "bundled":
            return
        if self.n_communities < 2:
            bad(f"n_communities must be at least 2, got {self.n_communities}")
        if not 1 <= self.n_cbo_communities <= self.n_communities - 1:
            bad(
                f"n_cbo_communities = {self.n_cbo_communities} of {self.n_communities}: "
                "with no CBO community nobody can participate (DE not identified), with "
                "CBOs everywhere presence does not vary (IE not identified); allowed: 1 to "
                f"{self.n_communities - 1}"
            )
        if self.n_households < MIN_PER_COMMUNITY * self.n_communities:
            bad(
                f"{self.n_households} households cannot give {self.n_communities} "
                f"communities at least {MIN_PER_COMMUNITY} households each"
            )
        if not 0.0 < self.participation_rate < 1.0:
            bad(
                f"participation_rate {self.participation_rate!r} must lie strictly between 0 "
                "and 1: with no participants (0) or no non-participants in CBO communities "
                "(1) the direct effect is not identified"
            )
        if not 0.0 < self.zero_share < 1.0:
            bad(f"zero_share {self.zero_share!r} must lie strictly between 0 and 1")
        if self.thresholds not in THRESHOLD_PLACEMENTS:
            bad(f"thresholds {self.thresholds!r}; allowed: {', '.join(THRESHOLD_PLACEMENTS)}")
        if not self.amount_log_sd > 0:
            bad(f"amount_log_sd must be positive, got {self.amount_log_sd!r}")
        if not self.community_sd >= 0:
            bad(f"community_sd must be non-negative, got {self.community_sd!r}")
        for label, values in (("de", self.de), ("ie", self.ie)):
            if len(values) != len(DIMENSIONS):
                bad(f"{label} needs {len(DIMENSIONS)} values (one per factor), got {values!r}")
        self.loadings_multipliers()  # validates

    def loadings_multipliers(self) -> tuple[float, ...]:
        """Return the loading multiplier of each factor (``DIMENSIONS`` order)."""
        raw = self.loading_strength
        values = raw if isinstance(raw, tuple) else (raw,) * len(DIMENSIONS)
        if len(values) != len(DIMENSIONS):
            raise ScenarioError(
                f"scenario {self.name!r}: loading_strength needs 1 or {len(DIMENSIONS)} "
                f"values, got {raw!r}"
            )
        out = []
        for v in values:
            if isinstance(v, str):
                if v not in LOADING_LEVELS:
                    raise ScenarioError(
                        f"scenario {self.name!r}: loading_strength {v!r}; allowed: "
                        f"{', '.join(LOADING_LEVELS)} or a positive number"
                    )
                out.append(LOADING_LEVELS[v])
            elif float(v) > 0:
                out.append(float(v))
            else:
                raise ScenarioError(
                    f"scenario {self.name!r}: loading multiplier {v!r} must be positive"
                )
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        """Return the design as a JSON-able dict."""
        out = asdict(self)
        for key in ("de", "ie", "loading_strength"):
            if isinstance(out[key], tuple):
                out[key] = list(out[key])
        return out


@dataclass
class ScenarioTruth:
    """Ground truth of one simulated survey.

    Attributes
    ----------
    scenario
        The design.
    latent
        ``{dimension: {"DE", "IE", "TE"}}`` in sd units of the household disturbance
        (the latent spec's estimand; see the module docstring).
    potential_outcomes
        ``{(a, s): frame}``: the survey's columns with the items redrawn under exposure
        (a, s) for every household (common random numbers). ``community`` is unchanged,
        so a frame with s != presence is a counterfactual, not a valid survey.
    parameters
        JSON-able generator parameters (loadings, thresholds, intercepts, coefficients,
        community effects, ...).
    realized
        JSON-able summary of the draw (participation share in CBO communities, zero
        share, category shares, exposure counts).
    """

    scenario: Scenario
    latent: dict[str, dict[str, float]]
    potential_outcomes: dict[tuple[int, int], pd.DataFrame] = field(repr=False)
    parameters: dict[str, Any] = field(default_factory=dict, repr=False)
    realized: dict[str, Any] = field(default_factory=dict)

    def score_effects(
        self, transform: Callable[[pd.DataFrame], pd.DataFrame]
    ) -> dict[str, dict[str, float]]:
        """DE, IE and TE on a score scale, from the potential-outcome item draws.

        Parameters
        ----------
        transform
            Maps a frame with the item columns to one score column per dimension, fitted
            on the *observed* survey; for the table4/multivariate specs
            ``pca_scores(survey.data, survey.codebook).transform``.

        Returns
        -------
        dict
            ``{dimension: {"DE", "IE", "TE"}}``: DE = mean over households of
            score(Y(1, 1)) - score(Y(0, 1)), IE = mean of score(Y(0, 1)) - score(Y(0, 0)).
        """
        score = {e: transform(frame) for e, frame in self.potential_outcomes.items()}
        out = {}
        for dim in score[(1, 1)].columns:
            de = float((score[(1, 1)][dim] - score[(0, 1)][dim]).mean())
            ie = float((score[(0, 1)][dim] - score[(0, 0)][dim]).mean())
            out[str(dim)] = {"DE": de, "IE": ie, "TE": de + ie}
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able truth (without the potential-outcome frames)."""
        return {
            "scenario": self.scenario.to_dict(),
            "effects_latent": self.latent,
            "parameters": self.parameters,
            "realized": self.realized,
        }


# ---------------------------------------------------------------------------------------
# generator
# ---------------------------------------------------------------------------------------


def _month(offset_months: int) -> str:
    year, month = SURVEY_MONTH
    total = year * 12 + (month - 1) - offset_months
    return f"{total // 12:04d}-{total % 12 + 1:02d}"


def _make_registry(sc: Scenario, rng: np.random.Generator) -> tuple[Registry, np.ndarray]:
    n = sc.n_communities
    width = max(2, len(str(n)))
    names = [f"C{i + 1:0{width}d}" for i in range(n)]
    ages = rng.integers(6, 111, n)
    with_cbo = np.zeros(n, dtype=bool)
    with_cbo[rng.choice(n, sc.n_cbo_communities, replace=False)] = True
    communities = []
    for i, name in enumerate(names):
        cbos: tuple[CBO, ...] = ()
        if with_cbo[i]:
            k = int(rng.integers(1, 4))
            kinds = rng.choice(len(DEFAULT_KINDS), k)
            cbos = tuple(
                CBO(name=f"{name} organization {j + 1}", kind=DEFAULT_KINDS[int(kinds[j])])
                for j in range(k)
            )
        communities.append(
            Community(name=name, formed=_month(int(ages[i])), surveyed=_month(0), cbos=cbos)
        )
    registry = Registry(communities=tuple(communities), path=Path(f"<scenario {sc.name}>"))
    return registry, ages


def _sizes(sc: Scenario, rng: np.random.Generator) -> np.ndarray:
    weights = rng.dirichlet(np.full(sc.n_communities, 2.0))
    rest = sc.n_households - MIN_PER_COMMUNITY * sc.n_communities
    return MIN_PER_COMMUNITY + rng.multinomial(rest, weights)


def _covariates(
    sc: Scenario, registry: Registry, ages: np.ndarray, rng: np.random.Generator
) -> pd.DataFrame:
    """Household covariates; every distribution's parameters drawn from the seed."""
    n, n_comm = sc.n_households, sc.n_communities
    sizes = _sizes(sc, rng)
    community = rng.permutation(np.repeat(np.arange(n_comm), sizes))
    age_mean, age_sd = rng.uniform(35, 62), rng.uniform(8, 16)
    age_shift = rng.normal(0, 4, n_comm)
    age = np.clip(
        np.round(age_mean + age_shift[community] + age_sd * rng.standard_normal(n)), 16, 100
    )
    gender = (rng.random(n) < rng.uniform(0.35, 0.65)).astype(int)
    edu_p = rng.dirichlet([2.0, 2.0, 2.0])
    education = 1 + np.searchsorted(np.cumsum(edu_p)[:-1], rng.random(n), side="right")
    size = np.clip(1 + rng.poisson(rng.uniform(1.0, 5.0), n), 1, MAX_HOUSEHOLD_SIZE)
    hukou_shift = rng.normal(0, 0.5, n_comm)
    p_hukou = special.expit(special.logit(rng.uniform(0.05, 0.35)) + hukou_shift[community])
    hukou = (rng.random(n) < p_hukou).astype(int)
    z_age = (age - age.mean()) / max(age.std(), 1.0)
    p_off = special.expit(
        rng.uniform(-1.0, 0.5)
        + rng.uniform(-0.8, 0.0) * z_age
        + rng.uniform(0, 0.6) * (education - 2)
    )
    offfarm = (rng.random(n) < p_off).astype(int)
    log_income = (
        rng.uniform(6.0, 9.0)
        + rng.uniform(0.1, 0.5) * np.log(size)
        + rng.uniform(0.1, 0.6) * offfarm
        + rng.uniform(0.0, 0.4) * hukou
        + rng.uniform(0.4, 1.0) * rng.standard_normal(n)
    )
    income = np.maximum(np.round(np.exp(log_income)), 1.0)
    max_months = np.minimum(ages[community], MAX_RESIDENCE_MONTHS)
    residence = np.minimum(np.floor(rng.random(n) * (max_months + 1)), max_months).astype(int)
    return pd.DataFrame(
        {
            "community_index": community,
            "community": np.asarray(registry.names)[community],
            "residence_months": residence,
            "age": age.astype(int),
            "gender": gender,
            "urban_hukou": hukou,
            "offfarm_employed": offfarm,
            "education": education.astype(int),
            "household_size": size.astype(int),
            "household_income": income,
        }
    )


def _standardized(cov: pd.DataFrame) -> np.ndarray:
    cols = []
    for name in ADJUSTMENT_COVARIATES:
        x = (
            income_scale(cov["household_income"]).to_numpy()
            if name == "income_scale"
            else cov[name].to_numpy(dtype=float)
        )
        sd = x.std()
        cols.append((x - x.mean()) / sd if sd > 0 else x - x.mean())
    return np.column_stack(cols)


def _solve(fn: Callable[[float], float], target: float, what: str) -> float:
    """Root of the increasing function fn(c) - target on a wide bracket."""
    lo, hi = -40.0, 40.0
    if not fn(lo) < target < fn(hi):
        raise ScenarioError(f"cannot reach {what} = {target:.3g} (range {fn(lo):.3g}-{fn(hi):.3g})")
    return float(optimize.brentq(lambda c: fn(c) - target, lo, hi, xtol=1e-10))


def _category_shares(k: int, placement: str, flip: bool) -> np.ndarray:
    if placement == "balanced":
        shares = np.full(k, 1.0 / k)
    elif placement == "skewed":
        shares = 2.0 ** np.arange(k)
        shares = shares / shares.sum()
    else:  # sparse: one extreme category rare
        shares = np.full(k, 0.96 / (k - 1))
        shares[0] = 0.04
    return shares[::-1].copy() if flip else shares


def _random_corr(rng: np.random.Generator, k: int) -> np.ndarray:
    w = rng.normal(0, 0.6, (k, 2))
    cov = w @ w.T + np.eye(k)
    d = np.sqrt(np.diag(cov))
    return cov / np.outer(d, d)


@dataclass
class _World:
    """Everything held fixed across exposures: covariates, parameters, random numbers."""

    scenario: Scenario
    registry: Registry
    codebook: Codebook
    cov: pd.DataFrame
    z: np.ndarray
    presence: np.ndarray
    params: dict[str, Any]
    noise: dict[str, np.ndarray]


def _eta(world: _World, a: np.ndarray, s: np.ndarray) -> np.ndarray:
    p = world.params
    comm = world.cov["community_index"].to_numpy()
    beta = np.asarray(p["beta"])  # (8, 4)
    u = np.asarray(p["community_effects"])[comm]  # (n, 4)
    return (
        u
        + world.z @ beta
        + np.asarray(p["DE"])[None, :] * a[:, None]
        + np.asarray(p["IE"])[None, :] * s[:, None]
        + world.noise["disturbance"]
    )


def _linear_predictors(world: _World, eta: np.ndarray) -> dict[str, np.ndarray]:
    p = world.params
    dim_index = {d: j for j, d in enumerate(DIMENSIONS)}
    zcol = {c: j for j, c in enumerate(ADJUSTMENT_COVARIATES)}
    out = {}
    for item in world.codebook.indicator_names:
        spec = p["items"][item]
        m = spec["loading"] * eta[:, dim_index[world.codebook[item].dimension]]
        for cov_name, coef in spec.get("direct", {}).items():
            m = m + coef * world.z[:, zcol[cov_name]]
        out[item] = m
    return out


def _items(world: _World, eta: np.ndarray) -> pd.DataFrame:
    """Draw the 13 items for factor values ``eta`` (fixed parameters, stored noise)."""
    book, noise, p = world.codebook, world.noise, world.params
    lin = _linear_predictors(world, eta)
    size = world.cov["household_size"].to_numpy()
    out: dict[str, np.ndarray] = {}
    employed = None
    for item in book.indicator_names:
        spec, m = p["items"][item], lin[item]
        if spec["type"] == "ordinal":
            latent = m + noise[f"item:{item}"][:, 0]
            idx = (latent[:, None] > np.asarray(spec["thresholds"])[None, :]).sum(axis=1)
            out[item] = np.asarray(book[item].values)[idx]
        elif spec["type"] == "binomial":
            prob = special.expit(spec["intercept"] + m)
            out[item] = (noise[f"item:{item}"] < prob[:, None]).sum(axis=1)
        elif spec["type"] == "employment_share":
            prob = special.expit(spec["intercept"] + m)
            mask = np.arange(MAX_HOUSEHOLD_SIZE)[None, :] < size[:, None]
            employed = ((noise["employed"] < prob[:, None]) & mask).sum(axis=1)
            out[item] = employed / size
    assert employed is not None
    spec = p["items"][_AMOUNT_ITEM]
    log_total = spec["log_mean"] + lin[_AMOUNT_ITEM] + spec["log_sd"] * noise["amount"]
    per_employed = np.exp(log_total) / np.maximum(employed, 1)
    out[_AMOUNT_ITEM] = np.where(employed > 0, np.maximum(np.round(per_employed, 2), 0.01), 0.0)
    return pd.DataFrame({k: out[k] for k in book.indicator_names})


def _calibrate_items(world: _World, eta: np.ndarray) -> None:
    """Solve thresholds and intercepts on the observed factor values (then held fixed)."""
    sc, book, items = world.scenario, world.codebook, world.params["items"]
    lin = _linear_predictors(world, eta)
    size = world.cov["household_size"].to_numpy()
    for j, item in enumerate(book.indicator_names):
        spec, m = items[item], lin[item]
        flip = j % 2 == 1
        if spec["type"] == "ordinal":
            shares = _category_shares(len(book[item].values), sc.thresholds, flip)
            cum = np.cumsum(shares)[:-1]
            spec["target_shares"] = shares.tolist()
            spec["thresholds"] = [
                _solve(lambda t, m=m: float(special.expit(t - m).mean()), c, f"{item} share")
                for c in cum
            ]
        elif spec["type"] == "binomial":
            target = _COUNT_MEAN[sc.thresholds]
            target = 1.0 - target if flip else target
            spec["target_mean_share"] = target
            spec["intercept"] = _solve(
                lambda c, m=m: float(special.expit(c + m).mean()), target, f"{item} mean"
            )
        elif spec["type"] == "employment_share":
            spec["intercept"] = -_solve(
                lambda c, m=m: float(((1.0 - special.expit(-c + m)) ** size).mean()),
                sc.zero_share,
                "zero share",
            )


def _draw_world(sc: Scenario, codebook: Codebook) -> tuple[_World, np.ndarray, np.ndarray]:
    rng_design = np.random.default_rng([sc.seed, 11])
    rng_param = np.random.default_rng([sc.seed, 23])
    rng_noise = np.random.default_rng([sc.seed, 37])
    registry, ages = _make_registry(sc, rng_design)
    cov = _covariates(sc, registry, ages, rng_design)
    n, k = len(cov), len(DIMENSIONS)
    z = _standardized(cov)
    presence = np.array([int(c.has_cbo) for c in registry.communities])[
        cov["community_index"].to_numpy()
    ]
    # nuisance parameters (vary by seed, by design)
    beta = rng_param.normal(0, 0.25, (len(ADJUSTMENT_COVARIATES), k))
    gamma = rng_param.normal(0, 0.35, len(ADJUSTMENT_COVARIATES))
    corr = _random_corr(rng_param, k)
    community_effects = sc.community_sd * rng_param.standard_normal((sc.n_communities, k))
    mult = dict(zip(DIMENSIONS, sc.loadings_multipliers(), strict=True))
    items: dict[str, dict[str, Any]] = {}
    for item in codebook.indicator_names:
        col = codebook[item]
        if item in _COUNT_TRIALS:
            kind = "binomial"
        elif item == _SHARE_ITEM:
            kind = "employment_share"
        elif item == _AMOUNT_ITEM:
            kind = "amount"
        else:
            kind = "ordinal"
        jitter = float(np.exp(rng_param.normal(0, 0.2)))
        loading = _BASE_LOADING[kind] * jitter * mult[col.dimension]
        spec: dict[str, Any] = {"type": kind, "loading": loading}
        if kind == "binomial":
            spec["trials"] = _COUNT_TRIALS[item]
        if kind == "amount":
            spec.update(
                loading=loading * sc.amount_log_sd,
                log_mean=sc.amount_log_mean,
                log_sd=sc.amount_log_sd,
            )
        spec["direct"] = {c: float(rng_param.uniform(0.1, 0.4)) for c in _DIRECT.get(item, ())}
        items[item] = spec
    # random numbers (common random numbers for every exposure)
    noise = {
        "participation": rng_noise.random(n),
        "disturbance": rng_noise.standard_normal((n, k)) @ np.linalg.cholesky(corr).T,
        "employed": rng_noise.random((n, MAX_HOUSEHOLD_SIZE)),
        "amount": rng_noise.standard_normal(n),
    }
    for item in codebook.indicator_names:
        if items[item]["type"] == "ordinal":
            noise[f"item:{item}"] = special.logit(
                np.clip(rng_noise.random((n, 1)), 1e-12, 1 - 1e-12)
            )
        elif items[item]["type"] == "binomial":
            noise[f"item:{item}"] = rng_noise.random((n, _COUNT_TRIALS[item]))
    # participation: solved intercept for the target rate among CBO-community households
    lin = z @ gamma
    in_cbo = presence == 1
    intercept = _solve(
        lambda c: float(special.expit(c + lin[in_cbo]).mean()),
        sc.participation_rate,
        "participation rate",
    )
    a = (in_cbo & (noise["participation"] < special.expit(intercept + lin))).astype(int)
    params = {
        "adjustment_covariates": list(ADJUSTMENT_COVARIATES),
        "beta": beta.tolist(),
        "participation": {"intercept": intercept, "coefficients": gamma.tolist()},
        "disturbance_corr": corr.tolist(),
        "community_effects": community_effects.tolist(),
        "DE": list(map(float, sc.de)),
        "IE": list(map(float, sc.ie)),
        "items": items,
    }
    world = _World(sc, registry, codebook, cov, z, presence, params, noise)
    return world, a, presence


def _check_design(sc: Scenario, a: np.ndarray, presence: np.ndarray) -> None:
    in_cbo = presence == 1
    n_part, n_non = int(a[in_cbo].sum()), int((in_cbo & (a == 0)).sum())
    if n_part < 2 or n_non < 2:
        raise ScenarioError(
            f"scenario {sc.name!r}: the draw has {n_part} participant(s) and {n_non} "
            f"non-participant(s) in CBO communities (participation_rate "
            f"{sc.participation_rate:g}, {int(in_cbo.sum())} CBO-community households); the "
            "direct effect needs at least 2 of each: raise n_households or move "
            "participation_rate away from 0 and 1"
        )


def _simulate_independent(
    sc: Scenario, codebook: Codebook
) -> tuple[pd.DataFrame, Registry, ScenarioTruth]:
    world, a, presence = _draw_world(sc, codebook)
    _check_design(sc, a, presence)
    eta = _eta(world, a.astype(float), presence.astype(float))
    _calibrate_items(world, eta)
    items = _items(world, eta)
    cov = world.cov
    width = max(4, len(str(sc.n_households)))
    data = pd.DataFrame({"household_id": [f"H{i + 1:0{width}d}" for i in range(len(cov))]})
    data["community"] = cov["community"].to_numpy()
    data["cbo_participation"] = a
    for col in (
        "residence_months",
        "age",
        "gender",
        "urban_hukou",
        "offfarm_employed",
        "education",
        "household_size",
        "household_income",
    ):
        data[col] = cov[col].to_numpy()
    for col in items.columns:
        data[col] = items[col].to_numpy()
    data = data[[c for c in codebook.columns if c in data.columns]]
    n = len(data)
    potential = {}
    for ea, es in _EXPOSURES:
        frame = data.copy()
        frame["cbo_participation"] = ea
        eta_po = _eta(world, np.full(n, float(ea)), np.full(n, float(es)))
        for col, values in _items(world, eta_po).items():
            frame[col] = values.to_numpy()
        potential[(ea, es)] = frame
    latent = {
        d: {"DE": float(sc.de[j]), "IE": float(sc.ie[j]), "TE": float(sc.de[j] + sc.ie[j])}
        for j, d in enumerate(DIMENSIONS)
    }
    params = dict(world.params)
    params["community_effects"] = {
        d: {
            c: float(world.params["community_effects"][i][j])
            for i, c in enumerate(world.registry.names)
        }
        for j, d in enumerate(DIMENSIONS)
    }
    truth = ScenarioTruth(
        scenario=sc,
        latent=latent,
        potential_outcomes=potential,
        parameters=params,
        realized=_realized(data, presence, codebook),
    )
    return data, world.registry, truth


def _realized(data: pd.DataFrame, presence: np.ndarray, codebook: Codebook) -> dict[str, Any]:
    a = data["cbo_participation"].to_numpy()
    in_cbo = presence == 1
    shares = {}
    for item in codebook.indicator_names:
        col = codebook[item]
        if col.type == "ordinal":
            counts = data[item].value_counts(normalize=True)
            shares[item] = {str(v): float(counts.get(v, 0.0)) for v in col.values}
    return {
        "n_households": int(len(data)),
        "participation_share_cbo": float(a[in_cbo].mean()) if in_cbo.any() else 0.0,
        "zero_share": float((data[_AMOUNT_ITEM] == 0).mean()),
        "exposure_counts": {
            "participant": int(a.sum()),
            "nonparticipant_cbo": int((in_cbo & (a == 0)).sum()),
            "no_cbo": int((~in_cbo).sum()),
        },
        "category_shares": shares,
    }


def _simulate_bundled(
    sc: Scenario, codebook: Codebook
) -> tuple[pd.DataFrame, Registry, ScenarioTruth]:
    from pari_bayes.simulate import load_params, simulate_potential_outcomes, simulate_survey

    params, _ = load_params()
    registry = load_registry()
    sim = simulate_survey(sc.n_households, registry=registry, params=params, seed=sc.seed)
    latent = {}
    for d in DIMENSIONS:
        st = params["structural"][d]
        scale = math.sqrt(1.0 + float(st["gamma"]) ** 2)
        de, ie = float(st["DE"]) / scale, float(st["IE"]) / scale
        latent[d] = {"DE": de, "IE": ie, "TE": de + ie}
    potential = {
        (ea, es): simulate_potential_outcomes(sim, ea, es, codebook) for ea, es in _EXPOSURES
    }
    presence = sim.data["community"].map(registry.cbo_presence).to_numpy()
    truth = ScenarioTruth(
        scenario=sc,
        latent=latent,
        potential_outcomes=potential,
        parameters={"generator": "pari_bayes.simulate", "truth": sim.truth},
        realized=_realized(sim.data, presence, codebook),
    )
    return sim.data, registry, truth


def simulate_scenario(
    scenario: Scenario, codebook: Codebook | None = None
) -> tuple[pd.DataFrame, Registry, ScenarioTruth]:
    """Draw the survey of a scenario, its community registry and its ground truth.

    Parameters
    ----------
    scenario
        The design.
    codebook
        The codebook (bundled by default): its item types and levels are used as they are.

    Returns
    -------
    (data, registry, truth)
        ``data`` has exactly the codebook's columns (pass it with ``registry`` to
        :func:`pari_bayes.survey.validate_frame`, or write both with
        :func:`write_scenario`); ``truth`` is a :class:`ScenarioTruth`.

    Raises
    ------
    ScenarioError
        If the draw cannot identify the estimands (fewer than 2 participants or
        non-participants in CBO communities) or a target cannot be reached.

    Examples
    --------
    >>> from pari_bayes.scenarios import Scenario, simulate_scenario
    >>> data, registry, truth = simulate_scenario(Scenario("demo", n_households=200, seed=3))
    >>> len(data), len(registry)
    (200, 12)
    """
    book = codebook if codebook is not None else load_codebook()
    if scenario.generator == "bundled":
        return _simulate_bundled(scenario, book)
    return _simulate_independent(scenario, book)


# ---------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------


def write_scenario(
    scenario: Scenario, directory: str | os.PathLike
) -> tuple[dict[str, Path], ScenarioTruth]:
    """Simulate a scenario and write ``survey.csv``, ``communities.toml`` and ``truth.json``.

    The files are what ``pari-bayes run --data survey.csv --communities communities.toml``
    reads.

    Returns
    -------
    (paths, truth)
        ``paths`` maps ``survey``, ``communities`` and ``truth`` to the files written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data, registry, truth = simulate_scenario(scenario)
    paths = {
        "survey": directory / "survey.csv",
        "communities": directory / "communities.toml",
        "truth": directory / "truth.json",
    }
    write_csv(data, paths["survey"], float_format="%.10g")
    atomic_write_text(paths["communities"], registry_toml(registry))
    atomic_write_text(paths["truth"], json.dumps(truth.to_dict(), indent=1) + "\n")
    return paths, truth


# ---------------------------------------------------------------------------------------
# the designed suite
# ---------------------------------------------------------------------------------------


def _designed() -> list[Scenario]:
    base = Scenario("base", description="base case: 800 households, 12 communities (6 CBO)")
    one_at_a_time: list[tuple[str, dict[str, Any], str]] = [
        ("n300", {"n_households": 300}, "smallest survey"),
        ("n5000", {"n_households": 5000}, "largest survey"),
        (
            "n1200_c6",
            {"n_households": 1200, "n_communities": 6, "n_cbo_communities": 3},
            "1,200 households in 6 communities (3 CBO): the survey of issue 14",
        ),
        ("c4", {"n_communities": 4, "n_cbo_communities": 2}, "4 communities, 2 with CBOs"),
        ("c60", {"n_communities": 60, "n_cbo_communities": 30}, "60 communities, 30 with CBOs"),
        ("cbo_few", {"n_cbo_communities": 2}, "CBOs in 2 of 12 communities"),
        ("cbo_most", {"n_cbo_communities": 10}, "CBOs in 10 of 12 communities"),
        ("part05", {"participation_rate": 0.05}, "5% participation"),
        ("part60", {"participation_rate": 0.6}, "60% participation"),
        ("load_weak", {"loading_strength": "weak"}, "weak loadings on every factor"),
        ("load_strong", {"loading_strength": "strong"}, "strong loadings on every factor"),
        (
            "load_mixed",
            {"loading_strength": ("strong", "weak", "strong", "weak")},
            "strong and weak factors in one survey",
        ),
        ("thr_skewed", {"thresholds": "skewed"}, "skewed categories (geometric shares)"),
        ("thr_sparse", {"thresholds": "sparse"}, "one 4% category per ordinal item"),
        ("zero10", {"zero_share": 0.1}, "10% zero amounts"),
        ("zero70", {"zero_share": 0.7}, "70% zero amounts"),
        (
            "amount_small",
            {"amount_log_mean": 1.0, "amount_log_sd": 0.4},
            "amounts of a few units (e.g. thousands of yuan), narrow spread",
        ),
        (
            "amount_large",
            {"amount_log_mean": 11.5, "amount_log_sd": 1.6},
            "amounts near 100,000 with a heavy tail",
        ),
        ("csd0", {"community_sd": 0.01}, "community sd ~0"),
        ("csd_large", {"community_sd": 1.0}, "community sd 1 (large)"),
        ("null", {"de": (0.0,) * 4, "ie": (0.0,) * 4}, "no effects at all"),
        (
            "mixed_sign",
            {"de": (-0.5, 0.8, 0.0, -0.2), "ie": (0.6, -0.4, 0.0, -0.3)},
            "large, negative and zero effects",
        ),
    ]
    out = [base]
    for i, (name, change, text) in enumerate(one_at_a_time, start=1):
        out.append(replace(base, name=name, seed=100 + i, description=text, **change))
    combined = [
        Scenario(
            "hard_small",
            n_households=300,
            n_communities=4,
            n_cbo_communities=2,
            participation_rate=0.1,
            loading_strength="weak",
            thresholds="sparse",
            zero_share=0.7,
            community_sd=0.5,
            seed=201,
            description="combined: small, 4 communities, 10% participation, weak, sparse",
        ),
        Scenario(
            "big_easy",
            n_households=5000,
            n_communities=60,
            n_cbo_communities=20,
            participation_rate=0.6,
            loading_strength="strong",
            zero_share=0.1,
            amount_log_mean=3.0,
            seed=202,
            description="combined: large, 60 communities, 60% participation, strong",
        ),
        Scenario(
            "few_clusters_large_sd",
            n_households=2000,
            n_communities=4,
            n_cbo_communities=2,
            community_sd=1.0,
            thresholds="skewed",
            seed=203,
            description="combined: 2,000 households in 4 communities with sd 1",
        ),
        Scenario(
            "many_tiny_communities",
            n_households=300,
            n_communities=60,
            n_cbo_communities=45,
            participation_rate=0.15,
            loading_strength=("weak", "strong", "medium", "weak"),
            thresholds="sparse",
            zero_share=0.5,
            amount_log_mean=12.0,
            amount_log_sd=0.5,
            community_sd=0.6,
            seed=204,
            description="combined: 5 households per community, CBOs in 75%",
        ),
    ]
    return out + combined


def suite(n: int | None = None, seed: int = 0) -> list[Scenario]:
    """Return the designed robustness suite.

    A base case, one-factor-at-a-time variations of it (size 300/5,000; 4/60 communities;
    CBO shares 1/6 and 5/6; participation 5%/60%; weak, strong and mixed loadings; skewed
    and sparse categories; 10%/70% zeros; small and large amount scales; community sd ~0
    and 1; null and mixed-sign effects), the 1,200-household, 6-community survey of issue 14,
    and four combined extremes: 27 scenarios.

    Parameters
    ----------
    n
        Number of scenarios. ``None`` (default) or 27: the designed list; fewer: its first
        ``n``; more: the designed list plus random combinations of the design ranges
        (drawn with ``seed``).
    seed
        Seed of the extra random combinations.

    Returns
    -------
    list of Scenario
    """
    designed = _designed()
    if n is None or n == len(designed):
        return designed
    if n < len(designed):
        return designed[:n]
    rng = np.random.default_rng([seed, 99])
    extra = []
    for i in range(n - len(designed)):
        n_comm = int(rng.choice([4, 6, 12, 25, 60]))
        n_hh = int(max(rng.choice([300, 600, 1200, 2500, 5000]), MIN_PER_COMMUNITY * n_comm + 50))
        extra.append(
            Scenario(
                f"random{i + 1:02d}",
                n_households=n_hh,
                n_communities=n_comm,
                n_cbo_communities=int(rng.integers(1, n_comm)),
                participation_rate=float(rng.uniform(0.05, 0.6)),
                loading_strength=tuple(str(rng.choice(list(LOADING_LEVELS))) for _ in DIMENSIONS),
                thresholds=str(rng.choice(THRESHOLD_PLACEMENTS)),
                zero_share=float(rng.uniform(0.1, 0.7)),
                amount_log_mean=float(rng.uniform(1.0, 12.0)),
                amount_log_sd=float(rng.uniform(0.4, 1.6)),
                community_sd=float(rng.choice([0.01, 0.2, 0.5, 1.0])),
                de=tuple(float(x) for x in rng.normal(0.3, 0.3, len(DIMENSIONS))),
                ie=tuple(float(x) for x in rng.normal(0.3, 0.3, len(DIMENSIONS))),
                seed=1000 + i,
                description="random combination of the design ranges",
            )
        )
    return designed + extra


def bundled_seeds(n: int = 10) -> list[Scenario]:
    """Return the bundled survey's generator at ``n`` seeds.

    287 households, :mod:`pari_bayes.simulate` with the calibrated parameters of
    ``data/generator_params.json``; the bundled seed first, then 1, 2, ...
    """
    seeds = [BUNDLED_SEED, *range(1, n)]
    return [
        Scenario(
            f"bundled_s{s}",
            n_households=287,
            n_communities=4,
            n_cbo_communities=2,
            seed=int(s),
            generator="bundled",
            group="bundled",
            description=f"bundled survey generator, seed {s}",
        )
        for s in seeds[:n]
    ]
