"""Safe outputs: atomic files and all-or-nothing output folders.

A run writes into a hidden staging folder next to ``--out`` and moves it into place only
when everything succeeded, so a crash, Ctrl-C or SIGTERM leaves either the previous
contents of ``--out`` or the complete new results, never a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from pari_bayes.errors import OutputError

__all__ = [
    "output_dir",
    "atomic_path",
    "atomic_write_text",
    "atomic_write_bytes",
    "write_csv",
    "check_out_dir",
    "current_umask",
    "file_mode",
    "dir_mode",
]


def current_umask() -> int:
    """Return the process umask without changing it (read from /proc where possible).

    ``os.umask`` can only be read by setting it, which is racy with threads; Linux reports
    it in ``/proc/self/status``, so that is tried first.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def file_mode() -> int:
    """Mode a plain ``open(path, "w")`` would give a new file: ``0o666 & ~umask``."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """Mode a plain ``mkdir`` would give a new folder: ``0o777 & ~umask``."""
    return 0o777 & ~current_umask()


def check_out_dir(out: str | os.PathLike, force: bool = False) -> Path:
    """Check that ``out`` may be written.

    Parameters
    ----------
    out
        The output folder.
    force
        Allow replacing an existing non-empty folder.

    Raises
    ------
    OutputError
        If ``out`` is a file, or a non-empty folder and ``force`` is false.
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise OutputError(f"--out {path} is a file, not a folder; give a folder path.")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise OutputError(
            f"--out {path} exists and is not empty; choose a new folder or pass --force "
            "to replace its contents."
        )
    return path


class _Interrupts:
    """SIGINT/SIGTERM handling while an output folder is staged.

    A signal raises KeyboardInterrupt (so cleanup runs) and is remembered: a sampler that
    catches KeyboardInterrupt and returns partial draws cannot get its results published.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame):  # noqa: ARG002
        self.received = signum
        raise KeyboardInterrupt(f"received signal {signum}")

    def __enter__(self) -> _Interrupts:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not in the main thread: leave signals alone
                break
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


@contextlib.contextmanager
def output_dir(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Stage an output folder and publish it atomically.

    Yields a staging folder; write every result into it. On normal exit the staging folder
    replaces ``out``; on any exception (including Ctrl-C and SIGTERM) it is deleted and
    ``out`` is left as it was. The staging folder is private (0700) while it is written;
    the published folder gets the mode of a plain ``mkdir`` (``0o777 & ~umask``).

    Examples
    --------
    >>> with output_dir("results", force=True) as tmp:  # doctest: +SKIP
    ...     (tmp / "effects.csv").write_text("...")
    """
    path = check_out_dir(out, force=force)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.staging-", dir=path.parent))
    try:
        with _Interrupts() as interrupts:
            yield staging
            if interrupts.received is not None:
                raise KeyboardInterrupt(f"received signal {interrupts.received}")
            os.chmod(staging, dir_mode())  # mkdtemp made it 0700
            if path.exists():
                trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
                os.replace(path, trash / "old")
                os.replace(staging, path)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is synced and renamed there.

    The file gets the mode of a plain ``open(path, "w")`` (``0o666 & ~umask``), not the
    0600 of the temporary file. On any error (or interrupt) the temporary file is removed
    and ``path`` is untouched.

    Examples
    --------
    >>> with atomic_path("out/figure.png", suffix=".png") as tmp:  # doctest: +SKIP
    ...     fig.savefig(tmp)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_csv(frame: pd.DataFrame, path: str | os.PathLike, float_format: str = "%.6g") -> Path:
    """Write a data frame as CSV atomically, with a fixed float format (byte-reproducible)."""
    return atomic_write_text(
        path, frame.to_csv(index=False, float_format=float_format, lineterminator="\n")
    )
