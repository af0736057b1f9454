"""A design sweep from spec to answer: replicates on the engine, diagnosands, curves, words.

``run_design`` writes into ``out``:

- ``replicates.parquet``: one row per replicate x dimension x estimand x estimator
  (:data:`pari_bayes.design.replicate.REPLICATE_COLUMNS`);
- ``diagnosands.csv``: per grid point, dimension, estimand and estimator, the diagnosands
  with their Monte Carlo SEs (:mod:`pari_bayes.design.diagnosands`), beside the closed-form
  power and MDE where they apply (:mod:`pari_bayes.design.analytic`);
- ``smallest_design.csv`` and ``summary.md``: the smallest design on the grid that reaches
  the target power for each estimand, in words;
- ``power_curves.png``;
- ``chunks/``: the replicate rows as they finished (what ``--resume`` continues from) and
  ``design.json`` (the spec the chunks belong to).

Every file is written atomically. The folder cannot be staged and published whole like the
other commands' (:func:`pari_bayes.io.output_dir`) because an interrupted sweep must keep
its finished replicates; the summary files appear only when every replicate is done.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pari_bayes.design.analytic import analytic_power, estimator_variance, minimum_detectable_effect
from pari_bayes.design.diagnosands import diagnosands, smallest_designs
from pari_bayes.design.engine import (
    ChunkStore,
    Task,
    TaskResult,
    open_client,
    replicate_seeds,
    run_sweep,
)
from pari_bayes.design.prior import PosteriorTruth
from pari_bayes.design.replicate import REPLICATE_COLUMNS, run_replicate
from pari_bayes.design.spec import DesignSpec, load_design
from pari_bayes.errors import OutputError
from pari_bayes.io import atomic_path, atomic_write_text, write_csv

__all__ = ["DesignResult", "design_tasks", "run_design"]

OLS_BATCH = 25


@dataclass
class DesignResult:
    """What a sweep produced."""

    out: Path
    replicates: pd.DataFrame
    diagnosands: pd.DataFrame
    smallest: pd.DataFrame
    task_failures: list[TaskResult] = field(default_factory=list)
    summary: str = ""

    @property
    def gate_failures(self) -> int:
        """Bayes replicates that failed the convergence gate (or raised)."""
        bayes = self.replicates[self.replicates["estimator"] == "bayes"]
        return int(bayes.drop_duplicates(["point", "replicate"])["gate_passed"].eq(False).sum())


def design_tasks(spec: DesignSpec, prior: PosteriorTruth | None = None) -> list[Task]:
    """One task per grid point x replicate, each with its own spawned seed sequence."""
    seeds = replicate_seeds(spec.seed, len(spec.points) * spec.replicates)
    tasks = []
    for point in spec.points:
        n_bayes = spec.bayes_replicates(point)
        for r in range(spec.replicates):
            seed = seeds[point.index * spec.replicates + r]
            tasks.append(
                Task(
                    f"p{point.index}-r{r}",
                    (spec, point, r, seed),
                    {"bayes": r < n_bayes, "prior": prior},
                )
            )
    return tasks


def _with_analytic(table: pd.DataFrame, spec: DesignSpec) -> pd.DataFrame:
    """Add the closed-form power and MDE (fixed truth, OLS rows; NaN otherwise)."""
    power, mde = [], []
    for row in table.itertuples():
        if spec.truth is None or not row.estimator.startswith("ols"):
            power.append(math.nan)
            mde.append(math.nan)
            continue
        truth = spec.truth[row.dimension]
        total_sd = math.sqrt(truth.community_sd**2 + truth.residual_sd**2)
        var = estimator_variance(
            row.estimand,
            int(row.communities),
            float(row.cbo_share),
            float(row.households),
            float(row.participation),
            truth.icc,
            total_sd=total_sd,
            direct_effect=truth.de,
        )
        power.append(analytic_power(row.mean_truth, var, int(row.communities), spec.alpha))
        mde.append(
            minimum_detectable_effect(var, int(row.communities), spec.alpha, spec.target_power)
        )
    return table.assign(analytic_power=power, analytic_mde=mde)


def _fmt_design(row: Any) -> str:
    return (
        f"{int(row['communities'])} communities ({row['cbo_share']:.0%} with CBOs), "
        f"{int(row['households'])} households each, {row['participation']:.0%} participation"
    )


_NAMES = {
    "DE": "direct effect",
    "IE": "spillover effect",
    "TE": "total effect",
    "OE": "overall effect",
}
_ESTIMATORS = {
    "ols_cr2": "OLS with a CR2 t-test",
    "ols_wild": "OLS with a wild cluster bootstrap",
    "bayes": "the multilevel Bayes model (assurance: the interval excludes 0 in the true "
    "direction)",
}


def _summary(
    spec: DesignSpec,
    table: pd.DataFrame,
    smallest: pd.DataFrame,
    failures: list[TaskResult],
    prior: PosteriorTruth | None,
) -> str:
    target = spec.target_power
    lines = [f"# Design sweep `{spec.name}`", ""]
    if spec.description:
        lines += [spec.description, ""]
    if prior is not None:
        lines += [
            f"True effects and variance components drawn per replicate from the posterior in "
            f"`{prior.source}` ({prior.n_draws} draws), so power here is the **assurance** "
            "given what that survey taught us. Posterior means (sd units of the score): "
            + "; ".join(
                f"{d}: DE {v['de']:.3f}, IE {v['ie']:.3f}, community sd {v['community_sd']:.3f}, "
                f"residual sd {v['residual_sd']:.3f}, P(IE > 0) = {v['prob_ie_positive']:.2f}"
                for d, v in prior.summary().items()
            ),
            "",
        ]
    else:
        lines += [
            "Truth (sd units of the score): "
            + "; ".join(
                f"{d}: DE {t.de:g}, IE {t.ie:g}, ICC {t.icc:.3g}"
                for d, t in (spec.truth or {}).items()
            ),
            "",
        ]
    lines += [
        f"{spec.replicates} replicates per grid point (OLS); alpha {spec.alpha:g}; target power "
        f"{target:.0%}. Power is given with its Monte Carlo SE.",
        "",
        "## Smallest design on the grid reaching the target",
        "",
    ]
    for row in smallest.to_dict("records"):
        how = _ESTIMATORS.get(row["estimator"], row["estimator"])
        what = f"{_NAMES[row['estimand']]} ({row['estimand']}) on {row['dimension']} by {how}"
        rest = (
            f"with {row['cbo_share']:.0%} of communities with CBOs, {int(row['households'])} "
            f"households each, {row['participation']:.0%} participation"
        )
        if math.isnan(row["communities"]):
            lines.append(
                f"- {what}: **no grid point reaches {target:.0%}** {rest}; the best is "
                f"{row['largest_power']:.2f} at {row['largest_power_communities']:.0f} communities."
            )
        else:
            sub_grid = (
                " (the smallest point of the Bayes sub-grid)"
                if (
                    row["estimator"] == "bayes"
                    and row["communities"] == min(spec.bayes.communities or [0])
                )
                else ""
            )
            lines.append(
                f"- {what}: **{int(row['communities'])} communities**{sub_grid} {rest} (power "
                f"{row['power']:.2f} +- {row['power_se']:.2f} MC SE"
                + (f", {int(n)} replicates" if (n := _n(table, row)) else "")
                + ")."
            )
    gate = table[table["estimator"] == "bayes"]
    if len(gate) and (gate["gate_failure_rate"] > 0).any():
        worst = gate["gate_failure_rate"].max()
        lines += [
            "",
            f"**Convergence gate failures** in the Bayes fits (worst grid point: {worst:.0%} of "
            "replicates); their diagnosands use only the fits that passed. See "
            "`replicates.parquet` (column error).",
        ]
    if failures:
        lines += [
            "",
            f"**{len(failures)} replicate task(s) raised** and are not in the results; rerun "
            "with --resume to retry them. First error:",
            "",
            "```",
            failures[0].error.strip().splitlines()[-1] if failures[0].error else "",
            "```",
        ]
    lines += ["", "## Diagnosands", ""]
    cols = ["communities", "dimension", "estimand", "estimator", "n", "power", "power_se",
            "analytic_power", "bias", "rmse", "coverage", "type_s", "mean_width",
            "gate_failure_rate"]  # fmt: skip
    show = table[[c for c in cols if c in table]]
    lines.append("| " + " | ".join(show.columns) + " |")
    lines.append("|" + "---|" * len(show.columns))
    for row in show.itertuples(index=False):
        cells = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _n(table: pd.DataFrame, row: dict) -> int:
    """Replicates behind a smallest-design row (a proportion's SE is 0 at 0 and 1)."""
    hit = table[
        (table["dimension"] == row["dimension"])
        & (table["estimand"] == row["estimand"])
        & (table["estimator"] == row["estimator"])
        & (table["communities"] == row["communities"])
    ]
    return int(hit["n"].iloc[0]) if len(hit) else 0


def _check_out(out: Path, spec: DesignSpec, prior_from: str | None, resume: bool) -> None:
    marker = out / "chunks" / "design.json"
    identity = {"spec": json.loads(spec.to_json()), "prior_from": prior_from}
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder; give a folder path.")
    if out.is_dir() and any(out.iterdir()):
        if not resume:
            raise OutputError(
                f"--out {out} exists and is not empty; pass --resume to continue the sweep "
                "in it, or choose a new folder."
            )
        if not marker.is_file():
            raise OutputError(f"--resume: {out} holds no design sweep (no chunks/design.json)")
        saved = json.loads(marker.read_text(encoding="utf-8"))
        if saved != json.loads(json.dumps(identity, default=str)):
            raise OutputError(
                f"--resume: the sweep in {out} was started with another spec or --prior-from; "
                "resume it with the same ones, or choose a new folder."
            )
        return
    atomic_write_text(marker, json.dumps(identity, indent=2, sort_keys=True, default=str))


def run_design(
    spec: DesignSpec | str | os.PathLike,
    out: str | os.PathLike,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    resume: bool = False,
    prior_from: str | os.PathLike | None = None,
    prior_spec: str = "table4",
    progress: bool = True,
    plots: bool = True,
) -> DesignResult:
    """Simulate every grid point of a design spec and write the answer into ``out``.

    Parameters
    ----------
    spec
        A :class:`~pari_bayes.design.spec.DesignSpec` or the path of its TOML.
    out
        Output folder (new, or the folder of an interrupted sweep with ``resume``).
    workers, scheduler
        Dask: local worker processes (default one per core; 0 = in this process) or the
        address of a running scheduler.
    resume
        Continue the sweep in ``out`` (replicates already persisted are not rerun).
    prior_from
        A finished run folder: draw each replicate's truth from its posterior.
    prior_spec
        Which fit of that run (``fit/<prior_spec>/posterior.nc``).
    progress
        Progress bar on stderr.
    plots
        Write ``power_curves.png``.

    Returns
    -------
    DesignResult

    Examples
    --------
    >>> from pari_bayes.design import run_design  # doctest: +SKIP
    >>> result = run_design("models/design_example.toml", "design_out")  # doctest: +SKIP
    >>> print(result.summary)  # doctest: +SKIP
    """
    if not isinstance(spec, DesignSpec):
        spec = load_design(spec, prior=prior_from is not None)
    prior = PosteriorTruth.from_run(prior_from, spec.dimensions, prior_spec) if prior_from else None
    out = Path(out)
    _check_out(out, spec, str(prior_from) if prior_from else None, resume)
    store = ChunkStore(out / "chunks")
    tasks = design_tasks(spec, prior)
    heavy = [t for t in tasks if t.kwargs["bayes"]]
    light = [t for t in tasks if not t.kwargs["bayes"]]
    failures: list[TaskResult] = []
    local = workers == 0 and not scheduler
    # _check_out has refused a non-empty folder without --resume, so the store is ours
    with contextlib.nullcontext() if local else open_client(workers, scheduler) as client:
        kw = {"workers": workers, "scheduler": scheduler, "client": client, "progress": progress}
        # the Bayes replicates first (one per Dask task), then the cheap ones in batches
        for part, batch, label in ((heavy, 1, "bayes+ols"), (light, OLS_BATCH, "ols")):
            if part:
                _, fails = run_sweep(
                    run_replicate, part, store, resume=True, batch_size=batch, label=label, **kw
                )
                failures += fails
    rows = store.read()
    order = {t.key: i for i, t in enumerate(tasks)}
    if rows.empty:
        rows = pd.DataFrame(columns=[*REPLICATE_COLUMNS, "task"])
    else:
        rows = rows[rows["task"].isin(order)]
        rows = rows.assign(_o=rows["task"].map(order)).sort_values("_o", kind="stable")
        rows = rows.drop(columns="_o").reset_index(drop=True)
    table = _with_analytic(diagnosands(rows), spec) if len(rows) else pd.DataFrame()
    smallest = smallest_designs(table, spec.target_power) if len(table) else pd.DataFrame()
    summary = _summary(spec, table, smallest, failures, prior) if len(table) else ""
    with atomic_path(out / "replicates.parquet", suffix=".parquet") as tmp:
        rows.to_parquet(tmp, index=False)
    if len(table):
        write_csv(table, out / "diagnosands.csv")
        write_csv(smallest, out / "smallest_design.csv")
        atomic_write_text(out / "summary.md", summary)
        if plots:
            from pari_bayes.design.plots import plot_power_curves

            plot_power_curves(
                table,
                out / "power_curves.png",
                target=spec.target_power,
                title=f"{spec.name}: power vs communities"
                + (" (assurance: truth from a posterior)" if prior is not None else ""),
            )
    return DesignResult(out, rows, table, smallest, failures, summary)
