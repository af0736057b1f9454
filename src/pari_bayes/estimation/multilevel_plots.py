"""Plots of a multilevel fit (matplotlib, Agg backend): forest, PPC, prior sensitivity."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["forest_plot", "ppc_plot", "sensitivity_plot"]

_Z90 = 1.6449


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    from pari_bayes.io import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, metadata={"Software": None})


def forest_plot(result, path: Path, title_prefix: str = "") -> bool:
    """DE/IE/TE per dimension: Bayes 90% interval vs OLS (classical, cluster) vs published."""
    comp = result.comparison
    if comp is None or comp.empty:
        return False
    plt = _plt()
    dims = list(dict.fromkeys(comp["dimension"]))
    fig, axes = plt.subplots(1, 3, figsize=(12, 1.2 + 0.9 * len(dims)), sharey=True)
    for ax, est in zip(axes, ("DE", "IE", "TE"), strict=True):
        sub = comp[comp["estimand"] == est].set_index("dimension")
        for i, dim in enumerate(dims):
            if dim not in sub.index:
                continue
            r = sub.loc[dim]
            y = -i
            ax.plot([r["bayes_q05"], r["bayes_q95"]], [y + 0.2] * 2, color="C0", lw=2)
            ax.plot(
                r["bayes_mean"],
                y + 0.2,
                "o",
                color="C0",
                label="Bayes multilevel (90%)" if i == 0 else None,
            )
            if np.isfinite(r["ols_coef"]):
                ax.plot(
                    r["ols_coef"] + _Z90 * r["ols_se"] * np.array([-1, 1]),
                    [y] * 2,
                    color="C1",
                    lw=2,
                )
                ax.plot(
                    r["ols_coef"] + _Z90 * r["ols_se_cluster"] * np.array([-1, 1]),
                    [y - 0.08] * 2,
                    color="C1",
                    lw=1,
                    ls=":",
                )
                ax.plot(
                    r["ols_coef"],
                    y,
                    "s",
                    color="C1",
                    label="OLS (classical; dotted: cluster)" if i == 0 else None,
                )
            if np.isfinite(r["published_coef"]):
                if np.isfinite(r["published_se"]):
                    ax.plot(
                        r["published_coef"] + _Z90 * r["published_se"] * np.array([-1, 1]),
                        [y - 0.2] * 2,
                        color="C2",
                        lw=2,
                    )
                ax.plot(
                    r["published_coef"],
                    y - 0.2,
                    "D",
                    color="C2",
                    label="published Table 4" if i == 0 else None,
                )
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_title(est)
        ax.set_yticks([-i for i in range(len(dims))], dims)
    for ax in axes:
        ax.set_xlabel("effect on the standardized score (sd)", fontsize=9)
    fig.suptitle(f"{title_prefix}{result.spec.name}: effects on the integration scores")
    _legend_below(fig, axes[0])
    _save(fig, path)
    plt.close(fig)
    return True


def _legend_below(fig, ax) -> None:
    """One legend under the panels (never over a row of intervals), then the layout."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(
            handles,
            labels,
            loc="lower center",
            ncol=min(len(handles), 3),
            fontsize=9,
            frameon=False,
        )
    # Room at the bottom for the legend: about 0.45 in per legend row.
    rows = -(-len(handles) // 3) if handles else 0
    fig.tight_layout(rect=(0, min(0.4, 0.45 * rows / fig.get_size_inches()[1]), 1, 1))


def ppc_plot(result, path: Path, title_prefix: str = "") -> bool:
    """Observed score density vs 50 posterior predictive replicates, per dimension."""
    idata = result.idata
    if "posterior_predictive" not in idata.groups():
        return False
    plt = _plt()
    dims = list(idata.observed_data["y_obs"].coords["dimension"].values)
    fig, axes = plt.subplots(1, len(dims), figsize=(3.2 * len(dims), 3), squeeze=False)
    pp = idata.posterior_predictive["y_obs"].stack(sample=("chain", "draw"))
    rng = np.random.default_rng(0)
    pick = rng.choice(pp.sizes["sample"], size=min(50, pp.sizes["sample"]), replace=False)
    for ax, dim in zip(axes[0], dims, strict=True):
        obs = idata.observed_data["y_obs"].sel(dimension=dim).to_numpy()
        bins = np.linspace(min(obs.min(), -4), max(obs.max(), 4), 40)
        for j in pick:
            rep = pp.sel(dimension=dim).isel(sample=j).to_numpy()
            h, _ = np.histogram(rep, bins=bins, density=True)
            ax.step(bins[:-1], h, where="post", color="C0", alpha=0.08)
        h, _ = np.histogram(obs, bins=bins, density=True)
        ax.step(bins[:-1], h, where="post", color="k", lw=1.5, label="observed")
        ax.set_title(dim, fontsize=9)
        ax.set_xlabel("standardized score")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{title_prefix}posterior predictive check ({result.spec.name})")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def sensitivity_plot(result, path: Path, title_prefix: str = "") -> bool:
    """Effects (90% intervals) under each community-sd prior scale."""
    sens = result.sensitivity
    if sens is None or sens.empty:
        return False
    plt = _plt()
    dims = list(dict.fromkeys(sens["dimension"]))
    mults = sorted(sens["prior_scale_multiplier"].unique())
    fig, axes = plt.subplots(1, 3, figsize=(12, 1.2 + 0.9 * len(dims)), sharey=True)
    for ax, est in zip(axes, ("DE", "IE", "TE"), strict=True):
        sub = sens[sens["estimand"] == est]
        for i, dim in enumerate(dims):
            for j, m in enumerate(mults):
                r = sub[(sub["dimension"] == dim) & (sub["prior_scale_multiplier"] == m)]
                if r.empty:
                    continue
                r = r.iloc[0]
                y = -i + 0.25 - 0.5 * j / max(len(mults) - 1, 1)
                ax.plot([r["q05"], r["q95"]], [y, y], color=f"C{j}", lw=2)
                ax.plot(
                    r["mean"],
                    y,
                    "o",
                    color=f"C{j}",
                    label=f"tau prior sd x{m:g} ({r['community_sd_prior_sigma']:.3g})"
                    if i == 0
                    else None,
                )
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_title(est)
        ax.set_yticks([-i for i in range(len(dims))], dims)
    for ax in axes:
        ax.set_xlabel("effect on the standardized score (sd)", fontsize=9)
    fig.suptitle(f"{title_prefix}prior sensitivity: community-sd prior scale ({result.spec.name})")
    _legend_below(fig, axes[0])
    _save(fig, path)
    plt.close(fig)
    return True
