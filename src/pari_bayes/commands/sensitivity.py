"""``pari-bayes sensitivity``: how strong an unobserved confounder would have to be.

Takes a survey (``--data``/``--project``, like ``ols`` and ``identify``), not a finished
run folder: a run folder keeps results, not the rows the regressions and the Bayesian
sensitivity model need. Writes into ``--out``:

- ``ovb.csv``, ``ovb_bounds.csv``, ``contour_<dimension>.png``: the OLS omitted-variable
  bounds (Cinelli and Hazlett 2020) with CR2 / Bell-McCaffrey inference by community (the
  same files as the main job's ``RUN/sensitivity/``);
- ``bayes.csv``, ``bayes_summary.csv`` (unless ``--no-bayes``): the multilevel model with an
  explicit unobserved household confounder, on a grid of strengths.

Exit status 3 when a Bayesian grid point fails the convergence gate (everything is still
written, the failed points marked).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from pari_bayes._paths import MODELS_DIR
from pari_bayes.commands._common import (
    add_dag_argument,
    add_data_arguments,
    add_out_arguments,
    add_seed_argument,
)
from pari_bayes.errors import SpecError
from pari_bayes.io import output_dir
from pari_bayes.survey import load_survey

NAME = "sensitivity"
HELP = (
    "sensitivity of the direct and spillover effects to an unobserved confounder "
    "(OLS bounds with few-cluster inference; Bayesian model with an explicit confounder)"
)
EXIT_UNCONVERGED = 3


def _grid(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--grid {text!r}: not a comma-separated list of numbers (e.g. 0,0.5,1,2)"
        ) from exc
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"--grid {text!r}: allowed: numbers >= 0, e.g. 0,1,2")
    return tuple(sorted(set(values)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this command's arguments."""
    add_data_arguments(parser)
    add_dag_argument(parser)
    add_out_arguments(parser)
    add_seed_argument(parser)
    parser.add_argument(
        "--benchmark",
        default="residence_months",
        metavar="COLUMN",
        help="observed covariate the OLS bounds compare the confounder with (default "
        "residence_months; a Table 4 control)",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=0.05,
        help="significance level of RV(q=1, alpha) and the adjusted intervals (default 0.05)",
    )
    parser.add_argument(
        "--no-bayes", action="store_true", help="only the OLS bounds (seconds, not minutes)"
    )
    parser.add_argument(
        "--grid",
        type=_grid,
        default=(0.0, 0.5, 1.0, 2.0, 3.0),
        metavar="K,K,...",
        help="strengths of U as multiples of the benchmark covariate (default 0,0.5,1,2,3)",
    )
    parser.add_argument(
        "--bayes-benchmark",
        default=None,
        metavar="COLUMN",
        help="covariate U is compared with in the Bayesian model (default: the strongest "
        "covariate of the adjustment set, per dimension)",
    )
    parser.add_argument(
        "--spec",
        default=str(MODELS_DIR / "table4.toml"),
        metavar="FILE",
        help="multilevel model spec whose priors and sampler are used (default models/table4.toml)",
    )
    parser.add_argument(
        "--dimension",
        action="append",
        default=None,
        metavar="NAME",
        help="fit the Bayesian model for this dimension only (repeatable; default all)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny MCMC runs for wiring checks (the gate fails; exit status 3)",
    )


def run(args: argparse.Namespace) -> int:
    """Write the OLS bounds and (unless --no-bayes) the Bayesian sensitivity curve."""
    from pari_bayes.sensitivity.ovb import write_ovb

    survey = load_survey(args.data, communities=args.communities, codebook=args.codebook)
    spec = None
    if not args.no_bayes:
        from pari_bayes.estimation.fitting import QUICK_SAMPLER
        from pari_bayes.estimation.spec import load_spec

        spec = load_spec(args.spec)
        if spec.kind != "multilevel":
            raise SpecError(
                f"{args.spec}: key kind: {spec.kind!r}; allowed: 'multilevel' (the "
                "sensitivity model extends the one-outcome multilevel model)"
            )
        if args.quick:
            spec = replace(spec.with_sampler(**QUICK_SAMPLER), sensitivity=(), loo_drop=())
    failed = False
    with output_dir(args.out, force=args.force) as staging:
        ovb = write_ovb(survey, staging, benchmark=args.benchmark, alpha=args.alpha)
        summary = None
        if spec is not None:
            from pari_bayes.identification.identify import identify
            from pari_bayes.sensitivity.bayes import survey_sensitivity_curve, write_bayes

            identification = identify(survey, dag=args.dag, seed=args.seed, refute=False)
            curve = survey_sensitivity_curve(
                survey,
                spec,
                grid=args.grid,
                benchmark=args.bayes_benchmark,
                seed=args.seed,
                identification=identification,
                dimensions=args.dimension,
            )
            summary = write_bayes(curve, staging)
            failed = not bool(curve["passed"].all())
    print(f"{args.data}: {survey.summary()}")
    for line in ovb.loc[ovb["estimand"] == "DE", "sentence"]:
        print(f"- {line}")
    if summary is not None:
        for line in summary.loc[summary["estimand"] == "DE", "sentence"]:
            print(f"- {line}")
    written = "ovb.csv, ovb_bounds.csv, contour_<dimension>.png"
    if summary is not None:
        written += ", bayes.csv, bayes_summary.csv"
    print(f"wrote {args.out}/{written}")
    if failed:
        print("UNCONVERGED: some Bayesian grid points failed the convergence gate (bayes.csv)")
        return EXIT_UNCONVERGED
    return 0
