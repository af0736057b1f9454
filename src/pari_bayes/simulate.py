"""Synthetic surveys with a known ground truth.

The generator draws a household survey with the codebook's columns from a fully specified
generative model, so that every estimator in the toolkit can be checked against the truth.
The bundled ``data/survey.csv`` is one draw of it, with the calibrated parameters and the
seed recorded in ``data/generator_params.json``.

The model (all parameters live in one JSON-able dict, see :func:`default_params`)
---------------------------------------------------------------------------------
Design
    Households are split over the registry's communities by fixed weights (largest
    remainder rounding, so the sizes are exact), then shuffled.
Household covariates
    ``age`` ~ Normal(mean, sd) rounded and clipped to 16-100; ``gender`` ~ Bernoulli;
    ``urban_hukou`` ~ Bernoulli(logistic(logit(p) + community shift));
    ``education`` ~ categorical (1-3);
    ``offfarm_employed`` ~ Bernoulli(logistic(b0 + b_age z_age + b_edu (education - 1)));
    ``household_size`` = 1 + Poisson(m) (clipped to 15);
    ``log household_income`` ~ Normal(mu + b_size log(size) + b_emp offfarm + b_hukou urban,
    sd); ``residence_months`` = floor(F * (M_c + 1)) clipped to M_c, where M_c is the number
    of months between the community's formation and the survey (so residence never exceeds
    it) and F ~ Beta with community-specific mean and a common concentration.
Unobserved confounder
    ``sociability`` S ~ Normal(0, 1): a household's prior sociability. It raises the log-odds
    of participation (``confounding.participation``) and every integration factor
    (``structural[d].gamma``): the paper's unmeasured confounder.
Participation (only where the community has CBOs)
    a ~ Bernoulli(logistic(c0 + c_age z_age + c_gender gender + c_res z_res
    + c_emp offfarm + c_hukou urban_hukou + kappa S)), and a = 0 in communities without
    CBOs. s = the
    community's CBO presence (registry).
Latent integration factors, d = 1..4 (``codebook.DIMENSIONS``)
    eta_d = u_{c,d} + sum_k beta_{d,k} (x_k - ref_k) + DE_d a + IE_d s + gamma_d S + e_d,
    x = (residence_months, age, gender, offfarm_employed, income_scale, urban_hukou),
    u_{c,d} = tau_d z_{c,d} with z ~ Normal(0, 1) per community (the community effect),
    e ~ MVNormal(0, R) with unit variances (R = ``disturbance_corr``).
    So a participant (a=1, s=1) differs from a household in a CBO-free community (a=0, s=0)
    by TE_d = DE_d + IE_d; a non-participant in a CBO community by IE_d.
Measurement model (loadings lambda > 0: higher = more integrated)
    Each item has a linear predictor m = lambda eta_d + delta'(x - ref): the factor term plus
    optional MIMIC-style *direct* covariate effects delta (``items[item]["direct"]``, a dict
    regressor -> coefficient over the structural regressors x above, centred at the same
    ``reference``; absent or empty = no direct effect, m = lambda eta_d). A direct effect
    moves one item without moving the factor (e.g. household income raises employment
    income and the ability to make ends meet directly), so the items are not independent
    given eta_d alone but given (eta_d, x).
    ordinal items (1-3, 1-5 and the 1/2-coded binaries): P(y <= k) = logistic(tau_k - m),
    drawn as y = 1 + #{k : m + L > tau_k} with L = logit(U) a stored standard logistic draw;
    "options selected" counts (0-9, 0-5): y ~ Binomial(max, logistic(c + m)), drawn as
    #{j <= max : U_j < p};
    ``human_capital`` = employed / household_size with employed ~ Binomial(household_size,
    logistic(c + m));
    ``per_capita_employment_income`` = 0 if employed = 0, else exp(mu + m + sigma Z) rounded
    to whole yuan, at least 1 (zeros and a heavy right tail); m is on the log scale. With
    ``per_employed: true`` exp(mu + m + sigma Z) is the household's monthly employment
    income and the item is that divided by the employed members (the item's definition),
    i.e. log y = mu + m - log(employed) + sigma Z; absent or false: no division.

Every random number is drawn up front in a fixed order with shapes that depend only on the
number of households and communities (common random numbers), so the same seed with other
parameters gives the "same" households, and :func:`simulate_potential_outcomes` gives the
items of the same households under any counterfactual exposure (a, s). The covariates do
not change under an intervention on (a, s), so the direct terms delta'(x - ref) are the
same under every exposure: exposure moves the items only through eta.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import special, stats

from pari_bayes._paths import DATA_DIR
from pari_bayes.codebook import DIMENSIONS, Codebook, load_codebook
from pari_bayes.errors import PariBayesError, SurveyDataError
from pari_bayes.income import income_scale
from pari_bayes.registry import Registry, load_registry

__all__ = [
    "REGRESSORS",
    "DEFAULT_PARAMS_FILE",
    "SimulatedSurvey",
    "default_params",
    "load_params",
    "simulate_survey",
    "simulate_potential_outcomes",
    "simulate_items",
    "direct_term",
]

#: Regressors of the structural model (and of Table 4), in order.
REGRESSORS = (
    "residence_months",
    "age",
    "gender",
    "offfarm_employed",
    "income_scale",
    "urban_hukou",
)

#: The calibrated parameters and seed of the bundled survey.
DEFAULT_PARAMS_FILE = DATA_DIR / "generator_params.json"

MAX_HOUSEHOLD_SIZE = 15
_COUNT_TRIALS = {"activities_with_new_friends": 9, "lifestyle_changes": 5}


def _ordinal(loading: float, thresholds: list[float]) -> dict[str, Any]:
    return {"type": "ordinal", "loading": loading, "thresholds": thresholds}


def default_params() -> dict[str, Any]:
    """Uncalibrated but sensible generator parameters (used when none are given).

    Returns
    -------
    dict
        A JSON-able dict; see the module docstring for the meaning of each entry.

    """
    beta0 = {k: 0.0 for k in REGRESSORS}
    structural = {}
    for dim in DIMENSIONS:
        structural[dim] = {
            "beta": dict(beta0),
            "DE": 0.3,
            "IE": 0.5,
            "gamma": 0.3,
            "tau": 0.2,
        }
    corr = np.full((4, 4), 0.3)
    np.fill_diagonal(corr, 1.0)
    return {
        "version": 1,
        "communities": {
            "XT": {"weight": 72, "residence_mean": 0.25},
            "HC": {"weight": 55, "residence_mean": 0.70},
            "TF": {"weight": 45, "residence_mean": 0.80},
            "LT": {"weight": 115, "residence_mean": 0.60},
        },
        "default_community": {"weight": 1.0, "residence_mean": 0.5, "hukou_shift": 0.0},
        "residence_concentration": 4.0,
        "age": {"mean": 57.2, "sd": 13.1},
        "gender_p": 0.457,
        "urban_hukou_p": 0.101,
        "education_p": [0.719, 0.2, 0.081],
        "household_size_mean": 6.5,
        "offfarm": {"intercept": -1.3, "age": -0.3, "education": 0.3},
        "income": {
            "log_mean": 6.4,
            "log_sd": 0.8,
            "log_size": 0.3,
            "offfarm": 0.3,
            "urban_hukou": 0.1,
        },
        "participation": {
            "intercept": -0.2,
            "age": 0.0,
            "gender": 0.0,
            "residence": 0.0,
            "offfarm": 0.0,
            "urban_hukou": 0.0,
        },
        "confounding": {"participation": 1.0},
        "reference": {
            "residence_months": 8.611,
            "age": 57.241,
            "gender": 0.457,
            "offfarm_employed": 0.216,
            "income_scale": 32.8,
            "urban_hukou": 0.101,
        },
        "structural": structural,
        "disturbance_corr": corr.tolist(),
        "items": {
            "economic_pressure": _ordinal(1.5, [1.0, 4.0]),
            "human_capital": {"type": "employment_share", "intercept": -1.2, "loading": 1.5},
            "per_capita_employment_income": {
                "type": "employment_income",
                "log_mean": 6.3,
                "loading": 0.6,
                "log_sd": 0.6,
            },
            "activities_with_new_friends": {
                "type": "binomial",
                "trials": 9,
                "intercept": -2.0,
                "loading": 1.0,
            },
            "lifestyle_changes": {
                "type": "binomial",
                "trials": 5,
                "intercept": -1.0,
                "loading": 0.5,
            },
            "interaction_with_city_dwellers": _ordinal(1.5, [0.5, 3.5]),
            "life_satisfaction": _ordinal(1.5, [-3.0, -0.5, 2.0, 4.5]),
            "new_friends": _ordinal(2.5, [-1.5]),
            "range_of_interaction": _ordinal(2.5, [-1.5, 1.5]),
            "interaction_frequency": _ordinal(2.5, [-1.5, 0.0]),
            "sense_of_belonging": _ordinal(2.0, [0.0, 0.5]),
            "mate_selection_advantage": _ordinal(1.5, [-1.2]),
            "psychological_distance": _ordinal(1.5, [0.8]),
        },
    }


def load_params(path: str | os.PathLike | None = None) -> tuple[dict[str, Any], int]:
    """Read generator parameters and their seed from JSON.

    Parameters
    ----------
    path
        JSON file with keys ``params`` and ``seed``; the bundled
        ``data/generator_params.json`` by default.

    Returns
    -------
    (params, seed)

    """
    path = Path(path) if path is not None else DEFAULT_PARAMS_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise PariBayesError(f"{path}: generator parameter file not found.") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise PariBayesError(f"{path}: not a valid parameter JSON file: {exc}") from exc
    if "params" not in raw or "seed" not in raw:
        raise PariBayesError(f"{path}: expected the keys 'params' and 'seed'.")
    return raw["params"], int(raw["seed"])


@dataclass
class SimulatedSurvey:
    """A synthetic survey and everything needed to know its truth.

    Attributes
    ----------
    data
        The survey: exactly the codebook's columns, in codebook order (no cbo_existence).
    truth
        JSON-able ground truth (effects, structural coefficients, community effects,
        loadings, thresholds, disturbance correlation, confounder strength).
    latent
        Per household: the four eta_d, sociability, participation a and presence s.
    params
        The parameters used.
    seed
        The seed used.
    noise
        The stored random numbers (common random numbers for counterfactuals).

    """

    data: pd.DataFrame
    truth: dict[str, Any]
    latent: pd.DataFrame
    params: dict[str, Any]
    seed: int
    noise: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    covariates: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)
    registry: Registry | None = field(repr=False, default=None)

    def truth_json(self) -> str:
        """Return the truth as pretty JSON text."""
        return json.dumps(self.truth, indent=2, sort_keys=False) + "\n"


def _community_param(params: dict[str, Any], name: str, key: str) -> float:
    entry = params.get("communities", {}).get(name, {})
    fallback = {"weight": 1.0, "residence_mean": 0.5, "hukou_shift": 0.0}
    return float(entry.get(key, params.get("default_community", {}).get(key, fallback[key])))


def _split_sizes(weights: np.ndarray, n: int) -> np.ndarray:
    """Largest-remainder rounding of n * weights / sum(weights)."""
    share = weights / weights.sum() * n
    sizes = np.floor(share).astype(int)
    order = np.argsort(-(share - sizes), kind="stable")
    sizes[order[: n - sizes.sum()]] += 1
    return sizes


def _draw_noise(rng: np.random.Generator, n: int, n_comm: int, items: tuple[str, ...]) -> dict:
    """Every random number of one survey, in a fixed order (common random numbers)."""
    noise = {
        "perm": rng.permutation(n),
        "age": rng.standard_normal(n),
        "gender": rng.random(n),
        "hukou": rng.random(n),
        "education": rng.random(n),
        "offfarm": rng.random(n),
        "size": rng.random(n),
        "income": rng.standard_normal(n),
        "residence": rng.random(n),
        "sociability": rng.standard_normal(n),
        "participation": rng.random(n),
        "community": rng.standard_normal((n_comm, len(DIMENSIONS))),
        "disturbance": rng.standard_normal((n, len(DIMENSIONS))),
        "employed": rng.random((n, MAX_HOUSEHOLD_SIZE)),
        "employment_income": rng.standard_normal(n),
    }
    for item in items:
        width = _COUNT_TRIALS.get(item, 1)
        noise[f"item:{item}"] = rng.random((n, width))
    return noise


def _covariates(
    params: dict[str, Any], registry: Registry, n: int, noise: dict[str, np.ndarray]
) -> pd.DataFrame:
    names = registry.names
    weights = np.array([_community_param(params, c, "weight") for c in names], dtype=float)
    if np.any(weights < 0) or weights.sum() <= 0:
        raise PariBayesError("community weights must be non-negative and not all zero")
    sizes = _split_sizes(weights, n)
    community = np.repeat(np.arange(len(names)), sizes)[noise["perm"]]
    age = np.clip(np.round(params["age"]["mean"] + params["age"]["sd"] * noise["age"]), 16, 100)
    gender = (noise["gender"] < params["gender_p"]).astype(int)
    hukou_shift = np.array([_community_param(params, c, "hukou_shift") for c in names])[community]
    p_hukou = special.expit(special.logit(params["urban_hukou_p"]) + hukou_shift)
    hukou = (noise["hukou"] < p_hukou).astype(int)
    edu_cum = np.cumsum(np.asarray(params["education_p"], dtype=float))
    edu_cum = edu_cum / edu_cum[-1]
    education = 1 + np.searchsorted(edu_cum, noise["education"], side="right")
    education = np.minimum(education, 3)
    z_age = (age - params["reference"]["age"]) / 13.0
    off = params["offfarm"]
    p_off = special.expit(
        off["intercept"] + off["age"] * z_age + off["education"] * (education - 1)
    )
    offfarm = (noise["offfarm"] < p_off).astype(int)
    size = 1 + stats.poisson.ppf(noise["size"], max(params["household_size_mean"] - 1.0, 1e-6))
    size = np.clip(size, 1, MAX_HOUSEHOLD_SIZE).astype(int)
    inc = params["income"]
    log_income = (
        inc["log_mean"]
        + inc["log_size"] * np.log(size)
        + inc["offfarm"] * offfarm
        + inc["urban_hukou"] * hukou
        + inc["log_sd"] * noise["income"]
    )
    household_income = np.round(np.exp(log_income))
    max_months = np.array([registry[c].max_residence_months for c in names])[community]
    res_mean = np.array([_community_param(params, c, "residence_mean") for c in names])[community]
    res_mean = np.clip(res_mean, 0.01, 0.99)
    conc = float(params["residence_concentration"])
    frac = stats.beta.ppf(noise["residence"], res_mean * conc, (1 - res_mean) * conc)
    residence = np.minimum(np.floor(frac * (max_months + 1)), max_months).astype(int)
    presence = np.array([int(registry[c].has_cbo) for c in names])[community]
    return pd.DataFrame(
        {
            "community_index": community,
            "community": np.array(names, dtype=object)[community],
            "residence_months": residence,
            "age": age.astype(int),
            "gender": gender,
            "urban_hukou": hukou,
            "offfarm_employed": offfarm,
            "education": education.astype(int),
            "household_size": size,
            "household_income": household_income,
            "cbo_presence": presence,
        }
    )


def _participation(params: dict[str, Any], cov: pd.DataFrame, noise: dict) -> np.ndarray:
    p = params["participation"]
    ref = params["reference"]
    logit = (
        p["intercept"]
        + p["age"] * (cov["age"].to_numpy() - ref["age"]) / 13.0
        + p["gender"] * cov["gender"].to_numpy()
        + p["residence"] * (cov["residence_months"].to_numpy() - ref["residence_months"]) / 5.0
        + p["offfarm"] * cov["offfarm_employed"].to_numpy()
        + p.get("urban_hukou", 0.0) * cov["urban_hukou"].to_numpy()
        + params["confounding"]["participation"] * noise["sociability"]
    )
    a = (noise["participation"] < special.expit(logit)).astype(int)
    return a * cov["cbo_presence"].to_numpy()


def _regressor_matrix(params: dict[str, Any], cov: pd.DataFrame) -> np.ndarray:
    ref = params["reference"]
    x = np.column_stack(
        [
            income_scale(cov["household_income"]).to_numpy()
            if k == "income_scale"
            else cov[k].to_numpy(dtype=float)
            for k in REGRESSORS
        ]
    )
    return x - np.array([ref[k] for k in REGRESSORS])


def _latent(
    params: dict[str, Any],
    cov: pd.DataFrame,
    a: np.ndarray,
    s: np.ndarray,
    noise: dict[str, np.ndarray],
) -> np.ndarray:
    xc = _regressor_matrix(params, cov)
    corr = np.asarray(params["disturbance_corr"], dtype=float)
    chol = np.linalg.cholesky(corr)
    disturbance = noise["disturbance"] @ chol.T
    eta = np.empty((len(cov), len(DIMENSIONS)))
    comm = cov["community_index"].to_numpy()
    for j, dim in enumerate(DIMENSIONS):
        st = params["structural"][dim]
        beta = np.array([st["beta"][k] for k in REGRESSORS])
        u = st["tau"] * noise["community"][comm, j]
        eta[:, j] = (
            u
            + xc @ beta
            + st["DE"] * a
            + st["IE"] * s
            + st["gamma"] * noise["sociability"]
            + disturbance[:, j]
        )
    return eta


def direct_term(item: str, spec: dict[str, Any], regressors: np.ndarray | None) -> Any:
    """Return an item's direct covariate term delta'(x - ref) (0.0 when it has none).

    Parameters
    ----------
    item
        The item's name (for messages).
    spec
        The item's parameters; ``spec["direct"]`` maps structural regressors (``REGRESSORS``)
        to coefficients on the scale of the item's linear predictor.
    regressors
        The centred regressor matrix x - reference, shape (n, len(REGRESSORS)), columns in
        ``REGRESSORS`` order (see :func:`simulate_survey`); only needed when ``direct`` is
        not empty.

    Returns
    -------
    numpy.ndarray or float
        The term per household, or the scalar 0.0 when the item has no direct effect (so
        that an item without one is drawn exactly as before).

    """
    direct = spec.get("direct") or {}
    if not direct:
        return 0.0
    unknown = sorted(set(direct) - set(REGRESSORS))
    if unknown:
        raise PariBayesError(
            f"item {item}: direct effects of unknown regressors {unknown}; "
            f"use the structural regressors {list(REGRESSORS)}"
        )
    if regressors is None:
        raise PariBayesError(f"item {item}: direct effects need the regressor matrix")
    regressors = np.asarray(regressors, dtype=float)
    coef = np.array([float(direct.get(k, 0.0)) for k in REGRESSORS])
    return regressors @ coef


def simulate_items(
    params: dict[str, Any],
    eta: np.ndarray,
    household_size: np.ndarray,
    noise: dict[str, np.ndarray],
    codebook: Codebook,
    regressors: np.ndarray | None = None,
) -> pd.DataFrame:
    """Draw the 13 indicators from latent factors with the stored random numbers.

    Parameters
    ----------
    params
        Generator parameters (uses ``params["items"]``).
    eta
        Latent factors, shape (n, 4), columns in ``DIMENSIONS`` order.
    household_size
        Members per household (denominator of ``human_capital``).
    noise
        The survey's stored random numbers.
    codebook
        Gives each item's dimension.
    regressors
        Centred structural regressors x - reference, shape (n, 6) in ``REGRESSORS`` order
        (``_regressor_matrix``); needed only by items with ``direct`` effects.

    Returns
    -------
    pandas.DataFrame
        One column per indicator, in codebook order.

    """
    out: dict[str, np.ndarray] = {}
    dim_index = {d: j for j, d in enumerate(DIMENSIONS)}
    size = np.asarray(household_size, dtype=int)
    employed = None
    for item in codebook.indicator_names:
        spec = params["items"][item]
        e = eta[:, dim_index[codebook[item].dimension]]
        lam = float(spec["loading"])
        u = noise[f"item:{item}"]
        kind = spec["type"]
        if kind == "employment_income":
            continue  # needs `employed`; drawn below
        m = lam * e + direct_term(item, spec, regressors)
        if kind == "ordinal":
            latent = m + special.logit(np.clip(u[:, 0], 1e-12, 1 - 1e-12))
            tau = np.sort(np.asarray(spec["thresholds"], dtype=float))
            values = codebook[item].values
            idx = (latent[:, None] > tau[None, :]).sum(axis=1)
            out[item] = np.asarray(values)[idx]
        elif kind == "binomial":
            p = special.expit(spec["intercept"] + m)
            trials = int(spec["trials"])
            out[item] = (u[:, :trials] < p[:, None]).sum(axis=1)
        elif kind == "employment_share":
            p = special.expit(spec["intercept"] + m)
            draws = noise["employed"] < p[:, None]
            mask = np.arange(MAX_HOUSEHOLD_SIZE)[None, :] < size[:, None]
            employed = (draws & mask).sum(axis=1)
            out[item] = employed / size
        else:
            raise PariBayesError(f"item {item}: unknown item type {kind!r}")
    for item in codebook.indicator_names:
        spec = params["items"][item]
        if spec["type"] != "employment_income":
            continue
        if employed is None:
            raise PariBayesError(f"item {item}: needs an 'employment_share' item")
        e = eta[:, dim_index[codebook[item].dimension]]
        m = spec["loading"] * e + direct_term(item, spec, regressors)
        log_inc = spec["log_mean"] + m + spec["log_sd"] * noise["employment_income"]
        if spec.get("per_employed", False):
            # the lognormal is the household's employment income; the item divides it by
            # the employed members (the item's definition)
            log_inc = log_inc - np.log(np.maximum(employed, 1))
        out[item] = np.where(employed > 0, np.maximum(np.round(np.exp(log_inc)), 1.0), 0.0)
    return pd.DataFrame({k: out[k] for k in codebook.indicator_names})


def _check_registry(registry: Registry) -> None:
    presence = [c.has_cbo for c in registry.communities]
    if not any(presence):
        raise SurveyDataError(
            f"{registry.path}: no community has CBOs, so participation is always 0; "
            "list at least one community's CBOs"
        )


def _truth(
    params: dict[str, Any],
    registry: Registry,
    seed: int,
    noise: dict[str, np.ndarray],
    eta: np.ndarray,
    a: np.ndarray,
    s: np.ndarray,
) -> dict[str, Any]:
    effects = {}
    structural = {}
    community_effects = {}
    for j, dim in enumerate(DIMENSIONS):
        st = params["structural"][dim]
        effects[dim] = {"DE": st["DE"], "IE": st["IE"], "TE": st["DE"] + st["IE"]}
        structural[dim] = {
            "beta": dict(st["beta"]),
            "reference": {k: params["reference"][k] for k in REGRESSORS},
            "DE": st["DE"],
            "IE": st["IE"],
            "gamma_sociability": st["gamma"],
            "community_sd": st["tau"],
        }
        community_effects[dim] = {
            c: float(st["tau"] * noise["community"][i, j]) for i, c in enumerate(registry.names)
        }
    return {
        "description": (
            "Ground truth of a pari_bayes synthetic survey. Latent scale: eta_d = u_cd + "
            "sum_k beta_dk (x_k - reference_k) + DE_d a + IE_d s + gamma_d S + e_d with "
            "Var(e_d) = 1, corr(e) = disturbance_corr; a = own CBO participation, s = "
            "community CBO presence, S = unobserved prior sociability ~ N(0,1). "
            "DE = E[eta(1,1) - eta(0,1)], IE = E[eta(0,1) - eta(0,0)], TE = DE + IE. "
            "Measurement: linear predictor m = lambda eta + sum_k direct_k (x_k - "
            "reference_k) (measurement[item].loading = lambda, measurement[item].direct = "
            "direct covariate effects, absent = none; the same x and reference as the "
            "structural model); ordinal P(y<=k) = logistic(tau_k - m); counts "
            "Binomial(max, logistic(c + m)); human_capital = "
            "Binomial(size, logistic(c + m)) / size; per_capita_employment_income = "
            "0 if nobody employed else exp(mu + m + sigma Z) (m on the log scale), divided by "
            "the number employed when measurement[item].per_employed is true."
        ),
        "seed": seed,
        "n_households": int(len(eta)),
        "regressors": list(REGRESSORS),
        "effects_latent": effects,
        "structural": structural,
        "community_effects": community_effects,
        "disturbance_corr": params["disturbance_corr"],
        "confounder": {
            "name": "sociability",
            "distribution": "Normal(0, 1)",
            "participation_log_odds_per_sd": params["confounding"]["participation"],
            "integration_per_sd": {d: params["structural"][d]["gamma"] for d in DIMENSIONS},
        },
        "participation_model": dict(params["participation"]),
        "measurement": copy.deepcopy(params["items"]),
        "latent_summary": {
            "mean": {d: float(eta[:, j].mean()) for j, d in enumerate(DIMENSIONS)},
            "sd": {d: float(eta[:, j].std(ddof=1)) for j, d in enumerate(DIMENSIONS)},
        },
        "exposure_counts": {
            "participant": int(a.sum()),
            "nonparticipant_cbo": int(((s == 1) & (a == 0)).sum()),
            "no_cbo": int((s == 0).sum()),
        },
    }


def simulate_survey(
    n_households: int = 287,
    registry: Registry | str | os.PathLike | None = None,
    params: dict[str, Any] | None = None,
    seed: int = 20240611,
    codebook: Codebook | None = None,
) -> SimulatedSurvey:
    """Draw a synthetic survey with a known ground truth.

    Parameters
    ----------
    n_households
        Number of households (at least 2 per community is sensible).
    registry
        Community registry (object or TOML path); the bundled four communities by default.
        Communities not named in ``params["communities"]`` get ``params["default_community"]``.
    params
        Generator parameters (see :func:`default_params`); the calibrated parameters of
        ``data/generator_params.json`` if it exists, else :func:`default_params`.
    seed
        Seed of every random number (same seed and parameters give the same survey).
    codebook
        The codebook (bundled by default).

    Returns
    -------
    SimulatedSurvey

    Examples
    --------
    >>> from pari_bayes.simulate import simulate_survey
    >>> sim = simulate_survey(n_households=100, seed=1)
    >>> sim.data.shape[0]
    100

    """
    if not isinstance(n_households, int | np.integer) or n_households < 2:
        raise PariBayesError(f"n_households must be an integer of at least 2, got {n_households!r}")
    if not isinstance(registry, Registry):
        registry = load_registry(registry)
    _check_registry(registry)
    book = codebook if codebook is not None else load_codebook()
    if params is None:
        params = load_params()[0] if DEFAULT_PARAMS_FILE.exists() else default_params()
    params = copy.deepcopy(params)
    rng = np.random.default_rng(seed)
    noise = _draw_noise(rng, int(n_households), len(registry), book.indicator_names)
    cov = _covariates(params, registry, int(n_households), noise)
    a = _participation(params, cov, noise)
    s = cov["cbo_presence"].to_numpy()
    eta = _latent(params, cov, a, s, noise)
    xc = _regressor_matrix(params, cov)
    items = simulate_items(params, eta, cov["household_size"].to_numpy(), noise, book, xc)
    width = max(4, len(str(n_households)))
    data = pd.DataFrame({"household_id": [f"H{i + 1:0{width}d}" for i in range(n_households)]})
    data["community"] = cov["community"].to_numpy()
    data["cbo_participation"] = a
    for col in ("residence_months", "age", "gender", "urban_hukou", "offfarm_employed"):
        data[col] = cov[col].to_numpy()
    data["education"] = cov["education"].to_numpy()
    data["household_size"] = cov["household_size"].to_numpy()
    data["household_income"] = cov["household_income"].to_numpy()
    for col in items.columns:
        data[col] = items[col].to_numpy()
    order = [c for c in book.columns if c in data.columns]
    data = data[order]
    latent = pd.DataFrame(eta, columns=list(DIMENSIONS))
    latent.insert(0, "household_id", data["household_id"])
    latent["sociability"] = noise["sociability"]
    latent["cbo_participation"] = a
    latent["cbo_presence"] = s
    truth = _truth(params, registry, seed, noise, eta, a, s)
    return SimulatedSurvey(
        data=data,
        truth=truth,
        latent=latent,
        params=params,
        seed=seed,
        noise=noise,
        covariates=cov,
        registry=registry,
    )


def simulate_potential_outcomes(
    sim: SimulatedSurvey,
    a: int | np.ndarray,
    s: int | np.ndarray,
    codebook: Codebook | None = None,
) -> pd.DataFrame:
    """Redraw the survey of the same households under a counterfactual exposure (a, s).

    Covariates, sociability, community effects, disturbances and every measurement draw
    are held fixed (common random numbers); only participation ``a`` and CBO presence
    ``s`` are set. The items' direct covariate terms are therefore identical under every
    exposure: (a, s) moves the items only through the factors. Use it to compute
    score-scale ground truth for any measurement function: e.g. the mean of
    ``score(Y(1, 1)) - score(Y(0, 1))`` is the direct effect on that scale.

    Parameters
    ----------
    sim
        A survey from :func:`simulate_survey`.
    a, s
        Participation and CBO presence: 0/1 scalars or arrays of length n.
    codebook
        The codebook (bundled by default).

    Returns
    -------
    pandas.DataFrame
        The survey's columns with ``cbo_participation`` set to ``a`` and the indicators
        redrawn under (a, s), plus the latent factors as ``eta_<dimension>`` columns.
        (The ``community`` column is unchanged, so a frame with s != presence is a
        counterfactual, not a valid survey.)

    """
    book = codebook if codebook is not None else load_codebook()
    n = len(sim.data)
    a_arr = np.broadcast_to(np.asarray(a, dtype=int), (n,)).copy()
    s_arr = np.broadcast_to(np.asarray(s, dtype=int), (n,)).copy()
    if not (np.isin(a_arr, (0, 1)).all() and np.isin(s_arr, (0, 1)).all()):
        raise PariBayesError("a and s must be 0 or 1")
    eta = _latent(sim.params, sim.covariates, a_arr, s_arr, sim.noise)
    # the covariates are not intervened on: the direct terms are the same under every (a, s)
    xc = _regressor_matrix(sim.params, sim.covariates)
    items = simulate_items(
        sim.params, eta, sim.covariates["household_size"].to_numpy(), sim.noise, book, xc
    )
    out = sim.data.copy()
    out["cbo_participation"] = a_arr
    for col in items.columns:
        out[col] = items[col].to_numpy()
    for j, dim in enumerate(DIMENSIONS):
        out[f"eta_{dim}"] = eta[:, j]
    return out
