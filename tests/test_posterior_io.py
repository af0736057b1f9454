"""One posterior writer for every model kind: provenance, compression, file modes."""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import arviz as az
import numpy as np
import pytest
import xarray as xr

import pari_bayes as pb
from pari_bayes import ProvenanceError
from pari_bayes._paths import MODELS_DIR
from pari_bayes.estimation.posterior import (
    MAX_DRAWS,
    PROVENANCE_KEYS,
    load_posterior,
    write_posterior,
)
from pari_bayes.io import atomic_write_text, output_dir, write_csv

PROVENANCE = {
    "model_name": "tiny",
    "spec_json": '{"name": "tiny"}',
    "data_hash": "abc123",
    "seed": 7,
    "status": "UNCONVERGED",
}


def _tiny_idata(chains: int = 2, draws: int = 30, households: int = 5):
    rng = np.random.default_rng(0)
    hh = [f"h{i}" for i in range(households)]
    return az.from_dict(
        posterior={
            "direct_effect": rng.normal(size=(chains, draws)),
            "eta": rng.normal(size=(chains, draws, households)),
        },
        log_likelihood={"y": rng.normal(size=(chains, draws, households))},
        posterior_predictive={"y": rng.normal(size=(chains, draws, households))},
        observed_data={"y": rng.normal(size=households)},
        constant_data={"x": np.arange(households, dtype=float)},
        coords={"household": hh},
        dims={"eta": ["household"], "y": ["household"], "x": ["household"]},
    )


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("kind", ["multilevel", "latent"])
def test_round_trip_every_kind(tmp_path, kind, umask_022):
    idata = _tiny_idata()
    drop = ("eta",) if kind == "latent" else ()
    path = write_posterior(
        idata,
        tmp_path / "posterior.nc",
        kind=kind,
        extra={"invariance": "full"},
        drop=drop,
        **PROVENANCE,
    )
    assert [p.name for p in tmp_path.iterdir()] == ["posterior.nc"]  # no temporary left
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    back = load_posterior(path)
    for key in PROVENANCE_KEYS:
        assert key in back.attrs, key
    assert back.attrs["kind"] == kind and back.attrs["model_name"] == "tiny"
    assert back.attrs["seed"] == 7 and back.attrs["status"] == "UNCONVERGED"
    assert back.attrs["package_version"] == pb.__version__
    assert back.attrs["invariance"] == "full"
    assert ("eta" in back.posterior) == (kind != "latent")
    assert "eta" in idata.posterior  # the in-memory InferenceData is unchanged
    np.testing.assert_array_equal(
        back.posterior["direct_effect"].to_numpy(), idata.posterior["direct_effect"].to_numpy()
    )
    for group in ("log_likelihood", "observed_data", "constant_data", "posterior_predictive"):
        assert group in back.groups(), group
    # the package-level name reads it too
    assert pb.load_posterior(path).attrs["kind"] == kind


def test_missing_provenance_key_is_refused(tmp_path):
    idata = _tiny_idata()
    path = tmp_path / "plain.nc"
    idata.attrs.update({"model_name": "tiny", "seed": 1})
    idata.to_netcdf(str(path))
    with pytest.raises(ProvenanceError) as err:
        load_posterior(path)
    message = str(err.value)
    assert str(path) in message
    for key in ("kind", "spec_json", "data_hash", "status"):
        assert key in message, key
    with pytest.raises(ProvenanceError, match="no such posterior"):
        load_posterior(tmp_path / "missing.nc")
    with pytest.raises(ValueError, match="status"):
        write_posterior(idata, tmp_path / "x.nc", kind="latent", **{**PROVENANCE, "status": "ok"})


def test_large_groups_are_thinned_and_compressed(tmp_path):
    chains, draws = 4, 600  # 2400 draws > MAX_DRAWS["log_likelihood"]
    hh = [f"h{i}" for i in range(50)]
    smooth = np.tile(np.linspace(0.0, 1.0, 50), (chains, draws, 1))  # compressible
    idata = az.from_dict(
        posterior={"a": np.zeros((chains, draws))},
        log_likelihood={"y": smooth},
        posterior_predictive={"y": smooth},
        coords={"household": hh},
        dims={"y": ["household"]},
    )
    path = write_posterior(idata, tmp_path / "p.nc", kind="multilevel", **PROVENANCE)
    back = load_posterior(path)
    total = {g: back[g].sizes["chain"] * back[g].sizes["draw"] for g in MAX_DRAWS if g in back}
    assert total["log_likelihood"] <= MAX_DRAWS["log_likelihood"]
    assert total["posterior_predictive"] <= MAX_DRAWS["posterior_predictive"]
    assert back.posterior.sizes["draw"] == draws  # parameters keep every draw
    # thinned draws keep their original numbers, so they align with the posterior
    assert set(back.log_likelihood["draw"].values) <= set(back.posterior["draw"].values)
    encoding = back.log_likelihood["y"].encoding
    assert encoding.get("zlib") and encoding.get("complevel") == 4
    assert back.posterior["a"].encoding.get("zlib")
    # compressed: far smaller than the raw float64 arrays
    raw = smooth.nbytes * 2 + idata.posterior["a"].nbytes
    assert path.stat().st_size < raw / 10


def test_file_and_folder_modes_follow_umask(tmp_path, umask_022):
    path = atomic_write_text(tmp_path / "report.html", "<html></html>")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    import pandas as pd

    csv = write_csv(pd.DataFrame({"a": [1]}), tmp_path / "t.csv")
    assert stat.S_IMODE(csv.stat().st_mode) == 0o644
    out = tmp_path / "run"
    with output_dir(out) as stage:
        atomic_write_text(stage / "a.csv", "x\n")
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "a.csv").stat().st_mode) == 0o644


def test_file_mode_follows_a_stricter_umask(tmp_path):
    old = os.umask(0o077)
    try:
        path = atomic_write_text(tmp_path / "private.txt", "x")
        with output_dir(tmp_path / "run") as stage:
            (stage / "f").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o700


# --------------------------------------------------------------------------------------
# Quick fits of the bundled specs: written by the shared writer, read by load_posterior
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def survey():
    return pb.load_survey()


def _quick_fit(survey, name: str, directory: Path):
    from pari_bayes.estimation.fitting import fit_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fit_model(survey, MODELS_DIR / f"{name}.toml", directory, quick=True, plots=False)


@pytest.mark.slow  # CI budget: test_main_job reloads the quick run's latent posterior
def test_quick_latent_fit_reloads_without_per_draw_eta(survey, tmp_path):
    result = _quick_fit(survey, "latent", tmp_path)
    path = tmp_path / "posterior.nc"
    idata = pb.load_posterior(path, spec=MODELS_DIR / "latent.toml", survey=survey)
    assert idata.attrs["kind"] == "latent" and idata.attrs["model_name"] == "latent"
    assert idata.attrs["status"] == "UNCONVERGED"
    assert "eta" not in idata.posterior and "household_z" not in idata.posterior
    assert {"mean", "sd"} <= set(idata.factor_scores.data_vars)
    assert idata.factor_scores["mean"].sizes["household"] == survey.data.shape[0]
    assert "households" in idata.log_likelihood
    for group in ("observed_data", "constant_data"):
        assert group in idata.groups(), group
    assert "eta" in result.idata.posterior  # in memory, nothing was dropped
    np.testing.assert_allclose(
        idata.factor_scores["mean"].to_numpy(),
        result.idata.posterior["eta"].mean(("chain", "draw")).to_numpy(),
    )


@pytest.mark.slow  # CI budget: the latent reload test and the main job's quick run cover the path
def test_quick_multivariate_fit_reloads(survey, tmp_path):
    _quick_fit(survey, "multivariate", tmp_path)
    path = tmp_path / "posterior.nc"
    idata = pb.load_posterior(path, spec=MODELS_DIR / "multivariate.toml", survey=survey)
    assert idata.attrs["kind"] == "multivariate" and idata.attrs["status"] == "UNCONVERGED"
    for group in ("posterior", "posterior_predictive", "log_likelihood", "observed_data"):
        assert group in idata.groups(), group
    assert isinstance(idata.posterior, xr.Dataset)
    with pytest.raises(ProvenanceError, match="fitted model"):
        pb.load_posterior(path, spec=MODELS_DIR / "latent.toml")
