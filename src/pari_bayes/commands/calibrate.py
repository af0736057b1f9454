"""``pari-bayes calibrate``: compare a survey with every published figure, and audit them."""

from __future__ import annotations

import argparse

from pari_bayes.calibration import write_calibration
from pari_bayes.commands._common import add_data_arguments, add_out_arguments
from pari_bayes.io import output_dir
from pari_bayes.survey import load_survey

NAME = "calibrate"
HELP = "write calibration.csv (published vs achieved figures) and audit.csv"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this command's arguments."""
    add_data_arguments(parser)
    add_out_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Calibrate and audit into ``--out``."""
    survey = load_survey(args.data, communities=args.communities, codebook=args.codebook)
    with output_dir(args.out, force=args.force) as staging:
        result = write_calibration(survey, staging)
    print(f"{args.out}: {result.summary()}")
    return 0
