"""pari_bayes.design: diagnosands, closed forms, the Dask engine, resume, spec errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pari_bayes._paths import PROJECT_ROOT
from pari_bayes.design import DesignSpecError, load_design, run_design
from pari_bayes.design.analytic import analytic_power, design_effect, estimator_variance
from pari_bayes.design.diagnosands import diagnosands, smallest_designs
from pari_bayes.design.engine import ChunkStore, Task, map_tasks, replicate_seeds
from pari_bayes.design.replicate import CR2Design, run_replicate
from pari_bayes.design.spec import parse_design
from pari_bayes.errors import OutputError, SpecError

#: The replicate rows of two runs are compared without the wall-clock column.
CLOCK = ["seconds"]


def _raw(**changes) -> dict:
    raw = {
        "design": {"name": "tiny", "seed": 7, "replicates": 6, "dimensions": ["d1"]},
        "grid": {"communities": [6], "households": [8], "participation": [0.4]},
        "truth": {"d1": {"de": 0.3, "ie": 0.4, "icc": 0.1}},
        "estimators": {"ols": {"tests": ["cr2", "wild"], "bootstrap": 49}},
    }
    for section, values in changes.items():
        raw[section] = {**raw.get(section, {}), **values}
    return raw


# --------------------------------------------------------------------------------------
# diagnosands on hand-made replicate tables
# --------------------------------------------------------------------------------------


def _table(estimate, truth, lower, upper, rejected, detected, **extra) -> pd.DataFrame:
    n = len(estimate)
    return pd.DataFrame(
        {
            "point": 0,
            "communities": 8,
            "cbo_communities": 4,
            "cbo_share": 0.5,
            "households": 10,
            "participation": 0.3,
            "dimension": "d",
            "estimand": "IE",
            "estimator": "ols_cr2",
            "truth": truth,
            "estimate": estimate,
            "lower": lower,
            "upper": upper,
            "rejected": rejected,
            "detected": detected,
            "gate_passed": extra.get("gate_passed", [True] * n),
            "error": extra.get("error", [""] * n),
        }
    )


def test_diagnosand_formulas_by_hand():
    est = np.array([1.0, 2.0, 0.0, -1.0])
    t = _table(
        estimate=est,
        truth=[1.0] * 4,
        lower=[0.5, 1.5, -0.5, -1.5],
        upper=[1.5, 2.5, 0.5, -0.5],
        rejected=[True, True, False, True],
        detected=[True, True, False, False],
    )
    row = diagnosands(t).iloc[0]
    err = est - 1.0  # 0, 1, -1, -2
    assert row["bias"] == pytest.approx(-0.5)
    assert row["bias_se"] == pytest.approx(np.std(err, ddof=1) / 2)
    assert row["rmse"] == pytest.approx(np.sqrt(6 / 4))
    assert row["rmse_se"] == pytest.approx(np.std(err**2, ddof=1) / (2 * np.sqrt(1.5) * 2))
    assert row["coverage"] == pytest.approx(0.25)  # only the first interval holds 1
    assert row["coverage_se"] == pytest.approx(np.sqrt(0.25 * 0.75 / 4))
    assert row["power"] == pytest.approx(0.5)
    assert row["power_se"] == pytest.approx(0.25)
    assert row["type_s"] == pytest.approx(1 / 3)  # 3 rejections, one with the wrong sign
    assert row["type_s_se"] == pytest.approx(np.sqrt(1 / 3 * 2 / 3 / 3))
    assert row["mean_width"] == pytest.approx(1.0) and row["mean_width_se"] == 0
    assert row["gate_failure_rate"] == 0 and row["n"] == 4


def test_failed_fits_are_counted_not_used():
    t = _table(
        estimate=[1.0, 5.0, np.nan],
        truth=[1.0] * 3,
        lower=[0.0, 4.0, np.nan],
        upper=[2.0, 6.0, np.nan],
        rejected=[False, True, False],
        detected=[False, True, False],
        gate_passed=[True, False, False],
        error=["", "gate: R-hat", "EstimationError: rank"],
    )
    row = diagnosands(t).iloc[0]
    assert row["attempted"] == 3 and row["n"] == 1
    assert row["gate_failure_rate"] == pytest.approx(2 / 3)
    assert row["bias"] == 0 and row["power"] == 0  # the failed 5.0 is not used
    no_interval = diagnosands(t.assign(lower=np.nan, upper=np.nan)).iloc[0]
    assert np.isnan(no_interval["coverage"]) and np.isnan(no_interval["mean_width"])


def test_smallest_design_per_estimand():
    table = pd.DataFrame(
        {
            "dimension": "d",
            "estimand": ["IE"] * 3 + ["DE"] * 3,
            "estimator": "ols_cr2",
            "cbo_share": 0.5,
            "households": 30,
            "participation": 0.3,
            "communities": [8, 16, 32] * 2,
            "power": [0.3, 0.85, 0.99, 0.1, 0.2, 0.4],
            "power_se": 0.02,
        }
    )
    out = smallest_designs(table, 0.8).set_index("estimand")
    assert out.loc["IE", "communities"] == 16
    assert np.isnan(out.loc["DE", "communities"]) and out.loc["DE", "largest_power"] == 0.4


# --------------------------------------------------------------------------------------
# estimators and closed forms
# --------------------------------------------------------------------------------------


def test_fast_cr2_equals_few_clusters():
    from pari_bayes.estimation import few_clusters as fc

    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 12, 9)
    codes = np.repeat(np.arange(9), sizes)
    n = len(codes)
    X = np.column_stack([np.ones(n), rng.random(n) < 0.4, rng.normal(size=n)])
    resid = rng.normal(size=n)
    resid -= X @ np.linalg.lstsq(X, resid, rcond=None)[0]
    contrasts = np.array([[0, 1.0, 0], [0, 1.0, -1.0]])
    vcov, _, df = fc.cr2_tests(X, resid, codes, contrasts)
    fast = CR2Design(X, codes, 9)
    np.testing.assert_allclose(fast.vcov(resid), vcov, atol=1e-12)
    np.testing.assert_allclose([fast.bm_df(c) for c in contrasts], df, rtol=1e-10)


def test_closed_form_building_blocks():
    assert design_effect(30, 0.05) == pytest.approx(2.45)
    # OE with no direct effect is the two-arm cluster design: DEFF / (P (1 - P) J m)
    var = estimator_variance("OE", 32, 0.5, 30, 0.3, 0.05)
    assert var == pytest.approx(design_effect(30, 0.05) / (0.25 * 32 * 30))
    assert analytic_power(0.0, var, 32, 0.05) == pytest.approx(0.05)
    with pytest.raises(Exception, match="no closed form"):
        estimator_variance("XE", 32, 0.5, 30, 0.3, 0.05)


def test_simulated_ols_power_matches_the_closed_form():
    """Randomized saturation IE at J = 64, m = 20: simulation within 3 MC SEs."""
    spec = parse_design(
        _raw(
            design={"replicates": 300, "estimands": ["IE", "OE"]},
            grid={"communities": [64], "households": [20], "participation": [0.3]},
            truth={"d1": {"de": 0.2, "ie": 0.15, "icc": 0.05}},
            estimators={"ols": {"tests": ["cr2"]}},
        )
    )
    point = spec.points[0]
    seeds = replicate_seeds(spec.seed, spec.replicates)
    rows = [r for i, s in enumerate(seeds) for r in run_replicate(spec, point, i, s)]
    table = diagnosands(pd.DataFrame(rows)).set_index("estimand")
    for estimand in ("IE", "OE"):
        sim = table.loc[estimand]
        var = estimator_variance(estimand, 64, 0.5, 20, 0.3, 0.05, direct_effect=0.2)
        closed = analytic_power(sim["mean_truth"], var, 64, spec.alpha)
        assert 0.2 < closed < 0.9  # a point where power is informative
        assert abs(sim["power"] - closed) <= 3 * sim["power_se"], (estimand, sim["power"], closed)
    assert abs(table.loc["IE", "coverage"] - 0.9) <= 3 * table.loc["IE", "coverage_se"]


# --------------------------------------------------------------------------------------
# the engine: 1 vs 2 workers, completion order, resume after a kill
# --------------------------------------------------------------------------------------


def _tasks(spec):
    from pari_bayes.design.run import design_tasks

    return design_tasks(spec)


def _frame(results) -> pd.DataFrame:
    rows = [{**row, "task": r.key} for r in results for row in r.value]
    out = pd.DataFrame(rows).drop(columns=CLOCK)
    return out.sort_values(["task", "estimator", "estimand"]).reset_index(drop=True)


def test_one_and_two_workers_and_any_order_give_identical_results():
    spec = parse_design(_raw(grid={"communities": [4, 6]}))
    tasks = _tasks(spec)
    serial = _frame(map_tasks(run_replicate, tasks, workers=0, progress=False))
    backwards = _frame(map_tasks(run_replicate, tasks[::-1], workers=0, progress=False))
    pd.testing.assert_frame_equal(serial, backwards)
    one = _frame(map_tasks(run_replicate, tasks, workers=1, batch_size=3, progress=False))
    two = _frame(map_tasks(run_replicate, tasks[::-1], workers=2, batch_size=1, progress=False))
    pd.testing.assert_frame_equal(serial, one)
    pd.testing.assert_frame_equal(serial, two)


def _boom(x: int) -> int:
    if x == 2:
        raise ValueError("replicate 2 is broken")
    return x


def test_a_failing_task_does_not_take_the_others_down():
    results = list(
        map_tasks(_boom, [Task(f"t{i}", (i,)) for i in range(4)], workers=0, progress=False)
    )
    assert [r.value for r in results if r.error is None] == [0, 1, 3]
    (bad,) = [r for r in results if r.error]
    assert bad.key == "t2" and "replicate 2 is broken" in bad.error


def test_resume_after_kill_equals_an_uninterrupted_run(tmp_path):
    # 2 designs x 5,000 replicates: several flushes (one every 2 s) of work on a fast
    # machine, so the kill after the first chunk lands mid-sweep (at 1,000 replicates a
    # fast machine finished the rest before the signal arrived)
    replicates = 5000
    n_tasks = 2 * replicates
    spec_path = tmp_path / "sweep.toml"
    spec_path.write_text(
        f"[design]\nname='kill'\nseed=11\nreplicates={replicates}\ndimensions=['d1']\n"
        "estimands=['IE']\n"
        "[grid]\ncommunities=[4, 8]\nhouseholds=[6]\n"
        "[truth.d1]\nde=0.2\nie=0.3\nicc=0.1\n"
        "[estimators.ols]\ntests=['cr2']\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "pari_bayes.cli", "design", str(spec_path), "--out", str(out)]
    proc = subprocess.Popen(
        [*cmd, "--workers", "0", "--no-progress"],  # in one process: no cluster start-up
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    store = ChunkStore(out / "chunks")
    deadline = time.monotonic() + 120
    while not store.chunks() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) != 0
    partial = len(store.done())
    assert 0 < partial < n_tasks
    assert not (out / "diagnosands.csv").exists()  # no summary of a half-done sweep
    done = subprocess.run(
        [*cmd, "--resume", "--workers", "0", "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    resumed = pd.read_parquet(out / "replicates.parquet")
    reference = run_design(
        spec_path, tmp_path / "reference", workers=0, progress=False, plots=False
    )
    pd.testing.assert_frame_equal(
        resumed.drop(columns=CLOCK), reference.replicates.drop(columns=CLOCK)
    )
    assert len(resumed) == n_tasks and resumed["task"].nunique() == n_tasks
    assert (out / "diagnosands.csv").is_file() and (out / "power_curves.png").is_file()
    assert "Smallest design" in done.stdout


def test_resume_refuses_another_spec(tmp_path):
    spec = parse_design(_raw(design={"replicates": 2}))
    run_design(spec, tmp_path / "o", workers=0, progress=False, plots=False)
    other = parse_design(_raw(design={"replicates": 3}))
    with pytest.raises(OutputError, match="another spec"):
        run_design(other, tmp_path / "o", workers=0, progress=False, resume=True)
    with pytest.raises(OutputError, match="--resume"):
        run_design(spec, tmp_path / "o", workers=0, progress=False)


# --------------------------------------------------------------------------------------
# bad design specs
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"grid": {"communities": [4], "cbo_share": [0.1]}}, r"gives 0 with CBOs; allowed: 1 to 3"),
        ({"grid": {"households": [1]}}, r"grid.households = 1; allowed: an integer >= 2"),
        (
            {"grid": {"participation": [1.0]}},
            r"grid.participation = 1.0; allowed: a number in \(0, 1\)",
        ),
        (
            {"grid": {"communities": "many"}},
            r"grid.communities = 'many'; allowed: a non-empty list",
        ),
        ({"grid": {"sizes": 3}}, r"unknown key\(s\) sizes in \[grid\]"),
        ({"design": {"estimands": ["IE", "XE"]}}, r"design.estimands .* allowed: distinct values"),
        ({"design": {"measurement": "items"}}, r"design.measurement = 'items'; allowed: 'score'"),
        ({"design": {"alpha": 0.7}}, r"design.alpha = 0.7; allowed: a number in \(0, 0.5\)"),
        ({"truth": {"d1": {"de": 0.1, "icc": 0.1}}}, r"\[truth.d1\] lacks ie"),
        ({"truth": {"d1": {"de": 0.1, "ie": 0.1, "icc": 1.5}}}, r"truth.d1.icc = 1.5"),
        (
            {"truth": {"d1": {"de": 0.1, "ie": 0.1, "icc": 0.1}, "d2": {}}},
            r"not a declared dimension: d2",
        ),
        ({"estimators": {"ols": {"tests": ["z"]}}}, r"estimators.ols.tests"),
        (
            {"estimators": {"bayes": {"communities": [5]}}},
            r"estimators.bayes.communities .* values of grid",
        ),
        ({"estimators": {"ols": {"enabled": False}}}, r"every estimator is disabled"),
    ],
)
def test_bad_design_specs_get_clear_errors(changes, match):
    raw = _raw()
    for section, values in changes.items():
        raw[section] = {**raw[section], **values} if section != "truth" else values
    with pytest.raises(DesignSpecError, match=match):
        parse_design(raw, where="spec.toml")


def test_spec_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[design\n", encoding="utf-8")
    with pytest.raises(SpecError, match=r"bad.toml: not valid TOML"):
        load_design(bad)
    with pytest.raises(DesignSpecError, match=r"missing.toml: design spec not found"):
        load_design(tmp_path / "missing.toml")
    nothing = tmp_path / "no_truth.toml"
    nothing.write_text("[design]\ndimensions=['d']\n[grid]\ncommunities=[4]\nhouseholds=[5]\n")
    with pytest.raises(DesignSpecError, match=r"missing section \[truth\].*--prior-from"):
        load_design(nothing)
    assert load_design(nothing, prior=True).truth is None


def test_bundled_example_spec_is_valid():
    spec = load_design(PROJECT_ROOT / "models" / "design_example.toml")
    assert [p.communities for p in spec.points] == [4, 8, 16, 32, 64, 128]
    assert spec.dimensions == ("neighborly_interaction",) and "IE" in spec.estimands
    assert spec.bayes.enabled and set(spec.bayes.communities) <= {4, 8, 16, 32, 64, 128}


def test_prior_from_a_missing_run_is_a_clear_error(tmp_path):
    from pari_bayes.design.prior import PosteriorTruth

    with pytest.raises(DesignSpecError, match=r"--prior-from .*no fit/table4/posterior.nc"):
        PosteriorTruth.from_run(tmp_path, ("neighborly_interaction",))


def test_prior_draws_become_the_truth(tmp_path):
    """A fake multilevel posterior: each replicate's truth is one of its draws."""
    import xarray as xr

    from pari_bayes.design.prior import PosteriorTruth

    coords = {"chain": [0, 1], "draw": np.arange(3), "dimension": ["a", "b"]}
    shape = (2, 3, 2)
    ie = np.arange(12.0).reshape(shape)
    post = xr.Dataset(
        {
            "direct_effect": (("chain", "draw", "dimension"), -ie),
            "spillover_effect": (("chain", "draw", "dimension"), ie),
            "community_sd": (("chain", "draw", "dimension"), np.full(shape, 0.2)),
            "residual_sd": (("chain", "draw", "dimension"), np.full(shape, 0.9)),
        },
        coords=coords,
    )
    path = tmp_path / "fit" / "table4" / "posterior.nc"
    path.parent.mkdir(parents=True)
    xr.Dataset(attrs={"status": "converged"}).to_netcdf(path, engine="h5netcdf")
    post.to_netcdf(path, group="posterior", mode="a", engine="h5netcdf")
    prior = PosteriorTruth.from_run(tmp_path, ("b",))
    assert prior.n_draws == 6
    truth = prior.draw(np.random.default_rng(0), ("b",))["b"]
    assert truth.ie in set(ie[..., 1].ravel()) and truth.de == -truth.ie
    assert truth.community_sd == pytest.approx(0.2)


# --------------------------------------------------------------------------------------
# Bayes: one tiny wiring test (real fits are slow)
# --------------------------------------------------------------------------------------


# CI budget: nutpie's numba compile of the multilevel model alone is ~85 s of a 2-core
# `make test` run; the multilevel model itself is tested in test_multilevel.py, and this
# test (compile once, refeed with CompiledModel.with_data) runs with `make test-all`.
@pytest.mark.slow
def test_bayes_replicate_wiring():
    spec = parse_design(
        _raw(
            design={"estimands": ["DE", "IE"]},
            estimators={"ols": {"tests": ["cr2"]}, "bayes": {"draws": 30, "tune": 30, "chains": 2}},
        )
    )
    rows = pd.DataFrame(
        run_replicate(spec, spec.points[0], 0, replicate_seeds(1, 1)[0], bayes=True)
    )
    bayes = rows[rows["estimator"] == "bayes"]
    assert list(bayes["estimand"]) == ["DE", "IE"]
    assert bayes["estimate"].notna().all() and (bayes["lower"] < bayes["upper"]).all()
    # 30 draws cannot pass the gate: the rows say so instead of pretending
    assert not bayes["gate_passed"].any() and bayes["error"].str.startswith("gate:").all()


@pytest.mark.slow
def test_bayes_assurance_converges_and_covers():
    spec = parse_design(
        _raw(
            design={"replicates": 8, "estimands": ["IE"]},
            grid={"communities": [16], "households": [20]},
            estimators={"ols": {"tests": ["cr2"]}, "bayes": {"replicates": 8}},
        )
    )
    result = run_design(
        spec,
        Path(os.environ.get("TMPDIR", "/tmp")) / f"design-slow-{os.getpid()}",
        workers=0,
        progress=False,
        plots=False,
    )
    bayes = result.diagnosands[result.diagnosands["estimator"] == "bayes"].iloc[0]
    assert bayes["gate_failure_rate"] == 0
    assert bayes["n"] == 8
