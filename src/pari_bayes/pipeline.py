"""The main job: every step of the pipeline on one survey, into one run folder.

``pari-bayes run`` calls :func:`run_pipeline` inside a staged output folder, so a failed or
interrupted run leaves nothing behind. Layout of a run folder::

    run.json, data_summary.csv          the survey and its validation notices
    calibration/                        calibration.csv, audit.csv (bundled synthetic survey)
    ols/                                the paper's PCA + OLS baseline (Table 4)
    sensitivity/                        OLS omitted-variable bounds: ovb.csv, contour_<dim>.png
    identification/                     DAG, identification, positivity, refutations
    fit/<model>/                        one folder per Bayesian model spec (models/*.toml)
    ipw/                                design-based IPW estimates
    effects_all.csv, effects_forest.png every method's DE/IE/TE/OE side by side
    gate.csv                            convergence gate of every Bayesian model
    report.html                         the self-contained report
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pari_bayes._paths import DEFAULT_SURVEY, MODELS_DIR
from pari_bayes._version import __version__
from pari_bayes.effects import EffectTable, comparison_table
from pari_bayes.findings import plain_summary as findings_summary
from pari_bayes.io import atomic_write_text, write_csv
from pari_bayes.survey import EXPOSURE_GROUPS, Survey
from pari_bayes.workers import describe_fit

__all__ = ["RunOptions", "RunResult", "run_pipeline", "default_model_specs", "data_summary"]

#: Model specs the main job fits, in this order (files in models/).
DEFAULT_MODELS = ("table4", "multivariate", "latent")


@dataclass
class RunOptions:
    """Options of the main job.

    Attributes
    ----------
    seed
        One seed for every random step.
    models
        Spec files (paths) to fit; the shipped specs by default.
    dag
        The causal graph (DOT); ``models/dag.dot`` by default. It is identified once and
        the result is handed to every estimator, so its adjustment sets are the covariates
        of every Bayesian fit and of the adjusted OLS. Only a DAG given here also sets the
        IPW participation model's covariates (without one IPW keeps the paper's Table 4
        controls, :data:`pari_bayes.estimation.ipw.SURVEY_COVARIATES`).
    allow_unconverged
        Publish the effect rows of models that fail the convergence gate on every rung of
        the escalation ladder (marked UNCONVERGED); without it their diagnostics are
        published and their effect rows are not.
    quick
        Tiny MCMC runs for wiring checks (implies allow_unconverged; every output is marked).
    progress
        Show progress (off with ``--quiet``).
    workers
        Processes fitting the Bayesian models while the main process runs the other
        steps; 1 fits them one after another in the main process.
    steps
        Which steps to run (default all).
    console
        A :class:`pari_bayes.console.Console` for step lines and our warnings (one is made
        from ``progress`` by default).
    log_path
        File the worker processes send their samplers' and compilers' output to (the CLI
        passes ``run.log`` in the output folder); ``None`` leaves it on the terminal.
    """

    seed: int = 20240611
    models: Sequence[Path] | None = None
    dag: Path | None = None
    allow_unconverged: bool = False
    quick: bool = False
    progress: bool = True
    workers: int = 2
    steps: Sequence[str] = (
        "calibration",
        "ols",
        "sensitivity",
        "identification",
        "fit",
        "ipw",
        "report",
    )
    console: Any = None
    log_path: Path | None = None


@dataclass
class RunResult:
    """What a run produced."""

    directory: Path
    timings: dict[str, float] = field(default_factory=dict)
    gate: pd.DataFrame | None = None
    effects: pd.DataFrame | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def gate_passed(self) -> bool:
        """Whether every Bayesian model passed the convergence gate."""
        return self.gate is None or bool(self.gate["passed"].all())


def default_model_specs() -> list[Path]:
    """Return the shipped model specs the main job fits."""
    return [
        MODELS_DIR / f"{name}.toml"
        for name in DEFAULT_MODELS
        if (MODELS_DIR / f"{name}.toml").exists()
    ]


def data_summary(survey: Survey) -> pd.DataFrame:
    """Households per community and exposure group, with residence ranges."""
    rows = []
    data = survey.data
    for name in survey.communities:
        sub = data[data["community"] == name]
        row = {
            "community": name,
            "cbo_presence": int(survey.registry[name].has_cbo),
            "households": len(sub),
        }
        for group in EXPOSURE_GROUPS:
            row[group] = int((sub["exposure"] == group).sum())
        row["residence_min"] = int(sub["residence_months"].min())
        row["residence_max"] = int(sub["residence_months"].max())
        row["residence_mean"] = round(float(sub["residence_months"].mean()), 2)
        rows.append(row)
    return pd.DataFrame(rows)


def _timed(result: RunResult, name: str, fn: Callable[[], object]) -> object:
    start = time.perf_counter()
    out = fn()
    result.timings[name] = round(time.perf_counter() - start, 2)
    return out


def run_pipeline(survey: Survey, directory: Path, options: RunOptions | None = None) -> RunResult:
    """Run every step on ``survey`` and write the results into ``directory``.

    Parameters
    ----------
    survey
        A validated survey (:func:`pari_bayes.load_survey`).
    directory
        An existing, empty folder (the CLI passes a staging folder).
    options
        See :class:`RunOptions`.

    Returns
    -------
    RunResult

    Raises
    ------
    SpecError
        If a model spec is broken (before anything is fitted).

    Notes
    -----
    A model that misses the convergence gate never stops the run: it is refitted on the
    escalation ladder (:data:`pari_bayes.estimation.fitting.ESCALATION`); if it still
    fails, its diagnostics are published, its effect rows are not (unless
    ``allow_unconverged``), every other step is published normally, and
    :attr:`RunResult.gate_passed` is false (the CLI exits 3).
    """
    options = options or RunOptions()
    directory = Path(directory)
    from pari_bayes.console import Console

    progress = options.console or Console(quiet=not options.progress)
    result = RunResult(directory=directory)
    steps = set(options.steps)
    is_default = Path(survey.source).resolve() == DEFAULT_SURVEY.resolve()

    write_csv(data_summary(survey), directory / "data_summary.csv")
    method_effects: list[pd.DataFrame] = []
    gate_rows: list[dict] = []
    failures: list[str] = []

    table4 = None
    ipw_effects = None

    def _step_dir(
        result: RunResult, name: str, writer: Callable[..., object], **kwargs: Any
    ) -> object:
        """Run ``writer(survey, directory / name, seed=..., **kwargs)`` into a new folder."""
        (directory / name).mkdir()
        return _timed(
            result,
            name,
            lambda: writer(survey, directory / name, seed=options.seed, **kwargs),
        )

    # Every spec is read before anything runs: a broken file fails here, naming the file
    # and key, not later inside a worker process.
    from pari_bayes.estimation.spec import load_spec

    specs = list(options.models) if options.models is not None else default_model_specs()
    parsed = {Path(p): load_spec(p) for p in specs} if "fit" in steps else {}
    # One identification, on the run's DAG, handed to every estimator.
    identification = None
    if steps & {"fit", "ols", "identification"} or ("ipw" in steps and options.dag is not None):
        from pari_bayes.identification.identify import identify

        progress.step(f"identifying the estimands on {options.dag or 'models/dag.dot'}")
        identification = _timed(
            result,
            "identification_sets",
            lambda: identify(survey, dag=options.dag, seed=options.seed, refute=False),
        )

    def other_steps() -> None:
        """Every step but the Bayesian fits (main process, while workers fit)."""
        nonlocal table4, ipw_effects
        if "calibration" in steps and is_default:
            progress.step("calibration against the published tables")
            from pari_bayes.calibration import write_calibration

            (directory / "calibration").mkdir()
            _timed(
                result, "calibration", lambda: write_calibration(survey, directory / "calibration")
            )
        if "ols" in steps:
            progress.step("paper baseline: PCA scores and OLS Table 4")
            from pari_bayes.estimation.ols import write_ols

            table4 = _step_dir(result, "ols", write_ols, identification=identification)
        if "sensitivity" in steps and table4 is not None:
            # Only the OLS omitted-variable bounds (seconds); the Bayesian grid is
            # `pari-bayes sensitivity` (minutes per grid point).
            progress.step("sensitivity to an unobserved confounder (OLS bounds, CR2)")
            from pari_bayes.errors import PariBayesError
            from pari_bayes.sensitivity.ovb import write_ovb

            pca = getattr(table4, "pca", None)
            (directory / "sensitivity").mkdir()
            try:
                _timed(
                    result,
                    "sensitivity",
                    lambda: write_ovb(
                        survey,
                        directory / "sensitivity",
                        scores=pca.scores if pca is not None else None,
                    ),
                )
            except PariBayesError as exc:  # an auxiliary step never takes the run down
                atomic_write_text(directory / "sensitivity" / "ERROR.txt", f"{exc}\n")
                progress.note(f"sensitivity analysis not computed: {exc}")
        if "identification" in steps:
            progress.step("identification (DoWhy)")
            from pari_bayes.identification import write_identification

            # The run's one identification, refuted and written; the graph work is not redone.
            _step_dir(
                result,
                "identification",
                write_identification,
                dag=options.dag,
                identification=identification,
            )
        if "ipw" in steps:
            progress.step("design-based IPW under partial interference")
            from pari_bayes.estimation.ipw import write_ipw_survey

            # Without --dag the participation model keeps the paper's Table 4 controls
            # (SURVEY_COVARIATES); with one, it adjusts for the DAG's adjustment set.
            ipw = _step_dir(
                result,
                "ipw",
                write_ipw_survey,
                identification=identification if options.dag is not None else None,
            )
            ipw_effects = EffectTable.coerce(ipw.common, method="ipw", what="IPW effects")

    jobs = []
    if "fit" in steps:
        from pari_bayes.workers import FitJob

        (directory / "fit").mkdir()
        for spec_path, spec in parsed.items():
            name = spec_path.stem
            target = directory / "fit" / name
            target.mkdir()
            jobs.append(FitJob(name, spec_path, target, _spec_cost(spec)))
    fit_options = {
        "seed": options.seed,
        "allow_unconverged": options.allow_unconverged,
        "quick": options.quick,
        "progress": options.progress,
        "identification": identification,
    }
    worker_options = {**fit_options, "log_path": options.log_path, "console": None}
    start = time.perf_counter()
    if jobs and options.workers > 1:
        from pari_bayes.workers import run_fit_jobs

        progress.step(
            f"Bayesian models {', '.join(j.name for j in jobs)} in "
            f"{min(options.workers, len(jobs))} worker processes"
        )
        done = run_fit_jobs(
            jobs, survey, worker_options, options.workers, other_steps, on_done=progress.step
        )
    else:
        other_steps()

        from pari_bayes.workers import fit_job_safely

        done = {}
        for job in jobs:
            progress.step(f"Bayesian model {job.name}")
            done[job.name] = fit_job_safely(job, survey, fit_options)
            progress.step(describe_fit(job.name, done[job.name].gate, done[job.name].seconds))
    for job in jobs:
        result.timings[f"fit:{job.name}"] = round(done[job.name].seconds, 2)
    if jobs:
        result.timings["fit_wall"] = round(time.perf_counter() - start, 2)

    if table4 is not None:
        method_effects.append(_ols_effects(table4))
        for job in jobs:
            _fill_comparison(job.target, table4, done[job.name].effects)
    for job in jobs:
        gate = done[job.name].gate
        for message in str(gate.get("warnings") or "").split(" | "):
            progress.note(message)
        gate_rows.append({"model": job.name, **gate})
        if not gate["passed"]:
            failures.append(f"{job.name}: {gate.get('reason', 'failed')}")
        if done[job.name].effects is not None:  # from memory, not read back from the CSV
            method_effects.append(done[job.name].effects)
    if ipw_effects is not None:
        method_effects.append(ipw_effects)

    if gate_rows:
        result.gate = pd.DataFrame(gate_rows)
        write_csv(result.gate, directory / "gate.csv")
    if method_effects:
        table = EffectTable.concat(method_effects)
        result.effects = table.frame
        table.to_csv(directory / "effects_all.csv")
        from pari_bayes.findings import observed_alpha
        from pari_bayes.report_figures import write_forest_plot

        write_forest_plot(
            result.effects, directory / "effects_forest.png", alpha=observed_alpha(directory)
        )

    meta = {
        "package": "pari_bayes",
        "version": __version__,
        "data": str(survey.source),
        "data_hash": survey.data_hash,
        "seed": options.seed,
        "quick": options.quick,
        "summary": survey.summary(),
        "notices": list(survey.notices),
        "timings_s": result.timings,
        "gate_passed": result.gate_passed,
        "plain_summary": findings_summary(directory),
        "environment": environment(),
    }
    atomic_write_text(directory / "run.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    if "report" in steps:
        progress.step("report.html")
        from pari_bayes.report import build_report

        build_report(directory)
    result.failures = failures
    return result


def _spec_cost(spec: Any) -> float:
    """Relative cost of fitting a spec (its kind), for balancing worker processes."""
    from pari_bayes.estimation.registry import get_estimator

    return get_estimator(spec.kind).cost


def _ols_effects(table4: Any) -> EffectTable:
    """DE/IE/TE rows of the OLS Models 2, 4, 6, 8 in the shared effects schema.

    Two rows per estimand: ``ols`` with classical standard errors (as the paper, normal
    90% interval) and ``ols_cr2`` with CR2 standard errors and Bell-McCaffrey t quantiles
    (few clusters); with a DAG-adjusted companion regression also ``ols_dag_cr2``.

    Parameters
    ----------
    table4
        The OLS step's result (``coefficients`` in ``ols_table4.csv`` format; optional
        ``adjusted`` in ``ols_adjusted.csv`` format).

    Returns
    -------
    EffectTable
    """
    mapping = {"cbo_participation": "TE", "cbo_existence": "IE", "direct_effect": "DE"}
    coefs = table4.coefficients
    coefs = coefs[coefs["term"].isin(list(mapping))]
    keys = pd.DataFrame({"dimension": coefs["dimension"], "estimand": coefs["term"].map(mapping)})
    tables = [
        EffectTable.from_estimates(
            keys, coefs["coef"].to_numpy(), coefs["se"].to_numpy(), None, "ols"
        ),
        EffectTable.from_estimates(
            keys,
            coefs["coef"].to_numpy(),
            coefs["se_cr2"].to_numpy(),
            coefs["df_cr2"].to_numpy(),
            "ols_cr2",
        ),
    ]
    adjusted = getattr(table4, "adjusted", None)
    if adjusted is not None and len(adjusted):
        adj_keys = pd.DataFrame(
            {"dimension": adjusted["dimension"], "estimand": adjusted["term"].map(mapping)}
        )
        tables.append(
            EffectTable.from_estimates(
                adj_keys,
                adjusted["coef"].to_numpy(),
                adjusted["se_cr2"].to_numpy(),
                adjusted["df_cr2"].to_numpy(),
                "ols_dag_cr2",
            )
        )
    # as before: each coefficient's ols and ols_cr2 rows together, the DAG rows last
    frames = [t.frame.assign(_b=int(k == 2), _r=range(len(t)), _k=k) for k, t in enumerate(tables)]
    rows = pd.concat(frames, ignore_index=True).sort_values(["_b", "_r", "_k"], kind="stable")
    return EffectTable(rows.drop(columns=["_b", "_r", "_k"]))


def _fill_comparison(target: Path, table4: Any, effects: EffectTable | None) -> None:
    """Fill a fit's ``comparison.csv`` OLS columns from the run's OLS step.

    The effects module no longer refits Table 4 inside every Bayesian fit; the main job has
    the OLS coefficients already, so a multilevel fit's comparison (Bayes beside OLS and
    the published values) gets them here, from the fit's published effect rows. Other files
    named ``comparison.csv`` (without ``ols_coef``) are left alone.
    """
    path = target / "comparison.csv"
    if effects is None or not path.exists():
        return
    old = pd.read_csv(path)
    if "ols_coef" not in old.columns:
        return
    new = comparison_table(effects.frame, ols=table4.coefficients)
    for column in old.columns:
        if column not in new.columns:  # e.g. status = UNCONVERGED
            new[column] = old[column].iloc[0] if len(old) else np.nan
    write_csv(new, path)


#: Packages whose versions change the numbers of a run.
_PROVENANCE_PACKAGES = (
    "numpy",
    "scipy",
    "pandas",
    "pymc",
    "pytensor",
    "nutpie",
    "numba",
    "arviz",
    "bambi",
    "dowhy",
    "statsmodels",
)


def environment() -> dict[str, Any]:
    """Return the Python and package versions of this run, and the lock file's hash."""
    import hashlib
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from pari_bayes._paths import PROJECT_ROOT

    versions = {}
    for name in _PROVENANCE_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    lock = PROJECT_ROOT / "requirements.lock"
    return {
        "python": platform.python_version(),
        "packages": versions,
        "requirements_lock_sha256": (
            hashlib.sha256(lock.read_bytes()).hexdigest() if lock.exists() else None
        ),
    }
