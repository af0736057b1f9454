"""``pari-bayes ols``: the paper's baseline (PCA scores -> OLS Table 4), few-cluster inference."""

from __future__ import annotations

import argparse

from pari_bayes.commands._common import add_data_arguments, add_out_arguments, add_seed_argument
from pari_bayes.estimation.ols import write_ols
from pari_bayes.io import output_dir
from pari_bayes.survey import load_survey

NAME = "ols"
HELP = "reproduce the paper's PCA scores and OLS Table 4, with few-cluster inference"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this command's arguments."""
    add_data_arguments(parser)
    add_out_arguments(parser)
    add_seed_argument(parser)
    parser.add_argument(
        "--n-boot",
        type=int,
        default=999,
        metavar="B",
        help="wild cluster bootstrap draws (Webb weights; default 999; 0 skips it)",
    )
    parser.add_argument(
        "--compare-published",
        action="store_true",
        help="put Yang & Xu's published Table 4 beside the estimates (default: only for "
        "the bundled survey; any other survey is not the paper's sample)",
    )


def run(args: argparse.Namespace) -> int:
    """Fit Table 4 and write ols_table4.csv, ols_fit.csv, pca.csv and table4.md."""
    survey = load_survey(args.data, communities=args.communities, codebook=args.codebook)
    with output_dir(args.out, force=args.force) as staging:
        result = write_ols(
            survey,
            staging,
            seed=args.seed,
            n_boot=args.n_boot,
            published=True if args.compare_published else None,
        )
    coefs = result.coefficients
    printed = coefs.dropna(subset=["diff_in_se"])
    worst = printed.loc[printed["diff_in_se"].abs().idxmax()] if len(printed) else None
    print(f"{args.data}: {survey.summary()}")
    if worst is not None:
        within = int((printed["diff_in_se"].abs() <= 1).sum())
        print(
            f"Table 4: {within}/{len(printed)} coefficients within 1 published SE; worst "
            f"Model {worst.model} {worst.term} ({worst.diff_in_se:+.2f} SE); "
            f"largest adj. R2 miss {result.fit['diff_adj_r2'].abs().max():.3f}"
        )
    print(f"wrote {args.out}/ols_table4.csv, ols_fit.csv, pca.csv, table4.md")
    return 0
