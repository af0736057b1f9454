"""The robustness-suite generator (pari_bayes.scenarios) and scripts/robustness.py."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pari_bayes._paths import PROJECT_ROOT
from pari_bayes.codebook import DIMENSIONS, load_codebook
from pari_bayes.errors import PariBayesError
from pari_bayes.registry import load_registry
from pari_bayes.scenarios import (
    LOADING_LEVELS,
    THRESHOLD_PLACEMENTS,
    Scenario,
    ScenarioError,
    bundled_seeds,
    registry_toml,
    simulate_scenario,
    suite,
    write_scenario,
)
from pari_bayes.survey import load_survey, validate_frame

SMALL = Scenario("small", n_households=300, seed=5)


def _validate(data: pd.DataFrame, registry):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return validate_frame(data, registry, load_codebook(), require_all_communities=True)


def _by_name() -> dict[str, Scenario]:
    return {s.name: s for s in suite()}


@pytest.mark.parametrize(
    "scenario",
    [
        SMALL,
        Scenario("four", n_households=300, n_communities=4, n_cbo_communities=2, seed=2),
        Scenario("sixty", n_households=300, n_communities=60, n_cbo_communities=45, seed=3),
        Scenario("sparse", n_households=400, thresholds="sparse", zero_share=0.7, seed=4),
        Scenario("high_part", n_households=400, participation_rate=0.9, seed=6),
        Scenario("tiny_amounts", n_households=300, amount_log_mean=-1.0, amount_log_sd=0.3),
        bundled_seeds(2)[1],
    ],
    ids=lambda s: s.name,
)
def test_generated_surveys_pass_validation(scenario: Scenario) -> None:
    data, registry, _ = simulate_scenario(scenario)
    survey = _validate(data, registry)
    assert list(data.columns) == [c for c in load_codebook().columns if c in data.columns]
    assert survey.n_households == scenario.n_households
    assert set(survey.data["community"]) == set(registry.names)
    counts = survey.data["exposure"].value_counts()
    assert min(counts.get(g, 0) for g in ("participant", "nonparticipant_cbo", "no_cbo")) >= 2
    if scenario.generator == "independent":
        assert len(registry) == scenario.n_communities
        assert sum(c.has_cbo for c in registry.communities) == scenario.n_cbo_communities
    # the hurdle item is zero exactly when nobody in the household is employed
    employed = np.round(data["human_capital"] * data["household_size"])
    assert ((data["per_capita_employment_income"] == 0) == (employed == 0)).all()


def test_files_are_read_like_the_cli_reads_them(tmp_path: Path) -> None:
    paths, truth = write_scenario(SMALL, tmp_path)
    registry = load_registry(paths["communities"])
    assert registry_toml(registry).count("[[community]]") == SMALL.n_communities
    survey = load_survey(paths["survey"], communities=paths["communities"])
    assert survey.n_households == SMALL.n_households
    assert (
        survey.data["cbo_participation"].sum() == truth.realized["exposure_counts"]["participant"]
    )
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "pari-bayes"),
            "validate",
            str(paths["survey"]),
            "--communities",
            str(paths["communities"]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "valid" in proc.stdout


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"participation_rate": 0.0}, "strictly between 0 and 1"),
        ({"participation_rate": 1.0}, "strictly between 0 and 1"),
        ({"n_cbo_communities": 0}, "DE not identified"),
        ({"n_cbo_communities": 12}, "IE not identified"),
        ({"n_households": 100, "n_communities": 60, "n_cbo_communities": 3}, "at least 3"),
        ({"zero_share": 0.0}, "zero_share"),
        ({"thresholds": "uniform"}, "allowed: balanced"),
        ({"loading_strength": "huge"}, "allowed: weak"),
        ({"loading_strength": ("weak", "strong")}, "1 or 4 values"),
        ({"de": (0.1, 0.2)}, "one per factor"),
    ],
)
def test_impossible_designs_are_rejected_with_a_clear_error(change, message) -> None:
    with pytest.raises(ScenarioError, match=message):
        dataclasses.replace(SMALL, **change)


def test_a_draw_without_enough_participants_is_a_clear_error() -> None:
    # 1 CBO community of 10 (about 10 households) at 1% participation: no participant
    rare = Scenario(
        "rare",
        n_households=100,
        n_communities=10,
        n_cbo_communities=1,
        participation_rate=0.01,
        seed=1,
    )
    with pytest.raises(ScenarioError, match="participant"):
        simulate_scenario(rare)
    assert issubclass(ScenarioError, PariBayesError)


def test_truth_and_survey_are_reproducible_under_a_seed() -> None:
    d1, r1, t1 = simulate_scenario(SMALL)
    d2, r2, t2 = simulate_scenario(SMALL)
    pd.testing.assert_frame_equal(d1, d2)
    assert registry_toml(r1) == registry_toml(r2)
    assert t1.to_dict() == t2.to_dict()
    for key in t1.potential_outcomes:
        pd.testing.assert_frame_equal(t1.potential_outcomes[key], t2.potential_outcomes[key])
    d3, _, t3 = simulate_scenario(dataclasses.replace(SMALL, seed=6))
    assert not d1.equals(d3)
    assert t1.parameters["beta"] != t3.parameters["beta"]  # nuisance parameters vary by seed


@pytest.mark.parametrize("name", ["zero10", "zero70", "part05", "part60"])
def test_zero_share_and_participation_rate_match_within_sampling_error(name: str) -> None:
    sc = dataclasses.replace(_by_name()[name], n_households=5000)
    data, registry, truth = simulate_scenario(sc)
    n = len(data)
    zero = truth.realized["zero_share"]
    assert zero == pytest.approx((data["per_capita_employment_income"] == 0).mean())
    assert abs(zero - sc.zero_share) < 4 * np.sqrt(sc.zero_share * (1 - sc.zero_share) / n)
    in_cbo = data["community"].map(registry.cbo_presence) == 1
    rate = data.loc[in_cbo, "cbo_participation"].mean()
    assert rate == pytest.approx(truth.realized["participation_share_cbo"])
    p, m = sc.participation_rate, int(in_cbo.sum())
    assert abs(rate - p) < 4 * np.sqrt(p * (1 - p) / m)


def _score_truth(scenario: Scenario) -> dict:
    from pari_bayes.measurement.pca import pca_scores

    data, registry, truth = simulate_scenario(scenario)
    survey = _validate(data, registry)
    return truth.score_effects(pca_scores(survey.data, survey.codebook).transform)


def test_pca_score_truth_has_the_sign_of_the_latent_effect() -> None:
    positive = Scenario(
        "pos", n_households=1500, loading_strength="strong", de=(0.6,) * 4, ie=(0.5,) * 4, seed=8
    )
    truth = _score_truth(positive)
    assert set(truth) == set(DIMENSIONS)
    for dim in DIMENSIONS:
        assert truth[dim]["DE"] > 0.05, (dim, truth[dim])
        assert truth[dim]["IE"] > 0.05, (dim, truth[dim])
        assert truth[dim]["TE"] == pytest.approx(truth[dim]["DE"] + truth[dim]["IE"])
    negative = _score_truth(dataclasses.replace(positive, de=(-0.6,) * 4))
    assert all(negative[d]["DE"] < -0.05 for d in DIMENSIONS)
    null = _score_truth(dataclasses.replace(positive, de=(0.0,) * 4, ie=(0.0,) * 4))
    assert all(abs(null[d][e]) < 1e-12 for d in DIMENSIONS for e in ("DE", "IE"))


def test_latent_truth_is_the_design_in_disturbance_sd_units() -> None:
    _, _, truth = simulate_scenario(_by_name()["mixed_sign"])
    sc = truth.scenario
    for j, dim in enumerate(DIMENSIONS):
        assert truth.latent[dim] == {"DE": sc.de[j], "IE": sc.ie[j], "TE": sc.de[j] + sc.ie[j]}
    _, _, bundled = simulate_scenario(bundled_seeds(1)[0])
    from pari_bayes.simulate import load_params

    st = load_params()[0]["structural"]["identity_recognition"]
    expected = st["DE"] / np.sqrt(1 + st["gamma"] ** 2)
    assert bundled.latent["identity_recognition"]["DE"] == pytest.approx(expected)


def test_potential_outcomes_reproduce_the_observed_items() -> None:
    data, registry, truth = simulate_scenario(SMALL)
    presence = data["community"].map(registry.cbo_presence).to_numpy()
    a = data["cbo_participation"].to_numpy()
    items = list(load_codebook().indicator_names)
    for (ea, es), frame in truth.potential_outcomes.items():
        rows = (a == ea) & (presence == es)
        assert rows.sum() > 0
        pd.testing.assert_frame_equal(
            frame.loc[rows, items].reset_index(drop=True),
            data.loc[rows, items].reset_index(drop=True),
        )
    assert not truth.potential_outcomes[(1, 1)][items].equals(
        truth.potential_outcomes[(0, 0)][items]
    )


def test_threshold_placement_makes_categories_sparse() -> None:
    base = Scenario("thr", n_households=2000, seed=9)
    _, _, balanced = simulate_scenario(base)
    _, _, sparse = simulate_scenario(dataclasses.replace(base, thresholds="sparse"))
    for item, shares in balanced.realized["category_shares"].items():
        assert all(abs(v - 1 / len(shares)) < 0.05 for v in shares.values()), (item, shares)
    for item, shares in sparse.realized["category_shares"].items():
        assert 0 < min(shares.values()) < 0.07, (item, shares)


def test_the_suite_covers_the_design_ranges() -> None:
    scenarios = suite()
    assert len(scenarios) >= 20
    assert len({s.name for s in scenarios}) == len(scenarios)
    assert len({s.seed for s in scenarios}) == len(scenarios)
    get = lambda attr: [getattr(s, attr) for s in scenarios]  # noqa: E731
    assert min(get("n_households")) == 300 and max(get("n_households")) == 5000
    assert min(get("n_communities")) == 4 and max(get("n_communities")) == 60
    cbo_share = [s.n_cbo_communities / s.n_communities for s in scenarios]
    assert min(cbo_share) < 0.2 and max(cbo_share) > 0.8
    assert min(get("participation_rate")) == 0.05 and max(get("participation_rate")) == 0.6
    assert min(get("zero_share")) == 0.1 and max(get("zero_share")) == 0.7
    assert min(get("community_sd")) <= 0.01 and max(get("community_sd")) >= 1.0
    assert set(get("thresholds")) == set(THRESHOLD_PLACEMENTS)
    multipliers = {m for s in scenarios for m in s.loadings_multipliers()}
    assert {LOADING_LEVELS["weak"], LOADING_LEVELS["strong"]} <= multipliers
    assert any(len(set(s.loadings_multipliers())) > 1 for s in scenarios)  # mixed factors
    assert min(get("amount_log_mean")) < 3 and max(get("amount_log_mean")) > 10
    assert len(suite(30)) == 30 and suite(5) == scenarios[:5]
    seeds = bundled_seeds(10)
    assert len({s.seed for s in seeds}) == 10 and {s.group for s in seeds} == {"bundled"}


def test_every_suite_survey_is_valid() -> None:
    for scenario in suite():
        data, registry, truth = simulate_scenario(scenario)
        survey = _validate(data, registry)
        assert survey.n_households == scenario.n_households, scenario.name
        assert truth.realized["exposure_counts"]["participant"] >= 2, scenario.name


def _robustness_module():
    return _script_module("robustness")


def test_summaries_from_replicate_rows(tmp_path: Path) -> None:
    rob = _robustness_module()
    runs = pd.DataFrame(
        {
            "scenario": ["a", "b", "a"],
            "spec": ["table4", "table4", "latent"],
            "quick": [False] * 3,
            "group": ["suite"] * 3,
            "gate_passed": [True, False, True],
            "error": ["", "", ""],
            "divergences": [0, 3, 0],
            "max_r_hat": [1.004, 1.05, 1.002],
            "min_ess_bulk": [800, 120, 650],
            "min_ess_tail": [700, 90, 600],
            "wall_s": [10.0, 30.0, 50.0],
            "n_intervals": [2, 2, 2],
            "n_covered": [2, 1, 1],
        }
    )
    coverage = pd.DataFrame(
        {
            "scenario": ["a", "a", "b", "b", "a", "a"],
            "spec": ["table4"] * 4 + ["latent"] * 2,
            "quick": [False] * 6,
            "covered": [True, True, True, False, True, False],
        }
    )
    table = rob.summary_table(runs, coverage).set_index("spec")
    assert table.loc["table4", "pass_rate"] == 0.5
    assert table.loc["table4", "coverage"] == 0.75
    assert table.loc["table4", "coverage_gate_passed"] == 1.0
    assert table.loc["table4", "divergences_total"] == 3
    lo, hi = rob.clopper_pearson(3, 4)
    assert 0.19 < lo < 0.2 and 0.99 < hi < 1.0  # exact interval, scipy reference values
    for col in (*rob.DESIGN_COLUMNS[1:], "rung", "attempts", "reason"):  # [0] is group
        runs[col] = 1 if col not in ("generator", "reason") else "independent"
    rob.write_markdown(runs, coverage, tmp_path / "robustness.md")
    text = (tmp_path / "robustness.md").read_text()
    assert "| table4 | suite | 2 | 1/2 (50%)" in text
    assert "## Failures (1)" in text and "| b | table4 |" in text
    planned = len(rob.all_scenarios()) * len(rob.SPECS)
    assert f"PARTIAL RUN: 3 of the {planned} replicates" in text  # 3 rows of 111: said
    assert "table4 on a, b" in text and "latent on a" in text
    assert "## Passed, with ungated parameters off the thresholds (0)" in text
    runs["worst_parameters"] = ["", "x (R-hat 1.050, ESS 120/90)", "rho (R-hat 1.030, ESS 99/300)"]
    causes = {("a", "latent"): "weak factor"}
    rob.write_markdown(runs, coverage, tmp_path / "robustness.md", causes)
    text = (tmp_path / "robustness.md").read_text()
    section = text.split("## Passed, with ungated parameters off the thresholds (1)")[1]
    section = section.split("## Coverage")[0]
    assert "| a | latent |" in section and "rho (R-hat 1.030" in section
    assert "| weak factor |" in section and "| b | table4 |" not in section  # b failed


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["table4", "latent"])
def test_two_suite_surveys_pass_the_gate(spec: str, tmp_path: Path) -> None:
    rob = _robustness_module()
    scenarios = _by_name()
    for name in ("n300", "c4"):
        row = rob.run_replicate(scenarios[name], rob.SPECS[spec], 20240611, tmp_path / name)
        assert row["error"] == "", row["error"]
        assert row["gate_passed"], (name, row["reason"], row["ladder"])
        assert row["divergences"] == 0
        assert row["max_r_hat"] <= 1.01 and row["min_ess_bulk"] >= 400
        assert row["n_intervals"] == 2 * len(DIMENSIONS)
        assert {c["estimand"] for c in row["coverage"]} == {"DE", "IE"}
        assert all(c["q05"] <= c["mean"] <= c["q95"] for c in row["coverage"])
        assert (tmp_path / name / spec / "effects.csv").exists()


def _script_module(name: str):
    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scaling_benchmark_grows_communities_with_the_survey_and_fits_slopes() -> None:
    bench = _script_module("bench_scaling")
    sizes = {n: bench.scaling_scenario(n) for n in bench.SIZES}
    assert [sc.n_communities for sc in sizes.values()] == [12, 48, 200, 600]
    assert all(sc.n_cbo_communities == sc.n_communities // 2 for sc in sizes.values())
    table = pd.DataFrame(
        {
            "spec": ["a"] * 3 + ["b"] * 3 + ["c"],
            "n_households": [300, 1200, 4800] * 2 + [300],
            "fit_s": [10.0, 40.0, 160.0, 5.0, 10.0, 20.0, 1.0],
        }
    )
    slope = bench.slopes(table).set_index("spec")["slope"]
    assert slope["a"] == pytest.approx(1.0) and slope["b"] == pytest.approx(0.5)
    assert "c" not in slope  # one size: no slope


@pytest.mark.slow
def test_scaling_benchmark_runs_end_to_end_on_tiny_draws(tmp_path: Path) -> None:
    bench = _script_module("bench_scaling")
    out = tmp_path / "scaling.csv"
    code = bench.main(
        [
            "--sizes",
            "300",
            "--specs",
            "table4",
            "--quick",
            "--out",
            str(out),
            "--workdir",
            str(tmp_path),
        ]
    )
    table = pd.read_csv(out)
    assert code == (0 if table["gate_passed"].all() else 3)
    assert len(table) == 1 and table.loc[0, "n_communities"] == 12
    row = table.iloc[0]
    assert row["fit_s"] >= row["compile_s"] + row["sampling_s"] > 0
    assert row["steps_per_draw"] >= 1 and row["ms_per_gradient"] > 0


def test_worst_parameters_names_only_those_missing_the_thresholds_worst_first() -> None:
    rob = _robustness_module()
    diag = pd.DataFrame(
        {
            "parameter": ["a", "b", "c", "d"],
            "r_hat": [1.002, 1.05, 1.004, 1.02],
            "ess_bulk": [2000.0, 90.0, 350.0, 800.0],
            "ess_tail": [1500.0, 120.0, 900.0, 700.0],
        }
    )
    text = rob.worst_parameters(diag)
    assert text.split("; ")[0].startswith("b (R-hat 1.050, ESS 90/120)")
    assert [part.split(" ")[0] for part in text.split("; ")] == ["b", "d", "c"]
    assert rob.worst_parameters(diag.iloc[:1]) == ""  # all within the thresholds
    assert rob.worst_parameters(None) == ""
