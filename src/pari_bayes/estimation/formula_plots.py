"""Plot of a formula fit's conditional effects (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["conditional_plot"]

#: Colours of the two estimands (matplotlib's default cycle, colour-blind distinguishable).
_COLOURS = {"DE": "C0", "IE": "C1"}
_NAMES = {"DE": "direct effect (DE)", "IE": "spillover effect (IE)"}


def conditional_plot(result: Any, path: Path, title_prefix: str = "") -> bool:
    """DE and IE against the moderator, one panel per outcome, with 90% bands.

    Parameters
    ----------
    result
        A :class:`~pari_bayes.estimation.formula.FormulaFitResult` with ``conditional``.
    path
        PNG file to write (atomically).
    title_prefix
        E.g. ``"UNCONVERGED - "``.

    Returns
    -------
    bool
        Whether a plot was written (False without conditional effects).
    """
    frame = result.conditional
    if frame is None or frame.empty:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pari_bayes.io import atomic_path

    fspec = result.fspec
    moderator = fspec.moderator
    label = fspec.label or moderator
    scale = result.summary["effect_scale"].iloc[0] if len(result.summary) else "outcome scale"
    dims = list(dict.fromkeys(frame["dimension"]))
    ncol = min(2, len(dims))
    nrow = int(np.ceil(len(dims) / ncol))
    with plt.rc_context({"font.size": 10}):
        fig, axes = plt.subplots(
            nrow, ncol, figsize=(5.2 * ncol, 3.6 * nrow), squeeze=False, sharex=True
        )
        for k, dim in enumerate(dims):
            ax = axes[k // ncol][k % ncol]
            sub = frame[frame["dimension"] == dim]
            for est in ("DE", "IE"):
                rows = sub[sub["estimand"] == est].sort_values("moderator_value")
                x = rows["moderator_value"].to_numpy(float)
                ax.fill_between(
                    x,
                    rows["q05"].to_numpy(float),
                    rows["q95"].to_numpy(float),
                    color=_COLOURS[est],
                    alpha=0.2,
                    lw=0,
                )
                ax.plot(
                    x,
                    rows["mean"].to_numpy(float),
                    "-o",
                    ms=3,
                    color=_COLOURS[est],
                    label=f"{_NAMES[est]}, mean and 90% interval",
                )
            ax.axhline(0.0, color="0.4", lw=0.8, ls=":")
            ax.set_title(dim.replace("_", " "), fontsize=11)
            ax.set_xlabel(label, fontsize=10)
            ax.set_ylabel(f"effect ({scale})", fontsize=10)
            ax.tick_params(labelsize=9)
        for k in range(len(dims), nrow * ncol):
            axes[k // ncol][k % ncol].set_visible(False)
        axes[0][0].legend(fontsize=9, loc="best")
        fig.suptitle(
            f"{title_prefix}{result.spec.name}: effects by {moderator} "
            "(g-computation, moderator set for every household)",
            fontsize=11,
        )
        fig.tight_layout()
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, metadata={"Software": None})
        plt.close(fig)
    return True
