"""``pari-bayes ipw``: IPW direct/indirect/total/overall effects, on the survey or any CSV.

Two modes:

- **survey** (no ``--outcome``/``--treatment``/``--group``): the main job's IPW step
  (:func:`pari_bayes.estimation.ipw.write_ipw_survey`) on ``--data`` (the bundled survey by
  default): outcomes are the PCA scores, treatment is CBO participation, groups are the
  communities, CBO-free communities supply allocation 0. With default arguments it writes
  the same files as the ``ipw/`` folder of ``pari-bayes run``; ``--dag`` takes the
  participation model's covariates from the graph's adjustment set (as ``run --dag``).
- **any CSV** (``--outcome``, ``--treatment`` and ``--group``): the generic estimator
  (:func:`pari_bayes.estimation.ipw.ipw_effects`, ``inferference``'s definitions).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pari_bayes.commands._common import add_dag_argument, add_data_arguments
from pari_bayes.errors import EstimationError, SurveyDataError
from pari_bayes.io import output_dir, write_csv

NAME = "ipw"
HELP = (
    "group-level IPW estimates of direct, indirect, total and overall effects under "
    "partial interference (Tchetgen Tchetgen & VanderWeele 2012; R package inferference); "
    "without --outcome/--treatment/--group, the main job's IPW step on the survey"
)
#: Allocations when ``--allocations`` is not given (as the main job).
DEFAULT_ALLOCATIONS = (0.3, 0.45, 0.6)
_GENERIC = ("outcome", "treatment", "group")


def _names(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def _floats(text: str | None) -> list[float]:
    if text is None:
        return list(DEFAULT_ALLOCATIONS)
    try:
        return [float(s) for s in _names(text)]
    except ValueError as exc:
        raise EstimationError(
            f"--allocations {text!r} must be comma-separated numbers in (0, 1), e.g. 0.3,0.6"
        ) from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this command's arguments."""
    add_data_arguments(parser)
    parser.add_argument(
        "--outcome", default=None, metavar="Y", help="numeric outcome column (any-CSV mode)"
    )
    parser.add_argument(
        "--treatment", default=None, metavar="A", help="0/1 treatment column (any-CSV mode)"
    )
    parser.add_argument(
        "--participation",
        default=None,
        metavar="B",
        help="0/1 participation column (treatment possible only when B = 1; default B = A; "
        "any-CSV mode)",
    )
    parser.add_argument(
        "--randomization",
        type=float,
        default=1.0,
        metavar="R",
        help="probability that a participant is treated (default 1; any-CSV mode)",
    )
    parser.add_argument("--group", default=None, metavar="G", help="group column (any-CSV mode)")
    parser.add_argument(
        "--covariates",
        default=None,
        metavar="X1,X2",
        help="comma-separated numeric covariates of the propensity model (default: none on "
        "any CSV; on the survey the paper's Table 4 controls, or the --dag adjustment set)",
    )
    add_dag_argument(parser)
    parser.add_argument(
        "--allocations",
        default=None,
        metavar="A1,A2",
        help="comma-separated allocations in (0, 1) (default 0.3,0.45,0.6; on the survey "
        "the observed participation share is added)",
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
    parser.add_argument(
        "--tol",
        type=float,
        default=1e-8,
        metavar="TOL",
        help="tolerance on log f(A_i | X_i) of the group-weight integrals (default 1e-8); "
        "raise it if the integrals do not converge",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--force", action="store_true", help="replace the contents of a non-empty --out"
    )


def _read(path: str) -> pd.DataFrame:
    from pari_bayes.project import read_csv

    return read_csv(Path(path))


def run(args: argparse.Namespace) -> int:
    """Estimate and write the IPW tables (survey mode or any-CSV mode)."""
    given = [name for name in _GENERIC if getattr(args, name) is not None]
    if not given:
        return _run_survey(args)
    if len(given) < len(_GENERIC):
        missing = ", ".join(f"--{n}" for n in _GENERIC if n not in given)
        raise EstimationError(
            f"any-CSV mode needs --outcome, --treatment and --group; missing {missing}. "
            "Without all three, `pari-bayes ipw` runs the main job's IPW on the survey."
        )
    if args.dag is not None:
        raise EstimationError(
            "--dag applies to the survey mode (its adjustment sets name survey columns); "
            "on any CSV give the propensity covariates with --covariates."
        )
    return _run_generic(args)


def _run_survey(args: argparse.Namespace) -> int:
    """``write_ipw_survey`` on the survey: the main job's ``ipw/`` folder."""
    import warnings

    from pari_bayes.errors import PariBayesWarning
    from pari_bayes.estimation.ipw import write_ipw_survey
    from pari_bayes.io import check_out_dir
    from pari_bayes.survey import load_survey

    generic_only = [
        flag
        for flag, used in (
            ("--participation", args.participation is not None),
            ("--randomization", args.randomization != 1.0),
        )
        if used
    ]
    if generic_only:
        raise EstimationError(
            f"{', '.join(generic_only)} apply to the any-CSV mode (with --outcome, --treatment "
            "and --group). On the survey, treatment is cbo_participation and the CBO-free "
            "communities (cbo_presence = 0) supply allocation 0 by design."
        )
    check_out_dir(args.out, force=args.force)
    survey = load_survey(args.data, communities=args.communities, codebook=args.codebook)
    identification = None
    if args.dag is not None:
        from pari_bayes.identification.identify import identify

        identification = identify(survey, dag=args.dag, refute=False)
    covariates = _names(args.covariates) if args.covariates is not None else None
    with output_dir(args.out, force=args.force) as staging:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PariBayesWarning)
            result = write_ipw_survey(
                survey,
                staging,
                allocations=_floats(args.allocations),
                covariates=covariates,
                level=args.level,
                quadrature=args.quadrature,
                identification=identification,
                tol=args.tol,
                bread=args.bread,
            )
    sets = {tuple(c) for c in result.covariates.values()}
    shown = "; ".join(", ".join(s) or "intercept only" for s in sorted(sets))
    print(
        f"{args.data}: IPW of cbo_participation on {len(result.covariates)} dimensions; "
        f"participation-model covariates ({'DAG ' + str(args.dag) if args.dag else 'default'}): "
        f"{shown}; observed participation share {result.alpha_observed:.2f}"
    )
    for w in caught:
        print(f"note: {w.message}")
    print(
        f"wrote {args.out}/ipw_effects.csv, ipw_outcomes.csv, ipw_propensity.csv, "
        "ipw_effects_common.csv, ipw_notes.txt"
    )
    return 0


def _run_generic(args: argparse.Namespace) -> int:
    """``ipw_effects`` on any CSV."""
    from pari_bayes.estimation.ipw import ipw_effects

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
            tol=args.tol,
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
