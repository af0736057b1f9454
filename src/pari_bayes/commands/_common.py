"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from pari_bayes._paths import DEFAULT_CODEBOOK, DEFAULT_REGISTRY, DEFAULT_SURVEY
from pari_bayes.errors import SurveyDataError

#: Files of a survey project folder (``pari-bayes init`` writes them) -> the argument each
#: supplies when it is not given on the command line.
PROJECT_FILES = {
    "data": "survey.csv",
    "communities": "communities.toml",
    "codebook": "codebook.toml",
    "dag": "dag.dot",
}
#: Folder of a project's model specs (every ``*.toml`` in it is fitted by ``run``).
PROJECT_MODELS = "models"
_BUNDLED = {"data": DEFAULT_SURVEY, "communities": DEFAULT_REGISTRY, "codebook": DEFAULT_CODEBOOK}


def add_data_arguments(parser: argparse.ArgumentParser, positional: bool = False) -> None:
    """Add ``--data`` (or a positional SURVEY), ``--communities``, ``--codebook``, ``--project``."""
    if positional:
        parser.add_argument(
            "survey", metavar="SURVEY", nargs="?", default=None, help="survey CSV to check"
        )
    else:
        parser.add_argument(
            "--data",
            default=None,
            metavar="SURVEY",
            help="survey CSV (default: the project's survey.csv, else the bundled synthetic "
            "survey)",
        )
    parser.add_argument(
        "--communities",
        default=None,
        metavar="FILE",
        help="community registry TOML (default: the project's communities.toml, else "
        "data/communities.toml)",
    )
    parser.add_argument(
        "--codebook",
        default=None,
        metavar="FILE",
        help="codebook TOML declaring the columns, dimensions and items (default: the "
        "project's codebook.toml, else data/codebook.toml)",
    )
    parser.add_argument(
        "--project",
        default=None,
        metavar="DIR",
        help="survey project folder (from `pari-bayes init`): survey.csv, codebook.toml, "
        "communities.toml, dag.dot and models/*.toml supply every input not given",
    )


def resolve_data_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the data arguments not given from ``--project``, else the bundled files.

    Raises
    ------
    SurveyDataError
        If ``--project`` is not a folder or lacks a file that nothing else supplies.
    """
    if not hasattr(args, "codebook"):
        return args
    project = Path(args.project) if getattr(args, "project", None) else None
    if project is not None and not project.is_dir():
        raise SurveyDataError(
            f"--project {project}: not a folder; allowed: a folder made by "
            "`pari-bayes init SURVEY.csv --out DIR`"
        )
    data_key = "survey" if hasattr(args, "survey") else "data"
    for key, name in PROJECT_FILES.items():
        attr = data_key if key == "data" else key
        if not hasattr(args, attr) or getattr(args, attr) is not None:
            continue
        candidate = project / name if project is not None else None
        if candidate is not None and candidate.is_file():
            setattr(args, attr, str(candidate))
        elif key in _BUNDLED:
            if project is not None:
                raise SurveyDataError(
                    f"--project {project}: no {name}; allowed: a project folder with "
                    f"{', '.join(PROJECT_FILES.values())} (`pari-bayes init` writes them), or "
                    f"--{'data' if key == 'data' else key} FILE"
                )
            setattr(args, attr, str(_BUNDLED[key]))
    if project is not None and hasattr(args, "model") and not getattr(args, "model", None):
        specs = sorted((project / PROJECT_MODELS).glob("*.toml"))
        if specs:
            args.model = [str(p) for p in specs]
    return args


def add_out_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """Add ``--out`` and ``--force``."""
    parser.add_argument("--out", required=required, metavar="DIR", help="output folder")
    parser.add_argument(
        "--force", action="store_true", help="replace the contents of a non-empty --out"
    )


def add_seed_argument(parser: argparse.ArgumentParser, default: int = 20240611) -> None:
    """Add ``--seed``."""
    parser.add_argument(
        "--seed", type=int, default=default, help=f"random seed (default {default})"
    )


def add_dag_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--dag``: the causal graph whose adjustment sets every estimator uses."""
    from pari_bayes._paths import DEFAULT_DAG

    parser.add_argument(
        "--dag",
        default=None,
        metavar="FILE",
        help=f"causal graph in DOT whose adjustment sets every estimator uses "
        f"(default: {DEFAULT_DAG.relative_to(DEFAULT_DAG.parents[1])})",
    )
