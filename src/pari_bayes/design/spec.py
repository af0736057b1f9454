"""The design spec: a TOML file declaring a grid of study designs to simulate.

A design spec (``models/design_example.toml``) says which designs to compare and how each
is judged::

    [design]
    name = "neighborly_spillover"
    seed = 20240611
    replicates = 400             # per grid point (OLS)
    alpha = 0.05                 # frequentist test level
    interval = 0.90              # interval level (CR2 t interval, posterior interval)
    target_power = 0.80
    dimensions = ["neighborly"]
    estimands = ["DE", "IE", "TE", "OE"]
    measurement = "score"        # the outcome is a continuous score (PCA-score scale)

    [grid]                       # every combination is one grid point
    communities = [4, 8, 16, 32, 64, 128]
    cbo_share = [0.5]            # share of communities with CBOs
    households = [30]            # households per community (mean when sizes vary)
    participation = [0.3]        # share of CBO-community households who participate
    household_sizes = "equal"    # or "multinomial": sizes vary, the total is fixed

    [truth.neighborly]           # per dimension, in sd units of the outcome
    de = 0.2
    ie = 0.15
    icc = 0.05                   # or community_sd and residual_sd

    [estimators.ols]
    tests = ["cr2", "wild"]      # CR2 t-test (Bell-McCaffrey df), wild cluster bootstrap
    bootstrap = 399

    [estimators.bayes]           # multilevel Bayes on a sub-grid, few replicates
    spec = "models/table4.toml"
    communities = [8, 32]
    replicates = 20
    draws = 1000
    tune = 1000
    chains = 2

Every value is checked before anything runs (:func:`load_design`); a bad value raises
:class:`DesignSpecError` naming the file, the key, the value and what is allowed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pari_bayes._paths import PROJECT_ROOT
from pari_bayes.errors import SpecError

__all__ = [
    "ESTIMANDS",
    "DesignSpecError",
    "DesignSpec",
    "GridPoint",
    "Truth",
    "OLSSettings",
    "BayesSettings",
    "load_design",
    "parse_design",
]

#: Estimands a design can be judged on: direct, spillover (indirect), total, overall.
ESTIMANDS = ("DE", "IE", "TE", "OE")
MEASUREMENTS = ("score",)
HOUSEHOLD_SIZES = ("equal", "multinomial")
OLS_TESTS = ("cr2", "wild")
_TOP = ("design", "grid", "truth", "estimators")
_DESIGN_KEYS = (
    "name",
    "seed",
    "replicates",
    "alpha",
    "interval",
    "target_power",
    "dimensions",
    "estimands",
    "measurement",
    "description",
)
_GRID_KEYS = ("communities", "cbo_share", "households", "participation", "household_sizes")
_TRUTH_KEYS = ("de", "ie", "icc", "community_sd", "residual_sd")
_OLS_KEYS = ("tests", "bootstrap", "enabled")
_BAYES_KEYS = (
    "spec",
    "communities",
    "replicates",
    "draws",
    "tune",
    "chains",
    "target_accept",
    "enabled",
)
MIN_HOUSEHOLDS = 2


class DesignSpecError(SpecError):
    """A design spec (TOML) is malformed or declares a design that cannot be simulated."""


@dataclass(frozen=True)
class Truth:
    """True effects and variance components of one dimension (outcome sd units).

    ``community_sd`` and ``residual_sd`` are the sds of the community deviation and of the
    household disturbance; with ``icc`` given they are ``sqrt(icc)`` and ``sqrt(1 - icc)``.
    """

    de: float
    ie: float
    community_sd: float
    residual_sd: float

    @property
    def icc(self) -> float:
        """Intraclass correlation of the outcome net of the exposures."""
        total = self.community_sd**2 + self.residual_sd**2
        return self.community_sd**2 / total if total > 0 else float("nan")


@dataclass(frozen=True)
class GridPoint:
    """One design of the grid."""

    index: int
    communities: int
    cbo_share: float
    households: int
    participation: float

    @property
    def cbo_communities(self) -> int:
        """Communities with CBOs: ``round(cbo_share * communities)``."""
        return int(round(self.cbo_share * self.communities))

    @property
    def label(self) -> str:
        """Short label, e.g. ``J32_P0.5_m30_pi0.3``."""
        return (
            f"J{self.communities}_P{self.cbo_share:g}_m{self.households}_pi{self.participation:g}"
        )


@dataclass(frozen=True)
class OLSSettings:
    """OLS with few-cluster inference."""

    enabled: bool = True
    tests: tuple[str, ...] = OLS_TESTS
    bootstrap: int = 399


@dataclass(frozen=True)
class BayesSettings:
    """The multilevel Bayes estimator on a sub-grid."""

    enabled: bool = False
    spec: str = str(PROJECT_ROOT / "models" / "table4.toml")
    communities: tuple[int, ...] = ()
    replicates: int = 20
    draws: int = 1000
    tune: int = 1000
    chains: int = 2
    target_accept: float | None = None


@dataclass(frozen=True)
class DesignSpec:
    """A parsed, validated design spec."""

    name: str
    seed: int
    replicates: int
    alpha: float
    interval: float
    target_power: float
    dimensions: tuple[str, ...]
    estimands: tuple[str, ...]
    measurement: str
    household_sizes: str
    points: tuple[GridPoint, ...]
    truth: dict[str, Truth] | None
    ols: OLSSettings = field(default_factory=OLSSettings)
    bayes: BayesSettings = field(default_factory=BayesSettings)
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict)
    path: str = "<design>"

    def to_json(self) -> str:
        """Canonical JSON of the spec (what a resumed sweep must match)."""
        return json.dumps(self.raw, sort_keys=True, default=str)

    @property
    def digest(self) -> str:
        """Short hash of :meth:`to_json`."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def bayes_replicates(self, point: GridPoint) -> int:
        """How many of a point's replicates the Bayes estimator also fits (0: none)."""
        if not self.bayes.enabled or point.communities not in self.bayes.communities:
            return 0
        return min(self.bayes.replicates, self.replicates)


def _fail(where: str, key: str, value: Any, allowed: str) -> DesignSpecError:
    return DesignSpecError(f"{where}: key {key} = {value!r}; allowed: {allowed}")


def _unknown(where: str, section: str, table: dict, known: tuple[str, ...]) -> None:
    extra = sorted(set(table) - set(known))
    if extra:
        raise DesignSpecError(
            f"{where}: unknown key(s) {', '.join(extra)} in [{section}]; allowed: "
            f"{', '.join(known)}"
        )


def _table(where: str, raw: dict, key: str, required: bool = True) -> dict:
    value = raw.get(key)
    if value is None:
        if required:
            raise DesignSpecError(f"{where}: missing section [{key}]")
        return {}
    if not isinstance(value, dict):
        raise _fail(where, key, value, "a table")
    return value


def _int(where: str, key: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(where, key, value, f"an integer >= {low}" + (f" and <= {high}" if high else ""))
    if high is not None and value > high:
        raise _fail(where, key, value, f"an integer >= {low} and <= {high}")
    return int(value)


def _float(
    where: str, key: str, value: Any, low: float, high: float, open_low=True, open_high=True
) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if open_low else value >= low) and (
            value < high if open_high else value <= high
        )
    if not ok:
        lb, hb = ("(" if open_low else "["), (")" if open_high else "]")
        raise _fail(where, key, value, f"a number in {lb}{low:g}, {high:g}{hb}")
    return float(value)


def _list(where: str, key: str, value: Any) -> list:
    if not isinstance(value, list) or not value:
        raise _fail(where, key, value, "a non-empty list")
    return value


def _truth(where: str, dim: str, entry: Any) -> Truth:
    key = f"truth.{dim}"
    if not isinstance(entry, dict):
        raise _fail(where, key, entry, "a table with de, ie and icc (or community_sd, residual_sd)")
    _unknown(where, key, entry, _TRUTH_KEYS)
    for name in ("de", "ie"):
        if name not in entry:
            raise DesignSpecError(f"{where}: [{key}] lacks {name} (the true effect, sd units)")
    de = _float(where, f"{key}.de", entry["de"], -10, 10)
    ie = _float(where, f"{key}.ie", entry["ie"], -10, 10)
    if "icc" in entry:
        if "community_sd" in entry or "residual_sd" in entry:
            raise DesignSpecError(
                f"{where}: [{key}] gives icc and community_sd/residual_sd; give one or the other"
            )
        icc = _float(where, f"{key}.icc", entry["icc"], 0, 1, open_low=False)
        return Truth(de, ie, math.sqrt(icc), math.sqrt(1 - icc))
    if "community_sd" not in entry:
        raise DesignSpecError(
            f"{where}: [{key}] needs icc (in [0, 1)) or community_sd (>= 0, with residual_sd)"
        )
    tau = _float(where, f"{key}.community_sd", entry["community_sd"], 0, 100, open_low=False)
    sigma = _float(where, f"{key}.residual_sd", entry.get("residual_sd", 1.0), 0, 100)
    return Truth(de, ie, tau, sigma)


def parse_design(raw: dict[str, Any], where: str = "<design>", prior: bool = False) -> DesignSpec:
    """Validate a parsed design TOML.

    Parameters
    ----------
    raw
        The parsed TOML.
    where
        File name used in error messages.
    prior
        True when the true effects come from a posterior (``--prior-from``): then
        ``[truth]`` may be omitted.

    Raises
    ------
    DesignSpecError
        Naming the key, the value and what is allowed.
    """
    _unknown(where, "top level", raw, _TOP)
    design = _table(where, raw, "design")
    _unknown(where, "design", design, _DESIGN_KEYS)
    name = design.get("name", Path(where).stem)
    if not isinstance(name, str) or not name or any(c in name for c in "/\\, "):
        raise _fail(where, "design.name", name, "a non-empty string without /, \\, commas, spaces")
    seed = _int(where, "design.seed", design.get("seed", 20240611), 0)
    replicates = _int(where, "design.replicates", design.get("replicates", 200), 2, 1_000_000)
    alpha = _float(where, "design.alpha", design.get("alpha", 0.05), 0, 0.5)
    interval = _float(where, "design.interval", design.get("interval", 0.90), 0.5, 1)
    target = _float(where, "design.target_power", design.get("target_power", 0.80), 0, 1)
    dims = design.get("dimensions")
    dims = _list(where, "design.dimensions", dims)
    if not all(isinstance(d, str) and d for d in dims) or len(set(dims)) != len(dims):
        raise _fail(where, "design.dimensions", dims, "distinct dimension names (strings)")
    estimands = _list(where, "design.estimands", design.get("estimands", list(ESTIMANDS)))
    bad = [e for e in estimands if e not in ESTIMANDS]
    if bad or len(set(estimands)) != len(estimands):
        raise _fail(where, "design.estimands", estimands, f"distinct values of {list(ESTIMANDS)}")
    measurement = design.get("measurement", "score")
    if measurement not in MEASUREMENTS:
        raise _fail(
            where,
            "design.measurement",
            measurement,
            f"{', '.join(map(repr, MEASUREMENTS))} (latent items are not simulated by the "
            "design engine yet)",
        )

    grid = _table(where, raw, "grid")
    _unknown(where, "grid", grid, _GRID_KEYS)
    for key in ("communities", "households"):
        if key not in grid:
            raise DesignSpecError(f"{where}: [grid] lacks {key} (a list of integers)")
    communities = [
        _int(where, "grid.communities", v, 2)
        for v in _list(where, "grid.communities", grid["communities"])
    ]
    households = [
        _int(where, "grid.households", v, MIN_HOUSEHOLDS)
        for v in _list(where, "grid.households", grid["households"])
    ]
    shares = [
        _float(where, "grid.cbo_share", v, 0, 1)
        for v in _list(where, "grid.cbo_share", grid.get("cbo_share", [0.5]))
    ]
    rates = [
        _float(where, "grid.participation", v, 0, 1)
        for v in _list(where, "grid.participation", grid.get("participation", [0.3]))
    ]
    sizes = grid.get("household_sizes", "equal")
    if sizes not in HOUSEHOLD_SIZES:
        raise _fail(where, "grid.household_sizes", sizes, ", ".join(HOUSEHOLD_SIZES))
    for key, values in (("communities", communities), ("households", households)):
        if len(set(values)) != len(values):
            raise _fail(where, f"grid.{key}", values, "distinct values")
    points = []
    for i, (j, p, m, pi) in enumerate(itertools.product(communities, shares, households, rates)):
        point = GridPoint(i, j, p, m, pi)
        if not 1 <= point.cbo_communities <= j - 1:
            raise DesignSpecError(
                f"{where}: grid point {point.label}: cbo_share {p:g} of {j} communities gives "
                f"{point.cbo_communities} with CBOs; allowed: 1 to {j - 1} (with none nobody "
                "participates, with all CBO presence does not vary: DE or IE not identified)"
            )
        points.append(point)

    truth_raw = raw.get("truth")
    truth: dict[str, Truth] | None = None
    if truth_raw is None:
        if not prior:
            raise DesignSpecError(
                f"{where}: missing section [truth] (true de, ie and icc per dimension); "
                "or pass --prior-from RUN_DIR to draw them from a fitted posterior"
            )
    else:
        if not isinstance(truth_raw, dict):
            raise _fail(where, "truth", truth_raw, "a table of dimensions")
        missing = [d for d in dims if d not in truth_raw]
        extra = [d for d in truth_raw if d not in dims]
        if missing or extra:
            raise DesignSpecError(
                f"{where}: [truth] must have one table per design.dimensions entry "
                f"({', '.join(dims)}); missing: {', '.join(missing) or '-'}, not a declared "
                f"dimension: {', '.join(extra) or '-'}"
            )
        truth = {d: _truth(where, d, truth_raw[d]) for d in dims}

    est = _table(where, raw, "estimators", required=False)
    _unknown(where, "estimators", est, ("ols", "bayes"))
    ols_raw = est.get("ols", {})
    if not isinstance(ols_raw, dict):
        raise _fail(where, "estimators.ols", ols_raw, "a table")
    _unknown(where, "estimators.ols", ols_raw, _OLS_KEYS)
    tests = _list(where, "estimators.ols.tests", ols_raw.get("tests", list(OLS_TESTS)))
    if any(t not in OLS_TESTS for t in tests) or len(set(tests)) != len(tests):
        raise _fail(where, "estimators.ols.tests", tests, f"distinct values of {list(OLS_TESTS)}")
    ols = OLSSettings(
        enabled=bool(ols_raw.get("enabled", True)),
        tests=tuple(tests),
        bootstrap=_int(where, "estimators.ols.bootstrap", ols_raw.get("bootstrap", 399), 19),
    )
    bayes_raw = est.get("bayes")
    bayes = BayesSettings()
    if bayes_raw is not None:
        if not isinstance(bayes_raw, dict):
            raise _fail(where, "estimators.bayes", bayes_raw, "a table")
        _unknown(where, "estimators.bayes", bayes_raw, _BAYES_KEYS)
        spec_path = Path(str(bayes_raw.get("spec", bayes.spec)))
        if not spec_path.is_absolute():
            spec_path = PROJECT_ROOT / spec_path
        if not spec_path.is_file():
            raise _fail(where, "estimators.bayes.spec", str(spec_path), "an existing model spec")
        sub = bayes_raw.get("communities", communities)
        sub = [
            _int(where, "estimators.bayes.communities", v, 2)
            for v in _list(where, "estimators.bayes.communities", sub)
        ]
        off = [v for v in sub if v not in communities]
        if off:
            raise _fail(
                where,
                "estimators.bayes.communities",
                sub,
                f"values of grid.communities {communities}",
            )
        ta = bayes_raw.get("target_accept")
        bayes = BayesSettings(
            enabled=bool(bayes_raw.get("enabled", True)),
            spec=str(spec_path),
            communities=tuple(sub),
            replicates=_int(
                where, "estimators.bayes.replicates", bayes_raw.get("replicates", 20), 1
            ),
            draws=_int(where, "estimators.bayes.draws", bayes_raw.get("draws", 1000), 10),
            tune=_int(where, "estimators.bayes.tune", bayes_raw.get("tune", 1000), 10),
            chains=_int(where, "estimators.bayes.chains", bayes_raw.get("chains", 2), 1, 16),
            target_accept=None
            if ta is None
            else _float(where, "estimators.bayes.target_accept", ta, 0.5, 1),
        )
    if not ols.enabled and not bayes.enabled:
        raise DesignSpecError(f"{where}: every estimator is disabled; enable ols or bayes")
    return DesignSpec(
        name=name,
        seed=seed,
        replicates=replicates,
        alpha=alpha,
        interval=interval,
        target_power=target,
        dimensions=tuple(dims),
        estimands=tuple(estimands),
        measurement=measurement,
        household_sizes=sizes,
        points=tuple(points),
        truth=truth,
        ols=ols,
        bayes=bayes,
        description=str(design.get("description", "")),
        raw=raw,
        path=where,
    )


def load_design(path: str | os.PathLike, prior: bool = False) -> DesignSpec:
    """Read and validate a design spec TOML.

    Parameters
    ----------
    path
        The TOML file.
    prior
        The true effects will come from a posterior (``--prior-from``), so ``[truth]`` may
        be omitted.

    Raises
    ------
    DesignSpecError
        If the file is missing, not TOML, or any value is out of range.

    Examples
    --------
    >>> spec = load_design("models/design_example.toml")  # doctest: +SKIP
    >>> [p.communities for p in spec.points]  # doctest: +SKIP
    [4, 8, 16, 32, 64, 128]
    """
    path = Path(path)
    if not path.is_file():
        raise DesignSpecError(f"{path}: design spec not found (a TOML file)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DesignSpecError(f"{path}: not valid TOML: {exc}") from exc
    return parse_design(raw, where=str(path), prior=prior)
