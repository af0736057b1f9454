"""Benchmark the shipped multilevel specs: PyMC NUTS vs nutpie.

For every spec and sampler: wall time (compile + sampling, main model only, no LOO or
sensitivity refits), divergences, bulk ESS and ESS/s of every effect (DE, IE, TE per
dimension), whether the convergence gate passed, and the nutpie / PyMC ESS/s ratio.

A univariate spec (``table4``) fits its four outcomes with one compiled model. The time of
one univariate model on its own (``model_wall_s``) is the spec's wall time less the sampling
of the other outcomes: the compile, set-up and post-processing are all charged to every
model, so this is an upper bound.

Usage::

    .venv/bin/python scripts/bench_multilevel.py [--specs models/table4.toml ...]
        [--samplers nutpie pymc] [--out bench_multilevel.csv]

Run it on an otherwise idle machine: timings on a shared machine are not comparable.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from pari_bayes.diagnostics import gate_failures
from pari_bayes.estimation.multilevel import fit_spec
from pari_bayes.estimation.spec import load_spec
from pari_bayes.survey import load_survey

ROOT = Path(__file__).resolve().parent.parent


def bench(spec_path: Path, sampler: str, survey, seed: int) -> pd.DataFrame:
    spec = load_spec(spec_path).with_sampler(sampler=sampler)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit_spec(survey, spec, seed=seed, sensitivity=False, compare=False, prior=False)
    wall = time.perf_counter() - start
    failures = gate_failures(result.diagnostics, result.effects)
    eff = result.effects[
        (result.effects["scope"] == "observed")
        & result.effects["estimand"].isin(["DE", "IE", "TE"])
    ].copy()
    sampling = result.timings["sampling_s"]
    eff["spec"] = spec.name
    eff["sampler"] = sampler
    eff["wall_s"] = wall
    eff["compile_s"] = result.timings["compile_s"]
    eff["sampling_s"] = sampling
    per_outcome = result.timings.get("sampling_per_outcome_s") or ()
    if per_outcome:
        own = dict(zip(result.design.dimensions, per_outcome, strict=True))
        eff["model_wall_s"] = eff["dimension"].map(lambda d: wall - sum(per_outcome) + own[d])
    else:
        eff["model_wall_s"] = wall
    eff["ess_per_s"] = eff["ess_bulk"] / eff["model_wall_s"]
    eff["divergences"] = int(result.diagnostics["divergences"].max())
    eff["gate_passed"] = not failures
    return eff[
        [
            "spec",
            "sampler",
            "dimension",
            "estimand",
            "mean",
            "ess_bulk",
            "ess_per_s",
            "wall_s",
            "model_wall_s",
            "compile_s",
            "sampling_s",
            "divergences",
            "gate_passed",
        ]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--specs",
        nargs="+",
        default=[str(ROOT / "models/table4.toml"), str(ROOT / "models/multivariate.toml")],
    )
    parser.add_argument("--samplers", nargs="+", default=["nutpie", "pymc"])
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--out", default="bench_multilevel.csv")
    args = parser.parse_args()
    survey = load_survey()
    frames = []
    for spec in args.specs:
        for sampler in args.samplers:
            frame = bench(Path(spec), sampler, survey, args.seed)
            frames.append(frame)
            r = frame.iloc[0]
            print(
                f"{r['spec']:<14} {sampler:<7} wall {r['wall_s']:6.1f} s (compile "
                f"{r['compile_s']:5.1f}, sampling {r['sampling_s']:5.1f}); slowest model "
                f"{frame['model_wall_s'].max():6.1f} s; divergences "
                f"{r['divergences']}; min ESS/s {frame['ess_per_s'].min():7.1f}; gate "
                f"{'passed' if r['gate_passed'] else 'FAILED'}",
                flush=True,
            )
    table = pd.concat(frames, ignore_index=True)
    table.to_csv(args.out, index=False, float_format="%.4g")
    if {"nutpie", "pymc"} <= set(args.samplers):
        wide = table.pivot_table(
            index=["spec", "dimension", "estimand"], columns="sampler", values="ess_per_s"
        )
        ratio = wide["nutpie"] / wide["pymc"]
        print("nutpie / PyMC ESS/s ratio per spec (median over effects):")
        for spec, sub in ratio.groupby(level="spec"):
            print(f"  {spec:<14} {np.median(sub):.2f} (range {sub.min():.2f}-{sub.max():.2f})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
