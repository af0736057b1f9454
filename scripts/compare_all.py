"""Compare every method in one table: OLS (classical and CR2), IPW, multilevel and latent.

Runs the whole pipeline (as `pari-bayes run`) and prints the DE / IE / TE rows of
effects_all.csv side by side, one column per method, with 90% intervals. Writes the run
folder (with report.html) into --out.

    .venv/bin/python scripts/compare_all.py --out /tmp/all
"""

from __future__ import annotations

import argparse

import pandas as pd

import pari_bayes as pb
from pari_bayes.io import output_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="survey CSV (default: bundled)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--quick", action="store_true", help="tiny draws (wiring only)")
    args = parser.parse_args()

    survey = pb.load_survey(args.data)
    options = pb.RunOptions(
        seed=args.seed, quick=args.quick, progress=False, allow_unconverged=True
    )
    with output_dir(args.out, force=True) as tmp:
        result = pb.run_pipeline(survey, tmp, options)
    effects = result.effects.query("scope == 'observed' and estimand in ['DE', 'IE', 'TE']")
    cell = effects.assign(
        value=effects.apply(
            lambda r: f"{r['mean']:+.2f} [{r['q05']:+.2f}, {r['q95']:+.2f}]", axis=1
        )
    )
    table = cell.pivot_table(
        index=["dimension", "estimand"], columns="method", values="value", aggfunc="first"
    )
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table)
    print("convergence gate passed" if result.gate_passed else "convergence gate FAILED")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
