"""Reproduce the paper's Table 4: PCA integration scores and OLS Models 1-8.

Reads a survey (the bundled synthetic one by default), scores the four integration
dimensions by PCA as in section 3.3.1 of the paper, fits OLS Models 1-8 with classical,
cluster-robust (CR1, CR2) and wild-cluster-bootstrap inference, and writes into --out:
ols_table4.csv, ols_fit.csv, pca.csv and table4.md (ours | published, side by side).

    .venv/bin/python scripts/reproduce_table4.py --out /tmp/table4
"""

from __future__ import annotations

import argparse

import pari_bayes as pb
from pari_bayes.io import output_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="survey CSV (default: bundled)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--quick", action="store_true", help="fewer bootstrap draws")
    args = parser.parse_args()

    survey = pb.load_survey(args.data)
    with output_dir(args.out, force=True) as tmp:
        result = pb.write_ols(survey, tmp, seed=args.seed, n_boot=199 if args.quick else 999)
    cbo = result.coefficients[
        result.coefficients["term"].isin(["cbo_participation", "cbo_existence"])
    ]
    print(
        cbo[
            [
                "model",
                "dimension",
                "term",
                "coef",
                "published_coef",
                "diff_in_se",
                "stars",
                "p_wild",
            ]
        ].to_string(index=False)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
