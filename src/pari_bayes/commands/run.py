"""``pari-bayes run``: the main job on a survey (the bundled synthetic one by default)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pari_bayes.commands._common import add_dag_argument, add_data_arguments, add_seed_argument
from pari_bayes.io import output_dir
from pari_bayes.pipeline import RunOptions, run_pipeline
from pari_bayes.privacy import hash_household_ids, new_salt
from pari_bayes.survey import load_survey

NAME = "run"
HELP = (
    "the main job: validate, calibrate, PCA+OLS baseline, identification, Bayesian models, "
    "IPW and the HTML report"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this command's arguments."""
    add_data_arguments(parser)
    parser.add_argument(
        "--out", default="results", metavar="DIR", help="output folder (default: results)"
    )
    parser.add_argument(
        "--force", action="store_true", help="replace the contents of a non-empty --out"
    )
    add_seed_argument(parser)
    add_dag_argument(parser)
    parser.add_argument(
        "--model",
        action="append",
        metavar="SPEC",
        default=None,
        help="model spec to fit (repeatable; default: every shipped spec in models/)",
    )
    parser.add_argument(
        "--allow-unconverged",
        action="store_true",
        help="publish the effect rows of models that still fail the convergence gate after "
        "the escalation ladder (marked UNCONVERGED); without it only their diagnostics are "
        "published",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny MCMC runs to check the wiring; every Bayesian output is marked UNCONVERGED",
    )
    parser.add_argument(
        "--hash-ids",
        action="store_true",
        help="replace household ids by salted hashes in every output",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        metavar="N",
        help="processes fitting the Bayesian models while the other steps run (default 2; "
        "1 = one after another in this process)",
    )
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument(
        "--quiet", action="store_true", help="print only the result line, failures and errors"
    )
    noise.add_argument(
        "--verbose",
        action="store_true",
        help="show every library message and sampler progress bar on the terminal "
        "(by default they go to run.log in --out)",
    )
    parser.add_argument(
        "--steps",
        default=None,
        metavar="LIST",
        help="comma-separated subset of calibration,ols,identification,fit,ipw,report",
    )


def run(args: argparse.Namespace) -> int:
    """Run the pipeline into a staged output folder."""
    from pari_bayes.console import LOG_NAME, Console, captured
    from pari_bayes.io import check_out_dir

    check_out_dir(args.out, force=args.force)
    console = Console(quiet=args.quiet, verbose=args.verbose)
    with output_dir(args.out, force=args.force) as staging:
        log = staging / LOG_NAME
        with captured(log, console):
            console.step(f"reading {args.data}")
            survey = load_survey(args.data, communities=args.communities, codebook=args.codebook)
            if args.hash_ids:
                survey = hash_household_ids(survey, new_salt())
            console.step(survey.summary())
            options = RunOptions(
                seed=args.seed,
                models=[Path(m) for m in args.model] if args.model else None,
                dag=Path(args.dag) if args.dag else None,
                allow_unconverged=args.allow_unconverged,
                quick=args.quick,
                progress=not args.quiet,
                workers=max(1, args.workers),
                console=console,
                log_path=None if args.verbose else log,
            )
            if args.steps:
                options.steps = tuple(s.strip() for s in args.steps.split(",") if s.strip())
            result = run_pipeline(survey, staging, options)
        if not log.exists():
            log.touch()
    console.summary()
    if not args.quiet:
        print(
            f"library messages: {Path(args.out).resolve() / LOG_NAME}; total "
            f"{time.perf_counter() - console.started:.0f} s",
            file=sys.stderr,
        )
    report = Path(args.out) / "report.html"
    if result.failures and not args.quick:
        print("convergence gate failed (every other output was published):", file=sys.stderr)
        for line in result.failures:
            print(f"  - {line[:300]}", file=sys.stderr)
        print(
            "  try: more draws or a higher target_accept in the spec's [sampler]; see "
            "fit/<model>/diagnostics.csv and worst_parameters.png",
            file=sys.stderr,
        )
    if report.exists():
        print(f"report: {report.resolve()}")
    else:
        print(f"results: {Path(args.out).resolve()}")
    # A run that misses the gate (quick runs always do) says so in its exit status.
    return 0 if result.gate_passed else 3
