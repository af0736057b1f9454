"""The estimator lifecycle of the main job: escalation ladder, failure isolation, DAG input.

A spec that misses the convergence gate is refitted on a stricter rung; one that fails on
every rung keeps its diagnostics but not its effect rows, and never takes the other steps'
outputs down with it. The run's DAG, not the bundled file, supplies every estimator's
covariates.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

import pari_bayes as pb
import pari_bayes.estimation.fitting as fitting
from pari_bayes._paths import DEFAULT_DAG, MODELS_DIR
from pari_bayes.estimation.spec import load_spec


@pytest.fixture(scope="module")
def survey():
    """The bundled survey."""
    return pb.load_survey()


def test_ladder_rung_zero_is_the_spec_and_later_rungs_are_stricter() -> None:
    spec = load_spec(MODELS_DIR / "multivariate.toml")
    assert fitting.escalated(spec, 0) is spec
    previous = spec
    for rung in range(1, len(fitting.ESCALATION)):
        stricter = fitting.escalated(spec, rung)
        assert stricter.sampler.target_accept >= previous.sampler.target_accept
        assert stricter.sampler.target_accept > spec.sampler.target_accept
        assert stricter.sampler.tune > previous.sampler.tune
        assert stricter.sampler.draws >= previous.sampler.draws
        # the raw TOML (read by the latent parser and written as provenance) agrees
        assert stricter.raw["sampler"]["target_accept"] == stricter.sampler.target_accept
        previous = stricter
    assert len(fitting.ESCALATION) == 3  # the spec as written, then at most two refits


def test_latent_spec_reads_the_escalated_sampler() -> None:
    from pari_bayes.estimation.latent import load_latent_spec

    spec = load_spec(MODELS_DIR / "latent.toml")
    latent = load_latent_spec(fitting.escalated(spec, 2))
    assert latent.sampler["target_accept"] == pytest.approx(0.99)
    assert latent.sampler["tune"] == 3 * int(spec.raw["sampler"]["tune"])


def _fake_fit(passes_on_rung: int | None, calls: list[int]):
    """A stand-in for fit_model: writes the usual files; passes from a given rung on."""

    def fake(survey, spec, directory, **kwargs):  # noqa: ARG001
        directory = Path(directory)
        calls.append(spec.sampler.tune)
        rung = len(calls) - 1
        passed = passes_on_rung is not None and rung >= passes_on_rung
        effects = pd.DataFrame(
            {
                "dimension": ["d"],
                "estimand": ["DE"],
                "scope": ["observed"],
                "mean": [0.1],
                "r_hat": [1.0 if passed else 1.2],
                "ess_bulk": [900.0 if passed else 20.0],
            }
        )
        diag = pd.DataFrame(
            {
                "parameter": ["x"],
                "r_hat": [1.0 if passed else 1.2],
                "ess_bulk": [900.0],
                "ess_tail": [900.0],
                "divergences": [0],
            }
        )
        for name in ("effects.csv", "comparison.csv", "loo.csv"):
            effects.to_csv(directory / name, index=False)
        diag.to_csv(directory / "diagnostics.csv", index=False)
        return SimpleNamespace(
            effects=effects,
            diagnostics=diag,
            converged=passed,
            failures=[] if passed else ["R-hat > 1.01 for x (1.2)"],
            idata=None,
        )

    return fake


def test_escalation_stops_at_the_first_rung_that_passes(tmp_path, monkeypatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(fitting, "fit_model", _fake_fit(1, calls))
    fit = fitting.fit_spec_file(None, MODELS_DIR / "table4.toml", tmp_path)
    assert fit.gate["passed"] and fit.gate["rung"] == 1 and fit.gate["attempts"] == 2
    assert len(calls) == 2 and calls[1] > calls[0]
    assert "rung 0" in fit.gate["ladder"] and "failed" in fit.gate["ladder"]
    assert "R-hat" in fit.gate["ladder"].split("|")[0]  # why rung 0 failed
    assert (tmp_path / "effects.csv").exists()


def test_a_spec_failing_every_rung_keeps_diagnostics_not_effects(tmp_path, monkeypatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(fitting, "fit_model", _fake_fit(None, calls))
    fit = fitting.fit_spec_file(None, MODELS_DIR / "table4.toml", tmp_path)
    assert not fit.gate["passed"] and fit.gate["attempts"] == 3 and len(calls) == 3
    assert (tmp_path / "diagnostics.csv").exists()
    for name in fitting.EFFECT_FILES:
        assert not (tmp_path / name).exists(), name
    assert fit.gate["effects_published"] is False

    kept = tmp_path / "kept"
    kept.mkdir()
    fit = fitting.fit_spec_file(
        None, MODELS_DIR / "table4.toml", kept, allow_unconverged=True, escalate=False
    )
    assert fit.gate["attempts"] == 1 and (kept / "effects.csv").exists()
    assert fit.gate["effects_published"] is True


def test_a_failed_spec_leaves_every_other_output_published(
    tmp_path, monkeypatch, survey, capsys
) -> None:
    """Through the CLI in-process: one spec fails every rung; OLS, identification and the
    other spec are published, the failed one has diagnostics only, and the exit status is 3."""
    from pari_bayes.cli import main

    calls: list[int] = []
    good, bad = _fake_fit(0, []), _fake_fit(None, calls)

    def fake(survey_, spec, directory, **kwargs):
        return (bad if spec.name == "multivariate" else good)(survey_, spec, directory, **kwargs)

    monkeypatch.setattr(fitting, "fit_model", fake)
    out = tmp_path / "run"
    code = main(
        [
            "run",
            "--out",
            str(out),
            "--workers",
            "1",
            "--quiet",
            "--steps",
            "ols,identification,fit",
            "--model",
            str(MODELS_DIR / "table4.toml"),
            "--model",
            str(MODELS_DIR / "multivariate.toml"),
        ]
    )
    assert code == 3
    assert "multivariate" in capsys.readouterr().err
    gate = pd.read_csv(out / "gate.csv").set_index("model")
    assert bool(gate.loc["table4", "passed"]) and not bool(gate.loc["multivariate", "passed"])
    assert int(gate.loc["multivariate", "attempts"]) == 3
    assert (out / "ols" / "ols_table4.csv").exists()
    assert (out / "identification" / "estimands.csv").exists()
    assert (out / "fit" / "table4" / "effects.csv").exists()
    assert (out / "fit" / "multivariate" / "diagnostics.csv").exists()
    assert not (out / "fit" / "multivariate" / "effects.csv").exists()
    methods = set(pd.read_csv(out / "effects_all.csv")["method"])
    assert "bayes:table4" in methods and "bayes:multivariate" not in methods


def test_a_broken_spec_fails_before_anything_runs(tmp_path) -> None:
    from pari_bayes.cli import main

    broken = tmp_path / "broken.toml"
    broken.write_text('kind = "multilevel"\nname = [unclosed\n')
    out = tmp_path / "run"
    code = main(["run", "--out", str(out), "--quiet", "--model", str(broken)])
    assert code == 2
    assert not out.exists()


def _dag_without(tmp_path: Path, node: str) -> Path:
    lines = [
        line
        for line in DEFAULT_DAG.read_text().splitlines()
        if not line.strip().startswith(f"{node} ")
        and f"-> {node} " not in line
        and f"-> {node};" not in line
    ]
    path = tmp_path / f"dag_without_{node}.dot"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_runs_dag_sets_the_covariates_of_every_estimator(tmp_path, survey) -> None:
    from pari_bayes.estimation.latent import latent_design, load_latent_spec
    from pari_bayes.estimation.multilevel import build_design
    from pari_bayes.estimation.ols import fit_adjusted_ols
    from pari_bayes.identification.identify import identify
    from pari_bayes.measurement.pca import pca_scores

    bundled = identify(survey, refute=False)
    other = identify(survey, dag=_dag_without(tmp_path, "education"), refute=False)
    dim = bundled.dimensions[0]
    assert "education" in bundled.adjustment_set("TE", dim)
    assert "education" not in other.adjustment_set("TE", dim)

    spec = load_spec(MODELS_DIR / "table4.toml")
    assert "education" in build_design(survey, spec, identification=bundled).covariates
    assert "education" not in build_design(survey, spec, identification=other).covariates

    mv = load_spec(MODELS_DIR / "multivariate.toml")
    assert "education" not in build_design(survey, mv, identification=other).covariates

    latent = load_latent_spec(MODELS_DIR / "latent.toml")
    assert "education" in latent_design(survey, latent, identification=bundled).covariates
    assert "education" not in latent_design(survey, latent, identification=other).covariates

    scores = pca_scores(survey.data, survey.codebook).scores
    covs_bundled = set(
        " ".join(fit_adjusted_ols(survey.data, scores, bundled)["covariates"]).split()
    )
    covs_other = set(" ".join(fit_adjusted_ols(survey.data, scores, other)["covariates"]).split())
    assert "education" in covs_bundled and "education" not in covs_other


def _difference_in_means(survey, spec, directory, *, seed=None, **kwargs):  # noqa: ARG001
    """A tiny estimator: DE as a difference of PCA-score means, bootstrap draws."""
    import numpy as np

    from pari_bayes.measurement.pca import pca_scores

    rng = np.random.default_rng(seed or 0)
    scores = pca_scores(survey.data, survey.codebook).scores
    exposure = survey.data["exposure"].to_numpy()
    rows = []
    for dim in spec.for_dimensions(survey.codebook.dimensions).outcomes:
        y = scores[dim].to_numpy()
        a, b = y[exposure == "participant"], y[exposure == "nonparticipant_cbo"]
        draws = np.array(
            [rng.choice(a, a.size).mean() - rng.choice(b, b.size).mean() for _ in range(400)]
        )
        rows.append(
            {
                "dimension": dim,
                "estimand": "DE",
                "alpha": np.nan,
                "scope": "observed",
                "mean": draws.mean(),
                "sd": draws.std(),
                "q05": np.quantile(draws, 0.05),
                "q50": np.median(draws),
                "q95": np.quantile(draws, 0.95),
                "prob_positive": (draws > 0).mean(),
                "ess_bulk": 400.0,
                "r_hat": 1.0,
            }
        )
    effects = pd.DataFrame(rows)
    effects.to_csv(Path(directory) / "effects.csv", index=False)
    diagnostics = pd.DataFrame(
        {
            "parameter": ["bootstrap"],
            "r_hat": [1.0],
            "ess_bulk": [400.0],
            "ess_tail": [400.0],
            "divergences": [0],
        }
    )
    diagnostics.to_csv(Path(directory) / "diagnostics.csv", index=False)
    return SimpleNamespace(
        effects=effects, diagnostics=diagnostics, converged=True, failures=[], idata=None
    )


def test_a_new_estimator_is_one_function_and_one_registry_line(
    tmp_path, monkeypatch, survey
) -> None:
    from pari_bayes.errors import SpecError
    from pari_bayes.estimation import registry

    spec_path = tmp_path / "dim.toml"
    spec_path.write_text(
        'kind = "difference_in_means"\nname = "dim"\n'
        'outcomes = ["neighborly_interaction"]\n'
        'formula = "cbo_participation + cbo_presence + (1 | community)"\n'
    )
    with pytest.raises(SpecError, match="allowed: multilevel, multivariate, latent"):
        load_spec(spec_path)
    monkeypatch.setitem(
        registry.ESTIMATORS,
        "difference_in_means",
        registry.Estimator("difference_in_means", _difference_in_means, 0.1),
    )
    fit = fitting.fit_spec_file(survey, spec_path, tmp_path)
    assert fit.gate["passed"] and fit.gate["effects_published"]
    effects = pd.read_csv(tmp_path / "effects.csv")
    assert list(effects["dimension"]) == ["neighborly_interaction"]
    assert effects.loc[0, "q05"] < effects.loc[0, "mean"] < effects.loc[0, "q95"]
