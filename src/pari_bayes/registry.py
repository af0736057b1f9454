"""The community registry: which communities exist, when they formed, which CBOs they have.

CBO presence is a property of a community and is derived here, never typed into the survey.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pari_bayes._paths import DEFAULT_REGISTRY
from pari_bayes.errors import RegistryError

__all__ = [
    "CBO",
    "Community",
    "Registry",
    "load_registry",
    "months_between",
    "registry_from_survey",
    "registry_toml",
]

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_COMMUNITY_KEYS = {"name", "formed", "surveyed", "cbos"}
_CBO_KEYS = {"name", "kind"}
DEFAULT_KINDS = ("voluntary_service", "recreational", "mixed", "economic", "other")


def _parse_month(value: object, where: str) -> tuple[int, int]:
    match = _MONTH.match(str(value)) if isinstance(value, str) else None
    if match is None or not 1 <= int(match.group(2)) <= 12:
        raise RegistryError(f'{where}: {value!r} is not a month; write it as "YYYY-MM".')
    return int(match.group(1)), int(match.group(2))


def months_between(start: str, end: str) -> int:
    """Whole months from ``start`` to ``end`` (both ``"YYYY-MM"``)."""
    y0, m0 = _parse_month(start, "start")
    y1, m1 = _parse_month(end, "end")
    return (y1 - y0) * 12 + (m1 - m0)


@dataclass(frozen=True)
class CBO:
    """A community-based organization."""

    name: str
    kind: str


@dataclass(frozen=True)
class Community:
    """One registry entry."""

    name: str
    formed: str
    surveyed: str
    cbos: tuple[CBO, ...] = ()

    @property
    def has_cbo(self) -> bool:
        """Whether the community has at least one CBO."""
        return len(self.cbos) > 0

    @property
    def max_residence_months(self) -> int:
        """Months between formation and survey: the longest possible residence."""
        return months_between(self.formed, self.surveyed)


@dataclass(frozen=True)
class Registry:
    """All communities, in file order."""

    communities: tuple[Community, ...]
    path: Path = DEFAULT_REGISTRY
    kinds: tuple[str, ...] = DEFAULT_KINDS

    def __getitem__(self, name: str) -> Community:
        for community in self.communities:
            if community.name == name:
                return community
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(c.name == name for c in self.communities)

    def __len__(self) -> int:
        return len(self.communities)

    @property
    def names(self) -> tuple[str, ...]:
        """Community names in registry order."""
        return tuple(c.name for c in self.communities)

    @property
    def cbo_presence(self) -> dict[str, int]:
        """1 for communities with CBOs, 0 otherwise."""
        return {c.name: int(c.has_cbo) for c in self.communities}


def load_registry(path: str | os.PathLike | None = None) -> Registry:
    """Read and validate a community registry (TOML).

    Parameters
    ----------
    path
        Registry file; the bundled ``data/communities.toml`` by default.

    Returns
    -------
    Registry

    Raises
    ------
    RegistryError
        Naming the file, the community entry and the key at fault.
    """
    path = Path(path) if path is not None else DEFAULT_REGISTRY
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise RegistryError(f"{path}: registry file not found; pass --communities FILE.") from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RegistryError(f"{path}: not a valid TOML registry: {exc}") from exc
    unknown_top = set(raw) - {"community", "kinds"}
    if unknown_top:
        raise RegistryError(
            f"{path}: unknown top-level key(s) {sorted(unknown_top)}; allowed: community, kinds"
        )
    kinds = tuple(raw.get("kinds", DEFAULT_KINDS))
    entries = raw.get("community")
    if not isinstance(entries, list) or not entries:
        raise RegistryError(f"{path}: no [[community]] entries; add at least one community.")
    communities: list[Community] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries, start=1):
        where = f"{path}: community #{i}"
        if not isinstance(entry, dict):
            raise RegistryError(f"{where}: expected a table of keys, got {entry!r}")
        unknown = set(entry) - _COMMUNITY_KEYS
        if unknown:
            raise RegistryError(
                f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_COMMUNITY_KEYS)}"
            )
        for key in ("name", "formed", "surveyed"):
            if key not in entry:
                raise RegistryError(f"{where}: missing required key {key!r}")
        name = entry["name"]
        if not isinstance(name, str) or not name.strip():
            raise RegistryError(f"{where}: name {name!r} must be a non-empty string")
        where = f"{path}: community {name!r}"
        if name in seen:
            raise RegistryError(f"{where}: two communities share this name; names must be unique")
        seen.add(name)
        _parse_month(entry["formed"], f"{where}, key 'formed'")
        _parse_month(entry["surveyed"], f"{where}, key 'surveyed'")
        if months_between(entry["formed"], entry["surveyed"]) < 0:
            raise RegistryError(
                f"{where}: formed {entry['formed']} is after surveyed {entry['surveyed']}"
            )
        cbos = []
        raw_cbos = entry.get("cbos", [])
        if not isinstance(raw_cbos, list):
            raise RegistryError(f"{where}: 'cbos' must be a list of {{name, kind}} tables")
        for cbo in raw_cbos:
            if not isinstance(cbo, dict) or set(cbo) != _CBO_KEYS:
                raise RegistryError(
                    f"{where}: each CBO needs exactly the keys name and kind; got {cbo!r}"
                )
            if cbo["kind"] not in kinds:
                raise RegistryError(
                    f"{where}: CBO {cbo['name']!r} has kind {cbo['kind']!r}; "
                    f"allowed: {', '.join(kinds)}"
                )
            cbos.append(CBO(name=str(cbo["name"]), kind=str(cbo["kind"])))
        communities.append(
            Community(
                name=name, formed=entry["formed"], surveyed=entry["surveyed"], cbos=tuple(cbos)
            )
        )
    return Registry(communities=tuple(communities), path=path, kinds=kinds)


def registry_toml(
    registry: Registry,
    header: str = "Community registry of a simulated survey (pari_bayes.scenarios).",
) -> str:
    """Write the registry as ``communities.toml`` text that :func:`load_registry` reads back.

    ``header`` becomes the file's first comment (one ``#`` line per line of it).
    """
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += ["kinds = [" + ", ".join(json.dumps(k) for k in registry.kinds) + "]", ""]
    for c in registry.communities:
        lines += [
            "[[community]]",
            f"name = {json.dumps(c.name)}",
            f'formed = "{c.formed}"',
            f'surveyed = "{c.surveyed}"',
        ]
        cbos = ", ".join(
            f"{{ name = {json.dumps(cbo.name)}, kind = {json.dumps(cbo.kind)} }}" for cbo in c.cbos
        )
        lines += [f"cbos = [{cbos}]", ""]
    return "\n".join(lines)


def _month_minus(month: str, months: int) -> str:
    year, mon = _parse_month(month, "surveyed")
    index = year * 12 + (mon - 1) - months
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def registry_from_survey(
    frame,
    surveyed: str,
    community: str = "community",
    treatment: str = "cbo_participation",
    residence: str = "residence_months",
) -> tuple[Registry, tuple[str, ...]]:
    """Draft a registry with every community of a survey frame (``pari-bayes init``).

    A community where any household took part in a CBO (``treatment`` = 1) is given one
    CBO (kind ``other``, to be named); one where nobody did is drafted *without* CBOs,
    which the user must confirm (a CBO nobody in the sample joined is possible). The
    formation month is ``surveyed`` minus the community's longest residence (the data
    cannot say more).

    Returns
    -------
    Registry, tuple of str
        The draft and one review line per guess.
    """
    import numpy as np

    review: list[str] = []
    for col in (community, treatment):
        if col not in frame.columns:
            raise RegistryError(
                f"the survey has no column {col!r}; the registry draft needs the community "
                f"of each household and its CBO participation ({community}, {treatment})"
            )
    _parse_month(surveyed, "--surveyed")
    communities = []
    for name, rows in frame.groupby(frame[community].astype(str), sort=True):
        joined = int(np.nansum(rows[treatment].to_numpy(dtype=float)))
        longest = 0
        if residence in rows.columns:
            longest = int(np.ceil(np.nanmax(rows[residence].to_numpy(dtype=float))))
        cbos = (CBO(name=f"CBO of {name} (to be named)", kind="other"),) if joined else ()
        formed = _month_minus(surveyed, max(longest, 0))
        review.append(
            f"{name}: "
            + (
                f"{joined} participating households: one CBO drafted (name and kind it)"
                if joined
                else "no participating household: drafted WITHOUT CBOs (confirm; a CBO that "
                "nobody in the sample joined still counts as present)"
            )
            + f"; formed {formed} = surveyed {surveyed} minus the longest residence "
            f"({longest} months): replace with the real formation month"
        )
        communities.append(Community(name=name, formed=formed, surveyed=surveyed, cbos=cbos))
    return Registry(communities=tuple(communities)), tuple(review)
