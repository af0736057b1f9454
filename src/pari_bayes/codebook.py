"""The survey codebook: which columns the analysis uses and how each is coded."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from pari_bayes._paths import DEFAULT_CODEBOOK
from pari_bayes.errors import SurveyDataError

__all__ = ["Column", "Codebook", "load_codebook"]

COLUMN_TYPES = ("id", "community", "binary", "ordinal", "count", "integer", "real")
ROLES = ("id", "group", "treatment", "covariate", "indicator", "optional")


@dataclass(frozen=True)
class Column:
    """One codebook entry."""

    name: str
    type: str
    role: str
    meaning: str = ""
    source: str = ""
    values: tuple[int, ...] | None = None
    min: float | None = None
    max: float | None = None
    dimension: str | None = None

    def allowed(self) -> str:
        """Say in words which values the column allows."""
        if self.type == "binary":
            return "0 or 1"
        if self.type == "ordinal" and self.values is not None:
            return "one of " + ", ".join(str(v) for v in self.values)
        if self.type in ("count", "integer"):
            hi = "" if self.max is None else f" and at most {self.max:g}"
            return f"an integer of at least {self.min:g}{hi}"
        if self.type == "real":
            lo = "a number" if self.min is None else f"a number of at least {self.min:g}"
            hi = "" if self.max is None else f" and at most {self.max:g}"
            return lo + hi
        if self.type == "id":
            return "a non-empty unique identifier"
        return "a community name listed in the registry"


@dataclass(frozen=True)
class Codebook:
    """All columns of the survey, by name, in file order."""

    columns: dict[str, Column]
    path: Path = field(default=DEFAULT_CODEBOOK)
    declared_dimensions: tuple[str, ...] = ()

    def __getitem__(self, name: str) -> Column:
        return self.columns[name]

    def __contains__(self, name: object) -> bool:
        return name in self.columns

    @cached_property
    def indicators(self) -> dict[str, tuple[str, ...]]:
        """Indicator names per dimension, in codebook order."""
        out: dict[str, list[str]] = {}
        for col in self.columns.values():
            if col.role == "indicator":
                out.setdefault(col.dimension or "", []).append(col.name)
        return {dim: tuple(items) for dim, items in out.items()}

    @property
    def dimensions(self) -> tuple[str, ...]:
        """The dimensions (factors) the survey measures, in declared order.

        The order of the codebook's ``dimensions = [...]`` list where it has one, otherwise
        the order in which the indicators first name them. Every output lists dimensions
        in this order.
        """
        return self.declared_dimensions or tuple(self.indicators)

    @property
    def indicator_names(self) -> tuple[str, ...]:
        """All indicator columns."""
        return tuple(c.name for c in self.columns.values() if c.role == "indicator")

    @property
    def required(self) -> tuple[str, ...]:
        """Columns every survey must carry."""
        return tuple(c.name for c in self.columns.values() if c.role != "optional")


def load_codebook(path: str | os.PathLike | None = None) -> Codebook:
    """Read a codebook TOML file.

    Parameters
    ----------
    path
        Codebook file; the bundled ``data/codebook.toml`` by default.

    Returns
    -------
    Codebook
    """
    path = Path(path) if path is not None else DEFAULT_CODEBOOK
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SurveyDataError(f"{path}: cannot read the codebook: {exc}") from exc
    columns: dict[str, Column] = {}
    for name, entry in raw.get("columns", {}).items():
        ctype, role = entry.get("type"), entry.get("role")
        if ctype not in COLUMN_TYPES:
            raise SurveyDataError(
                f"{path}: column {name!r} has type {ctype!r}; allowed: {', '.join(COLUMN_TYPES)}"
            )
        if role not in ROLES:
            raise SurveyDataError(
                f"{path}: column {name!r} has role {role!r}; allowed: {', '.join(ROLES)}"
            )
        values = entry.get("values")
        columns[name] = Column(
            name=name,
            type=ctype,
            role=role,
            meaning=entry.get("meaning", ""),
            source=entry.get("source", ""),
            values=tuple(int(v) for v in values) if values is not None else None,
            min=entry.get("min", 0 if ctype in ("count", "integer") else None),
            max=entry.get("max"),
            dimension=entry.get("dimension"),
        )
    declared = raw.get("dimensions", [])
    if not isinstance(declared, list) or not all(isinstance(d, str) and d for d in declared):
        raise SurveyDataError(
            f"{path}: key dimensions: {declared!r}; allowed: a list of dimension names, "
            'e.g. dimensions = ["trust", "participation"]'
        )
    if len(set(declared)) != len(declared):
        raise SurveyDataError(f"{path}: key dimensions lists a name twice: {declared!r}")
    codebook = Codebook(columns=columns, path=path, declared_dimensions=tuple(declared))
    _check_dimensions(codebook)
    return codebook


def _check_dimensions(codebook: Codebook) -> None:
    """Every indicator names a declared dimension; every dimension has an indicator."""
    path, declared = codebook.path, set(codebook.declared_dimensions)
    for col in codebook.columns.values():
        if col.role == "indicator" and not col.dimension:
            raise SurveyDataError(
                f"{path}: indicator column {col.name!r} has no dimension; allowed: the name "
                'of the dimension (factor) it measures, e.g. dimension = "trust"'
            )
        if col.role != "indicator" and col.dimension:
            raise SurveyDataError(
                f"{path}: column {col.name!r} has a dimension ({col.dimension!r}) but role "
                f"{col.role!r}; only indicators measure a dimension"
            )
        if declared and col.role == "indicator" and col.dimension not in declared:
            raise SurveyDataError(
                f"{path}: indicator column {col.name!r} measures {col.dimension!r}, which "
                "the dimensions list does not declare; allowed: "
                + ", ".join(codebook.declared_dimensions)
            )
    empty = [d for d in codebook.declared_dimensions if d not in codebook.indicators]
    if empty:
        raise SurveyDataError(
            f"{path}: dimension(s) {', '.join(map(repr, empty))} are declared but no "
            "indicator column measures them; give each at least one indicator "
            '(role = "indicator", dimension = ...)'
        )
    if not codebook.dimensions:
        raise SurveyDataError(
            f"{path}: no indicator columns: the analysis needs at least one dimension "
            'measured by at least one indicator (role = "indicator")'
        )


def __getattr__(name: str):
    # ``DIMENSIONS`` (kept for old scripts): the bundled codebook's dimensions, read from
    # data/codebook.toml. New code asks the survey's codebook (``codebook.dimensions``).
    if name == "DIMENSIONS":
        return load_codebook(DEFAULT_CODEBOOK).dimensions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------
# A codebook inferred from a survey file (``pari-bayes init``)
# --------------------------------------------------------------------------------------

#: Most distinct integer values an indicator may have to be read as ordinal.
MAX_ORDINAL_CATEGORIES = 10
#: A category holding fewer than this share of households is flagged as sparse.
SPARSE_SHARE = 0.05


@dataclass(frozen=True)
class InferredCodebook:
    """A codebook drafted from a survey file, with what the user must review.

    Attributes
    ----------
    text
        The codebook TOML (loadable by :func:`load_codebook`).
    dimensions
        Dimension -> its indicator columns.
    review
        One line per column whose type or role was a guess, saying why.
    """

    text: str
    dimensions: dict[str, tuple[str, ...]]
    review: tuple[str, ...]


def _toml_value(value: object) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def _is_integer(values) -> bool:
    import numpy as np

    return bool(np.all(np.isclose(values, np.round(values))))


def _infer_indicator(name: str, values, n: int) -> tuple[dict, list[str]]:
    """Type of an indicator column from its values (``values``: the non-missing ones)."""
    import numpy as np

    notes: list[str] = []
    uniq = np.unique(values)
    if set(uniq.tolist()) <= {0, 1}:
        return {"type": "binary"}, notes
    if _is_integer(values) and len(uniq) <= MAX_ORDINAL_CATEGORIES:
        ints = sorted(int(v) for v in uniq)
        counts = {v: int(np.sum(values == v)) for v in ints}
        sparse = [f"{v} ({c} households)" for v, c in counts.items() if c < SPARSE_SHARE * n]
        if sparse:
            notes.append(
                f"ordinal with sparse categories: {', '.join(sparse)}; merge them or keep "
                "them (the latent model's cutpoints for them rest on their prior)"
            )
        return {"type": "ordinal", "values": ints}, notes
    if _is_integer(values) and uniq.min() >= 0:
        notes.append(
            f"{len(uniq)} distinct non-negative integers: read as a count (min 0, max "
            f'{int(uniq.max())}); if it is a continuous scale score, set type = "real"'
        )
        return {"type": "count", "min": 0, "max": int(uniq.max())}, notes
    entry: dict = {"type": "real"}
    if uniq.min() >= 0:
        entry["min"] = 0
        zeros = float(np.mean(values == 0))
        if zeros >= 0.1:
            notes.append(
                f"{zeros:.0%} zeros: a zero-inflated amount (hurdle)? the PCA baseline "
                "treats it as a number"
            )
    return entry, notes


def _prefix_dimensions(names: list[str]) -> dict[str, list[str]]:
    """Group column names by their first ``_``-separated word (groups of 2 or more)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        head = name.split("_", 1)[0]
        if head and head != name:
            groups.setdefault(head, []).append(name)
    return {k: v for k, v in groups.items() if len(v) >= 2}


def infer_codebook(
    frame,
    dimensions: dict[str, list[str]] | None = None,
    reference: Codebook | None = None,
) -> InferredCodebook:
    """Draft a codebook for a survey frame.

    Columns the reference codebook (the bundled one by default) declares as identifier,
    community, treatment or covariate keep its entry (type and range widened to the data,
    with a review note, where the data fall outside). Indicators are the columns of
    ``dimensions`` (``{dimension: [columns]}``) or, without it, the reference's
    indicators present in the frame plus every other numeric column grouped by its first
    ``_``-separated word (``trust_neighbors``, ``trust_officials`` -> ``trust``) in groups
    of two or more. Indicator types come from the data: 0/1 -> binary, at most
    :data:`MAX_ORDINAL_CATEGORIES` integers -> ordinal, more integers -> count, otherwise
    real. Any other column is ``optional`` (dropped at load, never copied to an output).

    Parameters
    ----------
    frame
        The survey as read from its CSV (``pandas.DataFrame``).
    dimensions
        Dimension name -> indicator columns (the order of the keys is the order of every
        output).
    reference
        Codebook whose non-indicator entries are reused.

    Returns
    -------
    InferredCodebook

    Raises
    ------
    SurveyDataError
        If a column named in ``dimensions`` is missing or not numeric, or no dimension
        with an indicator results.
    """
    import numpy as np
    import pandas as pd

    ref = reference if reference is not None else load_codebook()
    n = len(frame)
    known = {c: col for c, col in ref.columns.items() if col.role != "indicator"}
    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
    if dimensions:
        for dim, items in dimensions.items():
            for item in items:
                if item not in frame.columns:
                    raise SurveyDataError(
                        f"dimension {dim!r}: column {item!r} is not in the survey; allowed: "
                        + ", ".join(map(str, frame.columns))
                    )
                if item not in numeric:
                    raise SurveyDataError(
                        f"dimension {dim!r}: column {item!r} is not numeric (first value "
                        f"{frame[item].iloc[0]!r}); indicators must be numbers"
                    )
        dims = {d: list(items) for d, items in dimensions.items()}
    else:
        dims = {}
        for c in frame.columns:
            col = ref.columns.get(c)
            if col is not None and col.role == "indicator":
                dims.setdefault(col.dimension or "", []).append(c)
        rest = [c for c in numeric if c not in known and c not in ref.columns]
        for dim, items in _prefix_dimensions(rest).items():
            dims.setdefault(dim, []).extend(items)
    dimension_of = {item: dim for dim, items in dims.items() for item in items}
    if not dims:
        raise SurveyDataError(
            "no indicator columns found: name the items of each dimension, e.g. "
            "--dimension trust=trust_neighbors,trust_officials (or give the items of one "
            "dimension a shared first word: trust_neighbors, trust_officials)"
        )
    review: list[str] = []
    blocks: list[str] = []
    for c in frame.columns:
        values = frame[c].dropna()
        missing = n - len(values)
        entry: dict
        notes: list[str] = []
        if c in dimension_of:
            entry, notes = _infer_indicator(c, values.to_numpy(dtype=float), n)
            entry = {"role": "indicator", "dimension": dimension_of[c], **entry}
            ref_col = ref.columns.get(c)
            entry["meaning"] = (
                ref_col.meaning if ref_col is not None else f"indicator of {dimension_of[c]}"
            )
        elif c in known:
            col = known[c]
            entry = {"type": col.type, "role": col.role}
            if col.values is not None:
                entry["values"] = list(col.values)
            if col.min is not None and col.type in ("count", "integer", "real"):
                entry["min"] = col.min
            if col.max is not None:
                entry["max"] = col.max
            if c in numeric and len(values):
                lo, hi = float(values.min()), float(values.max())
                if "min" in entry and lo < entry["min"]:
                    notes.append(
                        f"values down to {lo:g}, below the reference minimum "
                        f"{entry['min']:g}: widened"
                    )
                    entry["min"] = int(lo) if _is_integer(np.array([lo])) else lo
                if "max" in entry and hi > entry["max"]:
                    notes.append(
                        f"values up to {hi:g}, above the reference maximum "
                        f"{entry['max']:g}: widened"
                    )
                    entry["max"] = int(hi) if _is_integer(np.array([hi])) else hi
                if "values" in entry:
                    extra = sorted(set(int(v) for v in np.unique(values)) - set(entry["values"]))
                    if extra:
                        notes.append(
                            f"categories {extra} not in the reference {entry['values']}: added"
                        )
                        entry["values"] = sorted(set(entry["values"]) | set(extra))
            entry["meaning"] = col.meaning
        else:
            entry = {"type": "real" if c in numeric else "id", "role": "optional"}
            if c not in numeric:
                entry["type"] = "id"
            notes.append(
                "not a known column and not assigned to a dimension: dropped at load; to "
                'use it as an indicator, give it role = "indicator" and a dimension'
            )
            entry["meaning"] = "unused column"
        if missing:
            notes.append(
                f"{missing} missing values (rows with missing required values are rejected at load)"
            )
        if notes:
            entry["review"] = "; ".join(notes)
            review.append(f"{c}: " + "; ".join(notes))
        lines = [f"[columns.{c}]"] + [f"{k} = {_toml_value(v)}" for k, v in entry.items()]
        blocks.append("\n".join(lines))
    header = [
        "# Codebook drafted by `pari-bayes init` from the survey file. Every column of the",
        "# survey is declared; `review` says why a guess needs a look. Roles: id, group,",
        "# treatment, covariate, indicator (measures its `dimension`), optional (dropped).",
        "",
        f"dimensions = {_toml_value(list(dims))}",
        "",
    ]
    return InferredCodebook(
        text="\n".join(header) + "\n\n".join(blocks) + "\n",
        dimensions={d: tuple(v) for d, v in dims.items()},
        review=tuple(review),
    )
