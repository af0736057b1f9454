"""A quiet console: our warnings once each at the end, library noise in a log file.

The main job prints one line per step with its elapsed time. Everything the libraries say
(PyTensor's BLAS advice, PyMC's sampler chatter and transform warnings, pyparsing
deprecations, numpy divide warnings) goes to ``run.log`` in the output folder instead; the
package's own warnings (:class:`pari_bayes.errors.PariBayesWarning` and anything raised from
``pari_bayes``) are collected and shown once each, in a short list at the end.
``--verbose`` lets everything through; ``--quiet`` prints only the result line and errors.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Console", "captured", "redirect_process_output", "LOG_NAME"]

#: Name of the log file the noise goes to, inside the output folder.
LOG_NAME = "run.log"

_LIBRARY_LOGGERS = ("pymc", "pytensor", "arviz", "dowhy", "nutpie", "numba", "bambi", "py.warnings")


@dataclass
class Console:
    """Step lines with elapsed times on stderr, and the package's warnings once each."""

    quiet: bool = False
    verbose: bool = False
    started: float = field(default_factory=time.perf_counter)
    ours: list[str] = field(default_factory=list)

    def step(self, text: str) -> None:
        """Print a step line (unless quiet)."""
        if not self.quiet:
            elapsed = time.perf_counter() - self.started
            print(f"[{elapsed:6.1f} s] {text}", file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        """Keep one of our warnings for the list at the end (each distinct one once)."""
        message = " ".join(str(message).split())
        if message and message not in self.ours:
            self.ours.append(message)

    def summary(self) -> None:
        """Print the collected warnings, numbered (unless quiet)."""
        if self.quiet or not self.ours:
            return
        print(f"{len(self.ours)} warning(s):", file=sys.stderr)
        for k, message in enumerate(self.ours, 1):
            print(f"  {k}. {message}", file=sys.stderr)


def _is_ours(record: warnings.WarningMessage) -> bool:
    from pari_bayes.errors import PariBayesWarning

    return issubclass(record.category, PariBayesWarning) or (
        f"{os.sep}pari_bayes{os.sep}" in str(record.filename)
    )


@contextmanager
def captured(log_path: Path, console: Console) -> Iterator[Console]:
    """Send library warnings and log records to ``log_path``; keep ours on ``console``.

    With ``console.verbose`` nothing is captured (everything shows as usual).
    """
    if console.verbose:
        yield console
        return
    log_path = Path(log_path)
    handler = logging.FileHandler(log_path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    saved = {}
    for name in _LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = (logger.handlers[:], logger.propagate)
        logger.handlers = [handler]
        logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield console
            finally:
                with open(log_path, "a", encoding="utf-8") as log:
                    for record in caught:
                        if _is_ours(record):
                            console.note(str(record.message))
                        else:
                            log.write(
                                f"warning {record.category.__name__} "
                                f"({record.filename}:{record.lineno}): {record.message}\n"
                            )
    finally:
        for name, (handlers, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers = handlers
            logger.propagate = propagate
        handler.close()


def redirect_process_output(log_path: Path) -> None:
    """Point this process's stdout and stderr (file descriptors 1 and 2) at ``log_path``.

    Used in the model-fitting worker processes, whose samplers and compilers print
    directly; their results and errors travel back to the main process on a queue.
    """
    fd = os.open(str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
