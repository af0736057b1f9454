"""Power curves: power (or assurance) against the number of communities, one panel per estimand."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from pari_bayes.io import atomic_path

__all__ = ["plot_power_curves"]

_STYLE = {
    "ols_cr2": ("#4c72b0", "o", "OLS, CR2 t-test"),
    "ols_wild": ("#55a868", "s", "OLS, wild cluster bootstrap"),
    "bayes": ("#c44e52", "D", "multilevel Bayes (assurance)"),
}


def plot_power_curves(
    table: pd.DataFrame,
    path: str | os.PathLike,
    target: float = 0.8,
    title: str = "",
) -> None:
    """Write the power-curve figure (PNG) of a diagnosands table.

    Parameters
    ----------
    table
        ``diagnosands.csv`` (columns communities, dimension, estimand, estimator, power,
        power_se, optionally analytic_power).
    path
        PNG to write (atomically).
    target
        Target power (dashed line).
    title
        Figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys(zip(table["dimension"], table["estimand"], strict=True)))
    ncol = min(len(panels), 4)
    nrow = int(np.ceil(len(panels) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.4 * nrow), squeeze=False)
    for ax, (dim, estimand) in zip(axes.ravel(), panels, strict=False):
        sub = table[(table["dimension"] == dim) & (table["estimand"] == estimand)]
        others = [c for c in ("cbo_share", "households", "participation") if sub[c].nunique() > 1]
        for keys, curve in sub.groupby(["estimator", *others], sort=False):
            keys = keys if isinstance(keys, tuple) else (keys,)
            estimator = keys[0]
            color, marker, name = _STYLE.get(estimator, ("#777777", "^", estimator))
            label = name + "".join(f", {k}={v:g}" for k, v in zip(others, keys[1:], strict=True))
            curve = curve.sort_values("communities")
            ax.errorbar(
                curve["communities"],
                curve["power"],
                yerr=2 * curve["power_se"],
                color=color,
                marker=marker,
                ms=4,
                capsize=3,
                lw=1.2,
                label=label + " (+-2 MC SE)",
            )
            if (
                estimator == "ols_cr2"
                and "analytic_power" in curve
                and curve["analytic_power"].notna().any()
            ):
                ax.plot(
                    curve["communities"],
                    curve["analytic_power"],
                    color="k",
                    ls=":",
                    lw=1.2,
                    label="closed form (Baird et al. 2018 / design effect)",
                )
        ax.axhline(target, color="grey", ls="--", lw=1)
        ax.set_xscale("log", base=2)
        ticks = sorted(sub["communities"].unique())
        ax.set_xticks(ticks, [str(int(t)) for t in ticks])
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("communities surveyed")
        ax.set_ylabel("power / assurance")
        ax.set_title(f"{estimand} on {dim}")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(panels) :]:
        ax.set_visible(False)
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * (len(labels) // 2), 1, 1))
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
