"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse

from pari_bayes._paths import DEFAULT_REGISTRY, DEFAULT_SURVEY


def add_data_arguments(parser: argparse.ArgumentParser, positional: bool = False) -> None:
    """Add ``--data`` (or a positional SURVEY) and ``--communities``."""
    if positional:
        parser.add_argument("survey", metavar="SURVEY", help="survey CSV to check")
    else:
        parser.add_argument(
            "--data",
            default=str(DEFAULT_SURVEY),
            metavar="SURVEY",
            help="survey CSV (default: the bundled synthetic survey)",
        )
    parser.add_argument(
        "--communities",
        default=str(DEFAULT_REGISTRY),
        metavar="FILE",
        help="community registry TOML (default: data/communities.toml)",
    )


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
