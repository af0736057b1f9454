"""The one replicate engine: replicates as tasks on ``dask.distributed``.

Every piece of replicate work in the project (design sweeps, ``scripts/sbc_latent.py``,
``scripts/robustness.py``) runs through :func:`map_tasks`:

- a :class:`Task` is ``fn(*args)`` with a key; ``fn`` is one function per replicate;
- by default a ``LocalCluster`` with one single-threaded worker process per core
  (``workers``); ``scheduler="tcp://HOST:8786"`` uses an existing cluster started with
  ``dask scheduler`` and ``dask worker tcp://HOST:8786 --nthreads 1`` (see docs/design.md);
  ``workers=0`` runs the tasks in this process, one after the other (debugging, tests);
- each worker gets its own PyTensor compile directory before it compiles anything
  (PyTensor's compile cache is not safe to share between concurrent processes, pymc issue
  7819), so a model compiled once per worker is re-fed new data for every replicate;
- a task that raises is reported with its traceback and never takes the others down;
- results come back as they finish; :func:`run_sweep` persists them as Parquet chunks in
  a folder as they arrive, so an interrupted sweep resumes where it stopped.

Seeds are the caller's business and must not depend on where or when a task runs: the
design sweep gives each replicate ``numpy.random.SeedSequence(seed).spawn(n)[i]``
(:func:`replicate_seeds`), so results are identical for 1 and 2 workers and in any
completion order.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pari_bayes.errors import OutputError
from pari_bayes.io import atomic_path

__all__ = [
    "Task",
    "TaskResult",
    "replicate_seeds",
    "compile_dir_for",
    "open_client",
    "map_tasks",
    "ChunkStore",
    "run_sweep",
    "terminate_on_sigterm",
    "worker_cache",
]

#: Root of the per-worker PyTensor compile directories.
COMPILE_ROOT = Path.home() / ".pytensor" / "pari-bayes-workers"


@dataclass(frozen=True)
class Task:
    """One replicate: ``fn(*args, **kwargs)``, identified by ``key`` (unique in a sweep)."""

    key: str
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskResult:
    """What a task returned (``value``) or the traceback of what it raised (``error``)."""

    key: str
    value: Any = None
    error: str | None = None
    seconds: float = 0.0
    worker: str = ""


_WORKER_CACHE: dict[Any, Any] = {}


def worker_cache(key: Any, build: Callable[[], Any]) -> Any:
    """Return ``build()`` made once per worker process (a compiled model, a design).

    The cache lives in this module, which workers import, so it outlives the tasks (a
    global of a script's ``__main__`` would be pickled afresh with every task).
    """
    if key not in _WORKER_CACHE:
        _WORKER_CACHE[key] = build()
    return _WORKER_CACHE[key]


def replicate_seeds(seed: int, n: int) -> list[np.random.SeedSequence]:
    """One independent seed sequence per replicate: ``SeedSequence(seed).spawn(n)``."""
    return np.random.SeedSequence(seed).spawn(n)


def compile_dir_for(worker_name: str, root: str | os.PathLike = COMPILE_ROOT) -> Path:
    """Return the PyTensor ``base_compiledir`` of one worker (its name made file-safe)."""
    return Path(root) / ("worker-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", str(worker_name)))


def _set_compile_dir(path: Path) -> str:
    """Point PyTensor at ``path`` (before it is imported); returns what was done."""
    flags = os.environ.get("PYTENSOR_FLAGS", "")
    if "base_compiledir" in flags:
        return f"kept PYTENSOR_FLAGS={flags}"
    if "pytensor" in sys.modules:
        return "pytensor already imported in this worker: compile dir unchanged"
    os.environ["PYTENSOR_FLAGS"] = ",".join(filter(None, [flags, f"base_compiledir={path}"]))
    return f"base_compiledir={path}"


def _worker_plugin(root: Path):
    from distributed.diagnostics.plugin import WorkerPlugin

    class CompileDirPlugin(WorkerPlugin):
        """Give each worker process its own PyTensor compile directory."""

        name = "pari-bayes-compiledir"

        def __init__(self, base: str) -> None:
            self.base = base

        def setup(self, worker) -> None:  # noqa: D102
            _set_compile_dir(compile_dir_for(worker.name, self.base))

    return CompileDirPlugin(str(root))


@contextlib.contextmanager
def open_client(
    workers: int | None = None,
    scheduler: str | None = None,
    compile_root: str | os.PathLike = COMPILE_ROOT,
    quiet: bool = False,
) -> Iterator[Any]:
    """Open a ``distributed.Client``: an existing cluster (``scheduler``) or a local one.

    Parameters
    ----------
    workers
        Worker processes of the local cluster (one thread each); default: one per core.
    scheduler
        Address of a running scheduler (``tcp://host:8786``); ``workers`` is then ignored.
    compile_root
        Folder of the per-worker PyTensor compile directories.
    quiet
        Do not print the dashboard address.
    """
    import logging

    from distributed import Client, LocalCluster

    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        n = workers or os.cpu_count() or 1
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        )
        client = Client(cluster)
    try:
        client.register_plugin(_worker_plugin(Path(compile_root)))
        if not quiet:
            link = _dashboard(client)
            n_workers = len(client.scheduler_info().get("workers", {}))
            print(
                f"dask: scheduler {client.scheduler.address}, {n_workers} worker(s); {link}",
                file=sys.stderr,
                flush=True,
            )
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _dashboard(client) -> str:
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return "dashboard: not served (install bokeh>=3.1 to get it)"
    return f"dashboard: {client.dashboard_link}"


def _run_batch(fn: Callable[..., Any], tasks: Sequence[Task]) -> list[TaskResult]:
    worker = ""
    with contextlib.suppress(Exception):
        from distributed import get_worker

        worker = str(get_worker().name)
    out = []
    for task in tasks:
        start = time.perf_counter()
        try:
            value = fn(*task.args, **task.kwargs)
            out.append(TaskResult(task.key, value, None, time.perf_counter() - start, worker))
        except Exception:  # noqa: BLE001 - reported with its traceback, the sweep goes on
            out.append(
                TaskResult(
                    task.key, None, traceback.format_exc(), time.perf_counter() - start, worker
                )
            )
    return out


def _batches(tasks: Sequence[Task], size: int) -> list[list[Task]]:
    return [list(tasks[i : i + size]) for i in range(0, len(tasks), max(1, size))]


def _progress(total: int, initial: int, label: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=label,
        unit="rep",
        file=sys.stderr,
        disable=not enabled,
        mininterval=1.0,
        dynamic_ncols=True,
    )


def map_tasks(
    fn: Callable[..., Any],
    tasks: Sequence[Task],
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    batch_size: int = 1,
    progress: bool = True,
    label: str = "replicates",
    already_done: int = 0,
) -> Iterator[TaskResult]:
    """Run ``fn`` on every task; yield each :class:`TaskResult` as its batch finishes.

    Parameters
    ----------
    fn
        The replicate function (module-level, or defined in a script: pickled by value).
    tasks
        The replicates; keys must be unique.
    workers, scheduler
        See :func:`open_client`; ``workers=0`` runs everything in this process.
    client
        An open ``distributed.Client`` to use instead of making one.
    batch_size
        Tasks per Dask task (cheap replicates: fewer scheduler round trips).
    progress
        Show a progress bar (done / total, rate, ETA) on stderr.
    label
        Name of the bar.
    already_done
        Replicates done earlier (a resumed sweep): the bar starts there.
    """
    keys = [t.key for t in tasks]
    if len(set(keys)) != len(keys):
        raise ValueError("task keys must be unique")
    bar = _progress(already_done + len(tasks), already_done, label, progress)
    try:
        batches = _batches(tasks, batch_size)
        if workers == 0 and client is None and not scheduler:
            for batch in batches:
                results = _run_batch(fn, batch)
                bar.update(len(results))
                yield from results
            return
        with contextlib.ExitStack() as stack:
            if client is None:
                client = stack.enter_context(open_client(workers, scheduler))
            from distributed import as_completed

            futures = [client.submit(_run_batch, fn, batch, pure=False) for batch in batches]
            try:
                for future in as_completed(futures):
                    results = future.result()
                    bar.update(len(results))
                    yield from results
            finally:
                client.cancel(futures)
    finally:
        bar.close()


class ChunkStore:
    """Replicate rows persisted as Parquet chunks in a folder, as batches finish.

    Each chunk is written atomically (temporary file, fsync, rename), so a kill at any
    moment leaves only whole chunks; the ``task`` column records which task made a row.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def chunks(self) -> list[Path]:
        """Return the chunk files, sorted."""
        return sorted(self.folder.glob("chunk-*.parquet")) if self.folder.is_dir() else []

    def read(self) -> pd.DataFrame:
        """Every persisted row (empty frame when nothing is persisted)."""
        parts = [pd.read_parquet(p) for p in self.chunks()]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    def done(self) -> set[str]:
        """Keys of the tasks whose rows are persisted."""
        parts = [pd.read_parquet(p, columns=["task"]) for p in self.chunks()]
        return set(pd.concat(parts)["task"].astype(str)) if parts else set()

    def write(self, rows: list[dict[str, Any]]) -> Path:
        """Persist rows as one new chunk."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"chunk-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        path = self.folder / name
        with atomic_path(path, suffix=".parquet") as tmp:
            pd.DataFrame(rows).to_parquet(tmp, index=False)
        return path


def run_sweep(
    fn: Callable[..., list[dict[str, Any]]],
    tasks: Sequence[Task],
    store: ChunkStore,
    *,
    resume: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    batch_size: int = 1,
    flush_every: float = 2.0,
    progress: bool = True,
    label: str = "replicates",
    on_error: Callable[[TaskResult], None] | None = None,
) -> tuple[pd.DataFrame, list[TaskResult]]:
    """Run the tasks not yet in ``store``, persisting their rows as they finish.

    ``fn`` returns a list of row dicts; each row gets a ``task`` column (the key); the other
    arguments are those of :func:`map_tasks`. Rows
    are flushed to a new chunk at most every ``flush_every`` seconds (and at the end, and
    when interrupted).

    Returns
    -------
    rows, failures
        Every persisted row, in the order of ``tasks`` (not of completion), and the
        results of tasks that raised (not persisted: a resumed sweep retries them).

    Raises
    ------
    OutputError
        If the store holds rows and ``resume`` is false.
    """
    done = store.done()
    if done and not resume:
        raise OutputError(
            f"{store.folder} already holds {len(done)} finished replicate(s); pass --resume "
            "to continue that sweep or choose a new --out folder"
        )
    todo = [t for t in tasks if t.key not in done]
    pending: list[dict[str, Any]] = []
    failures: list[TaskResult] = []
    last = time.monotonic()
    try:
        for result in map_tasks(
            fn,
            todo,
            workers=workers,
            scheduler=scheduler,
            client=client,
            batch_size=batch_size,
            progress=progress,
            label=label,
            already_done=len(tasks) - len(todo),
        ):
            if result.error is not None:
                failures.append(result)
                if on_error is not None:
                    on_error(result)
                continue
            pending += [{**row, "task": result.key} for row in result.value]
            if pending and time.monotonic() - last >= flush_every:
                store.write(pending)
                pending, last = [], time.monotonic()
    finally:
        if pending:  # also on Ctrl-C / SIGTERM: what finished is kept
            store.write(pending)
    rows = store.read()
    if not rows.empty:
        order = {t.key: i for i, t in enumerate(tasks)}
        rows = rows[rows["task"].isin(order)]
        position = rows["task"].map(order)
        rows = rows.assign(_order=position).sort_values("_order", kind="stable")
        rows = rows.drop(columns="_order").reset_index(drop=True)
    return rows, failures


@contextlib.contextmanager
def terminate_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt for the block (so clusters and chunks close)."""

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt(f"received signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
