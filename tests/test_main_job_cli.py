"""The main job's CLI runs that do not share the quick run: --hash-ids, and a killed run.

In their own file so that pytest-xdist (``--dist loadfile``) runs them on the other worker
while tests/test_main_job.py builds its quick run.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import PLANTED_PHONE
from pari_bayes._paths import DEFAULT_SURVEY, MODELS_DIR, PROJECT_ROOT
from test_main_job import CLI, _run_cli


def test_hash_ids_replaces_household_ids(tmp_path: Path, planted_survey: Path) -> None:
    out = tmp_path / "hashed"
    proc = _run_cli(
        [
            "run",
            "--data",
            str(planted_survey),
            "--out",
            str(out),
            "--quiet",
            "--hash-ids",
            "--steps",
            "ols,fit",
            "--quick",
            "--model",
            str(MODELS_DIR / "multivariate.toml"),
        ]
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    ids = pd.read_csv(DEFAULT_SURVEY, dtype=str)["household_id"].tolist()
    pattern = re.compile("|".join(re.escape(i) for i in ids[:50]).encode())
    for path in out.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert PLANTED_PHONE.encode() not in blob
            assert not pattern.search(blob), path
    import arviz as az

    idata = az.from_netcdf(out / "fit" / "multivariate" / "posterior.nc")
    hh = [str(h) for h in idata.observed_data["household"].values]
    assert all(h.startswith("h_") for h in hh)


@pytest.mark.parametrize(
    "sig",
    # both signals go through the same handler (io._Interrupts); SIGTERM is slow-marked for
    # CI's time budget
    [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)],
)
def test_killed_run_leaves_nothing(tmp_path: Path, sig) -> None:
    import threading

    out = tmp_path / "killed"
    model = str(MODELS_DIR / "multivariate.toml")
    cmd = [
        *CLI,
        "fit",
        "--model",
        model,
        "--out",
        str(out),
        "--sampler",
        "pymc",
        "--draws",
        "200000",
        "--tune",
        "100",
        "--chains",
        "2",
    ]
    proc = subprocess.Popen(
        cmd, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    sampling = threading.Event()
    lines: list[str] = []

    def watch() -> None:
        for line in proc.stderr:
            lines.append(line)
            if "Sampling" in line or "NUTS" in line:
                sampling.set()

    threading.Thread(target=watch, daemon=True).start()
    assert sampling.wait(timeout=600), "".join(lines)[-2000:]
    time.sleep(5)  # well inside the 200,000 draws
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(sig)
    proc.wait(timeout=120)
    assert proc.returncode != 0
    # neither --out nor a staging folder: a later run starts from nothing (CI budget: the
    # refit into the same --out that used to follow is the ordinary path every fit test runs)
    assert list(tmp_path.iterdir()) == []
