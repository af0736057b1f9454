"""The survey codebook: which columns the analysis uses and how each is coded."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from pari_bayes._paths import DEFAULT_CODEBOOK
from pari_bayes.errors import SurveyDataError

__all__ = ["Column", "Codebook", "load_codebook", "DIMENSIONS"]

COLUMN_TYPES = ("id", "community", "binary", "ordinal", "count", "integer", "real")
ROLES = ("id", "group", "treatment", "covariate", "indicator", "optional")

#: The four integration dimensions of Yang & Xu (2024), in the paper's Table 4 order.
DIMENSIONS = (
    "economic_integration",
    "neighborly_interaction",
    "behavior_adaptation",
    "identity_recognition",
)


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
    return Codebook(columns=columns, path=path)
