"""Any Bambi formula and family, with DE/IE/TE/OE by counterfactual prediction.

``kind = "formula"``: a full Bambi/formulae right-hand side (interactions, ``C()``
categoricals, random slopes) and one of five families, for the integration scores or for
one survey column. Lifecycle, in file order: spec -> design -> build -> sample ->
counterfactual prediction -> effects (and conditional effects) -> outputs.

* **Spec.** The common keys are parsed by :func:`pari_bayes.estimation.spec.parse_spec`
  (the estimator is registered with ``own_sections=True``); :func:`parse_formula_spec`
  validates the rest (``formula``, ``family``, ``outcome_column``, ``[priors]`` slots,
  ``[conditional]``, ``[gate]``) with messages naming file, key, value and what is allowed.
* **Design.** The identification layer's adjustment set of ``identification`` (per
  outcome) is added to the formula; :attr:`FormulaDesign.formulas` holds the final
  formula of each outcome (also in ``summary.csv`` and the posterior's attributes).
  Every numeric variable that enters the formula as itself (not inside a call such as
  ``C(x)`` or ``log(x)``), other than the exposures, the group and the outcome, is
  standardized (mean 0, sd 1), as the multilevel models do, so the priors mean the same
  thing on every survey. Gaussian outcomes are standardized too, and effects are reported
  on the outcome's own scale.
* **Build and sample.** One :class:`bambi.Model` per distinct final formula; its observed
  response is swapped for a shared variable and the PyMC model is compiled by nutpie once,
  then sampled for every outcome with ``compiled.with_data`` (``pm.sample`` with the shared
  value set when ``sampler = "pymc"``). The paper's four scores share one formula, so one
  compile serves all four.
* **Effects.** g-computation: for each exposure (a, s) = (1, 1), (0, 1), (0, 0) every
  household's ``cbo_participation`` and ``cbo_presence`` are set to (a, s) and
  ``model.predict(kind="response_params", data=..., inplace=False)`` gives the posterior
  mean outcome of every household at every draw (the expected category for the cumulative
  family), averaged over households (:func:`pari_bayes.effects.estimand_draws`). Scope
  ``observed`` keeps each household's community effects; scope ``new`` places every
  household in one new community whose group-specific effects are drawn from their
  population distribution (``sigma * z``, the same ``z`` for the three exposures).
* **Conditional effects.** With ``[conditional] moderator = "x"``, DE and IE with ``x`` set
  to each point of a grid (quantiles of ``x``) for every household.
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from pari_bayes._version import __version__
from pari_bayes.errors import ConvergenceError, EstimationError, SpecError
from pari_bayes.estimation.spec import ModelSpec, PriorSpec, load_spec

__all__ = [
    "TREATMENT",
    "PRESENCE",
    "FAMILIES",
    "PRIOR_SLOTS",
    "DEFAULT_PRIORS",
    "FormulaSpec",
    "FormulaDesign",
    "FormulaFitResult",
    "parse_formula_spec",
    "formula_variables",
    "adjustment_for",
    "build_design",
    "build_model",
    "potential_means",
    "conditional_effects",
    "fit_formula_spec",
]

#: Household-level exposure (own participation, a) and community-level exposure (s).
TREATMENT = "cbo_participation"
PRESENCE = "cbo_presence"
#: Survey columns that are functions of (a, s): a counterfactual cannot hold them fixed.
_DERIVED_EXPOSURES = ("cbo_existence", "exposure")


@dataclass(frozen=True)
class Family:
    """One outcome family: Bambi's name, its mean parameter and the scale of effects."""

    name: str
    bambi: str
    mean: str
    response: str
    scale: str
    link_scale: str


#: The families a formula spec accepts (a registry, like Bambi's ``BUILTIN_FAMILIES``).
FAMILIES: dict[str, Family] = {
    "gaussian": Family(
        "gaussian",
        "gaussian",
        "mu",
        "continuous",
        "outcome units",
        "standardized outcome",
    ),
    "bernoulli": Family("bernoulli", "bernoulli", "p", "binary", "probability", "logit"),
    "cumulative": Family(
        "cumulative",
        "cumulative",
        "p",
        "ordinal",
        "expected category",
        "logit (cumulative)",
    ),
    "poisson": Family("poisson", "poisson", "mu", "count", "expected count", "log"),
    "negativebinomial": Family(
        "negativebinomial", "negativebinomial", "mu", "count", "expected count", "log"
    ),
}

_LOCATION = ("normal", "student_t")
_SCALE = ("halfnormal", "halfstudent_t", "exponential")
#: Prior slots of a formula model, the families each accepts and the families it exists for.
PRIOR_SLOTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "intercept": (_LOCATION, ("gaussian", "bernoulli", "poisson", "negativebinomial")),
    "coefficients": (_LOCATION, tuple(FAMILIES)),
    "direct_effect": (_LOCATION, tuple(FAMILIES)),
    "spillover_effect": (_LOCATION, tuple(FAMILIES)),
    "interactions": (_LOCATION, tuple(FAMILIES)),
    "community_sd": (_SCALE, tuple(FAMILIES)),
    "slope_sd": (_SCALE, tuple(FAMILIES)),
    "residual_sd": (_SCALE, ("gaussian",)),
    "dispersion": (_SCALE, ("negativebinomial",)),
    "thresholds": (("normal",), ("cumulative",)),
}


def _p(family: str, reason: str, **params: float) -> PriorSpec:
    return PriorSpec(family, {k: float(v) for k, v in params.items()}, reason)


_LOGIT = (
    "On the logit scale the latent residual sd is pi/sqrt(3) = 1.8, so this is the "
    "standardized-outcome prior scaled by about 1.8 and rounded: "
)
#: Default priors per family (the spec's ``[priors]`` override them slot by slot). Gaussian
#: priors are on the scale of the standardized outcome, all on standardized covariates.
DEFAULT_PRIORS: dict[str, dict[str, PriorSpec]] = {
    "gaussian": {
        "intercept": _p(
            "normal",
            "The outcome is standardized, so the reference group's mean lies within about "
            "1 sd of 0.",
            mu=0,
            sigma=1,
        ),
        "coefficients": _p(
            "normal",
            "Covariates are standardized; a 1-sd covariate change moving the outcome by more "
            "than 1 sd is implausible.",
            mu=0,
            sigma=0.5,
        ),
        "direct_effect": _p(
            "normal",
            "A participation effect beyond 2 sd of the outcome is implausible; centred on 0.",
            mu=0,
            sigma=1,
        ),
        "spillover_effect": _p(
            "normal",
            "Same scale as the direct effect: a CBO spillover beyond 2 sd is implausible.",
            mu=0,
            sigma=1,
        ),
        "interactions": _p(
            "normal",
            "An interaction is the change of an effect per 1 sd of the moderator; a change "
            "of more than 1 outcome sd per moderator sd is implausible.",
            mu=0,
            sigma=0.5,
        ),
        "community_sd": _p(
            "halfnormal",
            "Four batches of one resettlement site: a remaining between-community sd above "
            "0.5 outcome sd (ICC > 20%) is implausible, and four communities cannot bound "
            "it (a vague prior gives a funnel and divergences).",
            sigma=0.25,
        ),
        "slope_sd": _p(
            "halfnormal",
            "The direct effect differing between communities by an sd above 0.2 outcome sd "
            "(a 2-sd range of 0.8) is implausible for one site run by one county; only "
            "the CBO communities have participants, so the data barely inform this sd and "
            "the prior must keep the sampler out of the funnel.",
            sigma=0.1,
        ),
        "residual_sd": _p(
            "halfnormal", "The outcome has sd 1, so the residual sd is at most about 1.", sigma=1
        ),
    },
    "bernoulli": {
        "intercept": _p(
            "normal",
            "Logit of the base rate: 95% prior mass on rates between 5% and 95%.",
            mu=0,
            sigma=1.5,
        ),
        "coefficients": _p(
            "normal",
            "Standardized covariates: an odds ratio beyond e^1 = 2.7 per covariate sd is "
            "implausible.",
            mu=0,
            sigma=0.5,
        ),
        "direct_effect": _p(
            "normal",
            _LOGIT + "odds ratios of participation beyond e^3.6 = 37 are ruled out.",
            mu=0,
            sigma=1.8,
        ),
        "spillover_effect": _p(
            "normal", _LOGIT + "same scale as the direct effect.", mu=0, sigma=1.8
        ),
        "interactions": _p(
            "normal",
            "Change of the log odds ratio per moderator sd; beyond 1 is implausible.",
            mu=0,
            sigma=0.5,
        ),
        "community_sd": _p(
            "halfnormal", _LOGIT + "the Gaussian community-sd prior (0.25) x 1.8.", sigma=0.45
        ),
        "slope_sd": _p(
            "halfnormal", _LOGIT + "the Gaussian slope-sd prior (0.1) x 1.8.", sigma=0.18
        ),
    },
    "cumulative": {
        "coefficients": _p(
            "normal",
            "Standardized covariates: a cumulative odds ratio beyond e^1 = 2.7 per covariate "
            "sd is implausible.",
            mu=0,
            sigma=0.5,
        ),
        "direct_effect": _p(
            "normal",
            _LOGIT + "participation moving the latent scale by > 2 sd is ruled out.",
            mu=0,
            sigma=1.8,
        ),
        "spillover_effect": _p(
            "normal", _LOGIT + "same scale as the direct effect.", mu=0, sigma=1.8
        ),
        "interactions": _p(
            "normal",
            "Change of the log cumulative odds ratio per moderator sd; beyond 1 is implausible.",
            mu=0,
            sigma=0.5,
        ),
        "community_sd": _p(
            "halfnormal", _LOGIT + "the Gaussian community-sd prior (0.25) x 1.8.", sigma=0.45
        ),
        "slope_sd": _p(
            "halfnormal", _LOGIT + "the Gaussian slope-sd prior (0.1) x 1.8.", sigma=0.18
        ),
        "thresholds": _p(
            "normal",
            "Cut-points centred evenly on [-2, 2] (shifted by mu) on the logit scale, sd 1.5: "
            "any split of the households over the levels is a priori possible.",
            mu=0,
            sigma=1.5,
        ),
    },
    "poisson": {
        "intercept": _p(
            "normal",
            "Data-informed centre: mu is replaced by log(mean count) of the survey; sd 1 "
            "allows a base rate 7x smaller or larger.",
            mu=0,
            sigma=1,
        ),
        "coefficients": _p(
            "normal",
            "Standardized covariates: a rate ratio beyond e^1 = 2.7 per covariate sd is "
            "implausible.",
            mu=0,
            sigma=0.5,
        ),
        "direct_effect": _p(
            "normal",
            "Rate ratios of participation beyond e^1.5 = 4.5 are implausible.",
            mu=0,
            sigma=0.75,
        ),
        "spillover_effect": _p("normal", "Same scale as the direct effect.", mu=0, sigma=0.75),
        "interactions": _p(
            "normal",
            "Change of the log rate ratio per moderator sd; beyond 1 is implausible.",
            mu=0,
            sigma=0.5,
        ),
        "community_sd": _p(
            "halfnormal",
            "Community rate ratios beyond e^0.5 = 1.65 (2 sd) are implausible within one site.",
            sigma=0.25,
        ),
        "slope_sd": _p(
            "halfnormal",
            "Community differences in the log rate ratio of participation "
            "above 0.2 sd are implausible (see the Gaussian slope_sd).",
            sigma=0.1,
        ),
    },
}
DEFAULT_PRIORS["negativebinomial"] = {
    **DEFAULT_PRIORS["poisson"],
    "dispersion": _p(
        "halfnormal",
        "Bambi's alpha (variance = mu + mu^2 / alpha): alpha above 20 is practically Poisson, "
        "below 0.5 is strong overdispersion; a halfnormal with sd 10 allows both.",
        sigma=10,
    ),
}

_TOP_KEYS = (
    "kind",
    "name",
    "description",
    "outcomes",
    "outcome_column",
    "dimension",
    "identification",
    "formula",
    "family",
    "group",
    "priors",
    "sampler",
    "conditional",
    "gate",
)
_CONDITIONAL_KEYS = ("moderator", "points", "label")
#: The gate's thresholds and the direction in which a spec may change them (stricter only).
_GATE_KEYS = {
    "r_hat_max": "max",
    "ess_bulk_min": "min",
    "ess_tail_min": "min",
    "divergences_max": "max",
}


# --------------------------------------------------------------------------------------
# Spec
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FormulaSpec:
    """A validated formula spec.

    Attributes
    ----------
    base
        The common core (:class:`~pari_bayes.estimation.spec.ModelSpec`).
    formula
        Right-hand side as written (without the adjustment set).
    family
        A key of :data:`FAMILIES`.
    outcomes
        Dimensions (integration scores) to model; empty with ``outcome_column``.
    outcome_column
        A single survey column as the outcome, or None.
    dimension
        Dimension whose adjustment set an ``outcome_column`` uses (default: the item's).
    priors
        Spec priors by slot or by Bambi term name (merged over :data:`DEFAULT_PRIORS`).
    moderator, points, label
        Conditional effects: moderator column, grid size, axis label.
    gate
        Thresholds of :data:`pari_bayes.diagnostics.GATE`, possibly stricter.
    variables
        Every variable the formula names.
    """

    base: ModelSpec
    formula: str
    family: str
    outcomes: tuple[str, ...]
    outcome_column: str | None
    dimension: str | None
    priors: dict[str, PriorSpec]
    moderator: str | None
    points: int
    label: str
    gate: dict[str, float]
    variables: tuple[str, ...]

    @property
    def path(self) -> str:
        """File the spec came from."""
        return str(self.base.path)

    @property
    def name(self) -> str:
        """The spec's name."""
        return self.base.name


def _model_description(rhs: str, where: str):
    import formulae

    try:
        return formulae.model_description(f"formula_response_ ~ {rhs}")
    except Exception as exc:  # noqa: BLE001 - formulae raises its own parse/scan errors
        raise SpecError(
            f"{where}: key formula: {rhs!r} is not a valid Bambi/formulae formula "
            f"({type(exc).__name__}: {exc}); allowed: terms joined by '+', interactions "
            "'a*b' or 'a:b', calls such as 'C(x)', and group terms '(1 + x | community)'"
        ) from None


def formula_variables(rhs: str, where: str = "<spec>") -> dict[str, set[str]]:
    """Variables a right-hand side names, by how they enter.

    Parameters
    ----------
    rhs
        E.g. ``"cbo_participation * residence_months + C(education) + (1 | community)"``.
    where
        File name used in messages.

    Returns
    -------
    dict
        ``{"bare": ..., "called": ..., "groups": ...}``: variables entering as themselves
        (standardized when numeric), inside a call such as ``C(x)`` (left as they are), and
        the grouping factors of group-specific terms.

    Raises
    ------
    SpecError
        If formulae cannot parse the formula.

    Examples
    --------
    >>> v = formula_variables("a * b + C(e) + (1 + a | g)")
    >>> sorted(v["bare"]), sorted(v["called"]), sorted(v["groups"])
    (['a', 'b'], ['e'], ['g'])
    """
    desc = _model_description(rhs, where)
    bare: set[str] = set()
    called: set[str] = set()
    groups: set[str] = set()

    def visit(term) -> None:
        for comp in getattr(term, "components", ()):
            kind = type(comp).__name__
            names = set(getattr(comp, "var_names", ()) or ())
            (bare if kind == "Variable" else called).update(names)

    for term in desc.terms:
        if type(term).__name__ == "GroupSpecificTerm":
            visit(term.expr)
            groups.update(term.factor.var_names)
            for comp in getattr(term.factor, "components", ()):
                if type(comp).__name__ != "Variable":
                    called.update(getattr(comp, "var_names", ()) or ())
        else:
            visit(term)
    return {"bare": bare, "called": called, "groups": groups}


def _rhs(formula: Any, where: str) -> str:
    if not isinstance(formula, str) or not formula.strip():
        raise SpecError(
            f"{where}: key formula: {formula!r}; allowed: a Bambi right-hand side, e.g. formula = "
            '"cbo_participation * residence_months + cbo_presence + (1 + cbo_participation | '
            'community)"'
        )
    return formula.split("~", 1)[-1].strip()


def parse_formula_spec(spec: ModelSpec | str | Path) -> FormulaSpec:
    """Validate the keys of a ``kind = "formula"`` spec that the common parser leaves.

    Parameters
    ----------
    spec
        A parsed spec (:func:`~pari_bayes.estimation.spec.load_spec`) or its file.

    Returns
    -------
    FormulaSpec

    Raises
    ------
    SpecError
        Naming the file, the key, the value and what is allowed: unknown keys, an unknown
        family, a formula formulae cannot parse or without both exposures, a prior slot the
        family does not have, ``outcomes`` together with ``outcome_column``, a
        ``[conditional]`` moderator the formula does not name, a looser ``[gate]``.
    """
    from pari_bayes.diagnostics import GATE

    if not isinstance(spec, ModelSpec):
        spec = load_spec(spec)
    raw, where = spec.raw, str(spec.path)
    if spec.kind != "formula":
        raise SpecError(f"{where}: key kind: {spec.kind!r}; this parser reads kind = 'formula'")
    bad = [k for k in raw if k not in _TOP_KEYS]
    if bad:
        raise SpecError(
            f"{where}: unknown key(s) {', '.join(map(repr, bad))}; allowed: {', '.join(_TOP_KEYS)}"
        )
    family = raw.get("family", "gaussian")
    if family not in FAMILIES:
        raise SpecError(f"{where}: key family: {family!r}; allowed: {', '.join(FAMILIES)}")
    outcome_column = raw.get("outcome_column")
    if outcome_column is not None:
        if not isinstance(outcome_column, str) or not outcome_column:
            raise SpecError(
                f"{where}: key outcome_column: {outcome_column!r}; allowed: one survey column name"
            )
        if "outcomes" in raw:
            raise SpecError(
                f"{where}: keys outcomes and outcome_column: give one of them (outcomes = the "
                "codebook's integration scores, outcome_column = one survey column)"
            )
    elif family != "gaussian":
        raise SpecError(
            f"{where}: key family: {family!r} needs outcome_column (one survey column, e.g. an "
            "ordinal item); the integration scores (outcomes) are continuous; allowed with "
            "outcomes: gaussian"
        )
    dimension = raw.get("dimension")
    if dimension is not None and (outcome_column is None or not isinstance(dimension, str)):
        raise SpecError(
            f"{where}: key dimension: {dimension!r}; allowed: a dimension name, and only "
            "with outcome_column (whose adjustment set it names)"
        )
    rhs = _rhs(raw.get("formula"), where)
    found = formula_variables(rhs, where)
    variables = found["bare"] | found["called"] | found["groups"]
    for exposure in (TREATMENT, PRESENCE):
        if exposure not in found["bare"] | found["called"]:
            raise SpecError(
                f"{where}: key formula: {rhs!r} does not name {exposure!r}; the effects are "
                f"contrasts of {TREATMENT} and {PRESENCE}, so the formula needs both"
            )
    derived = sorted(variables & set(_DERIVED_EXPOSURES))
    if derived:
        raise SpecError(
            f"{where}: key formula: {', '.join(derived)} is a function of the exposures; "
            f"allowed: {TREATMENT} and {PRESENCE} (and their interactions)"
        )
    if found["called"] & {TREATMENT, PRESENCE}:
        raise SpecError(
            f"{where}: key formula: the exposures must enter as themselves (0/1), not inside a "
            f"call; got {rhs!r}"
        )
    if spec.group not in found["groups"]:
        raise SpecError(
            f"{where}: key formula: no group term for {spec.group!r}; add e.g. "
            f"'(1 | {spec.group})' (households are nested in communities)"
        )
    if outcome_column is not None and outcome_column in variables:
        raise SpecError(
            f"{where}: key outcome_column: {outcome_column!r} is also a term of the formula"
        )
    priors = dict(spec.priors)
    for slot, prior in priors.items():
        if slot in PRIOR_SLOTS:
            allowed, families = PRIOR_SLOTS[slot]
            if family not in families:
                raise SpecError(
                    f"{where}: key priors.{slot}: family {family!r} has no {slot}; allowed "
                    f"slots for {family}: "
                    + ", ".join(s for s, (_, fams) in PRIOR_SLOTS.items() if family in fams)
                )
            if prior.family not in allowed:
                raise SpecError(
                    f"{where}: key priors.{slot}.family: {prior.family!r}; allowed: "
                    f"{', '.join(allowed)}"
                )
        elif not (set(slot.replace("|", ":").split(":")) <= variables | {"1"}):
            raise SpecError(
                f"{where}: unknown key priors.{slot}; allowed: "
                + ", ".join(s for s, (_, fams) in PRIOR_SLOTS.items() if family in fams)
                + ", or a Bambi term name of the formula (e.g. 'cbo_participation:"
                "residence_months')"
            )
    cond = raw.get("conditional", {})
    if not isinstance(cond, dict):
        raise SpecError(f'{where}: key conditional must be a table, e.g. moderator = "x"')
    bad = [k for k in cond if k not in _CONDITIONAL_KEYS]
    if bad:
        raise SpecError(
            f"{where}: unknown key(s) [conditional] {', '.join(map(repr, bad))}; allowed: "
            f"{', '.join(_CONDITIONAL_KEYS)}"
        )
    moderator = cond.get("moderator")
    if moderator is not None:
        if moderator not in found["bare"] - {TREATMENT, PRESENCE, spec.group}:
            raise SpecError(
                f"{where}: key conditional.moderator: {moderator!r}; allowed: a numeric "
                "variable the formula names as itself: "
                + ", ".join(sorted(found["bare"] - {TREATMENT, PRESENCE, spec.group}))
            )
    points = cond.get("points", 10)
    if not isinstance(points, int) or isinstance(points, bool) or not 2 <= points <= 50:
        raise SpecError(
            f"{where}: key conditional.points: {points!r}; allowed: an integer in [2, 50]"
        )
    label = cond.get("label", "")
    if not isinstance(label, str):
        raise SpecError(f"{where}: key conditional.label: {label!r}; allowed: a string")
    gate_raw = raw.get("gate", {})
    if not isinstance(gate_raw, dict):
        raise SpecError(f"{where}: key gate must be a table")
    gate = dict(GATE)
    for key, value in gate_raw.items():
        if key not in _GATE_KEYS:
            raise SpecError(f"{where}: unknown key gate.{key}; allowed: {', '.join(_GATE_KEYS)}")
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise SpecError(f"{where}: key gate.{key}: {value!r}; allowed: a number")
        looser = value > GATE[key] if _GATE_KEYS[key] == "max" else value < GATE[key]
        if looser:
            raise SpecError(
                f"{where}: key gate.{key}: {value!r} is looser than the project's gate "
                f"({GATE[key]:g}); allowed: the same or stricter"
            )
        gate[key] = float(value)
    return FormulaSpec(
        base=spec,
        formula=rhs,
        family=family,
        outcomes=tuple(spec.outcomes),
        outcome_column=outcome_column,
        dimension=dimension,
        priors=priors,
        moderator=moderator,
        points=int(points),
        label=label,
        gate=gate,
        variables=tuple(sorted(variables)),
    )


# --------------------------------------------------------------------------------------
# Design
# --------------------------------------------------------------------------------------


@dataclass
class FormulaDesign:
    """The data a formula model is fitted to (standardized where stated).

    Attributes
    ----------
    frame
        One row per household: the formula's variables (standardized numeric ones), the
        group, and one column per outcome (:attr:`response_names`).
    outcomes
        Outcome labels (dimensions, or the outcome column).
    response_names
        Column of ``frame`` holding each outcome (what Bambi sees as the response).
    formulas
        Final right-hand side per outcome (the spec's formula + the adjustment set).
    adjustment, adjustment_source
        The adjustment set per outcome and where it came from.
    standardized
        ``{column: (mean, sd)}`` of every standardized column.
    y_mean, y_sd
        Standardization of each Gaussian outcome (0 and 1 for other families).
    levels
        Ordered outcome levels (cumulative family), as numbers.
    success
        The value coded 1 (bernoulli family), in the column's own coding.
    household_ids, communities
        Coordinates.
    outcome_source, data_hash
        Provenance.
    observed_rate
        Share of participants among households in CBO communities.
    """

    frame: pd.DataFrame
    outcomes: tuple[str, ...]
    response_names: dict[str, str]
    formulas: dict[str, str]
    adjustment: dict[str, tuple[str, ...]]
    adjustment_source: str
    standardized: dict[str, tuple[float, float]]
    y_mean: dict[str, float]
    y_sd: dict[str, float]
    levels: tuple[float, ...]
    success: Any
    household_ids: tuple[str, ...]
    communities: tuple[str, ...]
    outcome_source: str
    data_hash: str
    observed_rate: float

    @property
    def n(self) -> int:
        """Number of households."""
        return len(self.frame)

    def raw_to_model(self, column: str, values: np.ndarray) -> np.ndarray:
        """Values of ``column`` on the scale the model sees (standardized if it was)."""
        mean, sd = self.standardized.get(column, (0.0, 1.0))
        return (np.asarray(values, float) - mean) / sd


def adjustment_for(
    survey, fspec: FormulaSpec, identification: Any = None
) -> tuple[dict[str, tuple[str, ...]], str]:
    """Return the adjustment set of ``fspec.base.identification`` for every outcome.

    An ``outcome_column`` uses the set of ``dimension`` (default: the dimension whose
    indicators include the column, from the survey's codebook).

    Raises
    ------
    SpecError
        If an ``outcome_column`` is no dimension's indicator and no ``dimension`` is given.
    """
    book = survey.codebook
    if fspec.outcome_column is None:
        targets = {d: d for d in fspec.base.for_dimensions(book.dimensions).outcomes}
    else:
        dim = fspec.dimension
        if dim is None:
            dim = next(
                (d for d, items in book.indicators.items() if fspec.outcome_column in items),
                None,
            )
        if dim is None:
            raise SpecError(
                f"{fspec.path}: key dimension: None; {fspec.outcome_column!r} is no "
                "dimension's indicator, so name the dimension whose adjustment set it uses; "
                f"allowed: {', '.join(book.dimensions)}"
            )
        if dim not in book.dimensions:
            raise SpecError(
                f"{fspec.path}: key dimension: {dim!r} is not a dimension of the survey's "
                f"codebook; allowed: {', '.join(book.dimensions)}"
            )
        targets = {fspec.outcome_column: dim}
    if identification is None:
        from pari_bayes.identification.identify import identify

        identification = identify(survey, refute=False)
    return (
        {
            out: tuple(identification.adjustment_set(fspec.base.identification, dim))
            for out, dim in targets.items()
        },
        "identification",
    )


def _final_formula(rhs: str, adjustment: Sequence[str], present: set[str]) -> str:
    extra = [c for c in adjustment if c not in present]
    return " + ".join([rhs, *extra]) if extra else rhs


def build_design(
    survey,
    fspec: FormulaSpec,
    scores: pd.DataFrame | None = None,
    adjustment: Mapping[str, Sequence[str]] | None = None,
    identification: Any = None,
) -> FormulaDesign:
    """Turn a survey and a formula spec into the frame Bambi fits.

    Parameters
    ----------
    survey
        A validated survey.
    fspec
        The formula spec (:func:`parse_formula_spec`).
    scores
        Outcome scores (one column per dimension); the PCA scores by default.
    adjustment
        Covariates per outcome; the identification layer's adjustment sets by default.
    identification
        Identification result whose adjustment sets are used (the run's DAG).

    Raises
    ------
    SpecError
        If a formula variable, the outcome column or the moderator is not a survey column,
        or the outcome's values do not suit the family.
    EstimationError
        If a standardized column does not vary or an exposure is not identified.
    """
    where = fspec.path
    data = survey.data.reset_index(drop=True)
    columns = list(data.columns)
    for var in fspec.variables:
        if var not in data.columns:
            raise SpecError(
                f"{where}: key formula: {var!r} is not a column of the survey; allowed: "
                f"{', '.join(columns)}"
            )
    if fspec.outcome_column is not None and fspec.outcome_column not in data.columns:
        raise SpecError(
            f"{where}: key outcome_column: {fspec.outcome_column!r} is not a column of the "
            f"survey; allowed: {', '.join(columns)}"
        )
    if adjustment is None:
        adjustment, source = adjustment_for(survey, fspec, identification)
    else:
        source = "given"
    if fspec.outcome_column is None:
        outcomes = fspec.base.for_dimensions(survey.codebook.dimensions).outcomes
    else:
        outcomes = (fspec.outcome_column,)
    found = formula_variables(fspec.formula, where)
    present = found["bare"] | found["called"] | found["groups"]
    skip = {TREATMENT, PRESENCE, fspec.base.group, *_DERIVED_EXPOSURES}
    adjustment = {
        o: tuple(c for c in adjustment.get(o, ()) if c not in skip and c != fspec.outcome_column)
        for o in outcomes
    }
    for out, cols in adjustment.items():
        for col in cols:
            if col not in data.columns:
                raise SpecError(
                    f"{where}: the adjustment set of {fspec.base.identification} for {out} "
                    f"names {col!r}, which is not a survey column; allowed: {', '.join(columns)}"
                )
    formulas = {o: _final_formula(fspec.formula, adjustment[o], present) for o in outcomes}
    used = sorted(present | {c for cols in adjustment.values() for c in cols})
    to_scale = [
        c
        for c in used
        if c not in skip
        and (c in found["bare"] or c not in present)
        and c not in found["called"]
        and pd.api.types.is_numeric_dtype(data[c])
    ]
    frame = data[used].copy()
    standardized: dict[str, tuple[float, float]] = {}
    for col in to_scale:
        x = data[col].astype(float)
        sd = float(x.std(ddof=0))
        if not sd > 0:
            raise EstimationError(
                f"column {col!r} does not vary in this survey; drop it from the formula or the "
                "adjustment set, or use a survey where it varies"
            )
        standardized[col] = (float(x.mean()), sd)
        frame[col] = (x - x.mean()) / sd
    for exposure in (TREATMENT, PRESENCE):
        frame[exposure] = data[exposure].astype(float)
    presence = data[PRESENCE].astype(int)
    if presence.nunique() < 2:
        raise EstimationError(
            "CBO presence does not vary across the surveyed communities, so the spillover "
            "effect is not identified"
        )
    if data.loc[presence == 1, TREATMENT].nunique() < 2:
        raise EstimationError(
            "participation does not vary within CBO communities, so the direct effect is "
            "not identified"
        )
    y_mean: dict[str, float] = {}
    y_sd: dict[str, float] = {}
    response_names: dict[str, str] = {}
    levels: tuple[float, ...] = ()
    success: Any = None
    family = FAMILIES[fspec.family]
    if fspec.outcome_column is None:
        if scores is None:
            from pari_bayes.estimation.multilevel import outcome_scores

            scores, outcome_source = outcome_scores(survey)
        else:
            outcome_source = "given"
        scores = scores.reset_index(drop=True)
        missing = [d for d in outcomes if d not in scores.columns]
        if missing:
            raise SpecError(
                f"{where}: key outcomes: no scores for {', '.join(missing)}; allowed: "
                f"{', '.join(scores.columns)}"
            )
        raw_y = {d: scores[d].astype(float).to_numpy() for d in outcomes}
    else:
        outcome_source = f"survey column {fspec.outcome_column}"
        raw_y = {fspec.outcome_column: data[fspec.outcome_column].to_numpy()}
    for out, y in raw_y.items():
        name = _response_name(out)
        response_names[out] = name
        values = pd.to_numeric(pd.Series(y), errors="coerce")
        if values.isna().any() or not np.isfinite(values).all():
            raise EstimationError(f"outcome {out!r} has missing or non-numeric values")
        values = values.to_numpy(dtype=float)
        distinct = np.unique(values)
        if family.response == "continuous":
            mean, sd = float(values.mean()), float(values.std(ddof=0))
            if not sd > 0:
                raise EstimationError(f"outcome {out!r} does not vary")
            y_mean[out], y_sd[out] = mean, sd
            frame[name] = (values - mean) / sd
            continue
        y_mean[out], y_sd[out] = 0.0, 1.0
        if family.response == "binary":
            if distinct.size != 2:
                raise SpecError(
                    f"{where}: key outcome_column: {out!r} has {distinct.size} distinct values "
                    f"({', '.join(f'{v:g}' for v in distinct[:8])}); family bernoulli needs "
                    "exactly 2 (the larger is coded 1)"
                )
            success = distinct[1].item()
            frame[name] = (values == distinct[1]).astype(int)
        elif family.response == "ordinal":
            if distinct.size < 3:
                raise SpecError(
                    f"{where}: key outcome_column: {out!r} has {distinct.size} levels; family "
                    "cumulative needs 3 or more (use bernoulli for 2)"
                )
            levels = tuple(float(v) for v in distinct)
            frame[name] = pd.Categorical(values, categories=list(distinct), ordered=True)
        else:  # count
            if (values < 0).any() or not np.allclose(values, np.round(values)):
                raise SpecError(
                    f"{where}: key outcome_column: {out!r} is not a count (non-negative "
                    f"integers); family {fspec.family} needs one"
                )
            frame[name] = values.astype(int)
    communities = tuple(survey.communities)
    in_cbo = data[PRESENCE].astype(int) == 1
    return FormulaDesign(
        frame=frame,
        outcomes=tuple(outcomes),
        response_names=response_names,
        formulas=formulas,
        adjustment=adjustment,
        adjustment_source=source,
        standardized=standardized,
        y_mean=y_mean,
        y_sd=y_sd,
        levels=levels,
        success=success,
        household_ids=tuple(data["household_id"].astype(str)),
        communities=communities,
        outcome_source=outcome_source,
        data_hash=survey.data_hash,
        observed_rate=float(data.loc[in_cbo, TREATMENT].mean()),
    )


def _response_name(outcome: str) -> str:
    # formulae names cannot start with "_"; a prefix keeps a response from shadowing a term
    return f"outcome_{outcome}"


# --------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------


def _bambi_prior(prior: PriorSpec, **extra: Any):
    import bambi as bmb

    p = prior.params
    if prior.family == "normal":
        return bmb.Prior("Normal", mu=p["mu"], sigma=p["sigma"], **extra)
    if prior.family == "student_t":
        return bmb.Prior("StudentT", nu=p["nu"], mu=p["mu"], sigma=p["sigma"], **extra)
    if prior.family == "halfnormal":
        return bmb.Prior("HalfNormal", sigma=p["sigma"], **extra)
    if prior.family == "halfstudent_t":
        return bmb.Prior("HalfStudentT", nu=p["nu"], sigma=p["sigma"], **extra)
    if prior.family == "exponential":
        return bmb.Prior("Exponential", lam=p["lam"], **extra)
    raise SpecError(f"prior family {prior.family!r} has no Bambi counterpart here")


def _slot_of_common(name: str) -> str:
    if name == TREATMENT:
        return "direct_effect"
    if name == PRESENCE:
        return "spillover_effect"
    return "interactions" if ":" in name else "coefficients"


def resolved_priors(fspec: FormulaSpec) -> dict[str, PriorSpec]:
    """Return the family's default priors with the spec's on top (spec wins)."""
    return {**DEFAULT_PRIORS[fspec.family], **fspec.priors}


def build_model(design: FormulaDesign, fspec: FormulaSpec, outcome: str):
    """Build (and compile the PyMC graph of) the Bambi model of one outcome.

    Every term gets the prior of its slot (:data:`PRIOR_SLOTS`: ``direct_effect`` for
    ``cbo_participation``, ``spillover_effect`` for ``cbo_presence``, ``interactions`` for
    ``a:b`` terms, ``coefficients`` for the rest, ``community_sd`` for the sd of ``1 |
    community`` and ``slope_sd`` for other group-specific terms), unless the spec names the
    term itself. Bambi centres the common predictors internally (its default), so the
    intercept is not correlated with the exposure effects in the posterior.

    Returns
    -------
    bambi.Model
        Built (``model.backend.model`` is the PyMC model).
    """
    import bambi as bmb

    priors = resolved_priors(fspec)
    response = design.response_names[outcome]
    rhs = design.formulas[outcome]
    found = formula_variables(rhs, fspec.path)
    columns = sorted((found["bare"] | found["called"] | found["groups"]) & set(design.frame))
    frame = design.frame[[response, *columns]]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        # ordinal families have thresholds instead of an intercept: Bambi drops it, as meant
        warnings.filterwarnings("ignore", message="The intercept is omitted in ordinal")
        model = bmb.Model(
            f"{response} ~ {rhs}",
            frame,
            family=FAMILIES[fspec.family].bambi,
            auto_scale=False,
            noncentered=True,
            center_predictors=True,
        )
    parent = model.components[model.family.likelihood.parent]
    chosen: dict[str, Any] = {}
    for name in parent.common_terms:
        chosen[name] = _bambi_prior(priors.get(name, priors[_slot_of_common(name)]))
    for name in parent.group_specific_terms:
        slot = "community_sd" if name.startswith("1|") else "slope_sd"
        sd = _bambi_prior(priors.get(name, priors[slot]))
        chosen[name] = bmb.Prior("Normal", mu=0.0, sigma=sd)
    if parent.intercept_term is not None and "intercept" in priors:
        intercept = priors["intercept"]
        if fspec.family in ("poisson", "negativebinomial") and "intercept" not in fspec.priors:
            counts = design.frame[response].to_numpy(dtype=float)
            params = {**intercept.params, "mu": float(np.log(max(counts.mean(), 1e-3)))}
            intercept = PriorSpec(intercept.family, params, intercept.reason)
        chosen["Intercept"] = _bambi_prior(intercept)
    if fspec.family == "gaussian":
        chosen["sigma"] = _bambi_prior(priors["residual_sd"])
    elif fspec.family == "negativebinomial":
        chosen["alpha"] = _bambi_prior(priors["dispersion"])
    elif fspec.family == "cumulative":
        import pymc as pm

        t = priors["thresholds"]
        k = len(design.levels) - 1
        chosen["threshold"] = bmb.Prior(
            "Normal",
            mu=t.params["mu"] + np.linspace(-2.0, 2.0, k),
            sigma=t.params["sigma"],
            transform=pm.distributions.transforms.ordered,
        )
    model.set_priors(priors=chosen)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        model.build()
    return model


# --------------------------------------------------------------------------------------
# Sample (compile once per formula)
# --------------------------------------------------------------------------------------


class _Sampler:
    """One Bambi model compiled once and sampled for every outcome that shares its formula.

    Bambi passes the response to PyMC as a constant; it is swapped here for a shared
    variable (the PyMC model's observed value, ``model.rvs_to_values``), so nutpie's
    ``compiled.with_data`` (or ``pm.sample`` after ``set_value``) refits another outcome
    without recompiling.
    """

    def __init__(self, model, fspec: FormulaSpec, seed: int) -> None:
        import pytensor
        from pymc.util import get_default_varnames

        self.model = model
        self.fspec = fspec
        self.seed = int(seed)
        pm_model = model.backend.model
        self.pm_model = pm_model
        (obs,) = pm_model.observed_RVs
        old = pm_model.rvs_to_values[obs]
        self.response = pytensor.shared(np.asarray(old.data).copy(), name="observed_response")
        pm_model.rvs_to_values[obs] = self.response
        self.dtype = np.asarray(old.data).dtype
        keep = get_default_varnames(pm_model.unobserved_value_vars, include_transformed=False)
        # as Bambi's own fit: the likelihood's parameters (one per household) are not stored
        per_household = set(model.family.likelihood.params) & {
            d.name for d in pm_model.deterministics
        }
        self.var_names = [v.name for v in keep if v.name not in per_household]
        self.compile_time = 0.0
        self._compiled = None
        if fspec.base.sampler.sampler == "nutpie":
            import nutpie

            start = time.perf_counter()
            self._compiled = nutpie.compile_pymc_model(pm_model, var_names=self.var_names)
            self.compile_time = time.perf_counter() - start

    def observed_values(self, response: np.ndarray) -> np.ndarray:
        """Return the response as the likelihood sees it (codes for ordinal outcomes)."""
        if self.fspec.family == "cumulative":
            return np.asarray(pd.Categorical(response).codes, dtype=self.dtype)
        return np.asarray(response, dtype=self.dtype)

    def sample(self, response: np.ndarray):
        """Sample with the observed response replaced.

        Returns
        -------
        posterior, sample_stats, log_likelihood, seconds
            The posterior as Bambi's ``Model.fit`` returns it, the sampler statistics, the
            pointwise log-likelihood (per household) and the sampling wall time.
        """
        import pymc as pm

        s = self.fspec.base.sampler
        y = self.observed_values(response)
        self.response.set_value(y)
        start = time.perf_counter()
        if self._compiled is not None:
            from pari_bayes.estimation.sampling import nutpie_sample

            idata = nutpie_sample(
                self._compiled.with_data(observed_response=y),
                draws=s.draws,
                tune=s.tune,
                chains=s.chains,
                cores=s.cores,
                seed=self.seed,
                target_accept=s.target_accept,
            )
        else:
            from pari_bayes.estimation.sampling import pymc_sample

            idata = pymc_sample(
                self.pm_model,
                draws=s.draws,
                tune=s.tune,
                chains=s.chains,
                cores=s.cores,
                seed=self.seed,
                target_accept=s.target_accept,
                var_names=self.var_names,
            )
        seconds = time.perf_counter() - start
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning)
            loglik = pm.compute_log_likelihood(
                idata, model=self.pm_model, extend_inferencedata=False, progressbar=False
            )
        # Bambi's own post-processing of a fit: drops the non-centred offsets and restores the
        # intercept of the uncentred predictors (what `Model.fit` returns).
        idata = self.model.backend._clean_results(idata, True, False)
        return idata.posterior, idata.sample_stats, loglik, seconds


# --------------------------------------------------------------------------------------
# Counterfactual prediction (g-computation)
# --------------------------------------------------------------------------------------


def _group_terms(model, group: str) -> list[str]:
    parent = model.components[model.family.likelihood.parent]
    return [n for n, t in parent.group_specific_terms.items() if n.split("|", 1)[-1] == group]


def _new_community_posterior(
    posterior: xr.Dataset, model, group: str, z: Mapping[str, np.ndarray]
) -> tuple[xr.Dataset, str]:
    """Posterior in which the first community's group effects are a new community's.

    The new community's effect of each group-specific term is ``sigma * z`` (``sigma`` the
    term's posterior sd, ``z`` standard normal, fixed by the caller across exposures), so
    predicting with every household in that level predicts a community drawn from the
    population of communities.
    """
    post = posterior.copy()
    level = None
    for name in _group_terms(model, group):
        var = post[name]
        factor_dim = next(d for d in var.dims if d.endswith("__factor_dim"))
        level = var[factor_dim].values[0]
        sigma = post[f"{name}_sigma"]
        new = sigma * xr.DataArray(z[name], dims=sigma.dims)
        values = var.copy()
        values.loc[{factor_dim: level}] = new.transpose(*values.isel({factor_dim: 0}).dims)
        post[name] = values
    return post, str(level)


def _new_z(posterior: xr.Dataset, model, group: str, rng: np.random.Generator) -> dict:
    return {
        name: rng.standard_normal(posterior[f"{name}_sigma"].shape)
        for name in _group_terms(model, group)
    }


class _DenseCOO:
    """Stands in for ``sparse.COO`` in Bambi's prediction: the design matrix made dense."""

    @staticmethod
    def from_scipy_sparse(matrix):
        return matrix.toarray()


@contextlib.contextmanager
def _dense_group_design():
    """Predict group-specific terms with a dense design matrix (same numbers, ~8x faster).

    Bambi 0.17.2 multiplies the group-specific design matrix (households x community
    columns) by the draws as a ``sparse.COO`` array through the ``sparse`` package's generic
    einsum: 2.2 s per prediction of 861 rows at 4,000 draws on the bundled survey, against
    0.3 s dense (measured; the results are identical, ``tests/test_formula.py``). A
    community term has a handful of columns, so the dense matrix is small.
    """
    import bambi.model_components as components

    original = components.sparse
    components.sparse = SimpleNamespace(COO=_DenseCOO)
    try:
        yield
    finally:
        components.sparse = original


def _mean_outcome(
    model,
    posterior: xr.Dataset,
    frame: pd.DataFrame,
    design: FormulaDesign,
    outcome: str,
    family: str,
) -> np.ndarray:
    """Posterior mean outcome of every row of ``frame``, shape (chain, draw, row), own scale."""
    import arviz as az

    idata = az.InferenceData(posterior=posterior)
    with warnings.catch_warnings(), _dense_group_design():
        warnings.filterwarnings("ignore", category=FutureWarning)
        pred = model.predict(idata, kind="response_params", data=frame, inplace=False)
    mean = pred.posterior[model.family.likelihood.parent]
    obs_dim = next(d for d in mean.dims if d == "__obs__")
    if family == "cumulative":
        level_dim = [d for d in mean.dims if d not in ("chain", "draw", obs_dim)][0]
        values = mean.transpose("chain", "draw", obs_dim, level_dim).to_numpy()
        return values @ np.asarray(design.levels, float)
    values = mean.transpose("chain", "draw", obs_dim).to_numpy()
    if family == "gaussian":
        return values * design.y_sd[outcome] + design.y_mean[outcome]
    return values


def counterfactual_frame(
    design: FormulaDesign,
    a: int,
    s: int,
    overrides: Mapping[str, float] | None = None,
    community: str | None = None,
    group: str = "community",
) -> pd.DataFrame:
    """Every household with own participation ``a``, CBO presence ``s`` (and overrides).

    ``overrides`` give other columns one value for every household, on the model's scale
    (use :meth:`FormulaDesign.raw_to_model`); ``community`` puts every household in one
    community level.
    """
    frame = design.frame.copy()
    frame[TREATMENT] = float(a)
    frame[PRESENCE] = float(s)
    for col, value in (overrides or {}).items():
        frame[col] = value
    if community is not None:
        frame[group] = pd.Categorical([community] * len(frame), categories=design.communities)
        frame[group] = frame[group].astype(str)
    return frame


def potential_means(
    model,
    posterior: xr.Dataset,
    design: FormulaDesign,
    outcome: str,
    family: str,
    exposures: Sequence[tuple[int, int]],
    scope: str = "observed",
    z: Mapping[str, np.ndarray] | None = None,
    overrides: Mapping[str, float] | None = None,
    group: str = "community",
) -> dict[tuple[int, int], np.ndarray]:
    """Posterior mean outcome of every household under each exposure (g-computation).

    The counterfactual frames of all exposures are stacked and predicted in one
    ``model.predict`` call.

    Parameters
    ----------
    model
        The fitted Bambi model (its structure; the draws come from ``posterior``).
    posterior
        Posterior of one outcome (Bambi's variable names).
    design
        The design fitted.
    outcome
        Which outcome (for its standardization).
    family
        Key of :data:`FAMILIES`.
    exposures
        (a, s) pairs.
    scope
        ``"observed"``: each household keeps its community's effects; ``"new"``: every
        household in one new community with group effects ``sigma * z``.
    z
        Standard normal draws per group-specific term (scope ``new``; the same for every
        call whose results are contrasted).
    overrides
        Columns set to one value for every household (model scale), e.g. a moderator.
    group
        The grouping column.

    Returns
    -------
    dict
        ``{(a, s): array (chain, draw, household)}`` on the outcome's own scale.
    """
    community = None
    if scope == "new":
        if z is None:
            raise EstimationError("scope 'new' needs z (standard normal draws per group term)")
        posterior, community = _new_community_posterior(posterior, model, group, z)
    elif scope != "observed":
        raise EstimationError(f"scope {scope!r}; allowed: observed, new")
    frames = [counterfactual_frame(design, a, s, overrides, community, group) for a, s in exposures]
    stacked = pd.concat(frames, ignore_index=True)
    mean = _mean_outcome(model, posterior, stacked, design, outcome, family)
    n = design.n
    return {e: mean[..., i * n : (i + 1) * n] for i, e in enumerate(exposures)}


# --------------------------------------------------------------------------------------
# Effects and conditional effects
# --------------------------------------------------------------------------------------


def _effect_rows(
    model,
    posterior: xr.Dataset,
    design: FormulaDesign,
    outcome: str,
    fspec: FormulaSpec,
    rng: np.random.Generator,
) -> pd.DataFrame:
    from pari_bayes.effects import EXPOSURES, effects_table

    group = fspec.base.group
    z = _new_z(posterior, model, group, rng)
    cache: dict[str, dict] = {}

    def predict(a: int, s: int, scope: str, new_z: Any) -> np.ndarray:  # noqa: ARG001
        if scope not in cache:
            cache[scope] = potential_means(
                model,
                posterior,
                design,
                outcome,
                fspec.family,
                EXPOSURES,
                scope=scope,
                z=z,
                group=group,
            )
        return cache[scope][(a, s)][..., None]

    return effects_table(
        predict,
        [outcome],
        alphas=(design.observed_rate, 0.25, 0.5),
        rng=rng,
        shape=(posterior.sizes["chain"], posterior.sizes["draw"]),
        method="bayes:formula",
    )


#: Columns of ``conditional_effects.csv``.
CONDITIONAL_COLUMNS = (
    "moderator",
    "quantile",
    "moderator_value",
    "estimand",
    "dimension",
    "mean",
    "q05",
    "q95",
    "prob_positive",
    "r_hat",
    "ess_bulk",
    "ess_tail",
)


def conditional_effects(
    model,
    posterior: xr.Dataset,
    design: FormulaDesign,
    outcome: str,
    family: str,
    moderator: str,
    values: Sequence[float],
    quantiles: Sequence[float] | None = None,
    group: str = "community",
) -> pd.DataFrame:
    """DE and IE with the moderator set to each value for every household.

    Parameters
    ----------
    model, posterior, design, outcome, family
        As for :func:`potential_means`.
    moderator
        Column set to each value.
    values
        Grid of moderator values on the survey's own scale (e.g. months).
    quantiles
        The quantile each value is (for the output), or None.
    group
        The grouping column.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`CONDITIONAL_COLUMNS`: per value and estimand the posterior mean,
        90% interval, P(> 0), R-hat and ESS.
    """
    from pari_bayes.effects import EXPOSURES, estimand_draws, summarize_draws

    rows = []
    for i, value in enumerate(values):
        scaled = float(design.raw_to_model(moderator, np.array([value]))[0])
        means = potential_means(
            model,
            posterior,
            design,
            outcome,
            family,
            EXPOSURES,
            overrides={moderator: scaled},
            group=group,
        )
        draws = estimand_draws(means)
        for estimand in ("DE", "IE"):
            s = summarize_draws(draws[(estimand, None)])
            rows.append(
                {
                    "moderator": moderator,
                    "quantile": np.nan if quantiles is None else float(quantiles[i]),
                    "moderator_value": float(value),
                    "estimand": estimand,
                    "dimension": outcome,
                    "mean": s["mean"],
                    "q05": s["q05"],
                    "q95": s["q95"],
                    "prob_positive": s["prob_positive"],
                    "r_hat": s["r_hat"],
                    "ess_bulk": s["ess_bulk"],
                    "ess_tail": s["ess_tail"],
                }
            )
    return pd.DataFrame(rows, columns=list(CONDITIONAL_COLUMNS))


def moderator_grid(values: np.ndarray, points: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``points`` quantiles of the moderator, from the 5% to the 95% quantile.

    Returns
    -------
    quantiles, values
        Repeated values (a discrete moderator) are kept once.

    Examples
    --------
    >>> q, v = moderator_grid(np.arange(101.0), 3)
    >>> q.tolist(), v.tolist()
    ([0.05, 0.5, 0.95], [5.0, 50.0, 95.0])
    """
    q = np.round(np.linspace(0.05, 0.95, points), 6)
    # observed values (inverted CDF), not interpolations between them
    v = np.quantile(np.asarray(values, float), q, method="inverted_cdf")
    _, keep = np.unique(np.round(v, 10), return_index=True)
    keep = np.sort(keep)
    return q[keep], v[keep]


def _conditional_failures(frame: pd.DataFrame, gate: Mapping[str, float]) -> list[str]:
    if frame is None or frame.empty:
        return []
    out = []
    label = frame["estimand"] + "[" + frame["dimension"] + ", " + frame["moderator"] + "="
    label = label + frame["moderator_value"].map(lambda v: f"{v:g}") + "]"
    bad = frame["r_hat"] > gate["r_hat_max"]
    if bad.any():
        out.append(
            f"R-hat > {gate['r_hat_max']} for conditional effect "
            + ", ".join(
                f"{p} ({v:.3f})" for p, v in zip(label[bad], frame["r_hat"][bad], strict=True)
            )
        )
    for col, key in (("ess_bulk", "ess_bulk_min"), ("ess_tail", "ess_tail_min")):
        bad = frame[col] < gate[key]
        if bad.any():
            out.append(
                f"{col.replace('_', ' ')} < {gate[key]:g} for conditional effect "
                + ", ".join(
                    f"{p} ({v:.0f})" for p, v in zip(label[bad], frame[col][bad], strict=True)
                )
            )
    return out


# --------------------------------------------------------------------------------------
# The whole fit
# --------------------------------------------------------------------------------------


@dataclass
class FormulaFitResult:
    """What :func:`fit_formula_spec` produces.

    Attributes
    ----------
    spec, fspec, design
        What was fitted.
    models
        The Bambi model of each outcome (outcomes sharing a formula share one model).
    idata
        One InferenceData: prior, posterior (dim ``dimension`` over outcomes),
        sample_stats, posterior_predictive, log_likelihood, observed_data, constant_data.
    effects
        DE/IE/TE/OE rows (:data:`pari_bayes.effects.EFFECT_COLUMNS`).
    conditional
        Conditional effects (:data:`CONDITIONAL_COLUMNS`), empty without a moderator.
    diagnostics
        Per-parameter R-hat/ESS with divergences (``diagnostics.csv``).
    summary
        One row per outcome: family, final formula, adjustment set, standardized columns,
        times.
    converged, failures
        The gate's verdict and messages.
    timings
        Seconds: ``compile_s``, ``sampling_s``, ``sampling_per_outcome_s``, ``effects_s``,
        ``total_s``.
    files
        Files written.
    """

    spec: ModelSpec
    fspec: FormulaSpec
    design: FormulaDesign
    models: dict[str, Any]
    idata: Any
    effects: pd.DataFrame = field(default_factory=pd.DataFrame)
    conditional: pd.DataFrame = field(default_factory=pd.DataFrame)
    diagnostics: pd.DataFrame = field(default_factory=pd.DataFrame)
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    converged: bool = True
    failures: list[str] = field(default_factory=list)
    timings: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


def _rename_obs(ds: xr.Dataset, design: FormulaDesign) -> xr.Dataset:
    if "__obs__" in ds.dims:
        ds = ds.rename({"__obs__": "household"}).assign_coords(household=list(design.household_ids))
    return ds


def _stack(datasets: Mapping[str, xr.Dataset]) -> xr.Dataset:
    """Concatenate per-outcome datasets along ``dimension`` (NaN where a variable is absent)."""
    names = list(dict.fromkeys(v for ds in datasets.values() for v in ds.data_vars))
    parts = []
    for out, ds in datasets.items():
        for name in names:
            if name not in ds:
                template = next(d[name] for d in datasets.values() if name in d)
                ds = ds.assign({name: xr.full_like(template, np.nan, dtype=float)})
        parts.append(ds[names].expand_dims(dimension=[out]))
    return xr.concat(parts, dim="dimension", join="outer")


def fit_formula_spec(
    survey,
    spec: ModelSpec | str | Path,
    directory: str | Path | None = None,
    *,
    seed: int | None = None,
    allow_unconverged: bool = False,
    plots: bool = True,
    identification: Any = None,
    scores: pd.DataFrame | None = None,
    adjustment: Mapping[str, Sequence[str]] | None = None,
    prior: bool = True,
) -> FormulaFitResult:
    """Fit a ``kind = "formula"`` spec, compute its effects and write its files.

    Writes ``posterior.nc``, ``effects.csv``, ``diagnostics.csv``, ``summary.csv`` and,
    with a ``[conditional]`` moderator, ``conditional_effects.csv`` and
    ``conditional_effects.png``.

    Parameters
    ----------
    survey
        A validated survey.
    spec
        Spec object or file.
    directory
        Existing output folder; None writes nothing.
    seed
        Seed of the sampler, the new-community draws and the predictive draws (the spec's
        ``sampler.seed`` by default).
    allow_unconverged
        Write the outputs even if the gate fails (tables marked ``UNCONVERGED``).
    plots
        Draw ``conditional_effects.png``.
    identification
        Identification result supplying the adjustment sets (the run's DAG); None
        identifies on the bundled DAG.
    scores, adjustment
        Override the outcome scores / adjustment sets (tests, simulations).
    prior
        Draw the prior and prior predictive.

    Returns
    -------
    FormulaFitResult

    Raises
    ------
    SpecError
        If the spec is malformed or names columns the survey lacks (before any sampling).
    ConvergenceError
        If the gate fails and ``allow_unconverged`` is false (nothing is written).
    """
    from pari_bayes.diagnostics import check_convergence, diagnostics_table

    start = time.perf_counter()
    base = spec if isinstance(spec, ModelSpec) else load_spec(spec)
    fspec = parse_formula_spec(base)
    seed = base.sampler.seed if seed is None else int(seed)
    design = build_design(
        survey, fspec, scores=scores, adjustment=adjustment, identification=identification
    )
    rng = np.random.default_rng([seed, 3])
    models: dict[str, Any] = {}
    samplers: dict[str, _Sampler] = {}
    posts, stats, logliks, preds, priors, prior_preds = {}, {}, {}, {}, {}, {}
    per_outcome: dict[str, float] = {}
    prior_cache: dict[str, tuple[xr.Dataset, xr.Dataset]] = {}
    compile_s = 0.0
    effects, conditional = [], []
    effects_s = 0.0
    for out in design.outcomes:
        formula = design.formulas[out]
        if formula not in samplers:
            model = build_model(design, fspec, out)
            samplers[formula] = _Sampler(model, fspec, seed)
            compile_s += samplers[formula].compile_time
        sampler = samplers[formula]
        model = sampler.model
        models[out] = model
        response = design.frame[design.response_names[out]].to_numpy()
        post, st, ll, seconds = sampler.sample(response)
        per_outcome[out] = seconds
        t0 = time.perf_counter()
        effects.append(_effect_rows(model, post, design, out, fspec, rng))
        if fspec.moderator is not None:
            raw = survey.data[fspec.moderator].to_numpy(dtype=float)
            q, values = moderator_grid(raw, fspec.points)
            conditional.append(
                conditional_effects(
                    model,
                    post,
                    design,
                    out,
                    fspec.family,
                    fspec.moderator,
                    values,
                    q,
                    group=fspec.base.group,
                )
            )
        effects_s += time.perf_counter() - t0
        posts[out], stats[out] = post, st
        logliks[out] = _rename_obs(
            ll.rename({ll_name: "y_obs" for ll_name in ll.data_vars}), design
        )
        preds[out] = _posterior_predictive(model, post, design, out, seed)
        if prior:
            # the prior does not depend on the observed outcome: drawn once per compiled model
            if formula not in prior_cache:
                prior_cache[formula] = _prior_draws(sampler, design, out, seed)
            priors[out], prior_preds[out] = prior_cache[formula]
    idata = _assemble(design, fspec, seed, posts, stats, logliks, preds, priors, prior_preds)
    effects_frame = pd.concat(effects, ignore_index=True)
    conditional_frame = (
        pd.concat(conditional, ignore_index=True)
        if conditional
        else pd.DataFrame(columns=list(CONDITIONAL_COLUMNS))
    )
    gated = [v for v in idata.posterior.data_vars if not v.endswith("_log__")]
    diag = diagnostics_table(idata, var_names=gated, sampling_time=sum(per_outcome.values()))
    diag = diag[np.isfinite(diag["r_hat"]) | np.isfinite(diag["ess_bulk"])].reset_index(drop=True)
    failures = check_convergence(diag, effects_frame, allow_unconverged=True, gate=fspec.gate)
    failures += _conditional_failures(conditional_frame, fspec.gate)
    summary = pd.DataFrame(
        [
            {
                "dimension": out,
                "family": fspec.family,
                "response": design.response_names[out],
                "formula": f"{design.response_names[out]} ~ {design.formulas[out]}",
                "adjustment_set": " + ".join(design.adjustment[out]),
                "adjustment_source": design.adjustment_source,
                "standardized": " ".join(sorted(design.standardized)),
                "effect_scale": FAMILIES[fspec.family].scale,
                "sampler": fspec.base.sampler.sampler,
                "compiled_once_for": sum(
                    design.formulas[o] == design.formulas[out] for o in design.outcomes
                ),
                "sampling_s": per_outcome[out],
                "divergences": int(np.asarray(stats[out]["diverging"]).sum()),
            }
            for out in design.outcomes
        ]
    )
    result = FormulaFitResult(
        spec=base,
        fspec=fspec,
        design=design,
        models=models,
        idata=idata,
        effects=effects_frame,
        conditional=conditional_frame,
        diagnostics=diag,
        summary=summary,
        converged=not failures,
        failures=failures,
    )
    result.timings = {
        "compile_s": compile_s,
        "sampling_s": sum(per_outcome.values()),
        "sampling_per_outcome_s": per_outcome,
        "effects_s": effects_s,
    }
    status = "ok" if result.converged else "UNCONVERGED"
    idata.attrs["status"] = "converged" if result.converged else "UNCONVERGED"
    idata.attrs["gate_failures"] = json.dumps(failures)
    idata.attrs["compile_time_s"] = float(compile_s)
    idata.attrs["sampling_time_s"] = float(sum(per_outcome.values()))
    if failures and not allow_unconverged:
        raise ConvergenceError(
            "the fit failed the convergence gate (R-hat <= 1.01, bulk and tail ESS >= 400, no "
            "divergences):\n  - " + "\n  - ".join(failures) + "\nRun longer (--draws/--tune), "
            "raise sampler.target_accept, or pass --allow-unconverged to write the outputs "
            "marked UNCONVERGED."
        )
    if directory is not None:
        _write_all(result, Path(directory), status, plots)
    result.timings["total_s"] = time.perf_counter() - start
    return result


def _posterior_predictive(model, posterior, design, outcome, seed) -> xr.Dataset:
    """Posterior predictive draws of the observed households (response scale of the fit)."""
    import arviz as az

    idata = az.InferenceData(posterior=posterior)
    with warnings.catch_warnings(), _dense_group_design():
        warnings.filterwarnings("ignore", category=FutureWarning)
        pred = model.predict(idata, kind="response", inplace=False, random_seed=seed)
    ds = pred.posterior_predictive
    ds = ds.rename({v: "y_obs" for v in ds.data_vars})
    return _rename_obs(ds, design)


def _prior_draws(sampler: _Sampler, design, outcome, seed) -> tuple[xr.Dataset, xr.Dataset]:
    import pymc as pm

    draws = sampler.fspec.base.sampler.prior_draws
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prior = pm.sample_prior_predictive(draws=draws, model=sampler.pm_model, random_seed=seed)
    keep = [
        v for v in prior.prior.data_vars if v in sampler.var_names and not v.endswith("_offset")
    ]
    pp = prior.prior_predictive
    pp = _rename_obs(pp.rename({v: "y_obs" for v in pp.data_vars}), design)
    return prior.prior[keep], pp


def _assemble(design, fspec, seed, posts, stats, logliks, preds, priors, prior_preds):
    import arviz as az

    hh = {"household": list(design.household_ids)}
    observed = xr.Dataset(
        {
            "y_obs": (
                ("household", "dimension"),
                np.column_stack(
                    [
                        np.asarray(
                            design.frame[design.response_names[o]].astype(float)
                            if fspec.family != "cumulative"
                            else design.frame[design.response_names[o]].cat.codes,
                            float,
                        )
                        for o in design.outcomes
                    ]
                ),
            )
        },
        coords={**hh, "dimension": list(design.outcomes)},
    )
    constant_vars: dict[str, Any] = {
        "y_mean": (("dimension",), [design.y_mean[o] for o in design.outcomes]),
        "y_sd": (("dimension",), [design.y_sd[o] for o in design.outcomes]),
    }
    for col in design.frame.columns:
        if col in design.response_names.values():
            continue
        values = design.frame[col]
        if pd.api.types.is_numeric_dtype(values):
            constant_vars[col] = (("household",), values.to_numpy(dtype=float))
        else:
            constant_vars[col] = (("household",), values.astype(str).to_numpy())
    constant = xr.Dataset(constant_vars, coords={**hh, "dimension": list(design.outcomes)})
    groups = {
        "posterior": _stack(posts),
        "sample_stats": _stack(stats),
        "posterior_predictive": _stack(preds),
        "log_likelihood": _stack(logliks),
        "observed_data": observed,
        "constant_data": constant,
    }
    if priors:
        groups["prior"] = _stack(priors)
        groups["prior_predictive"] = _stack(prior_preds)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not part of the schema.*")
        idata = az.InferenceData(**groups)
    base = fspec.base
    idata.attrs.update(
        {
            "model_name": base.name,
            "model_kind": base.kind,
            "package": "pari_bayes",
            "package_version": __version__,
            "spec_json": base.to_json(),
            "spec_path": str(base.path),
            "data_hash": design.data_hash,
            "seed": int(seed),
            "sampler": base.sampler.sampler,
            "family": fspec.family,
            "formulas": json.dumps(
                {o: f"{design.response_names[o]} ~ {design.formulas[o]}" for o in design.outcomes}
            ),
            "adjustment_source": design.adjustment_source,
            "adjustment_sets": json.dumps(design.adjustment, sort_keys=True),
            "standardized": json.dumps(design.standardized, sort_keys=True),
            "outcome_source": design.outcome_source,
            "outcome_scale": (
                "standardized; multiply by constant_data.y_sd and add y_mean"
                if fspec.family == "gaussian"
                else f"{fspec.family} on the column's own coding"
            ),
            "effect_scale": FAMILIES[fspec.family].scale,
            "prior_intercept": "the prior group's Intercept is Bambi's intercept of the "
            "centred predictors; the posterior's is uncentred (as Model.fit returns it)",
            "bambi_version": _bambi_version(),
        }
    )
    return idata


def _bambi_version() -> str:
    from importlib.metadata import version

    return version("bambi")


def _write_all(result: FormulaFitResult, directory: Path, status: str, plots: bool) -> None:
    from pari_bayes.diagnostics import mark_unconverged
    from pari_bayes.estimation.posterior import write_posterior
    from pari_bayes.io import write_csv

    written = []
    attrs = dict(result.idata.attrs)
    write_posterior(
        result.idata,
        directory / "posterior.nc",
        model_name=result.spec.name,
        kind=result.spec.kind,
        spec_json=result.spec.to_json(),
        data_hash=attrs["data_hash"],
        seed=int(attrs["seed"]),
        status=attrs["status"],
    )
    written.append("posterior.nc")
    tables = {
        "effects.csv": result.effects,
        "diagnostics.csv": result.diagnostics,
        "summary.csv": result.summary,
    }
    if result.fspec.moderator is not None:
        tables["conditional_effects.csv"] = result.conditional
    for name, frame in tables.items():
        write_csv(mark_unconverged(frame, status), directory / name)
        written.append(name)
    if plots and result.fspec.moderator is not None and len(result.conditional):
        from pari_bayes.estimation.formula_plots import conditional_plot

        title = "" if status == "ok" else "UNCONVERGED - "
        if conditional_plot(result, directory / "conditional_effects.png", title_prefix=title):
            written.append("conditional_effects.png")
    result.files = written
