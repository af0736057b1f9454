"""Fitting model specs in worker processes while the main job does its other steps.

A fit spends a good part of its time compiling its model (numba, one core) and in Python
post-processing (one core); the samplers use every core. Fitting the specs in two worker
processes, while the main process runs calibration, OLS, identification and IPW, keeps both
cores of a small machine busy. Every fit is seeded on its own, so the numbers are the same
as in a sequential run.

Workers are started with ``spawn`` (no fork of a process that already runs threads), ignore
SIGINT (the main process decides), and are terminated if the main process stops early, so
an interrupted run leaves no worker writing into its staging folder. Results travel back
through a :class:`multiprocessing.Queue` between our own processes; no file is unpickled.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pari_bayes.errors import EstimationError

__all__ = [
    "FitJob",
    "FitOutcome",
    "plan_workers",
    "run_fit_jobs",
    "fit_job_safely",
    "describe_fit",
]

_BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class FitJob:
    """One spec to fit into one folder."""

    name: str
    spec_path: Path
    target: Path
    cost: float = 1.0


@dataclass(frozen=True)
class FitOutcome:
    """What a finished fit hands back to the main job.

    Attributes
    ----------
    gate
        The spec's gate row (``passed``, ``reason``, ``rung``, ...).
    seconds
        Wall time of the fit, escalation included.
    effects
        Its published effect rows (an :class:`~pari_bayes.effects.EffectTable`), or
        ``None`` if it published none (gate missed, or the fit raised).
    """

    gate: dict[str, Any]
    seconds: float
    effects: Any = None


def plan_workers(jobs: Sequence[FitJob], n_workers: int) -> list[list[FitJob]]:
    """Assign jobs to workers, longest first to the least loaded (LPT scheduling).

    Examples
    --------
    >>> jobs = [FitJob("a", Path("a"), Path("a"), 1.0), FitJob("b", Path("b"), Path("b"), 3.0),
    ...         FitJob("c", Path("c"), Path("c"), 1.5)]
    >>> [[j.name for j in w] for w in plan_workers(jobs, 2)]
    [['b'], ['c', 'a']]
    """
    n = max(1, min(n_workers, len(jobs)))
    plan: list[list[FitJob]] = [[] for _ in range(n)]
    load = [0.0] * n
    for job in sorted(jobs, key=lambda j: -j.cost):
        k = load.index(min(load))
        plan[k].append(job)
        load[k] += job.cost
    return [p for p in plan if p]


def error_gate(exc: BaseException) -> dict[str, Any]:
    """Return the gate row of a spec whose fit raised: failed, the error as its reason."""
    return {
        "passed": False,
        "reason": f"{type(exc).__name__}: {exc}"[:500],
        "rung": None,
        "attempts": 0,
        "effects_published": False,
        "warnings": "",
    }


def fit_job_safely(job: FitJob, survey: Any, options: dict[str, Any]) -> FitOutcome:
    """Fit one job; an estimation error fails this spec only (its gate row says why).

    Interrupts (KeyboardInterrupt, SystemExit) still stop the run.
    """
    from pari_bayes.errors import PariBayesError
    from pari_bayes.estimation.fitting import fit_spec_file

    start = time.perf_counter()
    effects = None
    try:
        fit = fit_spec_file(survey, job.spec_path, job.target, **options)
        gate = fit.gate
        effects = fit.effect_table(method=f"bayes:{job.name}")
    except (PariBayesError, ArithmeticError, ValueError, RuntimeError) as exc:
        for child in job.target.iterdir():  # nothing half-written from the failed fit
            if child.is_file():
                child.unlink()
        gate = error_gate(exc)
        gate["traceback"] = traceback.format_exc()[-2000:]
    return FitOutcome(gate=gate, seconds=time.perf_counter() - start, effects=effects)


def describe_fit(name: str, gate: dict[str, Any], seconds: float) -> str:
    """One console line for a finished fit: passed / failed, which rung, how long."""
    if gate.get("passed"):
        rung = gate.get("rung") or 0
        how = "gate passed" + (f" on escalation rung {rung}" if rung else "")
    elif gate.get("attempts") == 0:
        how = f"FAILED: {str(gate.get('reason', ''))[:160]}"
    else:
        how = f"gate FAILED after {gate.get('attempts', 1)} attempt(s)"
    return f"model {name}: {how} ({seconds:.0f} s)"


def _worker(jobs: list[FitJob], survey: Any, options: dict[str, Any], results: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C
    options = dict(options)
    log_path = options.pop("log_path", None)
    options.pop("console", None)
    if log_path is not None:
        from pari_bayes.console import redirect_process_output

        redirect_process_output(Path(log_path))
    for job in jobs:
        try:
            results.put(("ok", job.name, fit_job_safely(job, survey, options)))
        except BaseException as exc:  # noqa: BLE001 - reported to the main process
            try:
                results.put(("error", job.name, exc, traceback.format_exc()))
            except Exception:  # noqa: BLE001 - an exception that cannot travel
                results.put(("error", job.name, None, traceback.format_exc()))
            return


def run_fit_jobs(
    jobs: Sequence[FitJob],
    survey: Any,
    options: dict[str, Any],
    n_workers: int,
    while_waiting: Any = None,
    on_done: Any = None,
) -> dict[str, FitOutcome]:
    """Fit every job in worker processes; returns each job's :class:`FitOutcome` by name.

    Parameters
    ----------
    jobs
        The specs to fit.
    survey
        The validated survey (sent to each worker once).
    options
        Keyword arguments of :func:`pari_bayes.estimation.fitting.fit_spec_file`.
    n_workers
        Worker processes (at most one per job).
    while_waiting
        Optional callable run in the main process once the workers have started.
    on_done
        Optional callable given one line of text as each fit finishes, and every 30 s
        while the main process waits (progress).

    Raises
    ------
    Exception
        The first error a worker raised (re-raised here with its type), after every other
        worker was stopped.
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(plan, survey, options, results), daemon=False)
        for plan in plan_workers(jobs, n_workers)
    ]
    outcomes: dict[str, FitOutcome] = {}
    done = False
    try:
        # Each worker's sampler already runs one thread per chain: single-threaded BLAS in
        # the workers avoids oversubscribing the cores (spawned children copy os.environ).
        saved = {k: os.environ.get(k) for k in _BLAS_THREAD_VARIABLES}
        os.environ.update(dict.fromkeys(_BLAS_THREAD_VARIABLES, "1"))
        try:
            for proc in procs:
                proc.start()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        if while_waiting is not None:
            while_waiting()
        last_tick = time.perf_counter()
        while len(outcomes) < len(jobs):
            try:
                message = results.get(timeout=0.5)
            except queue.Empty:
                if on_done is not None and time.perf_counter() - last_tick > 30:
                    last_tick = time.perf_counter()
                    waiting = [j.name for j in jobs if j.name not in outcomes]
                    on_done(
                        f"sampling: {len(outcomes)} of {len(jobs)} models done; "
                        f"still fitting {', '.join(waiting)}"
                    )
                if not any(p.is_alive() for p in procs):
                    try:  # a last message may still be in the pipe
                        message = results.get(timeout=2.0)
                    except queue.Empty:
                        raise EstimationError(
                            "a model-fitting worker process stopped without a result "
                            "(out of memory?); run again with --workers 1 to see the error"
                        ) from None
                else:
                    continue
            if message[0] == "ok":
                outcome = message[2]
                outcomes[message[1]] = outcome
                if on_done is not None:
                    on_done(describe_fit(message[1], outcome.gate, outcome.seconds))
                continue
            _, name, exc, text = message
            if isinstance(exc, BaseException):
                raise exc
            raise EstimationError(f"fitting {name} failed in a worker process:\n{text}")
        done = True
    finally:
        for proc in procs:
            if done:
                proc.join(timeout=30)  # finishing normally
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        results.close()
    return outcomes
