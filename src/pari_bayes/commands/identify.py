"""``pari-bayes identify``: which causal effects the design identifies, and how robustly."""

from __future__ import annotations

import argparse

from pari_bayes._paths import DEFAULT_DAG
from pari_bayes.commands._common import add_data_arguments, add_out_arguments, add_seed_argument
from pari_bayes.identification.identify import write_identification
from pari_bayes.io import output_dir
from pari_bayes.survey import load_survey

NAME = "identify"
HELP = "identify DE/IE/TE/OE from the causal DAG (DoWhy), check positivity, refute"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this command's arguments."""
    add_data_arguments(parser)
    parser.add_argument(
        "--dag",
        default=None,
        metavar="FILE",
        help="causal graph in DOT (default: the project's dag.dot, else models/dag.dot)",
    )
    add_out_arguments(parser)
    add_seed_argument(parser)
    parser.add_argument(
        "--simulations",
        type=int,
        default=20,
        metavar="N",
        help="simulations per refuter (default 20)",
    )
    parser.add_argument("--no-refute", action="store_true", help="skip the refutations (faster)")


def run(args: argparse.Namespace) -> int:
    """Identify and write identification.json/.md, estimands/positivity/refutations CSVs."""
    survey = load_survey(args.data, communities=args.communities, codebook=args.codebook)
    with output_dir(args.out, force=args.force) as tmp:
        result = write_identification(
            survey,
            tmp,
            dag=args.dag or DEFAULT_DAG,
            seed=args.seed,
            refute=not args.no_refute,
            n_simulations=args.simulations,
        )
    identified = sorted(
        {f"{name}" for (name, _dim), e in result.entries.items() if e["dag"]["identified"]}
    )
    missing = sorted(
        {f"{name}" for (name, _dim), e in result.entries.items() if not e["dag"]["identified"]}
    )
    print(
        f"identification written to {args.out}: identified on the DAG: "
        f"{', '.join(identified) or 'none'}; NOT identified without further assumptions: "
        f"{', '.join(missing) or 'none'} (see identification.md)"
    )
    return 0
