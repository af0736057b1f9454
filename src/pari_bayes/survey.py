"""Reading and validating a household survey against the codebook and the registry.

The survey step is the first in the pipeline: every later step takes a :class:`Survey`,
never a raw CSV. Validation reports every problem in one pass, each naming the file, the
row (line number and household_id), the column, the bad value and what is allowed.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pari_bayes._paths import DEFAULT_SURVEY
from pari_bayes.codebook import Codebook, Column, load_codebook
from pari_bayes.errors import PariBayesWarning, SurveyDataError
from pari_bayes.income import income_level, income_scale
from pari_bayes.registry import Registry, load_registry

__all__ = [
    "Survey",
    "load_survey",
    "validate_frame",
    "EXPOSURE_GROUPS",
    "exposure_counts",
]

#: Exposure groups under partial interference: own participation x community CBO presence.
EXPOSURE_GROUPS = ("participant", "nonparticipant_cbo", "no_cbo")


@dataclass
class Survey:
    """A validated survey with its registry and codebook.

    Attributes
    ----------
    data
        One row per household: the codebook's columns (unused columns dropped) plus the
        derived columns ``cbo_presence``, ``cbo_existence`` (paper's coding), ``exposure``,
        ``income_level`` and ``income_scale``.
    registry, codebook
        What the data were validated against.
    source
        The file read (or ``"<DataFrame>"``).
    notices
        Plain-language notices raised while loading (dropped columns, warnings).
    """

    data: pd.DataFrame
    registry: Registry
    codebook: Codebook
    source: str = "<DataFrame>"
    notices: list[str] = field(default_factory=list)

    @property
    def n_households(self) -> int:
        """Number of households."""
        return len(self.data)

    @property
    def communities(self) -> tuple[str, ...]:
        """Communities present in the data, in registry order."""
        present = set(self.data["community"])
        return tuple(n for n in self.registry.names if n in present)

    @property
    def data_hash(self) -> str:
        """SHA-256 of the analysed columns (for provenance)."""
        payload = self.data.to_csv(index=False, float_format="%.10g").encode("utf-8")
        return hashlib.sha256(payload).hexdigest()

    def summary(self) -> str:
        """One-line summary: households, communities and exposure-group counts."""
        counts = exposure_counts(self.data)
        groups = ", ".join(f"{g}={counts[g]}" for g in EXPOSURE_GROUPS)
        with_cbo = sum(self.registry[c].has_cbo for c in self.communities)
        return (
            f"{self.n_households} households in {len(self.communities)} communities "
            f"({with_cbo} with CBOs); exposure groups: {groups}"
        )


def exposure_counts(data: pd.DataFrame) -> dict[str, int]:
    """Households per exposure group."""
    counts = data["exposure"].value_counts()
    return {g: int(counts.get(g, 0)) for g in EXPOSURE_GROUPS}


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise SurveyDataError(f"{path}: survey file not found.") from exc
    except OSError as exc:
        raise SurveyDataError(f"{path}: cannot read the survey file: {exc}") from exc
    if not raw.strip():
        raise SurveyDataError(f"{path}: the file is empty; expected a CSV with a header row.")
    try:
        text = raw.decode("utf-8-sig")  # a UTF-8 byte-order mark is accepted and removed
    except UnicodeDecodeError as exc:
        raise SurveyDataError(
            f"{path}: not UTF-8 text (byte {exc.start}: {raw[exc.start : exc.start + 1]!r}); "
            "save the survey as UTF-8 CSV."
        ) from exc
    if "\x00" in text:
        raise SurveyDataError(f"{path}: contains NUL bytes; expected a UTF-8 text CSV.")
    header = text.splitlines()[0]
    if "," not in header:
        for sep, label in ((";", "semicolons"), ("\t", "tabs"), ("|", "pipes")):
            if sep in header:
                raise SurveyDataError(
                    f"{path}: the header is separated by {label}, not commas; "
                    "save the survey as comma-separated CSV."
                )
    try:
        frame = pd.read_csv(
            io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True
        )
    except (pd.errors.ParserError, csv.Error, ValueError) as exc:
        raise SurveyDataError(f"{path}: not a well-formed CSV: {exc}") from exc
    return frame


def _row_label(line: int, hid: object) -> str:
    hid_text = str(hid).strip() if hid is not None and str(hid).strip() else "<missing>"
    return f"row {line} (household_id {hid_text})"


def _check_column(
    col: Column, values: pd.Series, ids: pd.Series, where: str, registry: Registry
) -> tuple[pd.Series, list[str]]:
    """Coerce one column and list every value outside its coding."""
    problems: list[str] = []
    text = values.astype(str).str.strip()
    missing = text.isin(["", "nan", "NaN", "NA", "N/A", "None", "null"])
    for idx in text.index[missing]:
        problems.append(
            f"{where}, {_row_label(idx + 2, ids.get(idx))}, column {col.name}: missing value; "
            f"allowed: {col.allowed()}"
        )
    if col.type in ("id", "community"):
        if col.type == "community":
            bad = ~missing & ~text.isin(registry.names)
            for idx in text.index[bad]:
                problems.append(
                    f"{where}, {_row_label(idx + 2, ids.get(idx))}, column community: "
                    f"{text[idx]!r} is not in the registry {registry.path}; allowed: "
                    f"{', '.join(registry.names)} (or add it to the registry)"
                )
        return text, problems
    numeric = pd.to_numeric(text.where(~missing), errors="coerce")
    not_number = ~missing & numeric.isna()
    for idx in text.index[not_number]:
        problems.append(
            f"{where}, {_row_label(idx + 2, ids.get(idx))}, column {col.name}: {text[idx]!r} "
            f"is not a number; allowed: {col.allowed()}"
        )
    ok = ~missing & ~not_number
    vals = numeric[ok]
    bad = pd.Series(False, index=vals.index)
    bad |= ~np.isfinite(vals)
    if col.type in ("binary", "ordinal", "count", "integer"):
        bad |= vals != np.round(vals)
    if col.type == "binary":
        bad |= ~vals.isin([0, 1])
    elif col.type == "ordinal" and col.values is not None:
        bad |= ~vals.isin(col.values)
    else:
        if col.min is not None:
            bad |= vals < col.min
        if col.max is not None:
            bad |= vals > col.max
    for idx in vals.index[bad]:
        problems.append(
            f"{where}, {_row_label(idx + 2, ids.get(idx))}, column {col.name}: {text[idx]!r} "
            f"is outside the coding; allowed: {col.allowed()}"
        )
    return numeric, problems


def validate_frame(
    frame: pd.DataFrame,
    registry: Registry,
    codebook: Codebook,
    source: str = "<DataFrame>",
    require_all_communities: bool = False,
) -> Survey:
    """Validate a survey table and derive the exposure columns.

    Parameters
    ----------
    frame
        The survey, one row per household (any dtypes; values are checked as text).
    registry, codebook
        What to validate against.
    source
        Name of the file the frame came from, used in messages.
    require_all_communities
        Treat a registry community without households as an error (files read by
        :func:`load_survey` do); otherwise it is a notice.

    Returns
    -------
    Survey

    Raises
    ------
    SurveyDataError
        Listing every problem found, one per line.
    """
    if not isinstance(frame, pd.DataFrame):
        raise SurveyDataError(f"{source}: expected a pandas DataFrame, got {type(frame).__name__}")
    if frame.shape[0] == 0:
        raise SurveyDataError(f"{source}: the survey has a header but no households.")
    frame = frame.copy()
    frame.columns = [str(c).strip() for c in frame.columns]
    frame = frame.reset_index(drop=True)
    notices: list[str] = []
    dup_cols = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if dup_cols:
        raise SurveyDataError(
            f"{source}: column(s) {dup_cols} appear more than once in the header."
        )
    missing_cols = [c for c in codebook.required if c not in frame.columns]
    if missing_cols:
        raise SurveyDataError(
            f"{source}: missing required column(s) {', '.join(missing_cols)}; the codebook "
            f"{codebook.path} lists every column a survey must carry.",
            problems=[f"column {c}: {codebook[c].meaning}" for c in missing_cols],
        )
    dropped = [c for c in frame.columns if c not in codebook]
    if dropped:
        notices.append(
            f"dropped {len(dropped)} column(s) not in the codebook (never copied into outputs): "
            + ", ".join(dropped)
        )
        frame = frame.drop(columns=dropped)
    ids = frame["household_id"].astype(str).str.strip()
    problems: list[str] = []
    clean: dict[str, pd.Series] = {}
    for name, col in codebook.columns.items():
        if name not in frame.columns:
            continue
        clean[name], found = _check_column(col, frame[name], ids, source, registry)
        problems.extend(found)
    dup = ids[ids.duplicated(keep=False) & (ids != "")]
    for hid, group in dup.groupby(dup):
        lines = ", ".join(str(i + 2) for i in group.index)
        problems.append(
            f"{source}, rows {lines}, column household_id: {hid!r} appears {len(group)} times; "
            "allowed: each household_id once"
        )
    community = clean["community"]
    known = community.isin(registry.names)
    presence = community.map(registry.cbo_presence)
    part = clean["cbo_participation"]
    bad_part = known & (presence == 0) & (part == 1)
    for idx in part.index[bad_part]:
        problems.append(
            f"{source}, {_row_label(idx + 2, ids[idx])}, column cbo_participation: 1 in "
            f"community {community[idx]!r}, which has no CBOs in {registry.path}; allowed: 0 "
            "(or list the community's CBOs in the registry)"
        )
    months = clean["residence_months"]
    limit = community.map({c.name: c.max_residence_months for c in registry.communities})
    too_long = known & months.notna() & (months > limit)
    for idx in months.index[too_long]:
        c = registry[community[idx]]
        problems.append(
            f"{source}, {_row_label(idx + 2, ids[idx])}, column residence_months: "
            f"{months[idx]:g} is longer than community {c.name} has existed "
            f"({c.formed} to {c.surveyed}); allowed: 0 to {limit[idx]:g}"
        )
    if "cbo_existence" in clean:
        expected = ((presence == 1) & (part == 0)).astype(float)
        given = clean["cbo_existence"]
        disagree = known & given.notna() & part.notna() & (given != expected)
        for idx in given.index[disagree]:
            problems.append(
                f"{source}, {_row_label(idx + 2, ids[idx])}, column cbo_existence: "
                f"{given[idx]:g} disagrees with the registry (community {community[idx]} "
                f"{'has' if presence[idx] else 'has no'} CBOs, cbo_participation "
                f"{part[idx]:g}); allowed: {expected[idx]:g}"
            )
    if require_all_communities:
        present = set(community)
        for name in registry.names:
            if name not in present:
                problems.append(
                    f"{source}: community {name!r} is in the registry {registry.path} but has "
                    "no households in the survey; allowed: every registry community has "
                    "households (remove it from the registry or add its households)"
                )
    if problems:
        raise SurveyDataError(
            f"{source}: {len(problems)} problem(s) found; fix them and run again:", problems
        )
    data = pd.DataFrame({"household_id": ids})
    for name, col in codebook.columns.items():
        if name == "household_id" or name not in clean:
            continue
        series = clean[name]
        if col.type in ("binary", "ordinal", "count", "integer"):
            series = series.astype(np.int64)
        elif col.type == "real":
            series = series.astype(float)
        data[name] = series
    data["cbo_presence"] = presence.astype(np.int64)
    data["cbo_existence"] = ((data["cbo_presence"] == 1) & (data["cbo_participation"] == 0)).astype(
        np.int64
    )
    data["exposure"] = np.select(
        [data["cbo_participation"] == 1, data["cbo_presence"] == 1],
        ["participant", "nonparticipant_cbo"],
        default="no_cbo",
    )
    data["income_level"] = income_level(data["household_income"], data["household_size"])
    data["income_scale"] = income_scale(data["household_income"])
    survey = Survey(data=data, registry=registry, codebook=codebook, source=source, notices=notices)
    _design_warnings(survey)
    return survey


def _design_warnings(survey: Survey) -> None:
    """Warn about designs that limit what can be identified."""
    data, registry = survey.data, survey.registry
    sizes = data["community"].value_counts()
    for name in survey.communities:
        if sizes.get(name, 0) < 2:
            survey.notices.append(
                f"community {name} has {sizes.get(name, 0)} household(s); fewer than 2 give "
                "its varying intercept almost no information"
            )
    for name in registry.names:
        if name not in sizes.index:
            survey.notices.append(
                f"community {name} is in the registry but has no households in the survey"
            )
    presence = {c: registry[c].has_cbo for c in survey.communities}
    if all(presence.values()) or not any(presence.values()):
        which = "every" if all(presence.values()) else "no"
        survey.notices.append(
            f"SPILLOVER NOT IDENTIFIED: {which} surveyed community has CBOs, so CBO presence "
            "does not vary and the spillover (IE), total (TE) and overall (OE) effects cannot "
            "be estimated from these data"
        )
    for message in survey.notices:
        warnings.warn(f"{survey.source}: {message}", PariBayesWarning, stacklevel=3)


def load_survey(
    path: str | os.PathLike | None = None,
    communities: str | os.PathLike | Registry | None = None,
    codebook: str | os.PathLike | Codebook | None = None,
) -> Survey:
    """Read and validate a survey CSV.

    Parameters
    ----------
    path
        Survey CSV; the bundled synthetic ``data/survey.csv`` by default.
    communities
        Registry file or object; the bundled ``data/communities.toml`` by default.
    codebook
        Codebook file or object; the bundled ``data/codebook.toml`` by default.

    Returns
    -------
    Survey

    Raises
    ------
    SurveyDataError
        Listing every problem (file, row, column, value, allowed values).

    Examples
    --------
    >>> import pari_bayes as pb
    >>> survey = pb.load_survey()  # doctest: +SKIP
    >>> survey.summary()  # doctest: +SKIP
    """
    registry = communities if isinstance(communities, Registry) else load_registry(communities)
    book = codebook if isinstance(codebook, Codebook) else load_codebook(codebook)
    path = Path(path) if path is not None else DEFAULT_SURVEY
    frame = _read_csv(path)
    return validate_frame(frame, registry, book, source=str(path), require_all_communities=True)
