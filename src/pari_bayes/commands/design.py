"""``pari-bayes design``: how many communities does a study need (power and assurance)."""

from __future__ import annotations

import argparse

NAME = "design"
HELP = (
    "simulate study designs (communities, households, CBO share, participation) and report "
    "power / Bayesian assurance for DE, IE, TE, OE, on Dask"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this command's arguments."""
    parser.add_argument(
        "spec", metavar="SPEC.toml", help="design spec (models/design_example.toml)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDR",
        help="address of a running dask scheduler (tcp://host:8786); default: a local cluster",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="local worker processes (default: one per core; 0: run in this process)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted sweep in --out"
    )
    parser.add_argument(
        "--prior-from",
        default=None,
        metavar="RUN_DIR",
        help="draw each replicate's true effects and variance components from the "
        "posterior of a finished run (RUN_DIR/fit/<spec>/posterior.nc)",
    )
    parser.add_argument(
        "--prior-spec",
        default="table4",
        metavar="NAME",
        help="which fit of --prior-from (default: table4)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run the sweep; exit 3 if a Bayes fit failed the convergence gate or a task raised."""
    from pari_bayes.design.engine import terminate_on_sigterm
    from pari_bayes.design.run import run_design

    if args.workers is not None and args.workers < 0:
        from pari_bayes.errors import OutputError

        raise OutputError(f"--workers {args.workers}; allowed: 0 (this process) or more")
    with terminate_on_sigterm():
        result = run_design(
            args.spec,
            args.out,
            workers=args.workers,
            scheduler=args.scheduler,
            resume=args.resume,
            prior_from=args.prior_from,
            prior_spec=args.prior_spec,
            progress=not args.no_progress,
        )
    print(result.summary.split("## Diagnosands")[0].rstrip())
    print(
        f"\nwrote {result.out}: diagnosands.csv, replicates.parquet, summary.md, power_curves.png"
    )
    if result.task_failures:
        print(
            f"error: {len(result.task_failures)} replicate task(s) raised; rerun with --resume",
        )
        return 3
    if result.gate_failures:
        print(f"warning: {result.gate_failures} Bayes fit(s) failed the convergence gate")
        return 3
    return 0
