"""The measurement model alone: a Bayesian confirmatory factor analysis (CFA).

A spec with ``kind = "measurement"`` declares factors and items exactly as a latent spec
does (:mod:`pari_bayes.estimation.latent`; every item type of
:mod:`pari_bayes.measurement.items`) but no structural part: the factor values are
``eta[i] ~ Normal(0, R)`` with unit variances and an LKJ-distributed correlation matrix
``R``. It answers the question to settle before adding the causal part: do these items
measure these factors, how strongly, and how do the factors correlate? Entry point:
:func:`fit_measurement_spec` (what ``pari-bayes fit`` calls for this kind).

The model is always *sampled* in the unit-variance parameterization with positive
loadings (the geometry that needs no marker item and has no sign flips). The spec's
``[measurement] identification`` chooses the scaling the results are *reported* in:

``unit_variance``
    Factor variances 1; loadings in item units per factor sd; factor covariances are the
    correlations.
``marker``
    The first item of each factor is its marker, loading fixed at 1; the factor variance is
    the marker's squared loading and every loading is divided by the marker's (the lavaan
    ``cfa()`` default). Each draw is transformed, so the posterior of the marker-scaled
    parameters is exact; the priors are the unit-variance ones (``docs/latent.md``).

Continuous (``normal``) items are reported in their own units (the model standardizes
them), so the loadings and residual variances compare directly with a classical
maximum-likelihood CFA of the raw scores (``scripts/validate_cfa.py``: the Holzinger &
Swineford 1939 data against lavaan's published estimates). Loadings of ordinal, binomial
and count items are on their link scale (logit, log); they have no residual variance.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pari_bayes.errors import ConvergenceError, EstimationError
from pari_bayes.estimation.latent import (
    POSTERIOR_NOT_STORED,
    LatentDesign,
    LatentSpec,
    build_latent_model,
    factor_scores,
    latent_design,
    latent_diagnostics,
    load_latent_spec,
    sample_latent,
)
from pari_bayes.estimation.posterior import write_posterior
from pari_bayes.io import write_csv

__all__ = [
    "MEASUREMENT_COLUMNS",
    "MeasurementFitResult",
    "measurement_draws",
    "measurement_table",
    "fit_measurement_spec",
]

#: Columns of ``measurement.csv``.
MEASUREMENT_COLUMNS = (
    "parameter",
    "lhs",
    "op",
    "rhs",
    "fixed",
    "mean",
    "sd",
    "q05",
    "q95",
    "r_hat",
    "ess_bulk",
    "ess_tail",
)

#: lavaan's operators, used for the row labels: ``=~`` loading, ``~~`` (co)variance,
#: ``~1`` intercept.
_OPS = {
    "loading": "=~",
    "standardized_loading": "=~",
    "residual_variance": "~~",
    "factor_variance": "~~",
    "factor_covariance": "~~",
    "factor_correlation": "~~",
    "intercept": "~1",
}


def _marker_positions(spec: LatentSpec) -> list[int]:
    """Index (in declaration order) of each factor's first item, its marker."""
    names = [it.factor for it in spec.items]
    return [names.index(f) for f in spec.factors]


def _item_units(design: LatentDesign) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per item: scale back to its own units, centre, and residual-sd variable position.

    Continuous and hurdle items are standardized inside the model; their loadings and
    residual sds are multiplied by the item's scale to read in its own units.
    """
    items = design.items
    order = {it.name: j for j, it in enumerate(items.items)}
    scale = np.ones(len(order))
    center = np.full(len(order), np.nan)
    for group in (items.continuous, items.hurdle):
        if group is None:
            continue
        for k, it in enumerate(group.items):
            scale[order[it.name]] = group.scale[k]
            center[order[it.name]] = group.center[k]
    return scale, center, np.array([it.kind for it in items.items])


def measurement_draws(idata, design: LatentDesign, spec: LatentSpec):
    """Posterior draws of the reported measurement parameters, in the spec's scaling.

    Returns
    -------
    xarray.Dataset
        ``cfa_loading``, ``cfa_standardized_loading``, ``cfa_residual_variance``,
        ``cfa_intercept`` (dims chain, draw, indicator) and ``cfa_factor_cov``,
        ``cfa_factor_corr`` (chain, draw, dimension, dimension_bis). Loadings of continuous
        items are in item units per factor sd (unit variance) or per marker unit (marker);
        residual variances and intercepts of continuous items are in their units (of the
        log for log-normal and hurdle items); NaN where an item type has none.
    """
    import xarray as xr

    post = idata.posterior
    lam = post["loading"].to_numpy()  # (chain, draw, J): standardized / link scale
    chains, draws, n_items = lam.shape
    n_fac = len(spec.factors)
    scale, center, kinds = _item_units(design)
    raw_loading = lam * scale
    resid = np.full_like(lam, np.nan)
    intercept = np.full_like(lam, np.nan)
    std_loading = np.full_like(lam, np.nan)
    names = [it.name for it in design.items.items]
    for group, sd_var, mean_var in (
        (design.items.continuous, "continuous_sd", "continuous_mean"),
        (design.items.hurdle, "log_amount_sd", "log_amount_mean"),
    ):
        if group is None:
            continue
        for k, it in enumerate(group.items):
            j = names.index(it.name)
            sd = post[sd_var].to_numpy()[..., k]
            resid[..., j] = (sd * scale[j]) ** 2
            intercept[..., j] = center[j] + post[mean_var].to_numpy()[..., k] * scale[j]
            std_loading[..., j] = lam[..., j] / np.sqrt(lam[..., j] ** 2 + sd**2)
    ordinal = kinds == "ordinal"
    # the ordinal item's latent response has logistic errors, variance pi^2 / 3
    std_loading[..., ordinal] = lam[..., ordinal] / np.sqrt(lam[..., ordinal] ** 2 + np.pi**2 / 3)
    if "disturbance_corr" in post:
        corr = post["disturbance_corr"].to_numpy()
    else:
        corr = np.ones((chains, draws, 1, 1))
    cov = corr.copy()
    loading = raw_loading
    if spec.identification == "marker":
        marker = raw_loading[..., _marker_positions(spec)]  # (chain, draw, F)
        factor_of = [spec.factors.index(it.factor) for it in design.items.items]
        loading = raw_loading / marker[..., factor_of]
        cov = corr * marker[..., :, None] * marker[..., None, :]
    dims_i = ("chain", "draw", "indicator")
    dims_f = ("chain", "draw", "dimension", "dimension_bis")
    coords = {
        "chain": post["chain"].to_numpy(),
        "draw": post["draw"].to_numpy(),
        "indicator": names,
        "dimension": list(spec.factors),
        "dimension_bis": list(spec.factors),
    }
    assert cov.shape[-1] == n_fac and loading.shape[-1] == n_items
    return xr.Dataset(
        {
            "cfa_loading": (dims_i, loading),
            "cfa_standardized_loading": (dims_i, std_loading),
            "cfa_residual_variance": (dims_i, resid),
            "cfa_intercept": (dims_i, intercept),
            "cfa_factor_cov": (dims_f, cov),
            "cfa_factor_corr": (dims_f, corr),
        },
        coords=coords,
    )


def _summary_row(parameter, lhs, rhs, values: np.ndarray, fixed: bool) -> dict[str, Any]:
    """One row of ``measurement.csv`` from (chain, draw) draws."""
    import arviz as az

    row = {
        "parameter": parameter,
        "lhs": lhs,
        "op": _OPS[parameter],
        "rhs": rhs,
        "fixed": fixed,
        "mean": float(values.mean()),
        "sd": float(values.std()),
        "q05": float(np.quantile(values, 0.05)),
        "q95": float(np.quantile(values, 0.95)),
        "r_hat": np.nan,
        "ess_bulk": np.nan,
        "ess_tail": np.nan,
    }
    if not fixed and values.shape[0] > 1 and np.ptp(values) > 0:
        row["r_hat"] = float(az.rhat(values))
        row["ess_bulk"] = float(az.ess(values, method="bulk"))
        row["ess_tail"] = float(az.ess(values, method="tail"))
    return row


def measurement_table(draws, spec: LatentSpec) -> pd.DataFrame:
    """Summarise :func:`measurement_draws` as one row per parameter (lavaan's labels).

    Rows: ``loading`` (``factor =~ item``), ``standardized_loading``, ``residual_variance``
    and ``intercept`` (continuous items), ``factor_variance``, ``factor_covariance`` and
    ``factor_correlation``. ``fixed`` marks the parameters the scaling fixes (marker
    loadings at 1, unit factor variances), which carry no diagnostics.
    """
    rows = []
    markers = set(_marker_positions(spec)) if spec.identification == "marker" else set()
    for j, it in enumerate(spec.items):
        sel = {"indicator": it.name}
        rows.append(
            _summary_row(
                "loading",
                it.factor,
                it.name,
                draws["cfa_loading"].sel(sel).to_numpy(),
                fixed=j in markers,
            )
        )
        std = draws["cfa_standardized_loading"].sel(sel).to_numpy()
        if np.isfinite(std).all():
            rows.append(_summary_row("standardized_loading", it.factor, it.name, std, False))
    for it in spec.items:
        resid = draws["cfa_residual_variance"].sel(indicator=it.name).to_numpy()
        if np.isfinite(resid).all():
            rows.append(_summary_row("residual_variance", it.name, it.name, resid, False))
    for f, name in enumerate(spec.factors):
        var = draws["cfa_factor_cov"].to_numpy()[..., f, f]
        rows.append(
            _summary_row(
                "factor_variance", name, name, var, fixed=spec.identification == "unit_variance"
            )
        )
    for f in range(len(spec.factors)):
        for g in range(f + 1, len(spec.factors)):
            lhs, rhs = spec.factors[f], spec.factors[g]
            cov = draws["cfa_factor_cov"].to_numpy()[..., f, g]
            corr = draws["cfa_factor_corr"].to_numpy()[..., f, g]
            rows.append(_summary_row("factor_covariance", lhs, rhs, cov, False))
            rows.append(_summary_row("factor_correlation", lhs, rhs, corr, False))
    for it in spec.items:
        values = draws["cfa_intercept"].sel(indicator=it.name).to_numpy()
        if np.isfinite(values).all():
            rows.append(_summary_row("intercept", it.name, "", values, False))
    return pd.DataFrame(rows, columns=list(MEASUREMENT_COLUMNS))


def _gate_failures(table: pd.DataFrame, diag: pd.DataFrame, gate: Mapping[str, float]):
    """Every reported (not fixed) parameter must pass; no divergent transitions."""
    failures = []
    div = diag.loc[diag["parameter"] == "run.divergences", "value"]
    if len(div) and div.iloc[0] > 0:
        failures.append(f"{int(div.iloc[0])} divergent transitions")
    free = table[~table["fixed"]]
    label = free["parameter"] + "[" + free["lhs"] + free["op"] + free["rhs"] + "]"
    for lab, (_, row) in zip(label, free.iterrows(), strict=True):
        if row["r_hat"] > gate["r_hat"]:
            failures.append(f"{lab}: R-hat {row['r_hat']:.3f} > {gate['r_hat']}")
        for col in ("ess_bulk", "ess_tail"):
            if row[col] < gate[col]:
                failures.append(f"{lab}: {col} {row[col]:.0f} < {gate[col]:.0f}")
    return failures


@dataclass
class MeasurementFitResult:
    """What :func:`fit_measurement_spec` wrote and measured.

    ``effects`` is empty: a measurement model has no causal contrasts; the gate applies to
    the rows of ``measurement`` (every parameter it reports) and the divergences.
    """

    directory: Path
    spec: LatentSpec
    idata: Any
    measurement: pd.DataFrame
    diagnostics: pd.DataFrame
    scores: pd.DataFrame
    timing: dict[str, float]
    converged: bool
    failures: list[str]
    effects: pd.DataFrame = field(default_factory=pd.DataFrame)
    files: list[Path] = field(default_factory=list)


def loadings_plot(table: pd.DataFrame, path: str | os.PathLike, title: str = "") -> Path:
    """Forest plot of the standardized loadings (90% intervals), one row per item.

    Standardized loadings (the correlation of an item's latent response with its factor)
    put items of every type on one 0-1 scale; items without one (binomial, count) are
    drawn on their link-scale loading in a second panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    std = table[table["parameter"] == "standardized_loading"]
    link = table[
        (table["parameter"] == "loading") & ~table["rhs"].isin(std["rhs"]) & ~table["fixed"]
    ]
    panels = [(std, "standardized loading (correlation with the factor)")]
    if len(link):
        panels.append((link, "loading on the link scale (logit or log) per factor sd"))
    height = 0.9 + 0.32 * max(len(p) for p, _ in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), height), squeeze=False)
    for ax, (rows, label) in zip(axes[0], panels, strict=True):
        y = np.arange(len(rows))[::-1]
        ax.errorbar(
            rows["mean"],
            y,
            xerr=[rows["mean"] - rows["q05"], rows["q95"] - rows["mean"]],
            fmt="o",
            color="#1f4e79",
            ms=4,
            capsize=2,
        )
        ax.set_yticks(y, [f"{r.lhs}: {r.rhs}" for r in rows.itertuples()], fontsize=9)
        ax.set_xlabel(label + ", posterior mean and 90% interval", fontsize=9)
        ax.tick_params(axis="x", labelsize=9)
        ax.axvline(0, color="grey", lw=0.6)
        ax.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def fit_measurement_spec(
    data: Any,
    spec: str | os.PathLike | Mapping[str, Any] | LatentSpec | Any,
    directory: str | os.PathLike,
    seed: int = 20240611,
    allow_unconverged: bool = False,
    plots: bool = True,
) -> MeasurementFitResult:
    """Fit a measurement-only spec (a Bayesian CFA) and write its outputs.

    Parameters
    ----------
    data
        A :class:`pari_bayes.survey.Survey` or any DataFrame holding the item columns (a
        CFA needs no communities or treatment).
    spec
        Path of a ``kind = "measurement"`` spec, its mapping or a parsed spec.
    directory
        Existing folder; receives ``measurement.csv``, ``diagnostics.csv``,
        ``factor_scores.csv``, ``posterior.nc`` and ``loadings.png``.
    seed
        Sampler seed.
    allow_unconverged
        Write outputs that miss the gate (marked ``converged = false``) instead of raising.
    plots
        Draw ``loadings.png``.

    Returns
    -------
    MeasurementFitResult

    Raises
    ------
    ConvergenceError
        If the gate fails and ``allow_unconverged`` is false.
    """
    from pari_bayes._version import __version__

    spec = load_latent_spec(spec)
    if spec.structural_part:
        raise EstimationError(
            f"{spec.source}: kind = {spec.kind!r}; fit_measurement_spec fits "
            'kind = "measurement" specs (use fit_latent_spec for the causal model)'
        )
    directory = Path(directory)
    frame = data.data if hasattr(data, "data") else data
    design = latent_design(frame, spec)
    model = build_latent_model(design, spec)
    idata, timing = sample_latent(model, spec.sampler, seed)
    if "posterior" not in idata.groups():
        raise EstimationError("the sampler returned no posterior")
    draws = measurement_draws(idata, design, spec)
    idata.posterior = idata.posterior.assign(draws.data_vars)
    table = measurement_table(draws, spec)
    diagnostics = latent_diagnostics(idata, timing)
    failures = _gate_failures(table, diagnostics, spec.gate)
    converged = not failures
    if failures and not allow_unconverged:
        raise ConvergenceError(
            f"measurement model {spec.name!r} failed the convergence gate: "
            + "; ".join(failures[:15])
            + ". Increase [sampler] draws/tune or target_accept, or pass --allow-unconverged."
        )
    scores = factor_scores(idata, design, spec)
    extra = {
        "identification": f"sampled: unit factor variances, positive loadings; reported: "
        f"{spec.identification}",
        "sampler": json.dumps(spec.sampler, sort_keys=True),
        "factor_scores": "per-draw eta is not stored; factor_scores.csv holds each "
        "household's posterior mean and sd",
    }
    provenance = {
        "model_name": spec.name,
        "kind": "measurement",
        "spec_json": json.dumps(spec.raw, sort_keys=True, default=str),
        "data_hash": getattr(data, "data_hash", ""),
        "seed": int(seed),
        "status": "converged" if converged else "UNCONVERGED",
    }
    idata.attrs.update({**extra, **provenance, "package_version": __version__})
    mark = {"converged": str(converged).lower()}
    files = [
        write_posterior(
            idata, directory / "posterior.nc", **provenance, extra=extra, drop=POSTERIOR_NOT_STORED
        ),
        write_csv(table.assign(**mark), directory / "measurement.csv"),
        write_csv(diagnostics.assign(**mark), directory / "diagnostics.csv"),
        write_csv(scores.assign(**mark), directory / "factor_scores.csv"),
    ]
    if plots:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            files.append(
                loadings_plot(
                    table,
                    directory / "loadings.png",
                    f"{spec.name}: measurement model ({spec.identification} scaling)",
                )
            )
    return MeasurementFitResult(
        directory=directory,
        spec=spec,
        idata=idata,
        measurement=table,
        diagnostics=diagnostics,
        scores=scores,
        timing=timing,
        converged=converged,
        failures=failures,
        files=files,
    )
