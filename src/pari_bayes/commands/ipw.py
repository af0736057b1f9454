"""``pari-bayes ipw``: IPW direct/indirect/total/overall effects on any CSV."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pari_bayes.errors import EstimationError, SurveyDataError
from pari_bayes.estimation.ipw import ipw_effects
from pari_bayes.io import output_dir, write_csv

NAME = "ipw"
HELP = (
    "group-level IPW estimates of direct, indirect, total and overall effects under "
    "partial interference (Tchetgen Tchetgen & VanderWeele 2012; R package inferference)"
)


def _names(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def _floats(text: str) -> list[float]:
    try:
        return [float(s) for s in _names(text)]
    except ValueError as exc:
        raise EstimationError(
            f"--allocations {text!r} must be comma-separated numbers in (0, 1), e.g. 0.3,0.6"
        ) from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this command's arguments."""
    parser.add_argument("--data", required=True, metavar="FILE", help="CSV, one row per unit")
    parser.add_argument("--outcome", required=True, metavar="Y", help="numeric outcome column")
    parser.add_argument("--treatment", required=True, metavar="A", help="0/1 treatment column")
    parser.add_argument(
        "--participation",
        default=None,
        metavar="B",
        help="0/1 participation column (treatment possible only when B = 1; default B = A)",
    )
    parser.add_argument(
        "--randomization",
        type=float,
        default=1.0,
        metavar="R",
        help="probability that a participant is treated (default 1)",
    )
    parser.add_argument("--group", required=True, metavar="G", help="group column")
    parser.add_argument(
        "--covariates",
        default="",
        metavar="X1,X2",
        help="comma-separated numeric covariates of the propensity model (default: none)",
    )
    parser.add_argument(
        "--allocations",
        required=True,
        metavar="A1,A2",
        help="comma-separated allocations in (0, 1), e.g. 0.3,0.45,0.6",
    )
    parser.add_argument("--level", type=float, default=0.95, help="confidence level (default 0.95)")
    parser.add_argument(
        "--quadrature",
        choices=("agh", "laplace"),
        default="agh",
        help=(
            "propensity likelihood: adaptive Gauss-Hermite with 15 nodes (default) or the "
            "Laplace approximation (glmer's default, biased for small groups)"
        ),
    )
    parser.add_argument(
        "--bread",
        choices=("hessian", "opg"),
        default="hessian",
        help="sandwich bread: observed information (default) or outer product of scores",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--force", action="store_true", help="replace the contents of a non-empty --out"
    )


def _read(path: str) -> pd.DataFrame:
    file = Path(path)
    if not file.is_file():
        raise SurveyDataError(f"{file}: data file not found.")
    try:
        return pd.read_csv(file)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SurveyDataError(f"{file}: not a readable CSV: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    """Estimate and write ipw_effects.csv, ipw_outcomes.csv and ipw_propensity.csv."""
    data = _read(args.data)
    try:
        result = ipw_effects(
            data,
            outcome=args.outcome,
            treatment=args.treatment,
            group=args.group,
            covariates=_names(args.covariates),
            allocations=_floats(args.allocations),
            participation=args.participation,
            randomization=args.randomization,
            level=args.level,
            quadrature=args.quadrature,
            bread=args.bread,
        )
    except SurveyDataError as exc:
        raise SurveyDataError(f"{args.data}: {exc}") from exc
    with output_dir(args.out, force=args.force) as staging:
        write_csv(result.effects, staging / "ipw_effects.csv")
        write_csv(result.outcomes, staging / "ipw_outcomes.csv")
        write_csv(result.propensity, staging / "ipw_propensity.csv")
    fit = result.propensity_fit
    print(
        f"{args.data}: {fit.n_obs} units in {fit.n_groups} groups; propensity random-intercept "
        f"sd {fit.sigma:.3g}{' (boundary)' if fit.boundary else ''}; "
        f"{len(result.effects)} contrasts at allocations "
        f"{', '.join(f'{a:g}' for a in result.allocations)}"
    )
    if fit.n_groups < 30:
        print(
            f"note: {fit.n_groups} groups; the sandwich variance is a many-groups "
            "approximation, so read the standard errors with caution"
        )
    print(f"wrote {args.out}/ipw_effects.csv, ipw_outcomes.csv, ipw_propensity.csv")
    return 0
