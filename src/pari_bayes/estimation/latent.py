"""Joint Bayesian measurement and structural multilevel model of latent integration factors.

Entry point: :func:`fit_latent_spec` (what ``pari-bayes fit`` calls for a spec with
``kind = "latent"``). It writes ``posterior.nc``, ``effects.csv``, ``diagnostics.csv``,
``factor_scores.csv`` (and ``loo.csv`` when invariance variants are compared).

The model, for household ``i`` in community ``c[i]`` and factor ``d``::

    eta[i, d] = community_mean[c[i], d] + x[i] @ beta[:, d]
                + direct_effect[d] * (participation[i] - mean participation) + disturbance[i, d]
    community_mean[c, d] = spillover_effect[d] * (presence[c] - mean presence)
                           + deviation[c, d],   deviation[:, d] ~ ZeroSumNormal(community_sd[d])
    disturbance[i] ~ Normal(0, R),  R ~ LKJ(eta_lkj)
    (R built from its C-vine partial correlations, independent Betas: Lewandowski et al. 2009)
    item j of factor d:  y[i, j] ~ item likelihood(loading[j] * eta[i, d], item parameters)

Sampled: ``eta`` itself (centred; its disturbance has unit scale, so no household funnel)
and the parameters. The community deviations are integrated out of the structural density
of ``eta`` exactly (``multilevel.marginal_loglik`` with ``zero_sum``) and drawn afterwards
from their conditional posterior (:func:`add_community_draws`).

Identification (stated and enforced):

- location: the structural equation has no intercept, its community terms sum to zero over
  the surveyed communities (centred presence and participation) and covariates are centred,
  so ``eta`` averages 0 over the surveyed communities at average covariates (item
  cutpoints/intercepts absorb the level);
- scale: the household disturbance has unit variance (``R`` is a correlation matrix), so
  effects are in units of the within-community residual sd of the factor;
- sign and labels: every loading is positive (log-normal prior, log-transformed in the
  sampler) and every item loads on exactly one declared factor, so "higher = more
  integrated", and sign flips and label switching cannot occur.
"""

from __future__ import annotations

import json
import math
import os
import time
import tomllib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pari_bayes.effects import EffectTable
from pari_bayes.errors import ConvergenceError, EstimationError, SpecError
from pari_bayes.estimation.multilevel import (
    community_counts,
    community_mean_logdensity,
    conditional_deviations,
    marginal_loglik,
)
from pari_bayes.estimation.posterior import write_posterior
from pari_bayes.io import write_csv
from pari_bayes.measurement.items import (
    _PAD,
    ITEM_KINDS,
    ItemData,
    ItemSpec,
    binomial_logit_logp,
    count_logp,
    masked_normal_logp,
    ordinal_logp,
    prepare_items,
)

__all__ = [
    "INVARIANCE_OPTIONS",
    "LatentSpec",
    "LatentDesign",
    "LatentFitResult",
    "parse_latent_spec",
    "load_latent_spec",
    "latent_design",
    "build_latent_model",
    "sample_latent",
    "latent_effects",
    "factor_scores",
    "latent_diagnostics",
    "fit_latent_spec",
    "data_updates",
    "compile_latent",
    "sample_compiled",
    "simulate_from_prior",
    "FALLBACK_COVARIATES",
]

#: Measurement invariance across communities.
INVARIANCE_OPTIONS = ("full", "loadings_by_community", "thresholds_by_community")

#: FALLBACK: used only while pari_bayes.identification is not importable (Table 4's controls:
#: residence, age, gender, hukou, off-farm employment, income level).
FALLBACK_COVARIATES = (
    "residence_months",
    "age",
    "gender",
    "urban_hukou",
    "offfarm_employed",
    "income_scale",
)

_DEFAULT_PRIORS: dict[str, Any] = {
    # Effects are in sd units of the factor's household disturbance; N(0, 1) allows effects
    # as large as the whole within-community spread.
    "effect_sd": 1.0,
    # Covariates are standardized; 0.5 lets one sd of a covariate move the factor by half an sd.
    "beta_sd": 0.5,
    # Four communities cannot estimate a between-community sd by themselves: HalfNormal(0.3)
    # says community means (beyond CBO presence) rarely differ by more than ~0.6 sd, which is
    # the size of the batch/period differences seen in the paper's Table 1 scores.
    "community_sd": 0.3,
    "lkj_eta": 2.0,
    # Loadings on the logit scale: LogNormal(0, 0.5) has a 90% interval 0.44-2.3, positive and
    # away from 0 (a loading at 0 would make the factor's sign unidentified).
    "loading_mu": 0.0,
    "loading_sigma": 0.5,
    # Hurdle items (standardized log amounts) are parameterized by their total sd given the
    # covariates, sqrt(loading^2 + residual sd^2) ~ HalfNormal(hurdle_sigma), and the share of
    # that variance the factor explains, R^2 ~ Beta(hurdle_r2_alpha, hurdle_r2_beta). Beta(2, 2)
    # (90% in 0.14-0.86) has zero density at R^2 = 1: an amount whose factor explains all of
    # its variance (residual sd -> 0, a Heywood case) would make every household's factor value
    # a deterministic function of one item, the funnel that failed the gate on a
    # 1,200-household survey (issue 14); at R^2 = 0 the item carries no information and the
    # factor's other items take over.
    "hurdle_r2_alpha": 2.0,
    "hurdle_r2_beta": 2.0,
    "cutpoint_sd": 2.5,
    "intercept_sd": 2.5,
    "hurdle_sigma": 1.0,
    # sd of community deviations of loadings (log scale) / intercepts under non-invariance.
    "invariance_sd": 0.5,
    # Direct covariate effects on items, per sd of the (standardized) covariate, on the item's
    # linear-predictor scale: a shift beyond +-2 log-odds per sd is implausible.
    "direct_sd": 1.0,
    # Continuous (normal) items, standardized: the same total-sd / variance-share
    # parameterization as the hurdle amounts, for the same reason (no Heywood case at R^2 = 1).
    "continuous_sigma": 1.0,
    "continuous_r2_alpha": 2.0,
    "continuous_r2_beta": 2.0,
    # Negative-binomial counts: 1 / sqrt(alpha) ~ HalfNormal(dispersion_sd), the
    # coefficient of variation of the gamma mixing (Stan's prior-choice recommendation):
    # 0 is the Poisson, 1 a variance of mu + mu^2.
    "dispersion_sd": 1.0,
    # Count loadings on the log scale: exp(loading) is the factor by which one factor sd
    # multiplies the expected count. LogNormal(log 0.5, 0.5), 90% in 0.22-1.14, i.e. x1.25 to
    # x3.1 per sd; the logit loadings' LogNormal(0, 0.5) would allow x10 per sd and made
    # prior predictive counts in the thousands (tests/test_cfa.py).
    "count_loading_mu": -0.69,
    "count_loading_sigma": 0.5,
}

#: Scalings in which a measurement-only (CFA) fit reports its parameters.
IDENTIFICATIONS = ("unit_variance", "marker")

_DEFAULT_SAMPLER: dict[str, Any] = {
    "name": "nutpie",
    "draws": 1000,
    "tune": 1000,
    "chains": 4,
    "cores": 2,
    "target_accept": 0.9,
    "low_rank_mass_matrix": False,
}


@dataclass
class LatentSpec:
    """A parsed latent-model spec (``models/latent.toml``)."""

    name: str
    factors: tuple[str, ...]
    items: tuple[ItemSpec, ...]
    treatment: str = "cbo_participation"
    presence: str = "cbo_presence"
    group: str = "community"
    covariates: tuple[str, ...] | None = None  # None: take from the identification layer
    invariance: str = "full"
    compare_invariance: tuple[str, ...] = ()
    priors: dict[str, Any] = field(default_factory=lambda: dict(_DEFAULT_PRIORS))
    sampler: dict[str, Any] = field(default_factory=lambda: dict(_DEFAULT_SAMPLER))
    alphas: tuple[float, ...] = (0.25, 0.5)
    gate: dict[str, float] = field(
        default_factory=lambda: {
            "r_hat": 1.01,
            "ess_bulk": 400.0,
            "ess_tail": 400.0,
            "parameters": 0.0,
        }
    )
    source: str = "<dict>"
    raw: dict[str, Any] = field(default_factory=dict)
    structural_part: bool = True  # False: a measurement-only (CFA) spec, kind = "measurement"
    identification: str = "unit_variance"  # measurement-only: the scaling reported
    # [structural] noncentred: factors whose household disturbances are sampled non-centred
    # (see _structural_part); the others are sampled centred
    noncentred: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        """``"latent"`` (measurement + structural) or ``"measurement"`` (CFA only)."""
        return "latent" if self.structural_part else "measurement"


def _where(source: str) -> str:
    return f"{source}: " if source else ""


def _column_list(value: Any, key: str, where: str) -> tuple[str, ...]:
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise SpecError(
            f"{where}: {key} = {value!r}; allowed: a list of survey column names, "
            f'e.g. {key} = ["household_size"]'
        )
    return tuple(dict.fromkeys(value))


def parse_latent_spec(raw: Mapping[str, Any], source: str = "<dict>") -> LatentSpec:
    """Check and parse a latent-model spec.

    Parameters
    ----------
    raw
        The TOML content as a mapping.
    source
        File name for messages.

    Returns
    -------
    LatentSpec

    Raises
    ------
    SpecError
        Naming the key, the value received and what is allowed.
    """
    w = _where(source)
    kind = raw.get("kind", "latent")
    if kind not in ("latent", "measurement"):
        raise SpecError(
            f'{w}kind = {kind!r}; this parser reads kind = "latent" and kind = "measurement" '
            "specs only."
        )
    if kind == "measurement" and "structural" in raw:
        raise SpecError(
            f'{w}[structural] is not used by kind = "measurement" (the measurement model '
            'alone); remove it, or use kind = "latent" for the causal part.'
        )
    factors_raw = raw.get("factors")
    if isinstance(factors_raw, Mapping):
        factors_raw = factors_raw.get("names")
    if not factors_raw or not all(isinstance(f, str) for f in factors_raw):
        raise SpecError(
            f"{w}[factors] names must be a non-empty list of factor names, got {factors_raw!r}"
        )
    factors = tuple(factors_raw)
    if len(set(factors)) != len(factors):
        raise SpecError(f"{w}factor names repeat: {list(factors)}")
    items_raw = raw.get("items")
    if not items_raw:
        raise SpecError(
            f"{w}no [[items]] declared; declare each indicator with name, type, factor."
        )
    items = []
    known_keys = {
        "name",
        "type",
        "factor",
        "levels",
        "trials",
        "proportion",
        "zero_model",
        "direct",
        "divided_by",
        "log",
    }
    for k, entry in enumerate(items_raw):
        where = f"{w}[[items]] #{k + 1}"
        extra = set(entry) - known_keys
        if extra:
            raise SpecError(
                f"{where}: unknown key(s) {sorted(extra)}; allowed: {sorted(known_keys)}"
            )
        for key in ("name", "type", "factor"):
            if key not in entry:
                raise SpecError(f"{where}: missing {key!r}")
        if entry["factor"] not in factors:
            raise SpecError(
                f"{where} ({entry['name']}): factor {entry['factor']!r} is not declared; "
                f"declared factors: {', '.join(factors)}"
            )
        if entry["type"] not in ITEM_KINDS:
            raise SpecError(
                f"{where} ({entry['name']}): type {entry['type']!r} is unknown; allowed: "
                + ", ".join(ITEM_KINDS)
            )
        items.append(
            ItemSpec(
                name=entry["name"],
                kind=entry["type"],
                factor=entry["factor"],
                levels=tuple(int(v) for v in entry["levels"]) if "levels" in entry else None,
                trials=entry.get("trials"),
                proportion=bool(entry.get("proportion", False)),
                zero_model=bool(entry.get("zero_model", True)),
                direct=_column_list(
                    entry.get("direct", []), "direct", f"{where} ({entry['name']})"
                ),
                divided_by=_column_list(
                    entry.get("divided_by", []), "divided_by", f"{where} ({entry['name']})"
                ),
                log=bool(entry.get("log", False)),
            )
        )
    names = [it.name for it in items]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SpecError(f"{w}item(s) declared twice: {', '.join(dup)}")
    empty = [f for f in factors if f not in {it.factor for it in items}]
    if empty:
        raise SpecError(f"{w}factor(s) without items: {', '.join(empty)}")
    for f in factors:
        members = [it for it in items if it.factor == f]
        for col in {c for it in members for c in it.direct}:
            if all(col in it.direct for it in members):
                raise SpecError(
                    f"{w}every item of factor {f!r} has a direct effect of {col!r}, which "
                    f"then cannot be told apart from {col!r}'s effect on the factor; leave "
                    "at least one item of the factor without it"
                )
    structural = dict(raw.get("structural", {}))
    covariates = structural.get("covariates", "identification")
    if covariates == "identification":
        covariates = None
    elif not isinstance(covariates, list) or not all(isinstance(c, str) for c in covariates):
        raise SpecError(
            f'{w}[structural] covariates must be "identification" or a list of column names, '
            f"got {covariates!r}"
        )
    else:
        covariates = tuple(covariates)
    noncentred = structural.get("noncentred", [])
    if not isinstance(noncentred, list) or any(f not in factors for f in noncentred):
        raise SpecError(
            f"{w}[structural] noncentred = {noncentred!r}; allowed: a list of the declared "
            f"factors ({', '.join(factors)}), e.g. the ones the items measure weakly"
        )
    measurement = dict(raw.get("measurement", {}))
    identification = measurement.get("identification", "unit_variance")
    if identification not in IDENTIFICATIONS:
        raise SpecError(
            f"{w}[measurement] identification = {identification!r}; allowed: "
            + ", ".join(IDENTIFICATIONS)
        )
    if kind == "measurement" and "group" in measurement:
        structural = {"group": measurement["group"]}
    invariance = measurement.get("invariance", raw.get("invariance", "full"))
    compare = tuple(measurement.get("compare_invariance", ()))
    for value in (invariance, *compare):
        if value not in INVARIANCE_OPTIONS:
            raise SpecError(f"{w}invariance = {value!r}; allowed: {', '.join(INVARIANCE_OPTIONS)}")
    if kind == "measurement" and (invariance != "full" or compare) and "group" not in structural:
        raise SpecError(
            f"{w}[measurement] invariance = {invariance!r} varies items by group, but no group "
            'is named; add group = "<column>" to [measurement] or use invariance = "full".'
        )
    priors = dict(_DEFAULT_PRIORS)
    # [latent_priors]: plain numbers (the multilevel [priors] tables do not apply here)
    for key, value in dict(raw.get("latent_priors", {})).items():
        if key in ("hurdle_loading_mu", "hurdle_loading_sigma"):
            raise SpecError(
                f"{w}[latent_priors] {key!r} was replaced: a hurdle item's loading and residual "
                "sd now follow from its total sd (hurdle_sigma) and the share of its variance "
                "the factor explains (hurdle_r2_alpha, hurdle_r2_beta); see docs/latent.md"
            )
        if key not in _DEFAULT_PRIORS:
            raise SpecError(
                f"{w}[latent_priors] {key!r} is unknown; allowed: {sorted(_DEFAULT_PRIORS)}"
            )
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise SpecError(f"{w}[latent_priors] {key} must be a number, got {value!r}")
        priors[key] = float(value)
    for key in (
        "effect_sd",
        "beta_sd",
        "community_sd",
        "lkj_eta",
        "loading_sigma",
        "cutpoint_sd",
        "continuous_sigma",
        "dispersion_sd",
        "count_loading_sigma",
    ):
        if priors[key] <= 0:
            raise SpecError(f"{w}[latent_priors] {key} must be positive, got {priors[key]}")
    sampler = dict(_DEFAULT_SAMPLER)
    for key, value in dict(raw.get("sampler", {})).items():
        if key == "sampler":  # the multilevel spec's name for it
            key = "name"
        if key in ("seed", "prior_draws"):  # used by the multilevel spec only
            continue
        if key not in _DEFAULT_SAMPLER:
            raise SpecError(f"{w}[sampler] {key!r} is unknown; allowed: {sorted(_DEFAULT_SAMPLER)}")
        sampler[key] = value
    if sampler["name"] not in ("nutpie", "pymc"):
        raise SpecError(f"{w}[sampler] name = {sampler['name']!r}; allowed: nutpie, pymc")
    effects = dict(raw.get("effects", {}))
    alphas = tuple(float(a) for a in effects.get("alphas", (0.25, 0.5)))
    if any(not 0 <= a <= 1 for a in alphas):
        raise SpecError(f"{w}[effects] alphas must lie in [0, 1], got {list(alphas)}")
    gate = {"r_hat": 1.01, "ess_bulk": 400.0, "ess_tail": 400.0, "parameters": 0.0}
    gate.update({k: float(v) for k, v in dict(raw.get("gate", {})).items()})
    return LatentSpec(
        name=str(raw.get("name", Path(source).stem if source else "latent")),
        factors=factors,
        items=tuple(items),
        treatment=structural.get("treatment", "cbo_participation"),
        presence=structural.get("presence", "cbo_presence"),
        group=structural.get("group", "community" if kind == "latent" else ""),
        covariates=covariates,
        invariance=invariance,
        compare_invariance=compare,
        priors=priors,
        sampler=sampler,
        alphas=alphas,
        gate=gate,
        source=source,
        raw=dict(raw),
        structural_part=kind == "latent",
        identification=identification,
        noncentred=tuple(f for f in factors if f in noncentred),
    )


def load_latent_spec(spec: str | os.PathLike | Mapping[str, Any] | LatentSpec | Any) -> LatentSpec:
    """Read a latent spec from a path, a mapping, a :class:`LatentSpec` or a parsed spec object.

    Parsed spec objects of the multilevel spec module are accepted when they carry the TOML
    content as ``raw`` (or ``data``) and optionally ``path``.
    """
    if isinstance(spec, LatentSpec):
        return spec
    if isinstance(spec, Mapping):
        return parse_latent_spec(spec)
    if isinstance(spec, str | os.PathLike):
        path = Path(spec)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SpecError(f"{path}: cannot read the model spec: {exc}") from exc
        return parse_latent_spec(raw, source=str(path))
    for attr in ("raw", "data", "content"):
        raw = getattr(spec, attr, None)
        if isinstance(raw, Mapping):
            source = str(getattr(spec, "path", getattr(spec, "source", "<spec>")))
            return parse_latent_spec(raw, source=source)
    raise SpecError(f"cannot read a latent spec from a {type(spec).__name__}")


# --------------------------------------------------------------------------------------
# Design
# --------------------------------------------------------------------------------------


@dataclass
class LatentDesign:
    """Data of one fit: structural design and measurement data."""

    households: np.ndarray
    communities: tuple[str, ...]
    community_index: np.ndarray
    presence: np.ndarray  # per community
    participation: np.ndarray
    covariates: tuple[str, ...]
    x: np.ndarray  # standardized, (n, p)
    x_mean: np.ndarray
    x_scale: np.ndarray
    covariate_mask: np.ndarray  # (p, d) True where covariate enters factor d's equation
    items: ItemData
    adjustment_source: str = "identification"
    direct_columns: tuple[str, ...] = ()  # columns with direct effects on items
    direct_x: np.ndarray | None = None  # standardized, (n, q)
    direct_pairs: tuple[tuple[int, int], ...] = ()  # (column q, item j of items.items)

    @property
    def n(self) -> int:
        """Number of households."""
        return len(self.households)


def _adjustment_sets(
    survey: Any, spec: LatentSpec, identification: Any = None
) -> tuple[dict[str, tuple[str, ...]], str]:
    """Covariates per factor, from the spec or the identification result (the run's DAG)."""
    if spec.covariates is not None:
        return {f: spec.covariates for f in spec.factors}, "spec"
    if identification is None:
        from pari_bayes.identification.identify import identify

        identification = identify(survey, refute=False)
    result = identification
    sets = {}
    for f in spec.factors:
        chosen: list[str] = []
        for estimand in ("DE", "IE"):
            for col in result.adjustment_set(estimand, f):
                if col not in chosen:
                    chosen.append(col)
        sets[f] = tuple(chosen)
    return sets, "identification"


def latent_design(
    survey: Any,
    spec: LatentSpec,
    adjustment: Mapping[str, Sequence[str]] | None = None,
    identification: Any = None,
) -> LatentDesign:
    """Build the design of a latent fit from a survey.

    Parameters
    ----------
    survey
        A :class:`pari_bayes.survey.Survey`.
    spec
        Parsed spec.
    adjustment
        Covariates per factor; by default from the spec or the identification layer.
    """
    frame = survey.data if hasattr(survey, "data") else survey
    if not spec.structural_part:
        return _measurement_design(frame, spec)
    source = "given"
    if adjustment is None:
        adjustment, source = _adjustment_sets(survey, spec, identification)
    for name in (spec.treatment, spec.presence, spec.group):
        if name not in frame.columns:
            raise SpecError(
                f"{spec.source}: column {name!r} (structural part) is not in the survey"
            )
    covariates: list[str] = []
    for f in spec.factors:
        for col in adjustment.get(f, ()):
            if col not in frame.columns:
                raise SpecError(
                    f"{spec.source}: covariate {col!r} (factor {f}) is not a survey column"
                )
            if col not in covariates:
                covariates.append(col)
    mask = np.array(
        [[col in adjustment.get(f, ()) for f in spec.factors] for col in covariates], dtype=bool
    ).reshape(len(covariates), len(spec.factors))
    x = frame[covariates].to_numpy(dtype=float) if covariates else np.zeros((len(frame), 0))
    x_mean = x.mean(axis=0)
    x_scale = x.std(axis=0)
    x_scale[x_scale == 0] = 1.0
    registry = getattr(survey, "registry", None)
    present = list(pd.unique(frame[spec.group]))
    if registry is not None:
        order = [c for c in registry.names if c in set(present)]
    else:
        order = sorted(present)
    index = pd.Index(order)
    community_index = index.get_indexer(frame[spec.group])
    presence = frame.groupby(spec.group)[spec.presence].max().reindex(order).to_numpy(dtype=float)
    items = prepare_items(frame, spec.items, spec.factors)
    households = _household_labels(frame)
    direct_x, direct_columns, direct_pairs = _direct_design(frame, spec, items)
    return LatentDesign(
        households=households,
        communities=tuple(order),
        community_index=community_index,
        presence=presence,
        participation=frame[spec.treatment].to_numpy(dtype=float),
        covariates=tuple(covariates),
        x=(x - x_mean) / x_scale,
        x_mean=x_mean,
        x_scale=x_scale,
        covariate_mask=mask,
        items=items,
        adjustment_source=source,
        direct_columns=direct_columns,
        direct_x=direct_x,
        direct_pairs=direct_pairs,
    )


def _household_labels(frame: pd.DataFrame) -> np.ndarray:
    if "household_id" in frame.columns:
        return frame["household_id"].astype(str).to_numpy()
    return np.array([f"h{i}" for i in range(len(frame))])


def _measurement_design(frame: pd.DataFrame, spec: LatentSpec) -> LatentDesign:
    """Return the design of a measurement-only fit: items (and a group, for invariance)."""
    n = len(frame)
    if spec.group:
        if spec.group not in frame.columns:
            raise SpecError(
                f"{_where(spec.source)}[measurement] group = {spec.group!r} is not a column; "
                f"allowed: {', '.join(map(str, frame.columns))}"
            )
        order = sorted(pd.unique(frame[spec.group].astype(str)))
        community_index = pd.Index(order).get_indexer(frame[spec.group].astype(str))
    else:
        order, community_index = ["all"], np.zeros(n, dtype=int)
    items = prepare_items(frame, spec.items, spec.factors)
    direct_x, direct_columns, direct_pairs = _direct_design(frame, spec, items)
    return LatentDesign(
        households=_household_labels(frame),
        communities=tuple(order),
        community_index=community_index,
        presence=np.zeros(len(order)),
        participation=np.zeros(n),
        covariates=(),
        x=np.zeros((n, 0)),
        x_mean=np.zeros(0),
        x_scale=np.ones(0),
        covariate_mask=np.zeros((0, len(spec.factors)), dtype=bool),
        items=items,
        adjustment_source="none (measurement model)",
        direct_columns=direct_columns,
        direct_x=direct_x,
        direct_pairs=direct_pairs,
    )


def _direct_design(frame: pd.DataFrame, spec: LatentSpec, items: ItemData):
    """Standardized direct-effect columns, their names and (column, item) pairs."""
    direct_columns = tuple(dict.fromkeys(c for it in spec.items for c in it.direct))
    unknown = [c for c in direct_columns if c not in frame.columns]
    if unknown:
        raise SpecError(
            f"{_where(spec.source)}[[items]] direct: column(s) {', '.join(unknown)} not in the "
            f"survey; allowed: {', '.join(map(str, frame.columns))}"
        )
    direct_x = None
    if direct_columns:
        raw_x = frame[list(direct_columns)].to_numpy(dtype=float)
        scale = raw_x.std(axis=0)
        scale[scale == 0] = 1.0
        direct_x = (raw_x - raw_x.mean(axis=0)) / scale
    item_order = [it.name for it in items.items]
    direct_pairs = tuple(
        (direct_columns.index(c), item_order.index(it.name)) for it in spec.items for c in it.direct
    )
    return direct_x, direct_columns, direct_pairs


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


def _anchor_mask(items: Sequence[ItemSpec]) -> np.ndarray:
    """Flag the items that may vary by community (every item but each factor's first)."""
    seen: set[str] = set()
    free = []
    for it in items:
        free.append(it.factor in seen)
        seen.add(it.factor)
    return np.array(free, dtype=bool)


def _pair_labels(names: Sequence[str]) -> list[str]:
    """Labels of the C-vine pairs (level j, variable i > j), in construction order."""
    n = len(names)
    return [f"{names[j]}~{names[i]}" for j in range(n - 1) for i in range(j + 1, n)]


def cpc_beta_parameters(n: int, eta: float) -> np.ndarray:
    """Beta parameters of the C-vine partial correlations of an LKJ(eta) matrix.

    Lewandowski, Kurowicka & Joe (2009): the partial correlation of variables j and
    i > j given variables 0..j-1 is Beta(b_j, b_j) on (-1, 1), b_j = eta + (n - 2 - j) / 2,
    all independent; the correlation matrix they build has density proportional to
    det(R) ** (eta - 1). Order as :func:`_pair_labels`.
    """
    return np.array(
        [eta + (n - 2 - j) / 2.0 for j in range(n - 1) for _ in range(j + 1, n)], dtype=float
    )


def corr_cholesky_from_cpc(cpc: Any, n: int, xp: Any = np) -> Any:
    """Lower Cholesky factor of a correlation matrix from its C-vine partial correlations.

    ``L[i, j] = z[j, i] * sqrt(1 - sum_{m<j} L[i, m]**2)`` and
    ``L[i, i] = sqrt(1 - sum_{m<i} L[i, m]**2)`` (the construction Stan uses for
    ``cholesky_factor_corr``). ``xp`` is numpy or ``pytensor.tensor``.

    Examples
    --------
    >>> L = corr_cholesky_from_cpc(np.array([0.5, 0.0, 0.0]), 3)
    >>> np.round(L @ L.T, 3)[0, 1], np.round(L @ L.T, 3)[1, 2]
    (np.float64(0.5), np.float64(0.0))
    """
    pos = {pair: k for k, pair in enumerate((j, i) for j in range(n - 1) for i in range(j + 1, n))}
    chol: list[list[Any]] = [[0.0] * n for _ in range(n)]
    for i in range(n):
        used: Any = 0.0
        for j in range(i):
            chol[i][j] = cpc[pos[(j, i)]] * xp.sqrt(1.0 - used)
            used = used + chol[i][j] ** 2
        chol[i][i] = xp.sqrt(1.0 - used) if i else 1.0
    if xp is np:
        return np.array(chol, dtype=float)
    return xp.stack([xp.stack([xp.as_tensor_variable(v) for v in row]) for row in chol])


def lkj_corr_draw(n: int, eta: float, rng: np.random.Generator) -> np.ndarray:
    """One LKJ(eta) correlation matrix (numpy), built as the model builds it."""
    b = cpc_beta_parameters(n, eta)
    chol = corr_cholesky_from_cpc(2.0 * rng.beta(b, b) - 1.0, n)
    return chol @ chol.T


def _structural_mean(posterior, design: LatentDesign) -> np.ndarray:
    """Structural part of eta without the community deviations: (chain, draw, n, D)."""
    direct = posterior["direct_effect"].to_numpy()
    spill = posterior["spillover_effect"].to_numpy()
    presence = design.presence - design.presence.mean()
    part = design.participation - design.participation.mean()
    m = (
        presence[design.community_index][None, None, :, None] * spill[:, :, None, :]
        + part[None, None, :, None] * direct[:, :, None, :]
    )
    if "beta" in posterior:
        m = m + np.einsum("np,cspd->csnd", design.x, posterior["beta"].to_numpy())
    return m


def add_community_draws(idata, design: LatentDesign, seed: int):
    """Add posterior draws of the community deviations and means to ``idata.posterior``.

    The sampler integrates the ZeroSumNormal deviations out (:func:`build_latent_model`);
    given a draw of eta and the parameters they are Gaussian, and
    :func:`~pari_bayes.estimation.multilevel.conditional_deviations` draws them exactly, so
    the (parameters, deviations) pairs are draws of the joint posterior. Adds
    ``community_deviation`` and ``community_mean`` (``IE * centred presence + deviation``),
    dims (chain, draw, community, dimension).
    """
    import xarray as xr

    post = idata.posterior
    idx = design.community_index
    counts = community_counts(design)
    resid = post["eta"].to_numpy() - _structural_mean(post, design)
    sums = np.zeros((*resid.shape[:2], counts.size, resid.shape[-1]))
    np.add.at(sums, (slice(None), slice(None), idx), resid)
    # the presence term is part of the structural mean; community means of the rest
    rbar = sums / counts[None, None, :, None]
    n_fac = resid.shape[-1]
    if "disturbance_corr" in post:
        corr = post["disturbance_corr"].to_numpy()
    else:
        corr = np.broadcast_to(np.eye(n_fac), (*resid.shape[:2], n_fac, n_fac))
    tau = post["community_sd"].to_numpy()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 14]))
    dev = conditional_deviations(rbar, counts, corr, tau, rng, zero_sum=True)
    presence = design.presence - design.presence.mean()
    mean = dev + presence[None, None, :, None] * post["spillover_effect"].to_numpy()[:, :, None]
    dims = ("chain", "draw", "community", "dimension")
    coords = {"community": list(design.communities)}
    idata.posterior = post.assign(
        community_deviation=xr.DataArray(dev, dims=dims, coords=coords),
        community_mean=xr.DataArray(mean, dims=dims, coords=coords),
    )
    return idata


def build_latent_model(design: LatentDesign, spec: LatentSpec, invariance: str | None = None):
    """Build the PyMC model of the joint measurement + structural model.

    Parameters
    ----------
    design
        From :func:`latent_design`.
    spec
        Parsed spec (priors, invariance).
    invariance
        Overrides ``spec.invariance``.

    Returns
    -------
    pymc.Model
    """
    import pymc as pm

    invariance = invariance or spec.invariance
    n_comm = len(design.communities)
    n_fac = len(spec.factors)
    coords = {
        "household": design.households,
        "community": list(design.communities),
        "dimension": list(spec.factors),
        "dimension_bis": list(spec.factors),
        "indicator": [it.name for it in design.items.items],
        "covariate": list(design.covariates),
    }
    with pm.Model(coords=coords) as model:
        x = pm.Data("covariates", design.x, dims=("household", "covariate"))
        part = pm.Data("participation", design.participation, dims="household")
        presence = pm.Data("presence", design.presence, dims="community")
        # (n, C) one-hot membership: a dense product is much cheaper than an indexed gather
        comm_onehot = pm.Data(
            "community_onehot",
            np.eye(n_comm)[design.community_index],
            dims=("household", "community"),
        )

        if not spec.structural_part:
            chol = _disturbance_cholesky(model, spec, n_fac)
            # measurement only (a CFA): eta ~ Normal(0, R), unit variances (the scale), zero
            # means (the location; item intercepts and cutpoints absorb the level)
            if n_fac > 1:
                eta = pm.MvNormal(
                    "eta", mu=np.zeros(n_fac), chol=chol, dims=("household", "dimension")
                )
            else:
                eta = pm.Normal("eta", 0.0, 1.0, dims=("household", "dimension"))
        else:
            eta = _structural_part(model, design, spec, x, part, presence, comm_onehot)
        _measurement_part(model, design, spec, eta, comm_onehot, invariance)
    return model


def _disturbance_cholesky(model, spec: LatentSpec, n_fac: int, order: Sequence[int] | None = None):
    """Cholesky factor of the factors' (disturbance) correlation matrix, LKJ via the C-vine.

    ``order`` (a permutation of the factors) builds the factor in that order: the result is
    the Cholesky factor of ``R[order][:, order]``. LKJ is exchangeable, so the prior of R
    is the same in every order; ``disturbance_corr`` is stored in the spec's order.
    """
    import pymc as pm
    import pytensor.tensor as pt

    if n_fac == 1:
        return pt.eye(1)
    order = list(range(n_fac)) if order is None else list(order)
    # LKJ(eta) through the C-vine partial correlations (independent Betas): the Cholesky
    # factor is built directly, always positive definite, with no matrix check or
    # decomposition per gradient (pm.LKJCorr's logp runs a Python-mode positive-definiteness
    # check and an interval transform that can leave the positive-definite set).
    model.add_coord("dimension_pair", _pair_labels([spec.factors[i] for i in order]))
    cpc_raw = pm.Beta(
        "disturbance_cpc_raw",
        alpha=cpc_beta_parameters(n_fac, spec.priors["lkj_eta"]),
        beta=cpc_beta_parameters(n_fac, spec.priors["lkj_eta"]),
        dims="dimension_pair",
    )
    chol = corr_cholesky_from_cpc(2.0 * cpc_raw - 1.0, n_fac, xp=pt)
    back = np.argsort(order)
    corr = pt.dot(chol, chol.T)[back][:, back]
    pm.Deterministic("disturbance_corr", corr, dims=("dimension", "dimension_bis"))
    return chol


def _structural_part(model, design: LatentDesign, spec: LatentSpec, x, part, presence, comm_onehot):
    """Add the structural equation of the factors; return the sampled factor values."""
    import pymc as pm
    import pytensor.tensor as pt

    pri = spec.priors
    n_fac = len(spec.factors)
    with model:
        direct = pm.Normal("direct_effect", 0.0, pri["effect_sd"], dims="dimension")
        spill = pm.Normal("spillover_effect", 0.0, pri["effect_sd"], dims="dimension")
        rows, cols = np.nonzero(design.covariate_mask)
        if rows.size:
            beta_free = pm.Normal("beta_free", 0.0, pri["beta_sd"], shape=rows.size)
            beta = pt.zeros((len(design.covariates), n_fac))[rows, cols].set(beta_free)
            pm.Deterministic("beta", beta, dims=("covariate", "dimension"))
            structural = pt.dot(x, beta)
        else:
            structural = pt.zeros((design.n, n_fac))
        comm_sd = pm.HalfNormal("community_sd", pri["community_sd"], dims="dimension")
        presence_term = (presence - presence.mean())[:, None] * spill[None, :]
        fixed = pt.dot(comm_onehot, presence_term) + structural
        fixed = fixed + (part - part.mean())[:, None] * direct[None, :]
        if spec.noncentred:
            return _mixed_households(model, design, spec, comm_onehot, comm_sd, fixed)
        chol = _disturbance_cholesky(model, spec, n_fac)
        # The household factor values are sampled directly (centred); the scale of their
        # disturbance is fixed at 1, so there is no household-level funnel. The community
        # deviations (ZeroSumNormal(community_sd): location, see the module docstring) are
        # integrated out of the structural density exactly (Gaussian given eta) and redrawn
        # after sampling from their conditional posterior (add_community_draws): with few
        # communities their sampled form made a funnel with community_sd, the divergences
        # of issue 14.
        counts = community_counts(design)
        eta = pm.Flat("eta", dims=("household", "dimension"))
        pm.Potential(
            "eta_structural",
            marginal_loglik(
                eta - fixed,
                design.community_index,
                counts,
                chol,
                comm_sd,
                n_fac,
                zero_sum=True,
            ),
        )
    return eta


def _mixed_households(model, design: LatentDesign, spec: LatentSpec, comm_onehot, comm_sd, fixed):
    """Household factor values, centred for some factors and non-centred for the others.

    ``[structural] noncentred`` names the factors whose household disturbances are sampled
    non-centred: the same model as the centred one (:func:`_structural_part`), in other
    coordinates. With the factors ordered centred first (s), non-centred last (w), and
    ``L`` the Cholesky factor of R in that order::

        eta_i = fixed_i + b_c + (e_i - ebar_c),   e_i = L [L_ss^{-1} v_i ; z_i]
        v_i ~ Normal(0, R_ss)  (centred),   z_i ~ Normal(0, I)  (non-centred)
        b_c ~ the exact density of u_c + ebar_c, u ZeroSumNormal(community_sd), integrated
              (multilevel.community_mean_logdensity: variance >= R / n_c, no funnel)

    ``(v_i, z_i)`` iid make ``e_i ~ Normal(0, R)``; its within-community part
    ``e_i - ebar_c`` is independent of ``ebar_c``, which ``b_c`` carries. A weakly measured
    factor's values are imputed from the others through R; sampled centred, a correlation
    moves only when all n values move with it. Non-centred and last in the Cholesky order,
    its correlations move its own values only, which its items barely constrain, and leave
    the well-measured factors' values alone. ``ebar_c`` of (v, z) does not enter eta: those
    directions keep their prior.
    """
    import pymc as pm
    import pytensor.tensor as pt

    n_fac = len(spec.factors)
    weak = [i for i, f in enumerate(spec.factors) if f in spec.noncentred]
    strong = [i for i in range(n_fac) if i not in weak]
    order = strong + weak
    back = np.argsort(order)
    chol = _disturbance_cholesky(model, spec, n_fac, order=order)  # of R in `order`
    counts = community_counts(design)
    with model:
        cols = []
        density = 0.0
        if strong:
            model.add_coord("dimension_centred", [spec.factors[i] for i in strong])
            v = pm.Flat("eta_disturbance", dims=("household", "dimension_centred"))
            for k in range(len(strong)):  # L_ss^{-1} v by forward substitution
                acc = v[:, k]
                for j in range(k):
                    acc = acc - chol[k, j] * cols[j]
                cols.append(acc / chol[k, k])
            std = pt.stack(cols, axis=1)
            density = -0.5 * pt.sum(std**2) - design.n * pt.sum(
                pt.log(pt.diagonal(chol)[: len(strong)])
            )
        model.add_coord("dimension_noncentred", [spec.factors[i] for i in weak])
        z = pm.Normal("eta_z", 0.0, 1.0, dims=("household", "dimension_noncentred"))
        zeta = pt.concatenate([std, z], axis=1) if strong else z
        e = pt.dot(zeta, chol.T)[:, back]  # e_i ~ Normal(0, R), the spec's factor order
        ebar = pt.dot(comm_onehot.T, e) / counts[:, None]
        b = pm.Flat("community_residual_mean", dims=("community", "dimension"))
        # community_mean_logdensity uses chol only through chol chol' = R
        sigma_rows = chol[back]
        density = density + community_mean_logdensity(
            b, counts, sigma_rows, comm_sd, n_fac, zero_sum=True
        )
        pm.Potential("eta_structural", density)
        eta = fixed + pt.dot(comm_onehot, b - ebar) + e
        return pm.Deterministic("eta", eta, dims=("household", "dimension"))


def _measurement_part(model, design: LatentDesign, spec: LatentSpec, eta, comm_onehot, invariance):
    """Add every item's likelihood given the factor values ``eta``."""
    import pymc as pm
    import pytensor.tensor as pt
    from pymc.distributions.transforms import ordered

    pri = spec.priors
    data = design.items
    items = data.items
    n_comm = len(design.communities)
    item_pos = {it.name: j for j, it in enumerate(items)}
    free = _anchor_mask(items)
    with model:
        # ---- one positive loading per item
        hurdle_pos = (
            np.array([item_pos[it.name] for it in data.hurdle.items], dtype=int)
            if data.hurdle is not None
            else np.zeros(0, dtype=int)
        )
        cont_pos = (
            np.array([item_pos[it.name] for it in data.continuous.items], dtype=int)
            if data.continuous is not None
            else np.zeros(0, dtype=int)
        )
        count_pos = (
            np.array([item_pos[it.name] for it in data.count.items], dtype=int)
            if data.count is not None
            else np.zeros(0, dtype=int)
        )
        other_pos = np.setdiff1d(
            np.arange(len(items)), np.concatenate([hurdle_pos, cont_pos, count_pos])
        )
        loading = pt.zeros(len(items))
        if count_pos.size:
            model.add_coord("count_indicator", [it.name for it in data.count.items])
        if other_pos.size:
            model.add_coord("indicator_logit", [items[j].name for j in other_pos])
            logit_loading = pm.LogNormal(
                "logit_loading",
                mu=pri["loading_mu"],
                sigma=pri["loading_sigma"],
                dims="indicator_logit",
            )
            loading = loading[other_pos].set(logit_loading)
        if count_pos.size:
            count_loading = pm.LogNormal(
                "count_loading",
                mu=pri["count_loading_mu"],
                sigma=pri["count_loading_sigma"],
                dims="count_indicator",
            )
            loading = loading[count_pos].set(count_loading)
        h_sigma = None
        if hurdle_pos.size:
            model.add_coord("hurdle_indicator", [it.name for it in data.hurdle.items])
            h_total = pm.HalfNormal(
                "log_amount_total_sd", pri["hurdle_sigma"], dims="hurdle_indicator"
            )
            h_r2 = pm.Beta(
                "log_amount_r2",
                alpha=pri["hurdle_r2_alpha"],
                beta=pri["hurdle_r2_beta"],
                dims="hurdle_indicator",
            )
            loading = loading[hurdle_pos].set(h_total * pt.sqrt(h_r2))
            h_sigma = pm.Deterministic(
                "log_amount_sd", h_total * pt.sqrt(1.0 - h_r2), dims="hurdle_indicator"
            )
        c_sigma = None
        if cont_pos.size:
            # as the hurdle amounts: total sd of the standardized item and the share of its
            # variance the factor explains, so loading and residual sd cannot trade off into
            # a Heywood case (residual sd -> 0)
            model.add_coord("continuous_indicator", [it.name for it in data.continuous.items])
            c_total = pm.HalfNormal(
                "continuous_total_sd", pri["continuous_sigma"], dims="continuous_indicator"
            )
            c_r2 = pm.Beta(
                "continuous_r2",
                alpha=pri["continuous_r2_alpha"],
                beta=pri["continuous_r2_beta"],
                dims="continuous_indicator",
            )
            loading = loading[cont_pos].set(c_total * pt.sqrt(c_r2))
            c_sigma = pm.Deterministic(
                "continuous_sd", c_total * pt.sqrt(1.0 - c_r2), dims="continuous_indicator"
            )
        loading = pm.Deterministic("loading", loading, dims="indicator")
        n_free = int(free.sum())
        shift = None
        log_dev = None
        if invariance != "full" and n_free:
            model.add_coord(
                "indicator_free", [it.name for it, f in zip(items, free, strict=True) if f]
            )
            dev_z = pm.Normal("invariance_z", 0.0, 1.0, dims=("community", "indicator_free"))
            full = pt.zeros((n_comm, len(items)))[:, np.flatnonzero(free)].set(
                pri["invariance_sd"] * dev_z
            )
            if invariance == "loadings_by_community":
                log_dev = pm.Deterministic(
                    "loading_log_deviation", full, dims=("community", "indicator")
                )
            else:
                shift = pm.Deterministic("intercept_shift", full, dims=("community", "indicator"))

        # ---- direct covariate effects on items (MIMIC direct effects), if declared
        direct_terms = None
        if design.direct_pairs:
            q_idx, j_idx = (list(v) for v in zip(*design.direct_pairs, strict=True))
            model.add_coord(
                "direct_pair",
                [f"{items[j].name}~{design.direct_columns[q]}" for q, j in design.direct_pairs],
            )
            item_direct = pm.Normal("item_direct", 0.0, pri["direct_sd"], dims="direct_pair")
            coef = pt.zeros((len(design.direct_columns), len(items)))[q_idx, j_idx].set(item_direct)
            direct_terms = pt.dot(pm.Data("direct_covariates", design.direct_x), coef)

        def item_linear(group_items):
            """(n, J) loading * factor value of each item of a type (+ community shifts)."""
            g_item = np.array([item_pos[it.name] for it in group_items])
            eta_items = pt.dot(eta, data.factor_matrix(group_items))
            lam = loading[g_item][None, :]
            if log_dev is not None:
                lam = lam * pt.exp(pt.dot(comm_onehot, log_dev[:, g_item]))
            lin = lam * eta_items
            if shift is not None:
                lin = lin + pt.dot(comm_onehot, shift[:, g_item])
            if direct_terms is not None:
                lin = lin + direct_terms[:, g_item]
            return lin

        if data.ordinal is not None:
            od = data.ordinal
            k_max = int(od.n_categories.max())
            model.add_coord("ordinal_indicator", [it.name for it in od.items])
            blocks, order = [], []
            for k in sorted(set(od.n_categories.tolist())):
                members = np.flatnonzero(od.n_categories == k)
                model.add_coord(f"ordinal_{k}", [od.items[m].name for m in members])
                model.add_coord(f"cut_{k}", np.arange(k - 1))
                init = np.tile(np.linspace(-1.0, 1.0, k - 1), (members.size, 1))
                cuts = pm.Normal(
                    f"cutpoints_{k}",
                    0.0,
                    pri["cutpoint_sd"],
                    dims=(f"ordinal_{k}", f"cut_{k}"),
                    transform=ordered if k > 2 else None,
                    initval=init,
                )
                blocks.append(
                    pt.concatenate(
                        [
                            pt.as_tensor(np.full((members.size, 1), -_PAD)),
                            cuts,
                            pt.as_tensor(np.full((members.size, k_max - k + 1), _PAD)),
                        ],
                        axis=1,
                    )
                )
                order.extend(members.tolist())
            padded = pt.concatenate(blocks, axis=0)[np.argsort(order)]  # (J, K_max + 1)
            onehot = pm.Data(
                "ordinal_onehot", np.eye(k_max)[od.category]
            )  # (n, J, K_max): the observed category as a one-hot mask
            category = pm.Data("ordinal_category", od.category)
            lower_cut = (onehot * padded[None, :, :-1]).sum(axis=-1)
            upper_cut = (onehot * padded[None, :, 1:]).sum(axis=-1)
            pm.CustomDist(
                "y_ordinal",
                item_linear(od.items),
                lower_cut,
                upper_cut,
                od.mask,
                logp=ordinal_logp,
                dtype="int64",
                observed=category,
                dims=("household", "ordinal_indicator"),
            )

        if data.binomial is not None:
            bd = data.binomial
            model.add_coord("binomial_indicator", [it.name for it in bd.items])
            intercept = pm.Normal("intercept", 0.0, pri["intercept_sd"], dims="binomial_indicator")
            pm.CustomDist(
                "y_binomial",
                intercept[None, :] + item_linear(bd.items),
                pm.Data("binomial_trials", bd.trials),
                pm.Data("binomial_log_coefficient", bd.log_coefficient),
                logp=binomial_logit_logp,
                dtype=str(bd.count.dtype),
                observed=pm.Data("binomial_count", bd.count),
                dims=("household", "binomial_indicator"),
            )

        if data.hurdle is not None:
            hd = data.hurdle
            h_mu = pm.Normal("log_amount_mean", 0.0, 1.0, dims="hurdle_indicator")
            pm.CustomDist(
                "y_hurdle_amount",
                h_mu[None, :] + item_linear(hd.items),
                h_sigma[None, :] * np.ones_like(hd.log_value),
                pm.Data("hurdle_positive_mask", (hd.positive * hd.mask).astype(float)),
                logp=masked_normal_logp,
                observed=pm.Data("hurdle_log_amount", hd.log_value),
                dims=("household", "hurdle_indicator"),
            )
            zm = np.flatnonzero(hd.zero_model)
            if zm.size:
                zitems = [hd.items[j] for j in zm]
                model.add_coord("hurdle_zero_indicator", [it.name for it in zitems])
                z_int = pm.Normal(
                    "zero_intercept", 0.0, pri["intercept_sd"], dims="hurdle_zero_indicator"
                )
                z_load = pm.LogNormal(
                    "zero_loading",
                    pri["loading_mu"],
                    pri["loading_sigma"],
                    dims="hurdle_zero_indicator",
                )
                pm.Binomial(
                    "y_hurdle_positive",
                    n=hd.mask[:, zm].astype(int),
                    logit_p=z_int[None, :]
                    + z_load[None, :] * pt.dot(eta, data.factor_matrix(zitems)),
                    observed=hd.positive[:, zm],
                    dims=("household", "hurdle_zero_indicator"),
                )

        if data.continuous is not None:
            cd = data.continuous
            c_mu = pm.Normal("continuous_mean", 0.0, 1.0, dims="continuous_indicator")
            pm.CustomDist(
                "y_continuous",
                c_mu[None, :] + item_linear(cd.items),
                c_sigma[None, :] * np.ones_like(cd.value),
                pm.Data("continuous_mask", cd.mask),
                logp=masked_normal_logp,
                observed=pm.Data("continuous_value", cd.value),
                dims=("household", "continuous_indicator"),
            )

        if data.count is not None:
            nd = data.count
            # centred on the log of the item's mean count: Normal(log mean, 1) puts the mean
            # count at the factor's mean within a factor of e^2 = 7.4 of the observed one
            c_int = pm.Normal("count_intercept", nd.log_mean_count, 1.0, dims="count_indicator")
            log_alpha = pt.zeros(len(nd.items))
            nb = np.flatnonzero(nd.negative_binomial)
            if nb.size:
                model.add_coord("nb_indicator", [nd.items[j].name for j in nb])
                # 1 / sqrt(alpha), the gamma mixing's coefficient of variation
                cv = pm.HalfNormal("count_dispersion", pri["dispersion_sd"], dims="nb_indicator")
                log_alpha = log_alpha[nb].set(-2.0 * pt.log(cv))
            pm.CustomDist(
                "y_count",
                c_int[None, :] + item_linear(nd.items),
                log_alpha[None, :] * np.ones_like(nd.count),
                nd.negative_binomial.astype(float)[None, :] * np.ones_like(nd.count),
                pm.Data("count_mask", nd.mask),
                pm.Data("count_log_factorial", nd.log_factorial),
                logp=count_logp,
                observed=pm.Data("count_value", nd.count),
                dims=("household", "count_indicator"),
            )


# --------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------


def data_updates(items: ItemData) -> dict[str, np.ndarray]:
    """Values of the model's data containers for new answers to the same items.

    With these, a compiled model is reused for another data set of the same design
    (``compiled.with_data(**data_updates(...))``): simulation studies compile once.
    """
    out: dict[str, np.ndarray] = {}
    if items.ordinal is not None:
        k_max = int(items.ordinal.n_categories.max())
        out["ordinal_onehot"] = np.eye(k_max)[items.ordinal.category]
        out["ordinal_category"] = items.ordinal.category
    if items.binomial is not None:
        out["binomial_trials"] = items.binomial.trials
        out["binomial_count"] = items.binomial.count
        out["binomial_log_coefficient"] = items.binomial.log_coefficient
    if items.hurdle is not None:
        out["hurdle_positive_mask"] = (items.hurdle.positive * items.hurdle.mask).astype(float)
        out["hurdle_log_amount"] = items.hurdle.log_value
    if items.continuous is not None:
        out["continuous_mask"] = items.continuous.mask
        out["continuous_value"] = items.continuous.value
    if items.count is not None:
        out["count_mask"] = items.count.mask
        out["count_log_factorial"] = items.count.log_factorial
        out["count_value"] = items.count.count
    return out


def compile_latent(model):
    """Compile a latent model for nutpie (single-threaded BLAS)."""
    import nutpie
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return nutpie.compile_pymc_model(model)


def sample_compiled(compiled, sampler: Mapping[str, Any], seed: int, data: Mapping | None = None):
    """Sample a compiled nutpie model, optionally with new data (see :func:`data_updates`)."""
    from threadpoolctl import threadpool_limits

    from pari_bayes.estimation.sampling import nutpie_sample

    with threadpool_limits(limits=1):
        return nutpie_sample(
            compiled,
            draws=sampler["draws"],
            tune=sampler["tune"],
            chains=sampler["chains"],
            cores=sampler["cores"],
            seed=seed,
            target_accept=sampler["target_accept"],
            low_rank=bool(sampler.get("low_rank_mass_matrix", False)),
            data=data,
        )


def sample_latent(model, sampler: Mapping[str, Any], seed: int):
    """Sample the model with nutpie (default) or PyMC's NUTS.

    Returns
    -------
    (arviz.InferenceData, dict)
        The trace and timings (``compile_s``, ``sample_s``).
    """
    from threadpoolctl import threadpool_limits

    # Multi-threaded BLAS on these small matrices is 10x slower than one thread on a busy
    # machine (threads spin-wait); parallelism comes from running chains side by side.
    with threadpool_limits(limits=1):
        return _sample(model, sampler, seed)


def _sample(model, sampler: Mapping[str, Any], seed: int):

    name = sampler.get("name", "nutpie")
    t0 = time.perf_counter()
    if name == "nutpie":
        import nutpie

        compiled = nutpie.compile_pymc_model(model)
        t1 = time.perf_counter()
        idata = sample_compiled(compiled, sampler, seed)
    else:
        from pari_bayes.estimation.sampling import pymc_sample

        t1 = time.perf_counter()
        idata = pymc_sample(
            model,
            draws=sampler["draws"],
            tune=sampler["tune"],
            chains=sampler["chains"],
            cores=sampler["cores"],
            seed=seed,
            target_accept=sampler["target_accept"],
        )
    t2 = time.perf_counter()
    return idata, {"compile_s": t1 - t0, "sample_s": t2 - t1, "wall_s": t2 - t0}


# --------------------------------------------------------------------------------------
# Effects by g-computation
# --------------------------------------------------------------------------------------


def _stack(idata, name: str) -> np.ndarray:
    arr = idata.posterior[name]
    return arr.stack(sample=("chain", "draw")).transpose("sample", ...).to_numpy()


def _potential_outcome_means(
    idata, design: LatentDesign, scope: str, seed: int
) -> dict[tuple[int, int], np.ndarray]:
    """Mean factor value over the sample's households under (a, s), per draw: (S, D) arrays."""
    direct = _stack(idata, "direct_effect")
    spill = _stack(idata, "spillover_effect")
    n_draws, n_fac = direct.shape
    if "beta" in idata.posterior:
        beta = _stack(idata, "beta")  # (S, P, D)
        xbar = np.einsum("p,spd->sd", design.x.mean(axis=0), beta)
    else:
        xbar = np.zeros((n_draws, n_fac))
    comm_sd = _stack(idata, "community_sd")
    if scope == "observed":
        dev = _stack(idata, "community_deviation")  # (S, C, D)
        weights = np.bincount(design.community_index, minlength=dev.shape[1]) / design.n
        comm = np.einsum("c,scd->sd", weights, dev)
    else:  # a community not yet surveyed: a fresh draw of its residual community effect
        rng = np.random.default_rng(seed)
        comm = rng.standard_normal((n_draws, n_fac)) * comm_sd
    out = {}
    for a in (0, 1):
        for s in (0, 1):
            out[(a, s)] = comm + xbar + a * direct + s * spill
    return out


def _effect_row(
    dimension: str, estimand: str, alpha, scope: str, draws: np.ndarray, n_chains: int
) -> EffectTable:
    """One effect's posterior summary (flat draws, chain after chain) as a one-row table."""
    return EffectTable.from_draws(
        [(dimension, estimand, alpha, scope, draws)], method="bayes", n_chains=n_chains
    )


def latent_effects(idata, design: LatentDesign, spec: LatentSpec, seed: int = 0) -> pd.DataFrame:
    """DE, IE, TE and OE(alpha) on each latent factor, by g-computation.

    For every posterior draw the factor is predicted for every household of the sample under
    own participation ``a`` and community CBO presence ``s`` and averaged (standardization
    over the sample's covariates); ``scope = observed`` keeps each household's community
    effect, ``scope = new`` draws the residual effect of a community not yet surveyed.
    OE uses the observed participation rate in CBO communities and ``spec.alphas``.

    Returns
    -------
    pandas.DataFrame
        The :class:`~pari_bayes.effects.EffectTable` frame (its ``ess_tail`` column is
        used by the gate).
    """
    if "community_deviation" not in idata.posterior and "eta" in idata.posterior:
        add_community_draws(idata, design, seed)
    n_chains = idata.posterior.sizes["chain"]
    in_cbo = design.presence[design.community_index] == 1
    observed_rate = float(design.participation[in_cbo].mean()) if in_cbo.any() else 0.5
    alphas = [observed_rate] + [a for a in spec.alphas if not math.isclose(a, observed_rate)]
    rows = []
    for scope in ("observed", "new"):
        po = _potential_outcome_means(idata, design, scope, seed)
        for d, dim in enumerate(spec.factors):
            y11, y01, y00 = po[(1, 1)][:, d], po[(0, 1)][:, d], po[(0, 0)][:, d]
            rows.append(_effect_row(dim, "DE", None, scope, y11 - y01, n_chains))
            rows.append(_effect_row(dim, "IE", None, scope, y01 - y00, n_chains))
            rows.append(_effect_row(dim, "TE", None, scope, y11 - y00, n_chains))
            for a in alphas:
                oe = a * y11 + (1 - a) * y01 - y00
                rows.append(_effect_row(dim, "OE", round(a, 4), scope, oe, n_chains))
    table = EffectTable.concat(rows).frame
    order = {"DE": 0, "IE": 1, "TE": 2, "OE": 3}
    table["_d"] = table["dimension"].map({d: i for i, d in enumerate(spec.factors)})
    table["_e"] = table["estimand"].map(order)
    table["_s"] = table["scope"].map({"observed": 0, "new": 1})
    table = table.sort_values(["_d", "_e", "alpha", "_s"], na_position="first", kind="stable")
    return table.drop(columns=["_d", "_e", "_s"]).reset_index(drop=True)


def factor_scores(idata, design: LatentDesign, spec: LatentSpec) -> pd.DataFrame:
    """Posterior mean and sd of each household's factor values (long format).

    With a ``community`` column when the design has communities (a measurement-only spec
    may have none).
    """
    eta = idata.posterior["eta"]
    mean = eta.mean(("chain", "draw")).to_numpy()
    sd = eta.std(("chain", "draw")).to_numpy()
    where = (
        {"community": np.asarray(design.communities)[design.community_index]}
        if len(design.communities)
        else {}
    )
    frames = []
    for d, dim in enumerate(spec.factors):
        frames.append(
            pd.DataFrame(
                {
                    "household_id": design.households,
                    **where,
                    "dimension": dim,
                    "mean": mean[:, d],
                    "sd": sd[:, d],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


#: Below this share of a factor's household-level variance explained by its items, the
#: factor's scale (and so any effect in its sd units) rests on the loading prior.
WEAK_MEASUREMENT = 0.2

#: Per-household, per-draw posterior variables kept in memory but not written to
#: ``posterior.nc`` (about 37 MB on the bundled survey): the factor values ``eta`` are
#: summarised by the ``factor_scores`` group (posterior mean and sd per household).
POSTERIOR_NOT_STORED = ("eta", "eta_z", "eta_disturbance")


def measurement_information(idata, spec: LatentSpec) -> pd.Series:
    """Share of each factor's household-level variance that the items pin down.

    ``1 - mean_i Var(eta[i, d] | data)``: the disturbance has variance 1 a priori, so this
    is about 1 when the items determine every household's factor value, and 0 (or a little
    below, from the structural parameters' own uncertainty) when they add nothing to the
    structural part. A factor measured this weakly has a scale that only the loading prior
    fixes: its effects in sd units are then not identified by the data.
    """
    var = idata.posterior["eta"].var(("chain", "draw")).mean("household").to_numpy()
    return pd.Series(1.0 - var, index=list(spec.factors), name="measurement_information")


def _share_text(value: float) -> str:
    """``measurement_information`` for people: a share at or below 0 reads "about 0"."""
    return f"about 0 (estimate {value:.2f})" if value < 0.005 else f"{value:.2f}"


_GATED = (
    "direct_effect",
    "spillover_effect",
    "beta_free",
    "community_sd",
    "community_deviation",
    "loading",
    "intercept",
    "log_amount_mean",
    "log_amount_total_sd",
    "log_amount_r2",
    "log_amount_sd",
    "zero_intercept",
    "zero_loading",
    "continuous_mean",
    "continuous_total_sd",
    "continuous_r2",
    "continuous_sd",
    "count_intercept",
    "count_loading",
    "count_dispersion",
    "disturbance_corr",
    "invariance_z",
)


def latent_diagnostics(idata, timing: Mapping[str, float]) -> pd.DataFrame:
    """Per-parameter R-hat and bulk/tail ESS, and the run's divergences, BFMI and times."""
    import arviz as az

    names = [v for v in idata.posterior.data_vars if v in _GATED or v.startswith("cutpoints_")]
    summ = az.summary(idata, var_names=names, kind="diagnostics")
    table = pd.DataFrame(
        {
            "parameter": summ.index,
            "r_hat": summ["r_hat"].to_numpy(),
            "ess_bulk": summ["ess_bulk"].to_numpy(),
            "ess_tail": summ["ess_tail"].to_numpy(),
        }
    )
    # the correlation matrix's diagonal is constant 1 (no diagnostics)
    table = table[~table["parameter"].str.match(r"disturbance_corr\[(\w+), \1\]")]
    eta_summ = az.summary(idata, var_names=["eta"], kind="diagnostics")
    diverging = (
        int(idata.sample_stats["diverging"].sum()) if "diverging" in idata.sample_stats else 0
    )
    try:
        bfmi = float(np.min(az.bfmi(idata)))
    except (KeyError, ValueError, TypeError):
        bfmi = float("nan")
    run_rows = pd.DataFrame(
        {
            "parameter": [
                "run.divergences",
                "run.bfmi_min",
                "run.compile_seconds",
                "run.sampling_seconds",
                "run.wall_seconds",
                "factor_scores.r_hat_max",
                "factor_scores.ess_bulk_min",
                "factor_scores.ess_tail_min",
            ],
            "r_hat": [np.nan] * 5 + [float(eta_summ["r_hat"].max())] + [np.nan] * 2,
            "ess_bulk": [np.nan] * 6 + [float(eta_summ["ess_bulk"].min()), np.nan],
            "ess_tail": [np.nan] * 7 + [float(eta_summ["ess_tail"].min())],
            "value": [
                diverging,
                bfmi,
                timing.get("compile_s", np.nan),
                timing.get("sample_s", np.nan),
                timing.get("wall_s", np.nan),
                np.nan,
                np.nan,
                np.nan,
            ],
        }
    )
    table["value"] = np.nan
    return pd.concat([table, run_rows], ignore_index=True)


def _threshold_failures(frame: pd.DataFrame, label: str, gate: Mapping[str, float]) -> list[str]:
    """Rows of ``frame`` (with ``parameter``, ``r_hat``, ``ess_*``) that miss the gate."""
    failures = []
    for _, row in frame[frame["r_hat"] > gate["r_hat"]].iterrows():
        failures.append(f"{label} {row['parameter']}: R-hat {row['r_hat']:.3f} > {gate['r_hat']}")
    for col in ("ess_bulk", "ess_tail"):
        for _, row in frame[frame[col] < gate[col]].iterrows():
            failures.append(f"{label} {row['parameter']}: {col} {row[col]:.0f} < {gate[col]:.0f}")
    return failures


def _model_parameters(diag: pd.DataFrame) -> pd.DataFrame:
    """Return the per-parameter rows of ``latent_diagnostics`` (no run or summary rows)."""
    return diag[~diag["parameter"].str.startswith(("run.", "factor_scores."))]


def _gate_failures(
    effects: pd.DataFrame, diag: pd.DataFrame, gate: Mapping[str, float]
) -> list[str]:
    failures = []
    div = diag.loc[diag["parameter"] == "run.divergences", "value"]
    if len(div) and div.iloc[0] > 0:
        failures.append(f"{int(div.iloc[0])} divergent transitions")
    labelled = effects.assign(
        parameter=effects["dimension"]
        + ":"
        + effects["estimand"]
        + ":"
        + effects["scope"]
        + ":"
        + effects["alpha"].astype(str)
    )
    failures += _threshold_failures(labelled, "effect", gate)
    if gate.get("parameters", 0.0):
        failures += _threshold_failures(_model_parameters(diag), "parameter", gate)
    return failures


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


@dataclass
class LatentFitResult:
    """What :func:`fit_latent_spec` wrote and measured."""

    directory: Path
    spec: LatentSpec
    idata: Any
    effects: pd.DataFrame
    diagnostics: pd.DataFrame
    scores: pd.DataFrame
    timing: dict[str, float]
    converged: bool
    failures: list[str]
    loo: pd.DataFrame | None = None
    files: list[Path] = field(default_factory=list)


def _household_log_likelihood(idata, model, design: LatentDesign):
    """Pointwise log-likelihood per household (items summed), for LOO."""
    import pymc as pm
    import xarray as xr

    # compute_log_likelihood refuses models with explicit initial values (the cutpoints');
    # sampling is over, so drop them.
    for rv in list(model.rvs_to_initial_values):
        model.rvs_to_initial_values[rv] = None
    ll = pm.compute_log_likelihood(
        idata, model=model, extend_inferencedata=False, progressbar=False
    )
    total = np.zeros((idata.posterior.sizes["chain"], idata.posterior.sizes["draw"], design.n))
    for name in (
        "y_ordinal",
        "y_binomial",
        "y_hurdle_amount",
        "y_hurdle_positive",
        "y_continuous",
        "y_count",
    ):
        if name in ll:
            arr = ll[name].to_numpy()  # (chain, draw, household, item)
            total += arr.reshape(arr.shape[:3] + (-1,)).sum(axis=-1)
    return xr.Dataset(
        {"households": (("chain", "draw", "household"), total)},
        coords={
            "chain": idata.posterior["chain"],
            "draw": idata.posterior["draw"],
            "household": design.households,
        },
    )


def fit_latent_spec(
    survey: Any,
    spec: str | os.PathLike | Mapping[str, Any] | LatentSpec | Any,
    directory: str | os.PathLike,
    seed: int = 20240611,
    allow_unconverged: bool = False,
    identification: Any = None,
) -> LatentFitResult:
    """Fit a latent spec and write its outputs into an existing folder.

    Parameters
    ----------
    survey
        A validated :class:`pari_bayes.survey.Survey`.
    spec
        Path of a ``kind = "latent"`` spec, its parsed mapping or a :class:`LatentSpec`.
    directory
        Existing folder; receives ``posterior.nc``, ``effects.csv``, ``diagnostics.csv``,
        ``factor_scores.csv`` and, if invariance variants are compared, ``loo.csv``.
    seed
        Seed of sampling and of the ``new``-community draws.
    allow_unconverged
        Write the outputs even if the convergence gate fails (marked ``converged = false``
        in every file) instead of raising.
    identification
        Identification result supplying the adjustment sets (the run's DAG); ``None``
        identifies on the bundled DAG unless the spec lists its covariates.

    Returns
    -------
    LatentFitResult

    Raises
    ------
    ConvergenceError
        If the gate fails (divergences, R-hat > 1.01, bulk or tail ESS < 400) and
        ``allow_unconverged`` is false; the message names the parameters.
    """
    import arviz as az
    import xarray as xr

    from pari_bayes._version import __version__

    spec = load_latent_spec(spec)
    directory = Path(directory)
    design = latent_design(survey, spec, identification=identification)
    model = build_latent_model(design, spec)
    idata, timing = sample_latent(model, spec.sampler, seed)
    if "posterior" not in idata.groups():
        raise EstimationError("the sampler returned no posterior")
    add_community_draws(idata, design, seed)
    effects = latent_effects(idata, design, spec, seed=seed)
    diagnostics = latent_diagnostics(idata, timing)
    failures = _gate_failures(effects, diagnostics, spec.gate)
    converged = not failures
    if failures and not allow_unconverged:
        shown = "; ".join(failures[:15])
        more = f" (and {len(failures) - 15} more)" if len(failures) > 15 else ""
        raise ConvergenceError(
            f"latent model {spec.name!r} failed the convergence gate: {shown}{more}. "
            "Increase [sampler] draws/tune or target_accept in the spec, or pass "
            "--allow-unconverged to write the outputs marked as unconverged."
        )
    if not spec.gate.get("parameters", 0.0):
        # Not gated, but not hidden either: say which model parameters miss the thresholds.
        weak = [
            f.removeprefix("parameter ")
            for f in _threshold_failures(_model_parameters(diagnostics), "parameter", spec.gate)
        ]
        if weak:
            warnings.warn(
                f"latent model {spec.name!r}: the effects pass the convergence gate, but "
                f"{len(weak)} other parameter check(s) miss the thresholds: "
                + "; ".join(weak[:6])
                + ("; ..." if len(weak) > 6 else "")
                + ". The data identify these poorly (e.g. the disturbance correlations of a "
                "weakly measured factor); do not interpret them. See diagnostics.csv.",
                stacklevel=2,
            )
    information = measurement_information(idata, spec)
    diagnostics = pd.concat(
        [
            diagnostics,
            pd.DataFrame(
                {
                    "parameter": [f"measurement_information.{d}" for d in information.index],
                    "value": information.to_numpy(),
                }
            ),
        ],
        ignore_index=True,
    )
    # beside every effect row: how far the data fix the scale of the effect's factor
    effects = effects.assign(measurement_information=effects["dimension"].map(information))
    weak_factors = information[information < WEAK_MEASUREMENT]
    if len(weak_factors):
        warnings.warn(
            f"latent model {spec.name!r}: the items carry almost no information on the "
            "households' values of "
            + ", ".join(f"{d} ({_share_text(v)})" for d, v in weak_factors.items())
            + f" (share of the household-level variance pinned down; below {WEAK_MEASUREMENT}"
            "). Such a factor's scale rests on the loading prior, so its effects in sd units "
            "are NOT identified by the data: read their signs only, or add indicators of it.",
            stacklevel=2,
        )
    scores = factor_scores(idata, design, spec)

    # ---- InferenceData: log-likelihood per household, observed/constant data, scores
    idata.add_groups(
        {"log_likelihood": _household_log_likelihood(idata, model, design)},
    )
    const = xr.Dataset(
        {
            "participation": ("household", design.participation),
            "community_index": ("household", design.community_index),
            "presence": ("community", design.presence),
            "covariates": (("household", "covariate"), design.x),
        },
        coords={
            "household": design.households,
            "community": list(design.communities),
            "covariate": list(design.covariates),
        },
    )
    frame = survey.data
    observed = xr.Dataset(
        {
            it.name: ("household", pd.to_numeric(frame[it.name]).to_numpy(dtype=float))
            for it in spec.items
        },
        coords={"household": design.households},
    )
    loadings = idata.posterior["loading"]
    score_ds = xr.Dataset(
        {
            "mean": idata.posterior["eta"].mean(("chain", "draw")),
            "sd": idata.posterior["eta"].std(("chain", "draw")),
            "loading_mean": loadings.mean(("chain", "draw")),
            "measurement_information": ("dimension", information.to_numpy()),
            "indicator_dimension": ("indicator", [it.factor for it in spec.items]),
            "community_of_household": (
                "household",
                np.asarray(design.communities)[design.community_index],
            ),
        }
    )
    new_groups = {"factor_scores": score_ds}
    for group, ds in (("constant_data", const), ("observed_data", observed)):
        if group in idata.groups():  # the sampler's own data containers stay; add ours
            existing = getattr(idata, group)
            extra = {k: v for k, v in ds.data_vars.items() if k not in existing}
            setattr(idata, group, existing.assign(extra))
        else:
            new_groups[group] = ds
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not part of the schema.*")
        idata.add_groups(new_groups)
    loo_table = None
    if spec.compare_invariance:
        loo_table = _compare_invariance(idata, effects, design, spec, seed)
    extra = {
        "sampler": json.dumps(spec.sampler, sort_keys=True),
        "invariance": spec.invariance,
        "adjustment_source": design.adjustment_source,
        "covariates": json.dumps(list(design.covariates)),
        "identification": "location: no structural intercept, sum-to-zero community terms; "
        "scale: unit-variance household disturbance; sign: positive (log-normal) loadings; "
        "each item loads on one factor",
        "factor_scores": "per-draw eta is not stored; the factor_scores group holds each "
        "household's posterior mean and sd of eta",
        "community_deviation": "integrated out while sampling; drawn from its exact "
        "conditional posterior given each draw",
    }
    provenance = {
        "model_name": spec.name,
        "kind": "latent",
        "spec_json": json.dumps(spec.raw, sort_keys=True, default=str),
        "data_hash": getattr(survey, "data_hash", ""),
        "seed": int(seed),
        "status": "converged" if converged else "UNCONVERGED",
    }
    # in memory the InferenceData stays complete (eta included); the file drops it
    idata.attrs.update({**extra, **provenance, "package_version": __version__})
    files = []
    nc = write_posterior(
        idata, directory / "posterior.nc", **provenance, extra=extra, drop=POSTERIOR_NOT_STORED
    )
    files.append(nc)
    mark = {"converged": str(converged).lower()}
    out_effects = effects.drop(columns=["ess_tail"]).assign(**mark)
    files.append(write_csv(out_effects, directory / "effects.csv"))
    files.append(write_csv(diagnostics.assign(**mark), directory / "diagnostics.csv"))
    files.append(write_csv(scores.assign(**mark), directory / "factor_scores.csv"))
    files += _write_loadings(idata, design, spec, directory, mark)
    if loo_table is not None:
        files.append(write_csv(loo_table.assign(**mark), directory / "loo.csv"))
    del az
    return LatentFitResult(
        directory=directory,
        spec=spec,
        idata=idata,
        effects=effects,
        diagnostics=diagnostics,
        scores=scores,
        timing=timing,
        converged=converged,
        failures=failures,
        loo=loo_table,
        files=files,
    )


def _write_loadings(idata, design: LatentDesign, spec: LatentSpec, directory: Path, mark):
    """Write ``loadings.csv`` and ``loadings.png``: the measurement part of the fit.

    The rows of :func:`pari_bayes.estimation.cfa.measurement_table` that describe items
    (loadings, standardized loadings, residual variances, intercepts). Here the factor's
    unit of scale is the household disturbance (the factor given the structural part), so
    the standardized loadings are partial: the correlation of an item with its factor among
    households of equal covariates, exposure and community.
    """
    from pari_bayes.estimation.cfa import loadings_plot, measurement_draws, measurement_table

    table = measurement_table(measurement_draws(idata, design, spec), spec)
    table = table[
        table["parameter"].isin(
            ["loading", "standardized_loading", "residual_variance", "intercept"]
        )
    ]
    written = [write_csv(table.assign(**mark), directory / "loadings.csv")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        written.append(
            loadings_plot(
                table,
                directory / "loadings.png",
                f"{spec.name}: item loadings (per sd of the household disturbance)",
            )
        )
    return written


def _compare_invariance(
    idata, effects: pd.DataFrame, design: LatentDesign, spec: LatentSpec, seed: int
) -> pd.DataFrame:
    """LOO comparison of the fitted invariance option against the variants in the spec."""
    import arviz as az

    fits = {spec.invariance: idata}
    max_r_hat = {spec.invariance: float(effects["r_hat"].max())}
    for option in spec.compare_invariance:
        if option in fits:
            continue
        model = build_latent_model(design, spec, invariance=option)
        other, _ = sample_latent(model, spec.sampler, seed)
        other.add_groups({"log_likelihood": _household_log_likelihood(other, model, design)})
        fits[option] = other
        max_r_hat[option] = float(latent_effects(other, design, spec, seed=seed)["r_hat"].max())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = az.compare(fits, ic="loo")
    table = table.reset_index().rename(columns={"index": "invariance"})
    # a LOO comparison is only as good as the fits behind it: show their convergence too
    table["divergences"] = [
        int(fits[k].sample_stats["diverging"].sum()) for k in table["invariance"]
    ]
    table["max_r_hat_effects"] = table["invariance"].map(max_r_hat)
    table["pareto_k_warning"] = table["warning"].astype(bool)
    return table[
        [
            "invariance",
            "rank",
            "elpd_loo",
            "p_loo",
            "elpd_diff",
            "se",
            "dse",
            "weight",
            "pareto_k_warning",
            "divergences",
            "max_r_hat_effects",
        ]
    ]


def spec_as_dict(spec: LatentSpec) -> dict[str, Any]:
    """Return the spec as plain data (for provenance and reports)."""
    out = asdict(spec)
    out["items"] = [asdict(it) for it in spec.items]
    return out


def simulate_from_prior(
    design: LatentDesign, spec: LatentSpec, rng: np.random.Generator
) -> tuple[ItemData, dict[str, np.ndarray]]:
    """Draw every parameter from the spec's priors and item answers given them.

    The structural design (covariates, participation, communities) is kept; used for
    simulation-based calibration. Returns the new item data and the drawn truth.
    """
    from pari_bayes.measurement.items import simulate_items

    pri = spec.priors
    n_fac = len(spec.factors)
    n_comm = len(design.communities)
    direct = rng.normal(0, pri["effect_sd"], n_fac)
    spill = rng.normal(0, pri["effect_sd"], n_fac)
    beta = np.where(
        design.covariate_mask, rng.normal(0, pri["beta_sd"], design.covariate_mask.shape), 0
    )
    comm_sd = np.abs(rng.normal(0, pri["community_sd"], n_fac))
    z = rng.normal(size=(n_comm, n_fac))
    z -= z.mean(axis=0)  # ZeroSumNormal(1) over communities, as in the model
    presence = design.presence - design.presence.mean()
    comm_mean = presence[:, None] * spill + comm_sd * z
    if n_fac > 1:
        corr = lkj_corr_draw(n_fac, pri["lkj_eta"], rng)
    else:
        corr = np.eye(1)
    dist = rng.normal(size=(design.n, n_fac)) @ np.linalg.cholesky(corr).T
    eta = (
        comm_mean[design.community_index]
        + design.x @ beta
        + (design.participation - design.participation.mean())[:, None] * direct
        + dist
    )
    params: dict[str, dict[str, object]] = {}
    loadings = {}
    for it in spec.items:
        if it.kind in ("hurdle_lognormal", "normal"):  # total sd and variance share
            prefix = "hurdle" if it.kind == "hurdle_lognormal" else "continuous"
            total = abs(rng.normal(0, pri[f"{prefix}_sigma"]))
            r2 = rng.beta(pri[f"{prefix}_r2_alpha"], pri[f"{prefix}_r2_beta"])
            lam, resid_sd = float(total * np.sqrt(r2)), float(total * np.sqrt(1 - r2))
        else:
            lam = float(np.exp(rng.normal(pri["loading_mu"], pri["loading_sigma"])))
        loadings[it.name] = lam
        if it.kind == "ordinal":
            cuts = np.sort(rng.normal(0, pri["cutpoint_sd"], len(it.levels) - 1))
            params[it.name] = {"loading": lam, "cutpoints": cuts}
        elif it.kind == "binomial":
            params[it.name] = {"loading": lam, "intercept": rng.normal(0, pri["intercept_sd"])}
        elif it.kind in ("poisson", "negative_binomial"):
            lam = float(np.exp(rng.normal(pri["count_loading_mu"], pri["count_loading_sigma"])))
            loadings[it.name] = lam
            # as the model's prior, centred on a mean count of 2
            params[it.name] = {"loading": lam, "intercept": rng.normal(np.log(2.0), 1.0)}
            if it.kind == "negative_binomial":
                cv = abs(rng.normal(0, pri["dispersion_sd"]))
                params[it.name]["alpha"] = 1.0 / max(cv, 1e-3) ** 2
        elif it.kind == "normal":
            params[it.name] = {"loading": lam, "mu": rng.normal(0, 1), "sigma": resid_sd}
        else:
            params[it.name] = {
                "loading": lam,
                "mu": rng.normal(0, 1),
                "sigma": resid_sd,
            }
            if it.zero_model:
                params[it.name]["zero_intercept"] = rng.normal(0, pri["intercept_sd"])
                params[it.name]["zero_loading"] = float(
                    np.exp(rng.normal(pri["loading_mu"], pri["loading_sigma"]))
                )
    direct_truth = np.zeros(len(design.direct_pairs))
    if design.direct_pairs:
        names = [it.name for it in design.items.items]
        direct_truth = rng.normal(0, pri["direct_sd"], len(design.direct_pairs))
        for (q, j), coef in zip(design.direct_pairs, direct_truth, strict=True):
            entry = params[names[j]]
            entry["offset"] = entry.get("offset", 0.0) + coef * design.direct_x[:, q]
    eta_frame = pd.DataFrame(eta, columns=list(spec.factors))
    frame = pd.DataFrame({"household_size": np.full(design.n, 4)})
    answers = simulate_items(spec.items, eta_frame, params, rng, frame=frame)
    items = prepare_items(answers.assign(household_size=4), spec.items, spec.factors)
    truth = {
        "direct_effect": direct,
        "spillover_effect": spill,
        "community_sd": comm_sd,
        "loading": np.array([loadings[it.name] for it in spec.items]),
        "item_direct": direct_truth,
    }
    return items, truth
