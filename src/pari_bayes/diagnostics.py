"""The convergence gate of every MCMC fit.

A fit passes when every reported quantity has R-hat <= 1.01, bulk and tail ESS >= 400,
and the run has no divergent transition. ``diagnostics.csv`` holds one row per parameter
element (R-hat, bulk/tail ESS) and the run-level figures (divergences, minimum BFMI,
sampling time) on every row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from pari_bayes.errors import ConvergenceError

__all__ = [
    "GATE",
    "diagnostics_table",
    "gate_failures",
    "check_convergence",
    "mark_unconverged",
]

#: Thresholds of the gate.
GATE = {"r_hat_max": 1.01, "ess_bulk_min": 400.0, "ess_tail_min": 400.0, "divergences_max": 0}

DIAGNOSTIC_COLUMNS = (
    "parameter",
    "r_hat",
    "ess_bulk",
    "ess_tail",
    "divergences",
    "bfmi_min",
    "sampling_time_s",
    "n_chains",
    "n_draws",
)


def _label(name: str, da, idx: tuple) -> str:
    if not idx:
        return name
    dims = [d for d in da.dims if d not in ("chain", "draw")]
    parts = [
        str(da.coords[d].values[i]) if d in da.coords else str(i)
        for d, i in zip(dims, idx, strict=True)
    ]
    return f"{name}[{', '.join(parts)}]"


def diagnostics_table(
    idata,
    var_names: Sequence[str] | None = None,
    sampling_time: float | None = None,
) -> pd.DataFrame:
    """Per-parameter R-hat and ESS, with the run's divergences, BFMI and sampling time.

    Parameters
    ----------
    idata
        InferenceData with ``posterior`` and (optionally) ``sample_stats``
        (``diverging``, ``energy``). Extra dims of ``sample_stats`` (e.g. one run per
        outcome) are summed (divergences) or minimised (BFMI).
    var_names
        Posterior variables to report; all by default.
    sampling_time
        Seconds spent sampling.

    Returns
    -------
    pandas.DataFrame
        Columns parameter, r_hat, ess_bulk, ess_tail, divergences, bfmi_min,
        sampling_time_s, n_chains, n_draws.
    """
    import arviz as az

    post = idata.posterior
    names = list(var_names) if var_names is not None else list(post.data_vars)
    rows = []
    for name in names:
        da = post[name]
        extra = [d for d in da.dims if d not in ("chain", "draw")]
        da = da.transpose("chain", "draw", *extra)
        values = da.to_numpy()
        for idx in np.ndindex(*values.shape[2:]):
            x = values[(slice(None), slice(None), *idx)]
            if np.ptp(x) == 0 or not np.isfinite(x).all():
                rhat, bulk, tail = (
                    (np.nan, np.nan, np.nan)
                    if not np.isfinite(x).all()
                    else (1.0, float(x.size), float(x.size))
                )
            else:
                rhat = float(az.rhat(x)) if x.shape[0] > 1 else np.nan
                bulk = float(az.ess(x, method="bulk"))
                tail = float(az.ess(x, method="tail"))
            rows.append(
                {
                    "parameter": _label(name, da, idx),
                    "r_hat": rhat,
                    "ess_bulk": bulk,
                    "ess_tail": tail,
                }
            )
    frame = pd.DataFrame(rows, columns=["parameter", "r_hat", "ess_bulk", "ess_tail"])
    stats = getattr(idata, "sample_stats", None)
    divergences, bfmi_min = 0, np.nan
    if stats is not None and "diverging" in stats:
        divergences = int(np.asarray(stats["diverging"]).sum())
    if stats is not None and "energy" in stats:
        energy = stats["energy"]
        other = [d for d in energy.dims if d not in ("chain", "draw")]
        e = energy.transpose(*other, "chain", "draw").to_numpy()
        e = e.reshape(-1, *e.shape[-2:])
        bfmi_min = float(min(np.min(az.bfmi(sub)) for sub in e))
    frame["divergences"] = divergences
    frame["bfmi_min"] = bfmi_min
    frame["sampling_time_s"] = np.nan if sampling_time is None else float(sampling_time)
    frame["n_chains"] = int(post.sizes.get("chain", 1))
    frame["n_draws"] = int(post.sizes.get("draw", 0))
    return frame


def gate_failures(
    diagnostics: pd.DataFrame, effects: pd.DataFrame | None = None, gate: dict | None = None
) -> list[str]:
    """Messages for every quantity that fails the gate (empty list: passed)."""
    g = {**GATE, **(gate or {})}
    out: list[str] = []
    if len(diagnostics):
        div = int(diagnostics["divergences"].max())
        if div > g["divergences_max"]:
            out.append(f"{div} divergent transition(s) (allowed: {g['divergences_max']})")
    tables = [("", diagnostics)]
    if effects is not None and len(effects):
        eff = effects.copy()
        eff["parameter"] = (
            eff["estimand"]
            + eff["alpha"].map(lambda a: "" if pd.isna(a) else f"(alpha={a:.3g})")
            + "["
            + eff["dimension"]
            + ", "
            + eff["scope"]
            + "]"
        )
        tables.append(("effect ", eff))
    for prefix, t in tables:
        bad_r = t[t["r_hat"] > g["r_hat_max"]]
        if len(bad_r):
            out.append(
                f"R-hat > {g['r_hat_max']} for {prefix}"
                + ", ".join(
                    f"{p} ({v:.3f})"
                    for p, v in zip(bad_r["parameter"], bad_r["r_hat"], strict=True)
                )
            )
        bad_b = t[t["ess_bulk"] < g["ess_bulk_min"]]
        if len(bad_b):
            out.append(
                f"bulk ESS < {g['ess_bulk_min']:g} for {prefix}"
                + ", ".join(
                    f"{p} ({v:.0f})"
                    for p, v in zip(bad_b["parameter"], bad_b["ess_bulk"], strict=True)
                )
            )
        if "ess_tail" in t:
            bad_t = t[t["ess_tail"] < g["ess_tail_min"]]
            if len(bad_t):
                out.append(
                    f"tail ESS < {g['ess_tail_min']:g} for {prefix}"
                    + ", ".join(
                        f"{p} ({v:.0f})"
                        for p, v in zip(bad_t["parameter"], bad_t["ess_tail"], strict=True)
                    )
                )
    return out


def check_convergence(
    diagnostics: pd.DataFrame,
    effects: pd.DataFrame | None = None,
    allow_unconverged: bool = False,
    gate: dict | None = None,
) -> list[str]:
    """Apply the gate.

    Returns
    -------
    list of str
        The failures (empty when the gate passed); only returned when
        ``allow_unconverged`` is true or nothing failed.

    Raises
    ------
    ConvergenceError
        Naming the parameters that failed, unless ``allow_unconverged``.
    """
    failures = gate_failures(diagnostics, effects, gate)
    if failures and not allow_unconverged:
        raise ConvergenceError(
            "the fit failed the convergence gate (R-hat <= 1.01, bulk and tail ESS >= 400, "
            "no divergences):\n  - "
            + "\n  - ".join(failures)
            + "\nRun longer (--draws/--tune), raise sampler.target_accept, or pass "
            "--allow-unconverged to write the outputs marked UNCONVERGED."
        )
    return failures


def mark_unconverged(frame: pd.DataFrame, status: str) -> pd.DataFrame:
    """Add ``status = UNCONVERGED`` to a table when the gate failed (unchanged otherwise)."""
    if status == "ok":
        return frame
    out = frame.copy()
    out["status"] = status
    if out.empty:
        out = pd.DataFrame({"status": [status]})
    return out
