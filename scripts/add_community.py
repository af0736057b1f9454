"""Add a fifth community as an extra level: a registry entry plus its households, no code.

Writes a registry with a simulated fifth community "NW" (formed 2020-01, with a recreational
CBO), simulates a survey over all five communities with the generator (known truth), and
refits the multivariate model on it. The new community gets its own community effect, and
effects with scope "new" describe a community not yet surveyed.

    .venv/bin/python scripts/add_community.py --out /tmp/five
"""

from __future__ import annotations

import argparse
import json

import pari_bayes as pb
from pari_bayes._paths import DEFAULT_REGISTRY
from pari_bayes.io import output_dir, write_csv

NEW_COMMUNITY = """
[[community]]
name = "NW"
formed = "2020-01"
surveyed = "2020-08"
cbos = [{ name = "Neighbourhood Choir", kind = "recreational" }]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--households", type=int, default=360)
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--quick", action="store_true", help="tiny draws (wiring only)")
    args = parser.parse_args()

    with output_dir(args.out, force=True) as tmp:
        registry_path = tmp / "communities.toml"
        registry_path.write_text(DEFAULT_REGISTRY.read_text() + NEW_COMMUNITY)
        registry = pb.load_registry(registry_path)
        sim = pb.simulate_survey(n_households=args.households, registry=registry, seed=args.seed)
        write_csv(sim.data, tmp / "survey.csv")
        (tmp / "truth.json").write_text(json.dumps(sim.truth, indent=2, default=float))
        survey = pb.load_survey(tmp / "survey.csv", communities=registry_path)
        print(survey.summary())
        (tmp / "fit").mkdir()
        fit = pb.fit_model(
            survey, "models/multivariate.toml", tmp / "fit", seed=args.seed, quick=args.quick
        )
        effect = fit.idata.posterior["community_effect"]
        print("communities in the posterior:", list(effect["community"].values))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
