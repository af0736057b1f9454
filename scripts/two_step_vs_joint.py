"""Two-step (PCA scores) versus joint latent model: bias and 90% coverage of DE and IE.

On surveys simulated by ``pari_bayes.simulate`` (287 households, the bundled registry, the
generator's default parameters with the unobserved confounder switched off so that every
method targets an identified effect) three estimators of DE and IE per dimension are run:

(a) PCA score (first component of the dimension's standardized items) + OLS;
(b) the same PCA score + Bayesian multilevel regression (community intercepts, nutpie);
(c) the joint latent model of ``models/latent.toml`` (nutpie).

Scales differ (PCA scores have sd 1; the latent factor has unit *residual* sd), so each
estimate is compared on the standardized scale: effect / sd of the outcome in the sample
(for (c) draw by draw, with the sd of the factor values of that draw); the truth is the
generator's latent DE/IE divided by the sd of the true factor values. Measurement error in
the scores attenuates (a) and (b) toward 0; (c) carries it in the model.

Usage: python scripts/two_step_vs_joint.py [--replicates 10] [--out docs/figures]
       [--deadline HH:MM]
Writes two_step_vs_joint_replicates.csv, two_step_vs_joint.csv, two_step_vs_joint.png.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

SAMPLER = {
    "name": "nutpie",
    "draws": 400,
    "tune": 400,
    "chains": 2,
    "cores": 2,
    "target_accept": 0.9,
    "low_rank_mass_matrix": False,
}


def simulate(seed: int):
    from pari_bayes.codebook import load_codebook
    from pari_bayes.registry import load_registry
    from pari_bayes.simulate import default_params, simulate_survey
    from pari_bayes.survey import validate_frame

    params = default_params()
    for dim in params["structural"].values():
        dim["gamma"] = 0.0
    # employment income per employed member, as the shipped spec models it (divided_by)
    params["items"]["per_capita_employment_income"]["per_employed"] = True
    sim = simulate_survey(287, params=params, seed=seed)
    return sim, validate_frame(sim.data, load_registry(), load_codebook())


def pca_scores(survey, dims) -> pd.DataFrame:
    data = survey.data
    out = {}
    for dim in dims:
        items = survey.codebook.indicators[dim]
        z = data[list(items)].astype(float)
        z = (z - z.mean()) / z.std(ddof=0)
        vals, vecs = np.linalg.eigh(np.corrcoef(z.to_numpy(), rowvar=False))
        v = vecs[:, -1] * np.sign(vecs[:, -1].sum())
        score = z.to_numpy() @ v
        out[dim] = (score - score.mean()) / score.std(ddof=0)
    return pd.DataFrame(out)


def ols_effects(scores, design, dims):
    import statsmodels.api as sm

    s_house = design.presence[design.community_index]
    X = sm.add_constant(np.column_stack([design.participation, s_house, design.x]))
    rows = []
    for dim in dims:
        fit = sm.OLS(scores[dim].to_numpy(), X).fit()
        for k, est in ((1, "DE"), (2, "IE")):
            # paper's coding: participation coefficient = TE... here a and s enter separately,
            # so the coefficient of a is DE and of s is IE
            b, se = fit.params[k], fit.bse[k]
            rows.append((dim, est, b, b - 1.645 * se, b + 1.645 * se))
    return rows


def multilevel_model(scores, design, dims):
    import pymc as pm
    import pytensor.tensor as pt

    n_c = len(design.communities)
    with pm.Model() as model:
        y = pm.Data("scores", scores[list(dims)].to_numpy())
        x = pm.Data("covariates", design.x)
        a = pm.Data("participation", design.participation)
        s = pm.Data("presence", design.presence)
        g = pm.Data("community_onehot", np.eye(n_c)[design.community_index])
        de = pm.Normal("direct_effect", 0, 1, shape=len(dims))
        ie = pm.Normal("spillover_effect", 0, 1, shape=len(dims))
        b0 = pm.Normal("intercept", 0, 1, shape=len(dims))
        beta = pm.Normal("beta", 0, 0.5, shape=(design.x.shape[1], len(dims)))
        tau = pm.HalfNormal("community_sd", 0.3, shape=len(dims))
        z = pm.Normal("community_z", 0, 1, shape=(n_c, len(dims)))
        comm = s[:, None] * ie[None, :] + tau * z
        mu = b0 + pt.dot(g, comm) + pt.dot(x, beta) + a[:, None] * de[None, :]
        sigma = pm.HalfNormal("sigma", 1, shape=len(dims))
        pm.Normal("y", mu, sigma, observed=y)
    return model


def interval(draws):
    return float(np.mean(draws)), float(np.quantile(draws, 0.05)), float(np.quantile(draws, 0.95))


def main() -> None:
    warnings.simplefilter("ignore")
    from pari_bayes._paths import MODELS_DIR
    from pari_bayes.estimation import latent as L

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=10)
    parser.add_argument("--out", default="docs/figures")
    parser.add_argument("--deadline", default=None)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = None
    if args.deadline:
        hh, mm = map(int, args.deadline.split(":"))
        deadline = dt.datetime.now(dt.UTC).replace(hour=hh, minute=mm, second=0, microsecond=0)
    spec = L.load_latent_spec(MODELS_DIR / "latent.toml")
    spec.sampler = dict(SAMPLER)
    dims = spec.factors
    adjustment = {d: L.FALLBACK_COVARIATES for d in dims}
    joint_c = ml_c = None
    rows = []
    t0 = time.perf_counter()
    for rep in range(args.replicates):
        if deadline is not None and dt.datetime.now(dt.UTC) > deadline:
            print("deadline reached; stopping", flush=True)
            break
        sim, survey = simulate(5000 + rep)
        design = L.latent_design(survey, spec, adjustment=adjustment)
        eta_true = sim.latent[list(dims)].to_numpy()
        truth = {
            (dim, est): sim.truth["effects_latent"][dim][est] / eta_true[:, d].std(ddof=0)
            for d, dim in enumerate(dims)
            for est in ("DE", "IE")
        }
        scores = pca_scores(survey, dims)
        for dim, est, m, lo, hi in ols_effects(scores, design, dims):
            rows.append(
                dict(
                    replicate=rep,
                    method="PCA + OLS",
                    dimension=dim,
                    estimand=est,
                    truth=truth[(dim, est)],
                    mean=m,
                    q05=lo,
                    q95=hi,
                )
            )
        common = {
            "covariates": design.x,
            "participation": design.participation,
            "presence": design.presence,
            "community_onehot": np.eye(len(design.communities))[design.community_index],
        }
        if ml_c is None:
            ml_c = L.compile_latent(multilevel_model(scores, design, dims))
        idata = L.sample_compiled(
            ml_c, SAMPLER, seed=rep, data={**common, "scores": scores[list(dims)].to_numpy()}
        )
        for d, dim in enumerate(dims):
            for var, est in (("direct_effect", "DE"), ("spillover_effect", "IE")):
                m, lo, hi = interval(idata.posterior[var].to_numpy()[..., d].ravel())
                rows.append(
                    dict(
                        replicate=rep,
                        method="PCA + multilevel Bayes",
                        dimension=dim,
                        estimand=est,
                        truth=truth[(dim, est)],
                        mean=m,
                        q05=lo,
                        q95=hi,
                    )
                )
        if joint_c is None:
            joint_c = L.compile_latent(L.build_latent_model(design, spec))
        idata = L.sample_compiled(
            joint_c, SAMPLER, seed=rep, data={**common, **L.data_updates(design.items)}
        )
        eta_sd = idata.posterior["eta"].std("household").to_numpy()  # (chain, draw, dim)
        div = int(idata.sample_stats["diverging"].sum())
        for d, dim in enumerate(dims):
            for var, est in (("direct_effect", "DE"), ("spillover_effect", "IE")):
                draws = (idata.posterior[var].to_numpy()[..., d] / eta_sd[..., d]).ravel()
                m, lo, hi = interval(draws)
                rows.append(
                    dict(
                        replicate=rep,
                        method="joint latent",
                        dimension=dim,
                        estimand=est,
                        truth=truth[(dim, est)],
                        mean=m,
                        q05=lo,
                        q95=hi,
                        divergences=div,
                    )
                )
        print(f"replicate {rep + 1} done, {time.perf_counter() - t0:.0f} s", flush=True)
    reps = pd.DataFrame(rows)
    reps["covered"] = (reps["q05"] <= reps["truth"]) & (reps["truth"] <= reps["q95"])
    reps["error"] = reps["mean"] - reps["truth"]
    reps.to_csv(out / "two_step_vs_joint_replicates.csv", index=False, float_format="%.6g")
    table = (
        reps.groupby(["method", "estimand"])
        .agg(
            replicates=("replicate", "nunique"),
            bias=("error", "mean"),
            relative_bias=("error", lambda e: float(np.mean(e / reps.loc[e.index, "truth"]))),
            rmse=("error", lambda e: float(np.sqrt(np.mean(e**2)))),
            coverage90=("covered", "mean"),
            interval_width=("q95", lambda q: float(np.mean(q - reps.loc[q.index, "q05"]))),
        )
        .reset_index()
    )
    table.to_csv(out / "two_step_vs_joint.csv", index=False, float_format="%.4f")
    print(table.to_string(index=False))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    methods = ["PCA + OLS", "PCA + multilevel Bayes", "joint latent"]
    for ax, est in zip(axes, ("DE", "IE"), strict=True):
        sub = table[table["estimand"] == est].set_index("method").reindex(methods)
        ax.bar(range(3), sub["relative_bias"], color=["C1", "C2", "C0"])
        for i, cov in enumerate(sub["coverage90"]):
            ax.text(i, 0, f"cov {cov:.0%}", ha="center", va="bottom", fontsize=8)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(3), methods, fontsize=8)
        ax.set_title(f"{est}: relative bias (standardized scale)", fontsize=9, pad=14)
    fig.suptitle(
        f"two-step vs joint, {reps['replicate'].nunique()} simulated surveys x 4 dimensions",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out / "two_step_vs_joint.png", dpi=120)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
