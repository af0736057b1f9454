"""Scaling curve: every shipped spec at 300, 1,200, 5,000 and 15,000 households.

Communities grow with the survey (25 households per community on average: 12, 48, 200
and 600 communities, half of them with CBOs); everything else is the robustness suite's
``base`` design (:mod:`pari_bayes.scenarios`, the independent generator). Each spec is
fitted once per size as written (rung 0 of the escalation ladder, no escalation: this is a
benchmark of the shipped settings) through the package's lifecycle, and the script prints
and writes per spec and size:

- wall time of the fit (``fit_s``: design, compile, sampling, effects, files), the compile
  time (``compile_s``: nutpie's numba compilation of the log-density and its gradient) and
  the sampling time (``sampling_s``: tuning and draws of all chains);
- leapfrog steps per draw (``steps_per_draw``, mean over tuning-free draws and chains) and
  the cost of one gradient evaluation (``ms_per_gradient`` = sampling time x cores /
  total leapfrog steps), which splits sampling time into "harder geometry" (more steps) and
  "bigger model" (dearer gradients);
- the gate (passed, divergences, worst R-hat, min bulk ESS) and the min bulk ESS per second
  of wall time;
- per spec, the log-log slope of wall time against households (1 = linear).

Usage::

    .venv/bin/python scripts/bench_scaling.py                       # all sizes, all specs
    .venv/bin/python scripts/bench_scaling.py --sizes 300 1200 --specs table4 latent
    .venv/bin/python scripts/bench_scaling.py --out docs/bench_scaling.csv --append

Run it on an otherwise idle machine (nothing else fitting): timings on shared cores are
not comparable. The machine load at the start of each fit is written beside it.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import pari_bayes as pb  # noqa: E402
from pari_bayes._paths import PROJECT_ROOT  # noqa: E402
from pari_bayes.scenarios import Scenario, write_scenario  # noqa: E402

SIZES = (300, 1200, 5000, 15000)
HOUSEHOLDS_PER_COMMUNITY = 25
SPECS = {
    name: PROJECT_ROOT / "models" / f"{name}.toml" for name in ("table4", "multivariate", "latent")
}
DAG = PROJECT_ROOT / "models" / "dag.dot"


def scaling_scenario(n_households: int, seed: int = 1) -> Scenario:
    """Return the ``base`` design at ``n_households``, 25 households per community."""
    n_comm = max(4, round(n_households / HOUSEHOLDS_PER_COMMUNITY))
    return Scenario(
        f"scale{n_households}",
        n_households=n_households,
        n_communities=n_comm,
        n_cbo_communities=n_comm // 2,
        seed=seed,
        description=f"scaling curve: {n_households} households, {n_comm} communities",
    )


def _timings(result: Any) -> dict[str, float]:
    """Compile and sampling seconds of a multilevel (``timings``) or latent (``timing``) fit."""
    own = getattr(result, "timings", None) or getattr(result, "timing", None) or {}
    sampling = own.get("sampling_s", own.get("sample_s", math.nan))
    return {"compile_s": float(own.get("compile_s", math.nan)), "sampling_s": float(sampling)}


def _steps(idata: Any) -> float:
    """Mean leapfrog steps per draw over chains (``n_steps`` of nutpie and PyMC)."""
    stats = getattr(idata, "sample_stats", None)
    if stats is None or "n_steps" not in stats:
        return math.nan
    return float(stats["n_steps"].mean())


def bench_one(
    spec_name: str, n_households: int, seed: int, workdir: Path, quick: bool = False
) -> dict[str, Any]:
    """Simulate the size's survey, fit one spec at rung 0, and return one row of timings.

    ``quick`` uses the package's tiny wiring draws (tests only: no timing, no gate).
    """
    from pari_bayes.estimation.fitting import QUICK_SAMPLER, _sampler_settings, fit_spec_file

    scenario = scaling_scenario(n_households)
    out = workdir / scenario.name
    paths, _ = write_scenario(scenario, out)
    survey = pb.load_survey(paths["survey"], communities=paths["communities"])
    identification = pb.identify(survey, dag=DAG, seed=seed, refute=False)
    spec = pb.load_spec(SPECS[spec_name])
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_spec_file(
            survey,
            spec,
            out / spec.name,
            seed=seed,
            escalate=False,
            quick=quick,
            identification=identification,
            allow_unconverged=True,
        )
    fit_s = time.perf_counter() - start
    gate, result = fit.gate, fit.result
    timing = _timings(result)
    idata = getattr(result, "idata", None)
    steps = _steps(idata)
    n_draws_total = math.nan
    chains = 1
    if idata is not None and "posterior" in idata.groups():
        chains = int(idata.posterior.sizes["chain"])
        n_draws_total = chains * int(idata.posterior.sizes["draw"])
    tune = QUICK_SAMPLER["tune"] if quick else _sampler_settings(spec)["tune"]
    # every chain's tuning and draws cost about the same steps per iteration
    grad_evals = steps * (n_draws_total + chains * tune)
    cores = min(chains, os.cpu_count() or 1)
    # the gated quantities: the effect rows (parameters outside the gate, e.g. disturbance
    # correlations, are reported apart and do not decide the gate)
    min_ess = float(gate.get("effects_min_ess_bulk") or math.inf)
    row = {
        "spec": spec.name,
        "n_households": n_households,
        "n_communities": scenario.n_communities,
        "fit_s": round(fit_s, 2),
        "compile_s": round(timing["compile_s"], 2),
        "sampling_s": round(timing["sampling_s"], 2),
        "steps_per_draw": round(steps, 2),
        "ms_per_gradient": round(1e3 * timing["sampling_s"] * cores / grad_evals, 4)
        if grad_evals and not math.isnan(grad_evals)
        else math.nan,
        "gate_passed": bool(gate["passed"]),
        "divergences": gate.get("divergences"),
        "max_r_hat": float(gate.get("effects_max_r_hat") or math.nan),
        "params_max_r_hat": float(gate.get("params_max_r_hat") or math.nan),
        "min_ess_bulk": min_ess,
        "min_ess_bulk_per_s": round(min_ess / fit_s, 3) if math.isfinite(min_ess) else math.nan,
        "reason": str(gate.get("reason") or ""),
        "load_average_1min": round(load, 2),
        "cpu_count": os.cpu_count(),
    }
    for nc in (out / spec.name).glob("*.nc"):
        nc.unlink()
    return row


def slopes(table: pd.DataFrame) -> pd.DataFrame:
    """Log-log slope of fit time against households, per spec (needs >= 2 sizes)."""
    rows = []
    for spec, part in table.groupby("spec", sort=False):
        part = part.dropna(subset=["fit_s"])
        if part["n_households"].nunique() < 2:
            continue
        slope = np.polyfit(np.log(part["n_households"]), np.log(part["fit_s"]), 1)[0]
        rows.append({"spec": spec, "sizes": part["n_households"].nunique(), "slope": slope})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--specs", nargs="+", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--out", default="bench_scaling.csv")
    parser.add_argument(
        "--append",
        action="store_true",
        help="add to --out (replacing rows of the same spec and size)",
    )
    parser.add_argument("--workdir", default=None, help="where the simulated surveys go")
    parser.add_argument("--quick", action="store_true", help="tiny draws: wiring check only")
    args = parser.parse_args(argv)
    out = Path(args.out)
    previous = pd.read_csv(out) if args.append and out.exists() else pd.DataFrame()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="pari_scaling_"))
    rows = []
    for n in args.sizes:
        for name in args.specs:
            row = bench_one(name, n, args.seed, workdir, quick=args.quick)
            rows.append(row)
            print(
                f"{row['spec']:>12} n={n:>6} ({row['n_communities']} comm.): "
                f"fit {row['fit_s']:.0f} s "
                f"(compile {row['compile_s']:.0f}, sampling {row['sampling_s']:.0f}), "
                f"{row['steps_per_draw']:.1f} steps/draw, "
                f"{row['ms_per_gradient']:.3g} ms/gradient, "
                f"gate {'passed' if row['gate_passed'] else 'FAILED'} (div {row['divergences']}, "
                f"R-hat {row['max_r_hat']:.3f}, ESS {row['min_ess_bulk']:.0f}, "
                f"{row['min_ess_bulk_per_s']:.2f} ESS/s), load {row['load_average_1min']}",
                flush=True,
            )
            _write(previous, rows, out)  # after every fit: a stopped run keeps its rows
    table = _write(previous, rows, out)
    slope = slopes(table)
    if not slope.empty:
        print("\nlog-log slope of fit time vs households:")
        print(slope.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    print(f"wrote {out}")
    return 0 if table["gate_passed"].all() else 3


def _write(previous: pd.DataFrame, rows: list[dict[str, Any]], out: Path) -> pd.DataFrame:
    """Write the rows so far (replacing rows of ``previous`` of the same spec and size)."""
    table = pd.DataFrame(rows)
    if not previous.empty:
        keep = ~previous.set_index(["spec", "n_households"]).index.isin(
            table.set_index(["spec", "n_households"]).index
        )
        table = pd.concat([previous[keep], table], ignore_index=True)
    table = table.sort_values(["spec", "n_households"], kind="stable")
    table.to_csv(out, index=False)
    return table


if __name__ == "__main__":
    sys.exit(main())
