"""Simulation-based calibration (Talts et al. 2018) of the joint latent model, reduced size.

Reduced model: 2 factors, 6 items (per factor two ordinal items and one binomial count),
120 households in 4 communities (2 with CBOs). Each replicate draws every parameter from
the priors, simulates answers, fits the model (compiled once per worker; data swapped in)
and records the rank of the true DE and IE of each factor among thinned posterior draws.
Replicates run on the project's replicate engine (``pari_bayes.design.engine``: Dask
workers, one compiled model per worker, each with its own PyTensor compile directory).

Usage: python scripts/sbc_latent.py [--replicates 100] [--workers 2] [--out docs/figures]
       [--scheduler ADDR] [--deadline HH:MM (UTC; stop starting new replicates after it)]
Writes sbc_latent_ranks.csv, sbc_latent_uniformity.csv, sbc_latent.png.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

SPEC = {
    "kind": "latent",
    "name": "sbc_reduced",
    "factors": {"names": ["f1", "f2"]},
    "items": [
        {"name": "a1", "type": "ordinal", "factor": "f1", "levels": [1, 2, 3]},
        {"name": "a2", "type": "ordinal", "factor": "f1", "levels": [1, 2]},
        {"name": "a3", "type": "binomial", "factor": "f1", "trials": 9},
        {"name": "b1", "type": "ordinal", "factor": "f2", "levels": [1, 2, 3]},
        {"name": "b2", "type": "ordinal", "factor": "f2", "levels": [1, 2, 3, 4, 5]},
        {"name": "b3", "type": "binomial", "factor": "f2", "trials": 5},
    ],
    "structural": {"covariates": ["x1", "x2"]},
    "sampler": {"draws": 200, "tune": 300, "chains": 2, "cores": 1, "target_accept": 0.9},
}
N_HOUSEHOLDS = 120
THIN = 4


def reduced_design(seed: int = 7):
    from pari_bayes.estimation import latent as L

    rng = np.random.default_rng(seed)
    comm = np.array(["C1", "C2", "C3", "C4"])[np.arange(N_HOUSEHOLDS) % 4]
    presence = np.isin(comm, ["C2", "C3"]).astype(int)
    frame = pd.DataFrame(
        {
            "household_id": [f"S{i:03d}" for i in range(N_HOUSEHOLDS)],
            "community": comm,
            "cbo_presence": presence,
            "cbo_participation": presence * (rng.random(N_HOUSEHOLDS) < 0.5),
            "x1": rng.normal(size=N_HOUSEHOLDS),
            "x2": rng.integers(0, 2, N_HOUSEHOLDS),
            "a1": rng.integers(1, 4, N_HOUSEHOLDS),
            "a2": rng.integers(1, 3, N_HOUSEHOLDS),
            "a3": rng.integers(0, 10, N_HOUSEHOLDS),
            "b1": rng.integers(1, 4, N_HOUSEHOLDS),
            "b2": rng.integers(1, 6, N_HOUSEHOLDS),
            "b3": rng.integers(0, 6, N_HOUSEHOLDS),
        }
    )
    spec = L.parse_latent_spec(SPEC, source="sbc_latent.py")
    design = L.latent_design(SimpleNamespace(data=frame, registry=None), spec)
    return spec, design


def _build() -> tuple:
    """Build the reduced design and compile its model (once per worker: worker_cache)."""
    warnings.simplefilter("ignore")
    from pari_bayes.estimation import latent as L

    spec, design = reduced_design()
    return spec, design, L.compile_latent(L.build_latent_model(design, spec))


def replicate(rep: int) -> list[dict]:
    from pari_bayes.design.engine import worker_cache
    from pari_bayes.estimation import latent as L

    spec, design, compiled = worker_cache("sbc_latent", _build)
    rng = np.random.default_rng(1000 + rep)
    items, truth = L.simulate_from_prior(design, spec, rng)
    t0 = time.perf_counter()
    idata = L.sample_compiled(compiled, spec.sampler, seed=1000 + rep, data=L.data_updates(items))
    secs = time.perf_counter() - t0
    div = int(idata.sample_stats["diverging"].sum())
    rows = []
    for var, label in (("direct_effect", "DE"), ("spillover_effect", "IE")):
        draws = idata.posterior[var].to_numpy()[:, ::THIN, :].reshape(-1, len(spec.factors))
        for d, dim in enumerate(spec.factors):
            rows.append(
                {
                    "replicate": rep,
                    "parameter": f"{label}[{dim}]",
                    "truth": truth[var][d],
                    "rank": int((draws[:, d] < truth[var][d]).sum()),
                    "n_draws": draws.shape[0],
                    "divergences": div,
                    "seconds": secs,
                }
            )
    return rows


def uniformity(ranks: pd.DataFrame, bins: int = 10) -> pd.DataFrame:
    from scipy import stats

    out = []
    for name, grp in ranks.groupby("parameter"):
        n_draws = int(grp["n_draws"].iloc[0])
        edges = np.linspace(0, n_draws + 1, bins + 1)
        counts, _ = np.histogram(grp["rank"], bins=edges)
        chi2, p = stats.chisquare(counts)
        out.append(
            {"parameter": name, "replicates": len(grp), "chi2": chi2, "df": bins - 1, "p_value": p}
        )
    return pd.DataFrame(out)


def plot(ranks: pd.DataFrame, path: Path, bins: int = 10) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    names = sorted(ranks["parameter"].unique())
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 2.8), sharey=True)
    for ax, name in zip(np.atleast_1d(axes), names, strict=False):
        grp = ranks[ranks["parameter"] == name]
        n_draws = int(grp["n_draws"].iloc[0])
        ax.hist(
            grp["rank"], bins=np.linspace(0, n_draws + 1, bins + 1), color="C0", edgecolor="white"
        )
        expected = len(grp) / bins
        lo, hi = stats.binom.ppf([0.005, 0.995], len(grp), 1 / bins)
        ax.axhspan(lo, hi, color="grey", alpha=0.25)
        ax.axhline(expected, color="k", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("rank")
    np.atleast_1d(axes)[0].set_ylabel("replicates")
    fig.suptitle(
        f"SBC rank histograms ({ranks['replicate'].nunique()} replicates; band: 99% of uniform)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scheduler", default=None, help="a running dask scheduler's address")
    parser.add_argument("--out", default="docs/figures")
    parser.add_argument("--deadline", default=None, help="HH:MM UTC: start no replicate after it")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = None
    if args.deadline:
        hh, mm = map(int, args.deadline.split(":"))
        now = dt.datetime.now(dt.UTC)
        deadline = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    t0 = time.perf_counter()
    from pari_bayes.design.engine import Task, map_tasks

    rows: list[dict] = []
    tasks = [Task(f"r{rep}", (rep,)) for rep in range(args.replicates)]
    results = map_tasks(
        replicate, tasks, workers=args.workers, scheduler=args.scheduler, label="sbc"
    )
    for result in results:
        if result.error is not None:
            print(f"{result.key} failed:\n{result.error}", flush=True)
            continue
        rows.extend(result.value)
        if deadline is not None and dt.datetime.now(dt.UTC) > deadline:
            print("deadline reached; stopping", flush=True)
            results.close()  # cancels the replicates not started
            break
    print(f"{len({r['replicate'] for r in rows})} replicates, {time.perf_counter() - t0:.0f} s")
    ranks = pd.DataFrame(rows).sort_values(["replicate", "parameter"])
    ranks.to_csv(out / "sbc_latent_ranks.csv", index=False, float_format="%.6g")
    table = uniformity(ranks)
    table.to_csv(out / "sbc_latent_uniformity.csv", index=False, float_format="%.6g")
    plot(ranks, out / "sbc_latent.png")
    print(table.to_string(index=False))
    print(
        "replicates with divergences: "
        f"{ranks.groupby('replicate')['divergences'].first().gt(0).sum()}"
    )
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
