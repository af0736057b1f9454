"""Benchmark of the design engine (issue 17's performance targets; not a timed test).

1. OLS-only replicates per second on one core (in this process), at 32 communities x 30
   households, one dimension, four estimands, CR2 + wild bootstrap (399 draws) -- and
   CR2 only. Target: >= 100 per second per core.
2. Throughput of the Dask engine with 1 and 2 local workers on the same replicates
   (cluster start-up excluded). Target: 2 workers >= 1.8x one (on an idle machine).
3. Multilevel Bayes replicates (1,000 draws x 2 chains, target_accept 0.9): the first
   (compile) and the following ones (refed with CompiledModel.with_data). Target: <= 2 s
   each after the first compile.

    .venv/bin/python scripts/bench_design.py [--ols 400] [--dask 2000] [--bayes 4] [--csv F]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pandas as pd  # noqa: E402

from pari_bayes.design.engine import map_tasks, open_client, replicate_seeds  # noqa: E402
from pari_bayes.design.replicate import run_replicate  # noqa: E402
from pari_bayes.design.run import design_tasks  # noqa: E402
from pari_bayes.design.spec import parse_design  # noqa: E402


def _spec(replicates: int, tests=("cr2", "wild"), bayes: bool = False):
    raw = {
        "design": {
            "name": "bench",
            "seed": 1,
            "replicates": replicates,
            "dimensions": ["neighborly_interaction"],
        },
        "grid": {"communities": [32], "households": [30], "participation": [0.45]},
        "truth": {"neighborly_interaction": {"de": -0.28, "ie": 0.68, "icc": 0.05}},
        "estimators": {"ols": {"tests": list(tests), "bootstrap": 399}},
    }
    if bayes:
        raw["estimators"]["bayes"] = {
            "communities": [32],
            "replicates": replicates,
            "draws": 1000,
            "tune": 1000,
            "chains": 2,
            "target_accept": 0.9,
        }
    return parse_design(raw)


def bench_ols(n: int, tests) -> float:
    """Replicates per second in this process."""
    spec = _spec(n, tests)
    point, seeds = spec.points[0], replicate_seeds(spec.seed, n)
    start = time.perf_counter()
    for i, seed in enumerate(seeds):
        run_replicate(spec, point, i, seed)
    return n / (time.perf_counter() - start)


def bench_dask(n: int, workers: int) -> float:
    """Replicates per second through the engine, cluster start-up excluded."""
    spec = _spec(n)
    tasks = design_tasks(spec)
    with open_client(workers, quiet=True) as client:
        # warm the workers (imports) before timing
        list(map_tasks(run_replicate, tasks[:workers], client=client, progress=False))
        start = time.perf_counter()
        results = list(
            map_tasks(run_replicate, tasks, client=client, batch_size=25, progress=False)
        )
        seconds = time.perf_counter() - start
    assert all(r.error is None for r in results)
    return n / seconds


def bench_bayes(n: int) -> list[dict]:
    """Seconds of each Bayes replicate (the first includes compiling)."""
    spec = _spec(n, tests=("cr2",), bayes=True)
    point, seeds = spec.points[0], replicate_seeds(spec.seed, n)
    out = []
    for i, seed in enumerate(seeds):
        start = time.perf_counter()
        rows = run_replicate(spec, point, i, seed, bayes=True)
        bayes = [r for r in rows if r["estimator"] == "bayes"]
        out.append(
            {
                "replicate": i,
                "seconds": time.perf_counter() - start,
                "gate_passed": all(r["gate_passed"] for r in bayes),
                "error": bayes[0]["error"][:80],
            }
        )
        print(f"  bayes replicate {i}: {out[-1]['seconds']:.1f} s, gate {out[-1]['gate_passed']}")
    return out


def main() -> int:
    """Run the benchmarks and print (optionally write) the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ols", type=int, default=400, help="OLS replicates, one core")
    parser.add_argument("--dask", type=int, default=2000, help="OLS replicates through Dask")
    parser.add_argument("--bayes", type=int, default=4, help="Bayes replicates (0: skip)")
    parser.add_argument("--csv", default=None, help="write the numbers here")
    args = parser.parse_args()
    rows = []
    for tests in (("cr2", "wild"), ("cr2",)):
        rate = bench_ols(args.ols, tests)
        rows.append({"benchmark": f"ols {'+'.join(tests)}, 1 core", "value": rate, "unit": "rep/s"})
        print(f"OLS ({'+'.join(tests)}), one core, 32 x 30: {rate:.0f} replicates/s")
    if args.dask:
        one = bench_dask(args.dask, 1)
        two = bench_dask(args.dask, 2)
        print(f"Dask, 1 worker: {one:.0f} rep/s; 2 workers: {two:.0f} rep/s; ratio {two / one:.2f}")
        rows += [
            {"benchmark": "dask 1 worker", "value": one, "unit": "rep/s"},
            {"benchmark": "dask 2 workers", "value": two, "unit": "rep/s"},
            {"benchmark": "dask 2/1 ratio", "value": two / one, "unit": "x"},
        ]
    if args.bayes:
        fits = bench_bayes(args.bayes)
        first = fits[0]["seconds"]
        later = [f["seconds"] for f in fits[1:]]
        rows.append({"benchmark": "bayes first (compile)", "value": first, "unit": "s"})
        if later:
            mean = sum(later) / len(later)
            rows.append({"benchmark": "bayes after compile, mean", "value": mean, "unit": "s"})
            print(f"Bayes: first {first:.1f} s (compile), then {mean:.1f} s per replicate")
        passed = sum(f["gate_passed"] for f in fits)
        rows.append(
            {"benchmark": "bayes gate passed", "value": passed / len(fits), "unit": "share"}
        )
    if args.csv:
        pd.DataFrame(rows).to_csv(args.csv, index=False, float_format="%.4g")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
