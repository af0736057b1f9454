"""One writer and one reader of ``posterior.nc`` for every model kind.

Every posterior file carries the same provenance (root attributes of the NetCDF file):

``model_name``, ``kind``
    The spec's name and kind (``multilevel``, ``multivariate``, ``latent``).
``spec_json``
    The spec as canonical JSON (what was fitted).
``package_version``
    The ``pari_bayes`` version that wrote it.
``data_hash``
    Hash of the survey data fitted (:attr:`pari_bayes.survey.Survey.data_hash`).
``seed``
    Seed of the sampler and of the predictive draws.
``status``
    ``converged`` or ``UNCONVERGED`` (the convergence gate's verdict).

:func:`load_posterior` refuses a file that lacks any of them.

What is stored, to keep a run folder small (tens of MB, not hundreds) while keeping what
ArviZ users need:

* the posterior of the parameters at every draw, except variables the writer names in
  ``drop`` (derivable quantities: per-household, per-draw values summarised elsewhere,
  such as the latent model's factor values ``eta``, or exact duplicates); the root
  attribute ``dropped_variables`` lists them;
* per-household, per-draw groups (``posterior_predictive``, ``prior_predictive``,
  ``log_likelihood``) thinned evenly within each chain to at most
  :data:`MAX_DRAWS` draws in all (their ``draw`` coordinate keeps the original draw
  numbers, so ``idata.posterior.sel(draw=idata.log_likelihood.draw)`` aligns them) and
  stored as float32 (about 7 significant digits);
* ``observed_data``, ``constant_data``, ``sample_stats`` and any other group as they are;
* every numeric variable zlib-compressed (level 4, with the shuffle filter).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pari_bayes._version import __version__
from pari_bayes.errors import ProvenanceError

__all__ = [
    "PROVENANCE_KEYS",
    "STATUSES",
    "MAX_DRAWS",
    "write_posterior",
    "load_posterior",
    "slim_copy",
]

#: Root attributes every posterior file must carry.
PROVENANCE_KEYS = (
    "model_name",
    "kind",
    "spec_json",
    "package_version",
    "data_hash",
    "seed",
    "status",
)

#: Allowed values of the ``status`` attribute.
STATUSES = ("converged", "UNCONVERGED")

#: Most draws (all chains together) kept of each per-household, per-draw group.
MAX_DRAWS = {
    "log_likelihood": 1000,
    "posterior_predictive": 250,
    "prior_predictive": 250,
}

#: NetCDF compression of every numeric variable.
COMPRESSION = {"zlib": True, "complevel": 4, "shuffle": True}


def _thin(ds, max_draws: int):
    """Keep every k-th draw of each chain so that chains x draws <= ``max_draws``."""
    if "draw" not in ds.dims:
        return ds
    total = ds.sizes["draw"] * ds.sizes.get("chain", 1)
    if total <= max_draws:
        return ds
    step = math.ceil(total / max_draws)
    out = ds.isel(draw=slice(None, None, step))
    out.attrs["thinned_every"] = int(step)
    out.attrs["draws_before_thinning"] = int(ds.sizes["draw"])
    return out


def _to_float32(ds):
    """Store float64 data variables as float32."""
    cast = {
        name: var.astype(np.float32)
        for name, var in ds.data_vars.items()
        if var.dtype == np.float64
    }
    return ds.assign(cast) if cast else ds


def _drop(ds, names: set[str]):
    """Drop data variables, and the dimension coordinates only they used."""
    gone = [v for v in ds.data_vars if v in names]
    if not gone:
        return ds
    out = ds.drop_vars(gone)
    used = {d for var in out.data_vars.values() for d in var.dims} | {"chain", "draw"}
    unused = [d for d in ds[gone].dims if d not in used and d in out.coords]
    return out.drop_vars(unused)


def slim_copy(idata, drop: Iterable[str] = (), max_draws: Mapping[str, int] | None = None):
    """Return the copy of ``idata`` that is written to disk (``idata`` is not changed).

    Parameters
    ----------
    idata
        The fitted InferenceData.
    drop
        Posterior variables not to store (derivable per-household deterministics).
    max_draws
        Per group, the most draws (all chains) kept; :data:`MAX_DRAWS` by default.

    Returns
    -------
    arviz.InferenceData
    """
    import arviz as az

    limits = dict(MAX_DRAWS if max_draws is None else max_draws)
    drop = set(drop)
    groups = {}
    for group in idata.groups():
        ds = getattr(idata, group)
        if group == "posterior" and drop:
            ds = _drop(ds, drop)
        if group in limits:
            ds = _to_float32(_thin(ds, limits[group]))
        groups[group] = ds
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not part of the schema.*")
        slim = az.InferenceData(**groups)
    slim.attrs.update(dict(idata.attrs))
    return slim


def _attr_value(value: Any) -> Any:
    """NetCDF attributes are strings or numbers; anything else as JSON."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str | int | float | np.integer | np.floating):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _encoding(ds) -> dict[str, dict]:
    return {
        name: dict(COMPRESSION)
        for name, var in ds.variables.items()
        if var.dtype.kind in "fiub" and var.ndim > 0
    }


def write_posterior(
    idata,
    path: str | os.PathLike,
    *,
    model_name: str,
    kind: str,
    spec_json: str,
    data_hash: str,
    seed: int,
    status: str,
    extra: Mapping[str, Any] | None = None,
    drop: Iterable[str] = (),
    max_draws: Mapping[str, int] | None = None,
) -> Path:
    """Write an InferenceData as ``posterior.nc``, atomically, with the provenance schema.

    Parameters
    ----------
    idata
        The fitted InferenceData; it is not modified (a slimmed copy is written, see
        :func:`slim_copy`).
    path
        File to write; written to a temporary file in the same folder, then renamed.
    model_name, kind, spec_json, data_hash, seed, status
        The provenance (:data:`PROVENANCE_KEYS`); ``status`` is ``converged`` or
        ``UNCONVERGED``.
    extra
        More root attributes (model-specific provenance); they cannot override the schema.
    drop
        Posterior variables not to store.
    max_draws
        Per group, the most draws kept (:data:`MAX_DRAWS` by default).

    Returns
    -------
    pathlib.Path
        The file written.
    """
    from pari_bayes.io import atomic_path

    if status not in STATUSES:
        raise ValueError(f"status {status!r}; allowed: {', '.join(STATUSES)}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    slim = slim_copy(idata, drop=drop, max_draws=max_draws)
    attrs = {k: _attr_value(v) for k, v in dict(idata.attrs).items()}
    attrs.update({k: _attr_value(v) for k, v in (extra or {}).items()})
    attrs.update(
        {
            "model_name": str(model_name),
            "kind": str(kind),
            "spec_json": str(spec_json),
            "package_version": __version__,
            "data_hash": str(data_hash),
            "seed": int(seed),
            "status": status,
        }
    )
    dropped = sorted(set(drop) & set(getattr(idata, "posterior", {}).keys()))
    if dropped:
        attrs["dropped_variables"] = json.dumps(dropped)
    import xarray as xr

    with atomic_path(target) as tmp:
        xr.Dataset(attrs=attrs).to_netcdf(tmp, mode="w", engine="h5netcdf")
        for group in slim.groups():
            ds = getattr(slim, group)
            ds.to_netcdf(tmp, mode="a", group=group, engine="h5netcdf", encoding=_encoding(ds))
    return target


def _spec_identity(spec: Any) -> tuple[str, dict, str]:
    """(name, spec content without sampler settings, path) of a spec object or file."""
    if isinstance(spec, str | os.PathLike):
        from pari_bayes.estimation.spec import load_spec

        spec = load_spec(spec)
    if hasattr(spec, "to_json"):
        content = json.loads(spec.to_json())
    else:  # a LatentSpec: its TOML content is ``raw``
        content = json.loads(json.dumps(spec.raw, sort_keys=True, default=str))
    content.pop("sampler", None)
    where = str(getattr(spec, "path", None) or getattr(spec, "source", "") or "")
    return spec.name, content, where


def load_posterior(path: str | os.PathLike, spec: Any = None, survey: Any = None):
    """Read a ``posterior.nc`` of any model kind and check its provenance.

    Parameters
    ----------
    path
        A NetCDF file written by :func:`write_posterior` (``pari-bayes fit``).
    spec
        If given (a spec object or file), the spec it must come from: same model name and
        same content, sampler settings aside.
    survey
        If given, the survey it must come from (data hash).

    Returns
    -------
    arviz.InferenceData

    Raises
    ------
    ProvenanceError
        If the file is missing or unreadable, lacks any of :data:`PROVENANCE_KEYS`, or does
        not match ``spec`` / ``survey``.
    """
    import arviz as az

    path = Path(path)
    if not path.exists():
        raise ProvenanceError(f"{path}: no such posterior file; run `pari-bayes fit` first")
    try:
        idata = az.from_netcdf(path)
    except Exception as exc:  # noqa: BLE001 - any read failure is a provenance problem
        raise ProvenanceError(f"{path}: not a readable InferenceData NetCDF file: {exc}") from exc
    missing = [k for k in PROVENANCE_KEYS if k not in idata.attrs]
    if missing:
        raise ProvenanceError(
            f"{path}: provenance attribute(s) {', '.join(missing)} missing; "
            "the file was not written by pari_bayes (pari-bayes fit)"
        )
    if spec is not None:
        name, current, where = _spec_identity(spec)
        if idata.attrs["model_name"] != name:
            raise ProvenanceError(
                f"{path}: fitted model {idata.attrs['model_name']!r}, expected {name!r}"
            )
        try:
            saved = json.loads(idata.attrs["spec_json"])
        except (TypeError, ValueError) as exc:
            raise ProvenanceError(f"{path}: attribute spec_json is not JSON: {exc}") from exc
        saved.pop("sampler", None)
        if saved != current:
            raise ProvenanceError(
                f"{path}: the spec {where} changed since the fit (model "
                f"{name!r}); refit with `pari-bayes fit --model {where}`"
            )
    if survey is not None and idata.attrs["data_hash"] != survey.data_hash:
        raise ProvenanceError(
            f"{path}: fitted on data with hash {idata.attrs['data_hash'][:12]}..., but the "
            f"survey {survey.source} hashes to {survey.data_hash[:12]}...; refit on this survey"
        )
    return idata
