"""One entry point for every Bayesian model spec, whatever its kind.

:func:`fit_model` reads a spec (``models/*.toml``), applies run-wide overrides (quick runs),
and hands it to the estimator its ``kind`` names in
:data:`pari_bayes.estimation.registry.ESTIMATORS`. :func:`fit_spec_file` is the lifecycle
the main job and ``pari-bayes fit`` run around it: fit, gate, escalate, publish or withhold.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pari_bayes.estimation.registry import get_estimator
from pari_bayes.estimation.spec import ModelSpec, load_spec

__all__ = [
    "load_spec",
    "fit_model",
    "fit_spec_file",
    "gate_summary",
    "escalated",
    "ESCALATION",
    "EFFECT_FILES",
    "QUICK_SAMPLER",
]

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
    identification: Any = None,
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
    identification
        The :class:`~pari_bayes.identification.identify.IdentificationResult` whose
        adjustment sets the estimator uses (``pari_bayes.identify(survey, dag)``); ``None``
        identifies on the bundled ``models/dag.dot``.

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
    spec = spec if isinstance(spec, ModelSpec) else load_spec(spec)
    if quick:
        # Wiring only: tiny draws, and no prior-sensitivity or LOO refits (tested elsewhere).
        spec = replace(spec.with_sampler(**QUICK_SAMPLER), sensitivity=(), loo_drop=())
        allow_unconverged = True
    estimator = get_estimator(spec.kind, spec.path)
    return estimator.fit(
        survey,
        spec,
        Path(directory),
        seed=seed,
        allow_unconverged=allow_unconverged,
        plots=plots,
        identification=identification,
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
    are in ``effects.csv``) and to the parameters the estimator gates. ``effects_*`` are the
    worst values over the effect rows; ``params_*`` over every diagnosed parameter, gated or
    not (the latent estimator gates its loadings and disturbance correlations only with
    ``[gate] parameters = true``), so a passed fit can show ``params_max_r_hat`` above the
    threshold. ``passed`` is the estimator's own verdict, with the run's divergences.
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


#: The escalation ladder of :func:`fit_spec_file`. Rung 0 is the spec as written; a spec that
#: misses the gate is refitted on the next rung, at most twice. Each rung raises
#: ``target_accept`` (smaller leapfrog steps: fewer divergences in curved regions, at about
#: 1.5-2x the gradient evaluations per draw) and lengthens tuning (a better-adapted mass
#: matrix), and adds draws (ESS grows with draws). Worst case, a failing spec costs about
#: 1 + 2 + 3.5 = 6.5 times its first fit.
ESCALATION: tuple[dict[str, float], ...] = (
    {"target_accept": 0.0, "tune": 1.0, "draws": 1.0},
    {"target_accept": 0.97, "tune": 2.0, "draws": 1.5},
    {"target_accept": 0.99, "tune": 3.0, "draws": 2.0},
)

#: Files a fit writes that carry posterior quantities of interest: published only when the
#: gate passed (or with ``allow_unconverged``). Diagnostics, the posterior itself (marked
#: UNCONVERGED in its attributes) and the plots of the worst parameters always stay.
EFFECT_FILES = (
    "effects.csv",
    "comparison.csv",
    "prior_sensitivity.csv",
    "prior_sensitivity.png",
    "forest.png",
    "factor_scores.csv",
    "loo.csv",
    "measurement.csv",
    "loadings.csv",
    "loadings.png",
    "conditional_effects.csv",
    "conditional_effects.png",
)


def _sampler_settings(spec: ModelSpec) -> dict[str, Any]:
    raw = dict(spec.raw.get("sampler", {}))
    return {
        "target_accept": float(raw.get("target_accept", spec.sampler.target_accept)),
        "tune": int(raw.get("tune", spec.sampler.tune)),
        "draws": int(raw.get("draws", spec.sampler.draws)),
    }


def escalated(spec: ModelSpec, rung: int) -> ModelSpec:
    """Return ``spec`` with the sampler settings of rung ``rung`` of :data:`ESCALATION`.

    Examples
    --------
    >>> spec = load_spec("models/table4.toml")  # doctest: +SKIP
    >>> escalated(spec, 1).sampler.target_accept  # doctest: +SKIP
    0.97
    """
    if rung == 0:
        return spec
    step = ESCALATION[rung]
    now = _sampler_settings(spec)
    return spec.with_sampler(
        target_accept=max(now["target_accept"], step["target_accept"]),
        tune=int(round(now["tune"] * step["tune"])),
        draws=int(round(now["draws"] * step["draws"])),
    )


def _clear(directory: Path) -> None:
    import shutil

    for child in directory.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


@dataclass
class SpecFit:
    """A fit done by the main job: the estimator's result and its gate row."""

    result: Any
    gate: dict[str, Any]

    def effect_table(self, method: str) -> Any:
        """Return the published effect rows in the one schema (``None`` if none).

        The same rows as the fit's ``effects.csv`` (a spec that missed the gate and was
        published with ``allow_unconverged`` is noted ``UNCONVERGED``), taken from memory:
        the main job does not read back the files it wrote.
        """
        from pari_bayes.effects import EffectTable

        frame = getattr(self.result, "effects", None)
        if not self.gate.get("effects_published") or frame is None:
            return None
        frame = frame.frame if isinstance(frame, EffectTable) else frame
        if not self.gate.get("passed"):
            frame = frame.assign(status="UNCONVERGED")
        return EffectTable.coerce(frame, method=method, what=f"{method} effects")


def fit_spec_file(
    survey,
    spec_path: str | os.PathLike | ModelSpec,
    directory: str | os.PathLike,
    seed: int | None = None,
    allow_unconverged: bool = False,
    quick: bool = False,
    progress: bool = True,  # noqa: ARG001 - samplers show their own progress
    escalate: bool = True,
    identification: Any = None,
) -> SpecFit:
    """Fit one spec for the main job, escalating the sampler until the gate passes.

    The spec is fitted as written; if it misses the convergence gate it is refitted on the
    next rung of :data:`ESCALATION` (stricter ``target_accept``, longer tuning, more draws),
    at most twice. The gate row says which rung passed (``rung``, ``attempts``). A spec that
    misses the gate on every rung keeps its diagnostics, its posterior (marked UNCONVERGED)
    and a rank/trace plot of its worst parameters (``worst_parameters.png``), but its effect
    files (:data:`EFFECT_FILES`) are removed unless ``allow_unconverged``.

    The package's own warnings during the fit (e.g. a factor its items do not measure,
    parameters outside the gate that miss the thresholds) are shown once each and kept in
    the gate row's ``warnings`` column, so the run's report carries them.
    """
    import warnings

    directory = Path(directory)
    spec = spec_path if isinstance(spec_path, ModelSpec) else load_spec(spec_path)
    rungs = 1 if (quick or not escalate) else len(ESCALATION)
    history: list[str] = []
    seen: set = set()
    for rung in range(rungs):
        if rung:
            _clear(directory)
        current = escalated(spec, rung)
        ours: list[str] = []  # our warnings of the attempt that is kept (the last one)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fit_model(
                survey,
                current,
                directory,
                seed=seed,
                allow_unconverged=True,
                quick=quick,
                identification=identification,
            )
        for w in caught:  # each distinct warning once, as the default filter would show it
            if "pari_bayes" in str(w.filename):
                if str(w.message) not in ours:
                    ours.append(str(w.message))
                continue
            if (w.category, str(w.message)) in seen:
                continue
            seen.add((w.category, str(w.message)))
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        gate = gate_summary(result)
        why = str(gate.get("reason") or "gate")[:200]
        settings = _sampler_settings(current)
        history.append(
            f"rung {rung} (target_accept {settings['target_accept']:g}, tune "
            f"{settings['tune']}, draws {settings['draws']}): "
            + ("passed" if gate["passed"] else f"failed ({why})")
        )
        if gate["passed"] or quick:
            break
    gate.update(
        rung=rung,
        attempts=rung + 1,
        target_accept=settings["target_accept"],
        tune=settings["tune"],
        draws=settings["draws"],
        ladder=" | ".join(history),
        warnings=" | ".join(ours),
    )
    if not gate["passed"] and not quick:
        _worst_parameters_plot(result, directory / "worst_parameters.png")
        if not allow_unconverged:
            for name in EFFECT_FILES:
                (directory / name).unlink(missing_ok=True)
    # Published estimates: the effect rows, or a measurement-only spec's measurement table.
    gate["effects_published"] = bool(gate["passed"] or quick or allow_unconverged) and any(
        (directory / name).exists() for name in ("effects.csv", "measurement.csv")
    )
    return SpecFit(result=result, gate=gate)


def _worst_parameters_plot(result: Any, path: Path, n: int = 4) -> bool:
    """Trace and rank plots of the ``n`` scalar posterior quantities with the worst R-hat."""
    import arviz as az

    idata = getattr(result, "idata", None)
    if idata is None or "posterior" not in idata.groups():
        return False
    post = idata.posterior
    candidates = []
    for name, var in post.data_vars.items():
        if var.ndim < 2 or var.sizes.get("chain", 1) < 2:
            continue
        extra = [d for d in var.dims if d not in ("chain", "draw")]
        flat = var.stack(element=extra) if extra else var.expand_dims(element=[0], axis=-1)
        if flat.sizes["element"] > 5000:  # per-household values: skip, too many to scan
            continue
        rhat = az.rhat(flat.to_dataset(name="x"))["x"].to_numpy().ravel()
        if not np.isfinite(rhat).any():
            continue
        k = int(np.nanargmax(rhat))
        label = name if not extra else f"{name}[{flat['element'].to_numpy()[k]}]"
        candidates.append((float(rhat[k]), label, flat.isel(element=k).to_numpy()))
    if not candidates:
        return False
    candidates.sort(key=lambda c: -c[0])
    chosen = candidates[:n]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import rankdata

    fig, axes = plt.subplots(len(chosen), 2, figsize=(11, 2.4 * len(chosen)), squeeze=False)
    for (rhat, label, values), (ax_trace, ax_rank) in zip(chosen, axes, strict=True):
        ranks = rankdata(values.ravel()).reshape(values.shape)
        bins = np.linspace(0, ranks.size, 21)
        for c in range(values.shape[0]):
            ax_trace.plot(values[c], lw=0.5, alpha=0.8, label=f"chain {c}")
            ax_rank.hist(ranks[c], bins=bins, histtype="step", lw=1.2)
        ax_trace.set_title(f"{label}: R-hat {rhat:.3f}", fontsize=10)
        ax_trace.set_xlabel("draw")
        ax_rank.set_title("rank histogram per chain (flat if mixed)", fontsize=10)
        ax_rank.set_xlabel("rank of draw among all chains")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
