"""Design-based IPW estimates under partial interference, on the survey and on a simulation.

Applies the group-level inverse-probability-weighted estimators (Tchetgen Tchetgen &
VanderWeele 2012; Perez-Heydrich et al. 2014) to the survey, with participation as the
treatment and community as the group, and, as a check that the estimator works where the
design allows it, to a simulated two-stage randomized design with 250 groups and known
effects. Writes ipw_effects.csv, ipw_propensity.csv (survey) and simulated_effects.csv.

    .venv/bin/python scripts/ipw.py --out /tmp/ipw
"""

from __future__ import annotations

import argparse

import pari_bayes as pb
from pari_bayes.estimation.ipw import simulate_two_stage, two_stage_truth
from pari_bayes.io import output_dir, write_csv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="survey CSV (default: bundled)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--quick", action="store_true", help="smaller simulated design")
    args = parser.parse_args()

    survey = pb.load_survey(args.data)
    with output_dir(args.out, force=True) as tmp:
        pb.write_ipw_survey(survey, tmp, seed=args.seed)
        allocations = (0.3, 0.6)
        sim = simulate_two_stage(n_groups=60 if args.quick else 250, seed=args.seed)
        result = pb.ipw_effects(
            sim,
            outcome="y",
            treatment="a",
            group="group",
            covariates=["x"],
            allocations=allocations,
        )
        effects = result.effects.merge(two_stage_truth(allocations), how="left")
        write_csv(effects, tmp / "simulated_effects.csv")
    print(effects.head(12).to_string(index=False))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
