"""A survey project folder: the user's survey, its codebook, registry, DAG and specs.

``pari-bayes init SURVEY.csv --out DIR`` (:func:`init_project`) drafts one from a survey
file; every command then takes ``--project DIR``. A project is data, not code: adding a
dimension, an item or a community means editing its files, never the package.

Layout::

    DIR/survey.csv          the survey (copied)
    DIR/codebook.toml       columns, roles, types, dimensions and their items
    DIR/communities.toml    one entry per community found in the survey
    DIR/dag.dot             the causal graph (drafted from the bundled one)
    DIR/models/*.toml       the model specs ``run`` fits
    DIR/REVIEW.md           every guess the draft made, and why
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd

from pari_bayes._paths import MODELS_DIR
from pari_bayes.codebook import infer_codebook, load_codebook
from pari_bayes.errors import PariBayesError, SurveyDataError
from pari_bayes.io import atomic_write_text, output_dir
from pari_bayes.registry import registry_from_survey, registry_toml

__all__ = ["ProjectDraft", "init_project", "DEFAULT_SPECS", "item_specs_toml"]

#: Specs a drafted project fits (copied from the package's ``models/``). The latent and
#: measurement specs are drafted from the codebook's items into ``models/drafts/`` instead
#: (:func:`item_specs_toml`): ``run`` fits them once the user has checked them.
DEFAULT_SPECS = ("table4.toml", "multivariate.toml")

#: Item type of the latent models for each codebook indicator type.
_ITEM_TYPE = {
    "binary": "ordinal",
    "ordinal": "ordinal",
    "count": "negative_binomial",
    "integer": "normal",
    "real": "normal",
}


def item_specs_toml(codebook: Any, kind: str) -> str:
    """Draft a ``kind = "measurement"`` or ``kind = "latent"`` spec from a codebook's items.

    Every indicator becomes an item of its dimension: binary and ordinal columns ordinal
    items (levels from the codebook), counts negative-binomial items (Poisson when they are
    not overdispersed: a review line says so), integer and real columns normal items.
    """
    what = "Measurement model alone (CFA)" if kind == "measurement" else "Latent factors"
    lines = [
        f"# Drafted by `pari-bayes init` from {Path(codebook.path).name}: check every item's",
        "# type and factor (REVIEW.md) before fitting. Priors and sampler: the package's",
        "# defaults (docs/latent.md).",
        f'kind = "{kind}"',
        f'name = "{kind}"',
        f'description = "{what}: drafted from the codebook"',
        "",
        "[factors]",
        "names = [" + ", ".join(f'"{d}"' for d in codebook.dimensions) + "]",
    ]
    for dim in codebook.dimensions:
        for name in codebook.indicators[dim]:
            col = codebook[name]
            lines += ["", "[[items]]", f'name = "{name}"']
            lines.append(f'type = "{_ITEM_TYPE.get(col.type, "normal")}"')
            lines.append(f'factor = "{dim}"')
            if col.type == "binary":
                lines.append("levels = [0, 1]")
            elif col.type == "ordinal" and col.values is not None:
                lines.append("levels = [" + ", ".join(str(v) for v in col.values) + "]")
    if kind == "latent":
        lines += [
            "",
            "[structural]",
            'treatment = "cbo_participation"',
            'presence = "cbo_presence"',
            'group = "community"',
            'covariates = "identification"   # the adjustment set of the project DAG',
        ]
    lines += [
        "",
        "[measurement]",
        'invariance = "full"',
        "",
        "[sampler]",
        'sampler = "nutpie"',
        "draws = 1000",
        "tune = 1000",
        "chains = 4",
        "cores = 2",
        "target_accept = 0.95",
        "",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class ProjectDraft:
    """What :func:`init_project` wrote.

    Attributes
    ----------
    directory
        The project folder.
    dimensions
        Dimension -> indicator columns, as drafted.
    review
        Every line the user must check (also in ``REVIEW.md``).
    loads
        Whether the survey loads with the drafted codebook and registry (if not,
        ``review`` starts with the error).
    """

    directory: Path
    dimensions: dict[str, tuple[str, ...]]
    review: tuple[str, ...]
    loads: bool


def read_csv(path: Path) -> pd.DataFrame:
    """Read a CSV, or raise :class:`SurveyDataError` naming the file and the problem."""
    if not path.is_file():
        raise SurveyDataError(f"{path}: data file not found.")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SurveyDataError(f"{path}: not a readable CSV: {exc}") from exc


def init_project(
    survey: str | os.PathLike,
    out: str | os.PathLike,
    dimensions: dict[str, list[str]] | None = None,
    surveyed: str | None = None,
    force: bool = False,
) -> ProjectDraft:
    """Draft a survey project from a survey CSV.

    Parameters
    ----------
    survey
        The survey file (one row per household).
    out
        Project folder to create (published atomically; nothing is left on an error).
    dimensions
        Dimension -> indicator columns; inferred when omitted (see
        :func:`pari_bayes.codebook.infer_codebook`).
    surveyed
        Survey month ``"YYYY-MM"`` for the registry (default: this month).
    force
        Replace a non-empty ``out``.

    Returns
    -------
    ProjectDraft

    Examples
    --------
    >>> from pari_bayes.project import init_project
    >>> draft = init_project("my_survey.csv", "my_project")  # doctest: +SKIP
    >>> draft.review[:2]  # doctest: +SKIP
    """
    from pari_bayes.identification.dag import dag_template
    from pari_bayes.survey import load_survey

    source = Path(survey)
    frame = read_csv(source)
    surveyed = surveyed or date.today().strftime("%Y-%m")
    book = infer_codebook(frame, dimensions=dimensions)
    registry, registry_review = registry_from_survey(frame, surveyed)
    review = [f"codebook.toml: {line}" for line in book.review]
    review += [f"communities.toml: {line}" for line in registry_review]
    with output_dir(out, force=force) as staging:
        shutil.copyfile(source, staging / "survey.csv")
        atomic_write_text(staging / "codebook.toml", book.text)
        atomic_write_text(
            staging / "communities.toml",
            registry_toml(
                registry,
                header=f"Community registry drafted by `pari-bayes init` from {source.name}.\n"
                "Review every community: CBO presence was inferred from participation and\n"
                "the formation month from the longest residence (see REVIEW.md).",
            ),
        )
        codebook = load_codebook(staging / "codebook.toml")
        atomic_write_text(staging / "dag.dot", dag_template(codebook))
        review.append(
            "dag.dot: drafted from the bundled graph; every edge into a dimension is a "
            "template (its `why` says so): keep only the ones that hold for this survey"
        )
        (staging / "models").mkdir()
        for name in DEFAULT_SPECS:
            if name == "multivariate.toml" and len(codebook.dimensions) < 2:
                review.append("models/: one dimension only, so no multivariate spec")
                continue
            shutil.copyfile(MODELS_DIR / name, staging / "models" / name)
        review.append("models/: table4 and multivariate specs copied from the package")
        (staging / "models" / "drafts").mkdir()
        for kind in ("measurement", "latent"):
            atomic_write_text(
                staging / "models" / "drafts" / f"{kind}.toml", item_specs_toml(codebook, kind)
            )
        counts = [
            n
            for d in codebook.dimensions
            for n in codebook.indicators[d]
            if codebook[n].type == "count"
        ]
        review.append(
            "models/drafts/: a measurement-only spec (a CFA of the items) and a latent spec "
            "(the items with the causal part), drafted from the codebook. Fit the CFA first "
            "(pari-bayes fit --model DIR/models/drafts/measurement.toml --project DIR) and "
            "check its loadings; then move latent.toml into models/ for run to fit it"
            + (
                f"; count items ({', '.join(counts)}) are drafted negative binomial: use "
                '"poisson" if their variance is close to their mean'
                if counts
                else ""
            )
        )
        loads = True
        try:
            load_survey(
                staging / "survey.csv",
                communities=staging / "communities.toml",
                codebook=staging / "codebook.toml",
            )
        except PariBayesError as exc:
            loads = False
            review.insert(0, f"THE SURVEY DOES NOT LOAD YET: {exc}")
        text = ["# Review the drafted project", ""]
        text += [f"- {line}" for line in review]
        atomic_write_text(staging / "REVIEW.md", "\n".join(text) + "\n")
    return ProjectDraft(
        directory=Path(out), dimensions=book.dimensions, review=tuple(review), loads=loads
    )
