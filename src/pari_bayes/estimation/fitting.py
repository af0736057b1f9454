"""One entry point for every Bayesian model spec, whatever its kind.

:func:`fit_model` reads a spec (``models/*.toml``), applies run-wide overrides (quick runs),
and hands it to the estimator of its kind: :mod:`pari_bayes.estimation.multilevel` for
``multilevel`` / ``multivariate`` specs, :mod:`pari_bayes.estimation.latent` for ``latent``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pari_bayes.estimation.spec import ModelSpec, load_spec

__all__ = ["load_spec", "fit_model", "fit_spec_file", "gate_summary", "QUICK_SAMPLER"]

#: Sampler settings of a quick (wiring-only) run: far too short to pass the gate. PyMC's NUTS
#: here because its compiled C code is cached on disk, while nutpie recompiles every time.
QUICK_SAMPLER = {"draws": 40, "tune": 40, "chains": 2, "sampler": "pymc"}


def fit_model(
    survey,
    spec: ModelSpec | str | os.PathLike,
    directory: str | os.PathLike,
    seed: int | None = None,
    allow_unconverged: bool = False,
    quick: bool = False,
    plots: bool = True,
) -> Any:
    """Fit a model spec and write its outputs into an existing folder.

    Parameters
    ----------
    survey
        A validated survey (:func:`pari_bayes.load_survey`).
    spec
        A spec object or the path of a TOML spec in ``models/``.
    directory
        Existing folder for ``posterior.nc``, ``effects.csv``, ``diagnostics.csv``, ...
    seed
        Seed of every sampler call (the spec's ``sampler.seed`` by default).
    allow_unconverged
        Write outputs that fail the convergence gate, marked UNCONVERGED.
    quick
        Tiny draws (:data:`QUICK_SAMPLER`) and no sensitivity or LOO refits, for wiring
        checks; implies ``allow_unconverged``.
    plots
        Draw the PNG plots.

    Returns
    -------
    FitResult or LatentFitResult
        With ``effects``, ``diagnostics``, ``converged``, ``failures`` and ``idata``.

    Examples
    --------
    >>> import pari_bayes as pb
    >>> survey = pb.load_survey()  # doctest: +SKIP
    >>> fit = pb.fit_model(survey, "models/multivariate.toml", "out/mv")  # doctest: +SKIP
    >>> fit.effects.query("scope == 'observed'")  # doctest: +SKIP
    """
    from pari_bayes.estimation.multilevel import write_fit

    spec = spec if isinstance(spec, ModelSpec) else load_spec(spec)
    if quick:
        # Wiring only: tiny draws, and no prior-sensitivity or LOO refits (tested elsewhere).
        spec = replace(spec.with_sampler(**QUICK_SAMPLER), sensitivity=(), loo_drop=())
        allow_unconverged = True
    kwargs = {"plots": plots} if spec.kind != "latent" else {}
    return write_fit(
        survey, spec, Path(directory), seed=seed, allow_unconverged=allow_unconverged, **kwargs
    )


def _extreme(frame: Any, column: str, how: str) -> float | None:
    if not isinstance(frame, pd.DataFrame) or column not in frame:
        return None
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    if not values.size:
        return None
    return float(values.max() if how == "max" else values.min())


def gate_summary(result: Any) -> dict[str, Any]:
    """Summarise the convergence gate of a fit in one row.

    The gate applies to every reported quantity (the effect rows, whose R-hat and bulk ESS
    are in ``effects.csv``) and to the parameters the estimator gates; the worst values of
    both are shown, with the run's divergences.
    """
    effects = getattr(result, "effects", None)
    diag = getattr(result, "diagnostics", None)
    row: dict[str, Any] = {
        "passed": bool(getattr(result, "converged", False)),
        "effects_max_r_hat": _extreme(effects, "r_hat", "max"),
        "effects_min_ess_bulk": _extreme(effects, "ess_bulk", "min"),
        "params_max_r_hat": _extreme(diag, "r_hat", "max"),
        "params_min_ess_bulk": _extreme(diag, "ess_bulk", "min"),
        "params_min_ess_tail": _extreme(diag, "ess_tail", "min"),
        "divergences": _extreme(diag, "divergences", "max"),
    }
    if row["divergences"] is None and isinstance(diag, pd.DataFrame) and "value" in diag:
        named = diag.set_index("parameter")["value"] if "parameter" in diag else {}
        for key in ("divergences", "run.divergences"):
            if key in named:
                row["divergences"] = float(named[key])
    failures = list(getattr(result, "failures", []) or [])
    row["reason"] = "; ".join(failures)[:500] if failures else ""
    return row


@dataclass
class SpecFit:
    """A fit done by the main job: the estimator's result and its gate row."""

    result: Any
    gate: dict[str, Any]


def fit_spec_file(
    survey,
    spec_path: str | os.PathLike,
    directory: str | os.PathLike,
    seed: int | None = None,
    allow_unconverged: bool = False,
    quick: bool = False,
    progress: bool = True,  # noqa: ARG001 - samplers show their own progress
) -> SpecFit:
    """Fit one spec file for the main job and summarise its convergence gate.

    The package's own warnings during the fit (e.g. a factor its items do not measure,
    parameters outside the gate that miss the thresholds) are still shown, and are also
    kept in the gate row's ``warnings`` column, so the run's report carries them.
    """
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit_model(
            survey,
            spec_path,
            directory,
            seed=seed,
            allow_unconverged=allow_unconverged,
            quick=quick,
        )
    ours, seen = [], set()
    for w in caught:  # each distinct warning once, as the default filter would show it
        if (w.category, str(w.message)) in seen:
            continue
        seen.add((w.category, str(w.message)))
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        if "pari_bayes" in str(w.filename):
            ours.append(str(w.message))
    gate = gate_summary(result)
    gate["warnings"] = " | ".join(ours)
    return SpecFit(result=result, gate=gate)
