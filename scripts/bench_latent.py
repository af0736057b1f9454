"""Benchmark the shipped latent spec on the bundled survey, per available sampler.

Reports wall time (compile + sampling), divergences, and bulk ESS, ESS/s and R-hat of every
effect row (DE/IE/TE/OE x dimension x scope) for nutpie and PyMC's NUTS (numpyro is not
installed; it would be an optional extra). The machine load is printed with the results,
since the cores may be shared.

Usage: python scripts/bench_latent.py [--samplers nutpie pymc] [--out docs/figures]
    [--tune N] [--low-rank] [--numba-opt {0,1,2,3}] [--cold-cache DIR]
Writes bench_latent.csv (one row per sampler x effect) and prints a summary, with the
leapfrog steps per draw. ``--numba-opt`` sets numba's LLVM optimization level (NUMBA_OPT)
before anything imports numba; ``--cold-cache DIR`` points numba's and PyTensor's caches at
an empty folder, so the compile time is that of a fresh machine.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import pandas as pd

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main() -> None:
    warnings.simplefilter("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samplers", nargs="+", default=["nutpie", "pymc"])
    parser.add_argument("--out", default="docs/figures")
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--tune", type=int, default=None, help="tuning steps (default: spec)")
    parser.add_argument("--low-rank", action="store_true", help="nutpie low-rank mass matrix")
    parser.add_argument("--numba-opt", choices=("0", "1", "2", "3"), default=None)
    parser.add_argument("--cold-cache", default=None, metavar="DIR")
    args = parser.parse_args()
    if args.numba_opt is not None:
        os.environ["NUMBA_OPT"] = args.numba_opt
    if args.cold_cache:
        cache = Path(args.cold_cache)
        os.environ["NUMBA_CACHE_DIR"] = str(cache / "numba")
        os.environ["PYTENSOR_FLAGS"] = f"compiledir={cache / 'pytensor'}"

    from pari_bayes._paths import MODELS_DIR
    from pari_bayes.estimation import latent as L
    from pari_bayes.survey import load_survey

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    survey = load_survey()
    frames = []
    for name in args.samplers:
        spec = L.load_latent_spec(MODELS_DIR / "latent.toml")
        spec.sampler["name"] = name
        if args.tune is not None:
            spec.sampler["tune"] = args.tune
        if args.low_rank:
            spec.sampler["low_rank_mass_matrix"] = True
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        design = L.latent_design(survey, spec)
        model = L.build_latent_model(design, spec)
        idata, timing = L.sample_latent(model, spec.sampler, args.seed)
        wall = time.perf_counter() - t0
        effects = L.latent_effects(idata, design, spec, seed=args.seed)
        div = int(idata.sample_stats["diverging"].sum())
        steps = (
            float(idata.sample_stats["n_steps"].mean())
            if "n_steps" in idata.sample_stats
            else float("nan")
        )
        frame = effects[
            ["dimension", "estimand", "alpha", "scope", "mean", "ess_bulk", "ess_tail", "r_hat"]
        ].copy()
        frame.insert(0, "sampler", name)
        frame["ess_bulk_per_s"] = frame["ess_bulk"] / wall
        frame["wall_s"] = wall
        frame["compile_s"] = timing["compile_s"]
        frame["divergences"] = div
        frame["steps_per_draw"] = steps
        frame["sampling_s"] = timing["sample_s"]
        frame["numba_opt"] = os.environ.get("NUMBA_OPT", "3")
        frame["tune"] = spec.sampler["tune"]
        frame["low_rank"] = bool(spec.sampler.get("low_rank_mass_matrix", False))
        frame["load_average_1min"] = load
        frames.append(frame)
        print(
            f"{name} (NUMBA_OPT {os.environ.get('NUMBA_OPT', '3')}, tune {spec.sampler['tune']}, "
            f"low-rank {args.low_rank}): wall {wall:.0f} s (compile {timing['compile_s']:.0f} s, "
            f"sampling {timing['sample_s']:.0f} s, {steps:.1f} steps/draw), divergences {div}, "
            f"min bulk ESS {frame['ess_bulk'].min():.0f}, "
            f"min tail ESS {frame['ess_tail'].min():.0f}, "
            f"max R-hat {frame['r_hat'].max():.3f}, min ESS/s {frame['ess_bulk_per_s'].min():.1f}, "
            f"load {load:.1f}",
            flush=True,
        )
    table = pd.concat(frames, ignore_index=True)
    target = out / "bench_latent.csv"
    table.to_csv(target, index=False, float_format="%.6g")
    print(f"wrote {target}")
    if len(frames) == 2:
        ratio = frames[0]["ess_bulk_per_s"].median() / frames[1]["ess_bulk_per_s"].median()
        print(f"median ESS/s ratio {args.samplers[0]} / {args.samplers[1]}: {ratio:.2f}")


if __name__ == "__main__":
    main()
