"""Model specifications: declarative TOML files in ``models/``.

A spec says what to fit, never which covariates: the adjustment set comes from the
identification layer (``identification = "TE"`` names the estimand whose adjustment set is
used). Every spec shares a small common core, parsed here into :class:`ModelSpec`:

``kind``
    ``"multilevel"`` (one model per outcome), ``"multivariate"`` (the outcomes jointly,
    LKJ-correlated residuals) or ``"latent"`` (joint measurement + structural model; its
    extra sections are parsed by :mod:`pari_bayes.estimation.latent`).
``name``, ``description``
    Name used in outputs and provenance.
``outcomes``
    Dimensions to model (names from the survey codebook's dimensions); omitted: every
    dimension of the survey the spec is fitted to.
``identification``
    Estimand (DE, IE, TE, OE) whose adjustment set the model conditions on.
``formula``
    Bambi-style right-hand side of the exposure part, e.g.
    ``"cbo_participation + cbo_presence + (1 | community)"``; the adjustment set is added.
``[group]``, ``[priors]``, ``[sampler]``, ``[sensitivity]``, ``[loo]``
    See ``docs/priors.md`` and the shipped specs.

Unknown keys, unknown prior families and terms that are not survey columns raise
:class:`~pari_bayes.errors.SpecError` naming the file, the key and the allowed values.
The spec is parsed with :mod:`tomllib` only.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pari_bayes.errors import SpecError

__all__ = [
    "KINDS",
    "ESTIMANDS",
    "SAMPLERS",
    "PRIOR_FAMILIES",
    "PriorSpec",
    "SamplerSpec",
    "ModelSpec",
    "load_spec",
    "parse_spec",
    "parse_formula",
]

KINDS = ("multilevel", "multivariate", "latent")
ESTIMANDS = ("DE", "IE", "TE", "OE")
SAMPLERS = ("nutpie", "pymc")

#: Prior families and their parameters (every parameter is required).
PRIOR_FAMILIES: dict[str, tuple[str, ...]] = {
    "normal": ("mu", "sigma"),
    "student_t": ("nu", "mu", "sigma"),
    "halfnormal": ("sigma",),
    "halfstudent_t": ("nu", "sigma"),
    "exponential": ("lam",),
    "lkj": ("eta",),
}

#: Named prior slots of the multilevel models and the families each accepts.
PRIOR_SLOTS: dict[str, tuple[str, ...]] = {
    "intercept": ("normal", "student_t"),
    "coefficients": ("normal", "student_t"),
    "direct_effect": ("normal", "student_t"),
    "spillover_effect": ("normal", "student_t"),
    "community_sd": ("halfnormal", "halfstudent_t", "exponential"),
    "residual_sd": ("halfnormal", "halfstudent_t", "exponential"),
    "residual_corr": ("lkj",),
}

_TOP_KEYS = (
    "kind",
    "name",
    "description",
    "outcomes",
    "identification",
    "formula",
    "group",
    "priors",
    "sampler",
    "sensitivity",
    "loo",
)
_GROUP_KEYS = ("name",)
_SAMPLER_KEYS = (
    "sampler",
    "draws",
    "tune",
    "chains",
    "cores",
    "target_accept",
    "seed",
    "prior_draws",
)
_SENSITIVITY_KEYS = ("community_sd_scale",)
_LOO_KEYS = ("drop",)


@dataclass(frozen=True)
class PriorSpec:
    """One prior: a family, its parameters and the stated reason."""

    family: str
    params: dict[str, float]
    reason: str

    def scaled(self, factor: float) -> PriorSpec:
        """Return the prior with its scale parameter (``sigma``/``1/lam``) multiplied."""
        params = dict(self.params)
        if "sigma" in params:
            params["sigma"] = params["sigma"] * factor
        elif "lam" in params:
            params["lam"] = params["lam"] / factor
        return PriorSpec(self.family, params, self.reason)


@dataclass(frozen=True)
class SamplerSpec:
    """Sampler settings."""

    sampler: str = "nutpie"
    draws: int = 1000
    tune: int = 1000
    chains: int = 4
    cores: int = 2
    target_accept: float = 0.9
    seed: int = 20240611
    prior_draws: int = 500


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec (common core; ``raw`` keeps the whole file).

    Attributes
    ----------
    kind, name, description
        What the spec fits.
    outcomes
        Dimensions modelled; empty: every dimension of the survey's codebook
        (:meth:`for_dimensions` resolves it when the spec meets a survey).
    identification
        Estimand whose adjustment set is used.
    formula
        Bambi-style right-hand side (exposure terms and group term).
    terms
        Household/community-level terms of ``formula`` (without the group term).
    group
        Grouping column (``community``).
    priors
        Prior per slot.
    sampler
        Sampler settings.
    sensitivity
        Multipliers of the community-sd prior scale for the sensitivity analysis (PSIS
        reweighting of the posterior; a refit where the Pareto k exceeds 0.7).
    loo_drop
        Terms dropped for the LOO comparison model (empty: no comparison).
    raw
        The full parsed TOML (extra sections of other kinds live here).
    path
        File the spec was read from.
    """

    kind: str
    name: str
    outcomes: tuple[str, ...]
    identification: str
    group: str = "community"
    formula: str = ""
    terms: tuple[str, ...] = ()
    priors: dict[str, PriorSpec] = field(default_factory=dict)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    sensitivity: tuple[float, ...] = (0.5, 2.0)
    loo_drop: tuple[str, ...] = ()
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict)
    path: str = "<spec>"

    def to_json(self) -> str:
        """Return the spec as canonical JSON (for provenance)."""
        return json.dumps(self.raw, sort_keys=True, default=str)

    def with_sampler(self, **changes: Any) -> ModelSpec:
        """Return a copy with some sampler settings replaced (``None`` values ignored)."""
        from dataclasses import replace

        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            return self
        raw = json.loads(json.dumps(self.raw, default=str))
        raw.setdefault("sampler", {}).update(changes)
        return replace(self, sampler=replace(self.sampler, **changes), raw=raw)

    def for_dimensions(self, dimensions: Sequence[str]) -> ModelSpec:
        """Return the spec with its outcomes resolved against a survey's dimensions.

        Parameters
        ----------
        dimensions
            The survey codebook's dimensions (``survey.codebook.dimensions``).

        Raises
        ------
        SpecError
            If an outcome is not one of ``dimensions``, or a multivariate spec gets fewer
            than two.
        """
        from dataclasses import replace

        where = str(self.path or "<spec>")
        outcomes = self.outcomes or tuple(dimensions)
        unknown = [d for d in outcomes if d not in dimensions]
        if unknown:
            raise SpecError(
                f"{where}: key outcomes: unknown dimension(s) {', '.join(map(repr, unknown))}; "
                f"allowed (the survey codebook's dimensions): {', '.join(dimensions)}"
            )
        if self.kind == "multivariate" and len(outcomes) < 2:
            raise SpecError(
                f"{where}: key outcomes: a multivariate model needs 2+ dimensions, the survey "
                f'has {len(outcomes)} ({", ".join(outcomes)}); use kind = "multilevel"'
            )
        return self if outcomes == self.outcomes else replace(self, outcomes=tuple(outcomes))

    def check_columns(self, columns: list[str] | tuple[str, ...]) -> None:
        """Raise SpecError if a term or the group is not a column of the data."""
        cols = set(columns)
        for term in (*self.terms, self.group):
            if term not in cols:
                raise SpecError(
                    f"{self.path}: key formula: term {term!r} is not a column of the survey; "
                    f"allowed: {', '.join(sorted(cols))}"
                )


_GROUP_RE = re.compile(r"^\(\s*1\s*\|\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)$")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_formula(formula: str, where: str = "<spec>") -> tuple[tuple[str, ...], str]:
    """Split a Bambi-style right-hand side into terms and the group.

    Parameters
    ----------
    formula
        E.g. ``"cbo_participation + cbo_presence + (1 | community)"``. A left-hand side
        (``y ~``) is allowed and ignored: the outcomes come from ``outcomes``.
    where
        File name used in messages.

    Returns
    -------
    terms, group

    Examples
    --------
    >>> parse_formula("cbo_participation + cbo_presence + (1|community)")
    (('cbo_participation', 'cbo_presence'), 'community')
    """
    rhs = formula.split("~", 1)[-1]
    parts = [p.strip() for p in re.split(r"\+(?![^(]*\))", rhs) if p.strip()]
    terms: list[str] = []
    group = None
    for part in parts:
        match = _GROUP_RE.match(part)
        if match:
            if group is not None:
                raise SpecError(
                    f"{where}: key formula: only one group term is allowed; got {formula!r}"
                )
            group = match.group(1)
        elif _NAME_RE.match(part):
            if part not in ("1", "Intercept"):
                terms.append(part)
        else:
            raise SpecError(
                f"{where}: key formula: term {part!r} is not supported; allowed: column names "
                "joined by '+' and one varying intercept '(1 | community)'"
            )
    if group is None:
        raise SpecError(
            f"{where}: key formula: no group term; add '(1 | community)' (households are "
            "nested in communities)"
        )
    return tuple(terms), group


def _unknown(where: str, section: str, got: dict, allowed: tuple[str, ...]) -> None:
    bad = [k for k in got if k not in allowed]
    if bad:
        label = f"[{section}] " if section else ""
        raise SpecError(
            f"{where}: unknown key(s) {label}{', '.join(map(repr, bad))}; "
            f"allowed: {', '.join(allowed)}"
        )


def _parse_prior(where: str, slot: str, entry: Any) -> PriorSpec:
    if not isinstance(entry, dict):
        raise SpecError(
            f"{where}: key priors.{slot} must be a table like "
            '{ family = "normal", mu = 0, sigma = 1, reason = "..." }'
        )
    family = entry.get("family")
    if family not in PRIOR_FAMILIES:
        raise SpecError(
            f"{where}: key priors.{slot}.family: unknown prior family {family!r}; allowed: "
            f"{', '.join(PRIOR_FAMILIES)}"
        )
    allowed_families = PRIOR_SLOTS.get(slot, tuple(PRIOR_FAMILIES))
    if family not in allowed_families:
        raise SpecError(
            f"{where}: key priors.{slot}.family: {family!r} cannot be used for {slot}; "
            f"allowed: {', '.join(allowed_families)}"
        )
    params_needed = PRIOR_FAMILIES[family]
    _unknown(where, f"priors.{slot}", entry, ("family", "reason", *params_needed))
    params: dict[str, float] = {}
    for p in params_needed:
        value = entry.get(p)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise SpecError(f"{where}: key priors.{slot}.{p}: expected a number, got {value!r}")
        if p != "mu" and value <= 0:
            raise SpecError(f"{where}: key priors.{slot}.{p}: must be > 0, got {value!r}")
        params[p] = float(value)
    reason = entry.get("reason", "")
    if not isinstance(reason, str) or not reason.strip():
        raise SpecError(
            f"{where}: key priors.{slot}.reason: every prior needs a stated reason (a "
            "sentence on the standardized-outcome scale)"
        )
    return PriorSpec(family, params, reason.strip())


def _parse_sampler(where: str, entry: Any) -> SamplerSpec:
    if not isinstance(entry, dict):
        raise SpecError(f"{where}: key sampler must be a table")
    _unknown(where, "sampler", entry, _SAMPLER_KEYS)
    base = SamplerSpec()
    values: dict[str, Any] = {}
    for key in _SAMPLER_KEYS:
        if key not in entry:
            continue
        value = entry[key]
        if key == "sampler":
            if value not in SAMPLERS:
                raise SpecError(
                    f"{where}: key sampler.sampler: {value!r}; allowed: {', '.join(SAMPLERS)}"
                )
        elif key == "target_accept":
            if not isinstance(value, float) or not 0.5 <= value < 1:
                raise SpecError(
                    f"{where}: key sampler.target_accept: {value!r}; allowed: a number in [0.5, 1)"
                )
        elif (
            not isinstance(value, int)
            or isinstance(value, bool)
            or value < (0 if key == "seed" else 1)
        ):
            raise SpecError(f"{where}: key sampler.{key}: {value!r}; allowed: a positive integer")
        values[key] = value
    return SamplerSpec(**{**base.__dict__, **values})


def parse_spec(raw: dict[str, Any], where: str = "<spec>") -> ModelSpec:
    """Validate a parsed TOML mapping and build a :class:`ModelSpec`.

    For ``kind = "latent"`` sections other than the common ones are kept in ``raw``
    unchecked; :mod:`pari_bayes.estimation.latent` validates them.
    """
    from pari_bayes.estimation.registry import get_estimator

    kind = raw.get("kind")
    own = get_estimator(kind, where).own_sections  # a registered kind, or an error listing them
    if not own:
        _unknown(where, "", raw, _TOP_KEYS)
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise SpecError(f"{where}: key name: {name!r}; allowed: a name of letters, digits, _")
    outcomes = raw.get("outcomes", [])
    if isinstance(outcomes, str):
        outcomes = [outcomes]
    if not isinstance(outcomes, list) or not all(isinstance(d, str) and d for d in outcomes):
        raise SpecError(
            f"{where}: key outcomes: {outcomes!r}; allowed: a list of the survey codebook's "
            "dimension names (omit it to model every dimension)"
        )
    if len(set(outcomes)) != len(outcomes):
        raise SpecError(f"{where}: key outcomes: a dimension is listed twice: {outcomes}")
    if kind == "multivariate" and len(outcomes) == 1:
        raise SpecError(f"{where}: key outcomes: a multivariate model needs 2+ dimensions")
    ident = raw.get("identification", "TE")
    if ident not in ESTIMANDS:
        raise SpecError(f"{where}: key identification: {ident!r}; allowed: {', '.join(ESTIMANDS)}")
    group_raw = raw.get("group", {})
    if not isinstance(group_raw, dict):
        raise SpecError(f'{where}: key group must be a table, e.g. [group] name = "community"')
    _unknown(where, "group", group_raw, _GROUP_KEYS)
    formula = raw.get("formula", "")
    terms: tuple[str, ...] = ()
    group = group_raw.get("name", "community")
    if not own or (formula and kind == "latent"):
        if not isinstance(formula, str) or not formula.strip():
            raise SpecError(
                f'{where}: key formula: missing; e.g. formula = "cbo_participation + '
                'cbo_presence + (1 | community)"'
            )
        terms, formula_group = parse_formula(formula, where)
        if "group" in raw and formula_group != group:
            raise SpecError(
                f"{where}: key group.name: {group!r} differs from the formula's group "
                f"{formula_group!r}; allowed: {formula_group!r}"
            )
        group = formula_group
    priors_raw = raw.get("priors", {})
    if not isinstance(priors_raw, dict):
        raise SpecError(f"{where}: key priors must be a table")
    priors: dict[str, PriorSpec] = {}
    for slot, entry in priors_raw.items():
        if not own and slot not in PRIOR_SLOTS:
            raise SpecError(
                f"{where}: unknown key priors.{slot}; allowed: {', '.join(PRIOR_SLOTS)}"
            )
        priors[slot] = _parse_prior(where, slot, entry)
    if kind == "multilevel" and "residual_corr" in priors:
        raise SpecError(f'{where}: key priors.residual_corr is only used by kind = "multivariate"')
    sampler = _parse_sampler(where, raw.get("sampler", {}))
    sens_raw = raw.get("sensitivity", {})
    if not isinstance(sens_raw, dict):
        raise SpecError(f"{where}: key sensitivity must be a table")
    _unknown(where, "sensitivity", sens_raw, _SENSITIVITY_KEYS)
    scales = sens_raw.get("community_sd_scale", [0.5, 2.0])
    if not isinstance(scales, list) or not all(
        isinstance(s, int | float) and not isinstance(s, bool) and s > 0 for s in scales
    ):
        raise SpecError(
            f"{where}: key sensitivity.community_sd_scale: {scales!r}; allowed: a list of "
            "positive multipliers, e.g. [0.5, 2.0]"
        )
    loo_raw = raw.get("loo", {})
    if not isinstance(loo_raw, dict):
        raise SpecError(f"{where}: key loo must be a table")
    _unknown(where, "loo", loo_raw, _LOO_KEYS)
    drop = tuple(loo_raw.get("drop", []))
    for term in drop:
        if term not in terms:
            raise SpecError(
                f"{where}: key loo.drop: {term!r} is not a term of the formula; allowed: "
                f"{', '.join(terms)}"
            )
    return ModelSpec(
        kind=kind,
        name=name,
        outcomes=tuple(outcomes),
        identification=ident,
        group=group,
        formula=formula,
        terms=terms,
        priors=priors,
        sampler=sampler,
        sensitivity=tuple(float(s) for s in scales),
        loo_drop=drop,
        description=str(raw.get("description", "")),
        raw=raw,
        path=where,
    )


def load_spec(path: str | os.PathLike) -> ModelSpec:
    """Read and validate a model spec TOML file.

    Parameters
    ----------
    path
        A file in ``models/`` (or anywhere).

    Returns
    -------
    ModelSpec

    Raises
    ------
    SpecError
        If the file cannot be read or breaks the schema (message names file and key).

    Examples
    --------
    >>> spec = load_spec("models/table4.toml")  # doctest: +SKIP
    >>> spec.kind, spec.outcomes  # doctest: +SKIP
    ('multilevel', ())
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SpecError(f"{path}: model spec not found; specs live in models/*.toml") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read the model spec: {exc}") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from exc
    return parse_spec(raw, where=str(path))
