"""Time one log-density + gradient evaluation of the latent model, and where it goes.

nutpie samples the numba function PyTensor compiles from the model's joined log density and
gradient; this script compiles that function as nutpie does (``compile_latent``), evaluates
it ``--evals`` times at a random point near the origin and prints the minimum and the 10th
percentile of the per-evaluation times (robust to a shared machine: a preempted evaluation
is slow, never fast), the number of nodes of the compiled graph and the most common ops.

``--variant no-community-marginal`` replaces the structural density with the community
deviations integrated out (``multilevel.marginal_loglik``) by a plain unit Gaussian of the
same residuals, so the difference is that part's cost; everything else is the shipped model.

Usage: python scripts/bench_latent_gradient.py [--variant shipped|no-community-marginal]
    [--evals 4000] [--data survey.csv --communities communities.toml]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections import Counter

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

VARIANTS = ("shipped", "no-community-marginal")


def _op_name(node) -> str:
    name = type(node.op).__name__
    if name == "Elemwise":
        name = f"Elemwise:{type(node.op.scalar_op).__name__}"
    return name


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print one summary line and the op counts."""
    warnings.simplefilter("ignore")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=VARIANTS, default="shipped")
    parser.add_argument("--evals", type=int, default=4000)
    parser.add_argument("--data", default=None, help="survey CSV (default: the bundled one)")
    parser.add_argument("--communities", default=None, help="registry TOML for --data")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    from pari_bayes._paths import MODELS_DIR
    from pari_bayes.estimation import latent as L
    from pari_bayes.survey import load_survey

    if args.variant == "no-community-marginal":
        import pytensor.tensor as pt

        def plain_gaussian(resid, *_args, **_kwargs):
            return -0.5 * pt.sum(resid**2)

        L.marginal_loglik = plain_gaussian  # the structural part's name in latent.py
    survey = load_survey(args.data, communities=args.communities) if args.data else load_survey()
    spec = L.load_latent_spec(MODELS_DIR / "latent.toml")
    design = L.latent_design(survey, spec)
    model = L.build_latent_model(design, spec)
    start = time.perf_counter()
    compiled = L.compile_latent(model)
    compile_s = time.perf_counter() - start
    fn = compiled.logp_func.vm.jit_fn
    shared = [compiled.shared_data[v.name] for v in compiled.logp_func.get_shared()]
    point = np.random.default_rng(args.seed).normal(size=compiled.n_dim) * 0.1
    for _ in range(100):  # warm-up
        fn(point, *shared)
    times = np.empty(args.evals)
    for i in range(args.evals):
        t0 = time.perf_counter()
        fn(point, *shared)
        times[i] = time.perf_counter() - t0
    nodes = list(compiled.logp_func.maker.fgraph.apply_nodes)
    print(
        f"{args.variant}: {design.n} households, {compiled.n_dim} parameters, "
        f"{len(nodes)} graph nodes, compile {compile_s:.0f} s; logp + gradient "
        f"min {1e3 * times.min():.3f} ms, p10 {1e3 * np.percentile(times, 10):.3f} ms, "
        f"median {1e3 * np.median(times):.3f} ms (load {os.getloadavg()[0]:.1f})"
    )
    top = Counter(_op_name(n) for n in nodes).most_common(12)
    print("most common ops: " + ", ".join(f"{name} {count}" for name, count in top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
