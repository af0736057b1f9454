"""The ``pari-bayes`` command line.

Each subcommand lives in its own module under :mod:`pari_bayes.commands` and defines
``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``. Errors of our own
type are printed as plain messages (no traceback) with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence

from pari_bayes._version import __version__
from pari_bayes.commands._common import resolve_data_arguments
from pari_bayes.errors import ConvergenceError, PariBayesError, PariBayesWarning

#: Subcommand modules, in the order ``--help`` lists them (the pipeline's order).
COMMAND_MODULES = (
    "init",
    "validate",
    "simulate",
    "calibrate",
    "ols",
    "identify",
    "fit",
    "ipw",
    "sensitivity",
    "report",
    "run",
    "design",
)

EXIT_INPUT = 2
EXIT_UNCONVERGED = 3
EXIT_INTERRUPTED = 130


def _load(name: str):
    return importlib.import_module(f"pari_bayes.commands.{name}")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="pari-bayes",
        description=(
            "Bayesian multilevel causal inference for community-based organizations: "
            "direct and spillover effects on social integration."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = _load(name)
        except ModuleNotFoundError as exc:
            if exc.name == f"pari_bayes.commands.{name}":
                continue  # not built yet
            raise
        cmd = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def _format_warning(message, category, filename, lineno, line=None):  # noqa: ARG001
    return f"warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_INPUT
    warnings.formatwarning = _format_warning
    warnings.simplefilter("always", PariBayesWarning)
    try:
        resolve_data_arguments(args)
        return int(args._run(args) or 0)
    except ConvergenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNCONVERGED
    except PariBayesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("interrupted: nothing was written to --out", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
