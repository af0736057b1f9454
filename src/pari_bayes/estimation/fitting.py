"""One entry point for every Bayesian model spec, whatever its kind.

:func:`fit_model` reads a spec (``models/*.toml``), applies run-wide overrides (quick runs),
and hands it to the estimator of its kind: :mod:`pari_bayes.estimation.multilevel` for
``multilevel`` / ``multivariate`` specs, :mod:`pari_bayes.estimation.latent` for ``latent``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
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
        Tiny draws (:data:`QUICK_SAMPLER`) for wiring checks; implies ``allow_unconverged``.
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
        spec = spec.with_sampler(**QUICK_SAMPLER)
        allow_unconverged = True
    kwargs = {"plots": plots} if spec.kind != "latent" else {}
    return write_fit(
        survey, spec, Path(directory), seed=seed, allow_unconverged=allow_unconverged, **kwargs
    )


def gate_summary(result: Any) -> dict[str, Any]:
    """Summarise the convergence gate of a fit in one row (passed, worst R-hat and ESS)."""
    diag = getattr(result, "diagnostics", None)
    row: dict[str, Any] = {"passed": bool(getattr(result, "converged", False))}
    if isinstance(diag, pd.DataFrame) and not diag.empty:
        numeric = diag.apply(pd.to_numeric, errors="coerce")
        for column, key, how in (
            ("r_hat", "max_r_hat", "max"),
            ("ess_bulk", "min_ess_bulk", "min"),
            ("ess_tail", "min_ess_tail", "min"),
            ("divergences", "divergences", "max"),
        ):
            if column in numeric:
                values = numeric[column].to_numpy(dtype=float)
                values = values[np.isfinite(values)]
                if values.size:
                    row[key] = float(values.max() if how == "max" else values.min())
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
    """Fit one spec file for the main job and summarise its convergence gate."""
    result = fit_model(
        survey, spec_path, directory, seed=seed, allow_unconverged=allow_unconverged, quick=quick
    )
    return SpecFit(result=result, gate=gate_summary(result))
