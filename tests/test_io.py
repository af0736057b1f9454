"""Output folders are all-or-nothing and never overwrite without --force."""

from __future__ import annotations

import pytest

from pari_bayes import OutputError
from pari_bayes.io import atomic_write_text, output_dir


def test_output_dir_publishes_on_success(tmp_path):
    out = tmp_path / "run"
    with output_dir(out) as stage:
        (stage / "a.csv").write_text("x\n")
        assert not out.exists()
    assert (out / "a.csv").read_text() == "x\n"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_output_dir_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError), output_dir(out) as stage:
        (stage / "half.csv").write_text("x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_output_dir_refuses_non_empty_without_force(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.csv").write_text("old")
    with pytest.raises(
        OutputError, match="exists and is not empty; choose a new folder or pass --force"
    ):
        with output_dir(out):
            pass
    with pytest.raises(KeyboardInterrupt), output_dir(out, force=True) as stage:
        (stage / "new.csv").write_text("new")
        raise KeyboardInterrupt
    assert [p.name for p in out.iterdir()] == ["old.csv"]  # untouched after an interrupt
    with output_dir(out, force=True) as stage:
        (stage / "new.csv").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_atomic_write_text(tmp_path):
    path = atomic_write_text(tmp_path / "f.txt", "hello")
    assert path.read_text() == "hello"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_swallowed_interrupt_is_not_published(tmp_path):
    import os
    import signal

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt), output_dir(out) as stage:
        (stage / "partial.csv").write_text("x")
        try:  # a sampler that catches Ctrl-C and returns partial draws
            os.kill(os.getpid(), signal.SIGTERM)
        except KeyboardInterrupt:
            pass
    assert list(tmp_path.iterdir()) == []
