"""``pari-bayes fit --model models/NAME.toml --out DIR``: fit a Bayesian model spec."""

from __future__ import annotations

import argparse

from pari_bayes.commands._common import add_dag_argument, add_data_arguments, add_out_arguments

NAME = "fit"
HELP = "fit a Bayesian model spec (models/*.toml) and write posterior, effects, diagnostics"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this command's arguments."""
    parser.add_argument(
        "--model", required=True, metavar="SPEC", help="model spec TOML, e.g. models/table4.toml"
    )
    add_data_arguments(parser)
    add_out_arguments(parser)
    add_dag_argument(parser)
    parser.add_argument(
        "--no-escalate",
        action="store_true",
        help="fit once with the spec's sampler settings (no refit on a stricter rung when "
        "the convergence gate fails)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="random seed (default: the spec's sampler.seed)"
    )
    parser.add_argument(
        "--allow-unconverged",
        action="store_true",
        help="publish the effect rows even if the convergence gate still fails after the "
        "escalation ladder (every file is marked UNCONVERGED); without it only the "
        "diagnostics are published",
    )
    parser.add_argument(
        "--sampler", choices=("nutpie", "pymc"), default=None, help="override the spec's sampler"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny draws, no sensitivity/LOO refits: checks the wiring; outputs are "
        "marked UNCONVERGED",
    )
    for name in ("draws", "tune", "chains"):
        parser.add_argument(
            f"--{name}",
            type=int,
            default=None,
            help=f"override the spec's sampler.{name} (quick runs)",
        )


def run(args: argparse.Namespace) -> int:
    """Load the survey and spec, fit, write through an atomic output folder."""
    from pari_bayes.estimation.fitting import fit_spec_file
    from pari_bayes.estimation.spec import load_spec
    from pari_bayes.identification.identify import identify
    from pari_bayes.io import check_out_dir, output_dir
    from pari_bayes.survey import load_survey

    spec = load_spec(args.model).with_sampler(
        draws=args.draws, tune=args.tune, chains=args.chains, sampler=args.sampler
    )
    check_out_dir(args.out, force=args.force)
    survey = load_survey(args.data, communities=args.communities, codebook=args.codebook)
    identification = identify(survey, dag=args.dag, refute=False)
    with output_dir(args.out, force=args.force) as tmp:
        fit = fit_spec_file(
            survey,
            spec,
            tmp,
            seed=args.seed,
            allow_unconverged=args.allow_unconverged,
            quick=args.quick,
            escalate=not args.no_escalate,
            identification=identification,
        )
    result, gate = fit.result, fit.gate
    converged = bool(gate["passed"])
    table = getattr(result, "measurement", None)  # a measurement-only (CFA) spec
    # A measurement spec has no effects: its published estimates are the measurement table.
    published = bool(gate.get("effects_published"))
    if converged:
        status = f"converged (rung {gate['rung']} of the escalation ladder)"
    elif published:
        status = "UNCONVERGED (convergence gate failed; outputs marked)"
    else:
        what = "effects" if table is None else "measurement estimates"
        status = (
            "UNCONVERGED: convergence gate failed on every rung; diagnostics published, "
            f"{what} withheld (--allow-unconverged publishes them marked)\n  "
            + str(gate.get("reason", ""))
        )
    print(f"{spec.name}: {status}; wrote {args.out}")
    effects = getattr(result, "effects", None)
    if effects is not None and len(effects) and published:
        sub = effects[
            (effects["scope"] == "observed") & effects["estimand"].isin(["DE", "IE", "TE"])
        ]
        for _, r in sub.iterrows():
            print(
                f"  {r['dimension']:<24} {r['estimand']}: {r['mean']:+.3f} "
                f"[{r['q05']:+.3f}, {r['q95']:+.3f}]"
            )
    if table is not None and (converged or published):
        std = table[table["parameter"] == "standardized_loading"]
        for _, r in std.iterrows():
            print(
                f"  {r['lhs']:<24} =~ {r['rhs']:<32} standardized loading {r['mean']:.2f} "
                f"[{r['q05']:.2f}, {r['q95']:.2f}]"
            )
    # A run that misses the gate says so in its exit status, even when its outputs are kept.
    return 0 if converged else 3
