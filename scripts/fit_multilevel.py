"""Fit the multilevel specs: Table 4 Models 1-8 and the multivariate model.

Table 4 Models 1-8 get a community intercept; the multivariate model fits the four
dimension scores jointly.

For each spec (models/table4.toml, models/multivariate.toml) writes into --out/<name>/:
posterior.nc, effects.csv (DE/IE/TE/OE by g-computation), diagnostics.csv, comparison.csv
(Bayes vs OLS vs published), loo.csv, prior_sensitivity.csv and plots. Exits non-zero if a
model fails the convergence gate.

    .venv/bin/python scripts/fit_multilevel.py --out /tmp/multilevel
"""

from __future__ import annotations

import argparse
import sys

import pari_bayes as pb
from pari_bayes.io import output_dir

SPECS = ("models/table4.toml", "models/multivariate.toml")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="survey CSV (default: bundled)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--quick", action="store_true", help="tiny draws (wiring only)")
    args = parser.parse_args()

    survey = pb.load_survey(args.data)
    converged = True
    with output_dir(args.out, force=True) as tmp:
        for path in SPECS:
            spec = pb.load_spec(path)
            (tmp / spec.name).mkdir()
            fit = pb.fit_model(survey, spec, tmp / spec.name, seed=args.seed, quick=args.quick)
            converged &= bool(fit.converged)
            observed = fit.effects.query("scope == 'observed' and estimand in ['DE', 'IE', 'TE']")
            print(f"== {spec.name}: {'converged' if fit.converged else 'UNCONVERGED'}")
            print(observed[["dimension", "estimand", "mean", "q05", "q95"]].to_string(index=False))
    print(f"wrote {args.out}")
    return 0 if converged or args.quick else 3


if __name__ == "__main__":
    sys.exit(main())
