"""``pari-bayes report --out DIR``: rebuild report.html of an existing run."""

from __future__ import annotations

import argparse
from pathlib import Path

from pari_bayes.errors import OutputError
from pari_bayes.report import build_report

NAME = "report"
HELP = "(re)build the self-contained report.html of an existing run folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this command's arguments."""
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="a folder written by `pari-bayes run`"
    )


def run(args: argparse.Namespace) -> int:
    """Write DIR/report.html."""
    run_dir = Path(args.out)
    if not (run_dir / "run.json").exists():
        raise OutputError(
            f"{run_dir}: not a run folder (no run.json); "
            f"run `pari-bayes run --out {run_dir}` first."
        )
    print(f"report: {build_report(run_dir).resolve()}")
    return 0
