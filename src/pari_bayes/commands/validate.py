"""``pari-bayes validate SURVEY``: check a survey against the codebook and registry."""

from __future__ import annotations

import argparse

from pari_bayes.commands._common import add_data_arguments
from pari_bayes.survey import load_survey

NAME = "validate"
HELP = "check a survey CSV against the codebook and community registry"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this command's arguments."""
    add_data_arguments(parser, positional=True)


def run(args: argparse.Namespace) -> int:
    """Validate and print a one-line summary."""
    survey = load_survey(args.survey, communities=args.communities, codebook=args.codebook)
    print(f"{args.survey}: valid: {survey.summary()}")
    return 0
