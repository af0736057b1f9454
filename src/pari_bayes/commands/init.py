"""``pari-bayes init``: draft a survey project (codebook, registry, DAG, specs) from a CSV."""

from __future__ import annotations

import argparse

from pari_bayes.errors import SurveyDataError

NAME = "init"
HELP = (
    "draft a survey project from a survey CSV: codebook (types inferred, guesses marked for "
    "review), registry with every community, DAG template and default specs"
)


def _dimension(text: str) -> tuple[str, list[str]]:
    name, sep, items = text.partition("=")
    columns = [s.strip() for s in items.split(",") if s.strip()]
    if not sep or not name.strip() or not columns:
        raise SurveyDataError(
            f"--dimension {text!r}: allowed: NAME=COLUMN1,COLUMN2 (e.g. "
            "trust=trust_neighbors,trust_officials)"
        )
    return name.strip(), columns


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this command's arguments."""
    parser.add_argument("survey", metavar="SURVEY", help="survey CSV, one row per household")
    parser.add_argument("--out", required=True, metavar="DIR", help="project folder")
    parser.add_argument(
        "--dimension",
        action="append",
        default=None,
        metavar="NAME=ITEM1,ITEM2",
        help="a dimension and its indicator columns (repeatable, in output order); default: "
        "inferred (known items, or columns sharing a first word: trust_a, trust_b -> trust)",
    )
    parser.add_argument(
        "--surveyed", default=None, metavar="YYYY-MM", help="survey month (default: this month)"
    )
    parser.add_argument(
        "--force", action="store_true", help="replace the contents of a non-empty --out"
    )


def run(args: argparse.Namespace) -> int:
    """Draft the project and print what the user must check."""
    from pari_bayes.project import init_project

    dims = dict(_dimension(t) for t in args.dimension) if args.dimension else None
    draft = init_project(
        args.survey, args.out, dimensions=dims, surveyed=args.surveyed, force=args.force
    )
    print(f"wrote {args.out}: survey.csv, codebook.toml, communities.toml, dag.dot, models/")
    for dim, items in draft.dimensions.items():
        print(f"  dimension {dim}: {', '.join(items)}")
    print(f"check before you trust the results ({args.out}/REVIEW.md):")
    for line in draft.review:
        print(f"  - {line}")
    print(f"next: pari-bayes run --project {args.out} --out RESULTS")
    return 0 if draft.loads else 2
