"""Figures of the report: forest plots per scale, the causal graph; PNG bytes in memory.

Sized for the report's 1,100 px column at 100 dpi (figure width 11 in), so a font of
``FONT`` points is drawn at ``FONT * 100 / 72`` px: 10 pt is about 14 px at 1280 px.
Rows that are not a finding (a fit that failed the gate, an effect the causal graph does
not identify, a weakly measured latent factor) are drawn hollow and labelled.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from pari_bayes.identification.dag_plot import dag_png, figure_png, pyplot
from pari_bayes.io import atomic_write_bytes

__all__ = ["FONT", "forest_figures", "forest_png", "dag_png", "write_forest_plot"]

#: Smallest font (points) of every report figure.
FONT = 10
_TOP_IN = 0.95  # figure title and two-line panel titles
_BOTTOM_IN = 1.2  # tick labels, the x-axis label and the legend
_WIDTH_IN = 11.0
#: Methods drawn in the forest plots, by panel group (CR2 intervals on 2 + 2 communities
#: are too narrow to draw beside the others; they stay in the Table 4 section).
PCA_METHODS = ("ols", "bayes:table4", "bayes:multivariate", "bayes:formula")
LATENT_METHODS = ("bayes:latent",)
_COLORS = {
    "ols": "#7f7f7f",
    "ols_dag_cr2": "#bcbd22",
    "bayes:table4": "#1f77b4",
    "bayes:multivariate": "#9467bd",
    "bayes:formula": "#17becf",
    "bayes:latent": "#d62728",
    "ipw": "#ff7f0e",
}


#: Agg pyplot and PNG bytes at 100 dpi: the causal graph's helpers (one figure style).
_plt, _png = pyplot, figure_png


def _select(effects: pd.DataFrame, alpha: float | None) -> pd.DataFrame:
    obs = effects[effects["scope"] == "observed"].copy()
    keep = obs["estimand"].isin(["DE", "IE", "TE"])
    if alpha is not None:
        keep |= (obs["estimand"] == "OE") & np.isclose(
            pd.to_numeric(obs["alpha"], errors="coerce"), alpha, atol=1e-6
        )
    return obs[keep]


def forest_png(
    effects: pd.DataFrame,
    methods: tuple[str, ...] | list[str],
    title: str,
    xlabel: str,
    *,
    alpha: float | None,
    identified: dict[tuple[str, str], bool] | None = None,
    failed: set[str] | frozenset[str] = frozenset(),
    weak: dict[str, float] | None = None,
) -> bytes | None:
    """Draw one forest plot: a panel per estimand, rows per dimension and method.

    DE, IE, TE and OE at ``alpha``, 90% intervals.

    Parameters
    ----------
    effects
        Rows in the :data:`pari_bayes.effects.EFFECT_COLUMNS` schema.
    methods
        Methods to draw (others are left out), in legend order.
    title, xlabel
        Figure title; x-axis label with units.
    alpha
        OE's participation share (OE is left out without one).
    identified
        ``(dimension, estimand) -> identified by the causal graph``; rows not identified
        are hollow and labelled "assumption".
    failed
        Methods whose fit failed the convergence gate (hollow, labelled "not converged").
    weak
        Latent factors weakly measured (dimension -> information): hollow, labelled.

    Returns
    -------
    bytes or None
        The PNG, or ``None`` when no row of ``methods`` is there.
    """
    sub = _select(effects, alpha)
    sub = sub[sub["method"].isin(methods)]
    if sub.empty:
        return None
    identified = identified or {}
    weak = weak or {}
    plt = _plt()
    dims = list(dict.fromkeys(sub["dimension"]))
    present = [m for m in methods if m in set(sub["method"])]
    estimands = [e for e in ("DE", "IE", "TE", "OE") if e in set(sub["estimand"])]
    # one row per dimension (its name, bold) followed by a row per method
    failed_rows = {
        (r.dimension, r.method)
        for r in sub.itertuples(index=False)
        if r.method.split(":")[-1] in failed or "UNCONVERGED" in str(r.note).upper()
    }
    ypos: dict[tuple[str, str], float] = {}
    ticks: list[tuple[float, str, bool]] = []
    y = 0.0
    single = len(present) == 1  # one method: the dimension is the row's label
    for dim in dims:
        if not single:
            ticks.append((y, dim.replace("_", " "), True))
            y += 0.8
        for method in present:
            ypos[(dim, method)] = y
            flag = []
            if (dim, method) in failed_rows:
                flag.append("not converged")
            if method == "bayes:latent" and dim in weak:
                flag.append("weakly measured")
            name = dim.replace("_", " ") if single else method
            ticks.append((y, name + (f" ({', '.join(flag)})" if flag else ""), False))
            y += 1
        y += 0.3 if not single else 0.0
    fig, axes = plt.subplots(
        1,
        len(estimands),
        figsize=(_WIDTH_IN, _TOP_IN + 0.3 * y + 0.3 + _BOTTOM_IN),
        sharey=True,
        squeeze=False,
    )
    axes = axes[0]
    for ax, estimand in zip(axes, estimands, strict=True):
        est = sub[sub["estimand"] == estimand]
        for row in est.itertuples(index=False):
            yy = ypos[(row.dimension, row.method)]
            reasons = []
            if row.method.split(":")[-1] in failed or "UNCONVERGED" in str(row.note).upper():
                reasons.append("not converged")
            if identified.get((row.dimension, estimand)) is False:
                reasons.append("assumption")
            if row.method == "bayes:latent" and row.dimension in weak:
                reasons.append("weakly measured")
            color = _COLORS.get(row.method, "#333333")
            hollow = bool(reasons)
            bars = ax.errorbar(
                row.mean,
                yy,
                xerr=[[row.mean - row.q05], [row.q95 - row.mean]],
                fmt="o",
                color=color,
                mfc="white" if hollow else color,
                ms=6,
                capsize=2,
                lw=1.2,
            )
            if "not converged" in reasons:
                bars[2][0].set_linestyle("--")
        ax.axvline(0, color="grey", lw=0.8)
        ax.grid(axis="x", alpha=0.3)
        ok = [identified.get((d, estimand)) for d in dims]
        tag = (
            ""
            if not identified
            else ("\nidentified by the graph" if all(ok) else "\nrests on assumption")
        )
        name = f"OE (alpha = {alpha:.2f})" if estimand == "OE" else estimand
        ax.set_title(name + tag, fontsize=FONT + 1)
        ax.tick_params(axis="x", labelsize=FONT)
    axes[0].set_yticks([t[0] for t in ticks], [t[1] for t in ticks], fontsize=FONT)
    for label, (_, _, bold) in zip(axes[0].get_yticklabels(), ticks, strict=True):
        if bold:
            label.set_fontweight("bold")
            label.set_fontsize(FONT + 1)
        elif "(" in label.get_text():
            label.set_color("#b30000")
    axes[0].set_ylim(y - 0.3, -0.6)  # first row on top
    height = fig.get_figheight()
    left = 0.35 + 0.085 * max(len(t[1]) for t in ticks)  # inches for the row labels
    fig.subplots_adjust(
        left=left / _WIDTH_IN,
        right=1 - 0.2 / _WIDTH_IN,
        top=1 - _TOP_IN / height,
        bottom=_BOTTOM_IN / height,
        wspace=0.15,
    )
    fig.supxlabel(xlabel + " (90% interval)", fontsize=FONT + 1, y=0.75 / height, va="center")
    handles = [
        plt.Line2D([], [], marker="o", ls="-", color=_COLORS.get(m, "#333333"), label=m)
        for m in present
    ]
    handles.append(
        plt.Line2D(
            [],
            [],
            marker="o",
            ls="",
            color="#333333",
            mfc="white",
            label="hollow: not identified by the graph, not converged or weakly measured",
        )
    )
    fig.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, 0.02),
        ncol=len(handles),
        fontsize=FONT,
        frameon=False,
        handlelength=1.5,
        columnspacing=1.2,
    )
    fig.suptitle(title, fontsize=FONT + 2, y=1 - 0.08 / height, va="top")
    return _png(fig)


def forest_figures(
    effects: pd.DataFrame,
    *,
    alpha: float | None,
    identified: dict[tuple[str, str], bool] | None = None,
    failed: set[str] | frozenset[str] = frozenset(),
    weak: dict[str, float] | None = None,
) -> list[tuple[str, bytes]]:
    """Draw the report's forest plots: PCA-score scale, latent scale, IPW on its own.

    Returns
    -------
    list of (caption, PNG bytes)
    """
    common = {"alpha": alpha, "identified": identified, "failed": failed, "weak": weak}
    out = []
    for caption, methods, title, xlabel in (
        (
            "PCA-score scale: OLS (classical SEs, as the paper) and the multilevel models.",
            PCA_METHODS,
            "Effects on the PCA-score scale (90% intervals)",
            "effect, sd of the PCA score",
        ),
        (
            "Latent-factor scale: the joint measurement and structural model.",
            LATENT_METHODS,
            "Effects on the latent-factor scale (90% intervals)",
            "effect, sd of household disturbance",
        ),
        (
            "IPW under partial interference (PCA-score scale; with 4 communities its "
            "intervals are descriptive only, hence its own axis).",
            ("ipw",),
            "IPW (descriptive: sandwich SEs on 4 communities)",
            "effect, sd of the PCA score",
        ),
    ):
        png = forest_png(effects, methods, title, xlabel, **common)
        if png is not None:
            out.append((caption, png))
    return out


def write_forest_plot(effects: pd.DataFrame, path: str | os.PathLike, alpha=None) -> Path:
    """Write ``effects_forest.png`` of the main job: the PCA-score-scale forest plot."""
    png = forest_png(
        effects,
        PCA_METHODS,
        "Effects on the PCA-score scale (90% intervals; the report has the other scales)",
        "effect, sd of the PCA score",
        alpha=alpha,
    )
    if png is None:
        png = _empty_png()
    return atomic_write_bytes(path, png)


def _empty_png() -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 1))
    ax.axis("off")
    ax.text(0.5, 0.5, "no effects", ha="center", va="center", fontsize=FONT)
    return _png(fig)
