"""End-to-end tests of the main job (`pari-bayes run`) on tiny MCMC draws.

One quick run of the whole pipeline is shared by the report, privacy and reproducibility
tests (session-scoped); the real run with the convergence gate is marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import PLANTED_NAME, PLANTED_PHONE
from pari_bayes._paths import DEFAULT_SURVEY, MODELS_DIR, PROJECT_ROOT

CLI = [sys.executable, "-m", "pari_bayes.cli"]


def _run_cli(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=PROJECT_ROOT, env=env
    )


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory, planted_survey) -> Path:
    """One quick run of the whole pipeline on the bundled survey (plus planted PII)."""
    out = tmp_path_factory.mktemp("runs") / "quick"
    proc = _run_cli(
        [
            "run",
            "--data",
            str(planted_survey),
            "--out",
            str(out),
            "--quick",
            "--quiet",
            "--seed",
            "11",
        ]
    )
    assert proc.returncode == 3, proc.stderr[-3000:]  # quick runs cannot pass the gate, and say so
    assert f"report: {out.resolve() / 'report.html'}" in proc.stdout
    return out


def test_quick_run_writes_every_output(quick_run: Path) -> None:
    for rel in [
        "run.json",
        "data_summary.csv",
        "ols/ols_table4.csv",
        "ols/pca.csv",
        "identification/identification.json",
        "ipw/ipw_effects.csv",
        "effects_all.csv",
        "gate.csv",
        "report.html",
    ]:
        assert (quick_run / rel).exists(), rel
    fits = sorted(p.name for p in (quick_run / "fit").iterdir())
    # the main job fits the default specs (the others in models/ are fitted on demand)
    from pari_bayes.pipeline import DEFAULT_MODELS

    assert fits == sorted(DEFAULT_MODELS)
    for name in fits:
        assert (quick_run / "fit" / name / "posterior.nc").exists()
        effects = pd.read_csv(quick_run / "fit" / name / "effects.csv")
        assert {"dimension", "estimand", "alpha", "scope", "mean", "q05", "q95"} <= set(
            effects.columns
        )
    gate = pd.read_csv(quick_run / "gate.csv")
    # Tiny draws cannot pass the gate; a quick run must say so rather than hide it.
    assert not gate["passed"].all()
    # the fits' own warnings travel from the worker processes into gate.csv and the report
    latent_warnings = gate.set_index("model").loc["latent", "warnings"]
    assert "miss the thresholds" in latent_warnings
    assert "Warnings from the fits" in (quick_run / "report.html").read_text()
    meta = json.loads((quick_run / "run.json").read_text())
    assert meta["quick"] is True and meta["gate_passed"] is False
    # provenance: the versions that produced the numbers and the lock they came from
    env = meta["environment"]
    assert env["packages"]["pymc"].startswith("5.") and env["packages"]["nutpie"]
    assert len(env["requirements_lock_sha256"]) == 64


def test_report_is_complete_and_agrees_with_csvs(quick_run: Path) -> None:
    """The quick run's report: the checks of tests/test_report.py (findings first, images
    decode, every number equal to its CSV cell rounded, no table over 30 rows or wider
    than the page, the sentences' numbers in the findings table), on the real run folder."""
    from test_report import check_report

    # the planted survey is not the bundled file: no calibration to the paper, no section
    assert not (quick_run / "calibration").exists()
    parser = check_report(quick_run)
    assert "calibration" not in parser.sections
    assert {"findings", "gate", "effects", "table4", "measurement", "identification"} <= set(
        parser.sections
    )
    html_text = (quick_run / "report.html").read_text()
    assert "Convergence gate: FAILED" in html_text  # quick run: the gate says so
    # findings first, the gate after them; no unconverged fit is a finding
    assert html_text.index('id="findings"') < html_text.index("Convergence gate: FAILED")
    findings = pd.read_csv(quick_run / "findings.csv", keep_default_na=False)
    assert (findings["estimate"] == "").all()
    assert findings["status"].str.startswith("no estimate").all()
    assert len(parser.images) >= 3
    sources = {t["source"] for t in parser.tables}
    for needed in [
        "findings.csv",
        "gate.csv",
        "ols/ols_table4.csv",
        "effects_all.csv",
        "ols/pca.csv",
        "fit/latent/loadings.csv",
    ]:
        assert needed in sources, needed


def test_latent_posterior_reloads_without_per_draw_eta(quick_run: Path) -> None:
    """The main job's latent posterior: per-draw eta dropped, its summary kept and equal
    to factor_scores.csv (the in-memory comparison is test_posterior_io's slow test)."""
    import pari_bayes as pb

    idata = pb.load_posterior(
        quick_run / "fit" / "latent" / "posterior.nc", spec=MODELS_DIR / "latent.toml"
    )
    assert idata.attrs["kind"] == "latent" and idata.attrs["model_name"] == "latent"
    assert idata.attrs["status"] == "UNCONVERGED"
    assert "eta" not in idata.posterior and "household_z" not in idata.posterior
    assert {"mean", "sd"} <= set(idata.factor_scores.data_vars)
    n = len(pd.read_csv(DEFAULT_SURVEY))
    assert idata.factor_scores["mean"].sizes["household"] == n
    assert idata.log_likelihood["households"].sizes["household"] == n
    for group in ("observed_data", "constant_data"):
        assert group in idata.groups(), group
    scores = pd.read_csv(quick_run / "fit" / "latent" / "factor_scores.csv")
    first = idata.factor_scores["dimension"].to_numpy()[0]
    from_file = scores[scores["dimension"] == first]["mean"].to_numpy()
    in_nc = idata.factor_scores["mean"].sel(dimension=first).to_numpy()
    # write_csv keeps 6 significant digits (io.write_csv's "%.6g"): half a unit in the 6th
    assert from_file == pytest.approx(in_nc, rel=5e-6, abs=1e-9)


def test_no_planted_identity_in_any_output(quick_run: Path) -> None:
    for path in quick_run.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            for secret in (PLANTED_NAME, PLANTED_PHONE, "respondent_name", "interviewer_notes"):
                if secret in ("respondent_name", "interviewer_notes") and path.name in (
                    "run.json",
                    "report.html",
                ):
                    continue  # the notice names dropped columns, never their values
                assert secret.encode() not in blob, (secret, path)


def test_same_seed_gives_identical_bytes(
    tmp_path: Path, quick_run: Path, planted_survey: Path
) -> None:
    out = tmp_path / "again"
    model = str(MODELS_DIR / "multivariate.toml")
    args = [
        "run",
        "--data",
        str(planted_survey),
        "--out",
        str(out),
        "--quick",
        "--quiet",
        "--seed",
        "11",
        "--steps",
        "ols,fit,ipw",
        "--model",
        model,
    ]
    proc = _run_cli(args)
    assert proc.returncode == 3, proc.stderr[-3000:]
    for rel in ["ols/ols_table4.csv", "ipw/ipw_effects.csv", "fit/multivariate/effects.csv"]:
        assert (out / rel).read_bytes() == (quick_run / rel).read_bytes(), rel


@pytest.mark.slow
def test_main_job_passes_the_gate(tmp_path: Path) -> None:
    out = tmp_path / "full"
    start = time.perf_counter()
    proc = _run_cli(["run", "--out", str(out), "--quiet"], timeout=1800)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    gate = pd.read_csv(out / "gate.csv")
    assert gate["passed"].all(), gate.to_string()
    print(f"main job: {elapsed:.0f} s")
