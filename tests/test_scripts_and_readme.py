"""Every step script and every README Python block runs (tiny draws), so none can rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from pari_bayes._paths import PROJECT_ROOT

SCRIPTS = [
    "reproduce_table4.py",
    "identify.py",
    "ipw.py",
    "fit_latent.py",
    "fit_multilevel.py",
    "add_community.py",
    "compare_all.py",
]


def test_every_step_script_is_listed_and_documented():
    steps = {
        p.name
        for p in (PROJECT_ROOT / "scripts").glob("*.py")
        if not p.name.startswith(
            ("bench_", "sbc_", "two_step", "calibrate_", "robustness", "validate_", "screenshot_")
        )
    }
    assert steps == set(SCRIPTS)
    readme = (PROJECT_ROOT / "README.md").read_text()
    for name in SCRIPTS:
        text = (PROJECT_ROOT / "scripts" / name).read_text()
        assert text.startswith('"""'), name  # a docstring saying what it does and writes
        assert "import pari_bayes as pb" in text, name  # the public API, not CLI internals
        assert f"scripts/{name}" in readme, name


#: Scripts whose run is slow and whose code paths the main job's quick run already covers
#: (compare_all fits every method, fit_latent the latent spec and fit_multilevel the table4
#: and multivariate specs, as `run --quick` does; add_community's fifth-community fit is
#: the tiny_fit fixture of test_multilevel.py, in-process):
#: slow-marked to keep `make test` near CI's 15 minutes.
SLOW_SCRIPTS = {"compare_all.py", "fit_latent.py", "fit_multilevel.py", "add_community.py"}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_SCRIPTS else n for n in SCRIPTS],
)
def test_step_script_runs(name: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "scripts" / name), "--out", str(out), "--quick"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {out}" in proc.stdout
    assert any(out.iterdir())


def _python_blocks() -> list[str]:
    readme = (PROJECT_ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", readme, flags=re.S)


def test_readme_python_blocks_run(tmp_path: Path, monkeypatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import pari_bayes as pb

    blocks = _python_blocks()
    assert blocks, "README has no Python block"
    # Tiny draws: the README's fit_model call runs in quick mode here (wiring, not inference).
    monkeypatch.setattr(pb, "fit_model", partial(pb.fit_model, quick=True))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").symlink_to(PROJECT_ROOT / "models")
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})
