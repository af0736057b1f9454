"""Tests of the identification layer: DAG loader, estimands, DoWhy identification, refuters."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from pari_bayes.codebook import DIMENSIONS, load_codebook
from pari_bayes.errors import DAGError, IdentificationError
from pari_bayes.identification import (
    ESTIMANDS,
    TABLE4_MAPPING,
    direct_from_table4,
    estimand,
    exposure_coding,
    identify,
    identify_graph,
    load_dag,
    overall_effect,
    refute_identification,
    write_identification,
)
from pari_bayes.registry import load_registry
from pari_bayes.survey import validate_frame

DATA = Path(__file__).parent / "data"

SIX = """
kinds = ["voluntary_service", "recreational", "mixed", "economic", "other"]
[[community]]
name = "A1"
formed = "2018-01"
surveyed = "2020-08"
cbos = [{ name = "Dance", kind = "recreational" }]
[[community]]
name = "B2"
formed = "2018-06"
surveyed = "2020-08"
[[community]]
name = "C3"
formed = "2018-12"
surveyed = "2020-08"
cbos = [{ name = "Uncles", kind = "voluntary_service" }]
[[community]]
name = "D4"
formed = "2019-04"
surveyed = "2020-08"
[[community]]
name = "E5"
formed = "2019-08"
surveyed = "2020-08"
cbos = [{ name = "Aunts", kind = "mixed" }]
[[community]]
name = "F6"
formed = "2019-12"
surveyed = "2020-08"
"""


def _six_registry(tmp_path: Path):
    shipped = DATA / "communities6.toml"
    if shipped.exists():
        return load_registry(shipped)
    path = tmp_path / "communities6.toml"
    path.write_text(SIX, encoding="utf-8")
    return load_registry(path)


def _linear_frame(registry, n: int, seed: int, de: float, ie: float) -> pd.DataFrame:
    """Codebook-valid survey plus an outcome ``y`` linear in participation and presence.

    Participation depends on age, employment and residence (observed confounders); the
    outcome depends on them too, so an unadjusted contrast is biased.
    """
    rng = np.random.default_rng(seed)
    codebook = load_codebook()
    names = list(registry.names)
    community = rng.choice(names, n)
    presence = np.array([registry[c].has_cbo for c in community], dtype=int)
    limit = np.array([registry[c].max_residence_months for c in community])
    residence = rng.integers(0, limit + 1)
    age = rng.integers(20, 90, n)
    employed = rng.binomial(1, 0.3, n)
    size = rng.integers(1, 7, n)
    logit = -1.0 - 0.06 * (age - 55) - 1.5 * employed + 0.05 * residence
    part = presence * (rng.random(n) < 1 / (1 + np.exp(-logit)))
    frame = pd.DataFrame(
        {
            "household_id": [f"H{i:05d}" for i in range(n)],
            "community": community,
            "cbo_participation": part.astype(int),
            "residence_months": residence,
            "age": age,
            "gender": rng.integers(0, 2, n),
            "urban_hukou": rng.integers(0, 2, n),
            "offfarm_employed": employed,
            "education": rng.integers(1, 4, n),
            "household_size": size,
            "household_income": np.round(rng.gamma(2.0, 400.0, n), 2),
        }
    )
    for name in codebook.indicator_names:
        col = codebook[name]
        if col.type == "ordinal":
            frame[name] = rng.choice(col.values, n)
        elif col.type == "count":
            frame[name] = rng.integers(0, int(col.max) + 1, n)
    frame["human_capital"] = rng.binomial(size, 0.3) / size
    frame["per_capita_employment_income"] = np.round(rng.lognormal(6, 0.8, n), 2)
    frame = frame[[c for c in codebook.columns if c in frame.columns]]
    y = (
        de * part
        + ie * presence
        + 0.05 * (age - 55)
        + 1.2 * employed
        + 0.1 * residence
        + rng.normal(0, 0.5, n)
    )
    return frame, y


@pytest.fixture(scope="module")
def bundled_dag():
    return load_dag()


@pytest.fixture(scope="module")
def linear_case(tmp_path_factory):
    registry = _six_registry(tmp_path_factory.mktemp("six"))
    frame, y = _linear_frame(registry, n=3000, seed=11, de=0.6, ie=0.4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        survey = validate_frame(frame, registry, load_codebook())
        result = identify(survey, refute=False)
    return survey, pd.Series(y, index=survey.data.index), result


# ---------------------------------------------------------------- loader


def test_bundled_dag_loads_and_declares_latents(bundled_dag):
    assert set(DIMENSIONS) <= set(bundled_dag.latent)
    assert "prior_sociability" in bundled_dag.latent
    assert bundled_dag.role("prior_sociability") == "unobserved_confounder"
    assert nx.is_directed_acyclic_graph(bundled_dag.graph)
    codebook = load_codebook()
    for dim, items in codebook.indicators.items():
        assert bundled_dag.indicators(dim) == items
    # every edge is justified
    assert all(why for _, _, why in bundled_dag.edges_with_reasons())
    assert bundled_dag.column("household_income") == "income_scale"


def test_cycle_is_an_error():
    with pytest.raises(DAGError, match=r"dag_cycle\.dot.*cycle"):
        load_dag(DATA / "dag_cycle.dot")


def test_unknown_node_is_an_error_naming_file_and_node():
    with pytest.raises(DAGError, match=r"dag_unknown_node\.dot.*'cbo_particpation'"):
        load_dag(DATA / "dag_unknown_node.dot")


def test_undeclared_latent_is_an_error():
    with pytest.raises(DAGError, match=r"'prior_sociability'.*not declared latent"):
        load_dag(DATA / "dag_undeclared_latent.dot")


def test_missing_column_is_an_error(fake_frame):
    columns = [c for c in fake_frame.columns if c != "age"] + ["cbo_presence", "income_scale"]
    with pytest.raises(DAGError, match=r"node 'age' needs column 'age'.*missing"):
        load_dag(survey=columns)


def test_missing_file_and_bad_syntax(tmp_path):
    with pytest.raises(DAGError, match="not found"):
        load_dag(tmp_path / "nope.dot")
    bad = tmp_path / "bad.dot"
    bad.write_text("digraph { a -> ", encoding="utf-8")
    with pytest.raises(DAGError, match=r"bad\.dot"):
        load_dag(bad)


def test_indicator_with_extra_parent_is_an_error(tmp_path):
    text = (Path(load_dag().path)).read_text(encoding="utf-8")
    text = text.rstrip().rstrip("}") + "  cbo_presence -> sense_of_belonging;\n}\n"
    path = tmp_path / "dif.dot"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DAGError, match="sense_of_belonging.*measurement invariance"):
        load_dag(path)


def test_small_valid_dag_loads():
    dag = load_dag(DATA / "dag_minimal.dot")
    assert dag.latent == ("prior_sociability",)
    assert "cbo_participation" in dag.observed


# ---------------------------------------------------------------- tiny DAGs


def test_backdoor_sets_on_tiny_dags():
    g = nx.DiGraph([("z", "x"), ("z", "y"), ("x", "m"), ("m", "y"), ("w", "y")])
    found = identify_graph(g, "x", "y", {"z", "m", "w"})
    assert found["identified"] and found["method"] == "backdoor"
    assert found["backdoor_minimal"] == ["z"]
    assert set(found["backdoor_maximal"]) == {"z", "w"}  # precision variable kept, mediator not
    # a collider between treatment and outcome must never be adjusted for
    g2 = nx.DiGraph([("z", "x"), ("z", "y"), ("x", "y"), ("x", "c"), ("y", "c")])
    found2 = identify_graph(g2, "x", "y", {"z", "c"})
    assert "c" not in found2["backdoor_maximal"]


def test_unobserved_confounder_blocks_backdoor_but_frontdoor_and_iv_reported():
    g = nx.DiGraph([("u", "x"), ("u", "y"), ("x", "m"), ("m", "y")])
    found = identify_graph(g, "x", "y", {"m"})
    assert found["backdoor_maximal"] is None
    assert found["method"] == "frontdoor" and found["frontdoor"] == ["m"]
    g_iv = nx.DiGraph([("z", "x"), ("u", "x"), ("u", "y"), ("x", "y")])
    found_iv = identify_graph(g_iv, "x", "y", {"z"})
    assert not found_iv["identified"]
    assert found_iv["instruments"] == ["z"]


# ---------------------------------------------------------------- estimands


def test_estimand_definitions_and_table4_mapping():
    assert ESTIMANDS == ("DE", "IE", "TE", "OE")
    assert TABLE4_MAPPING["cbo_participation"] == "TE"
    assert TABLE4_MAPPING["cbo_existence"] == "IE"
    de = exposure_coding("DE")
    assert de["treated"] == ["participant"] and de["control"] == ["nonparticipant_cbo"]
    assert de["restrict_to"] == {"cbo_presence": 1}
    assert exposure_coding("IE")["control"] == ["no_cbo"]
    assert exposure_coding("te")["treated"] == ["participant"]
    assert direct_from_table4(0.726, 0.807) == pytest.approx(-0.081)
    assert overall_effect(0.5, 2.0, 1.0, 0.0) == pytest.approx(1.5)
    with pytest.raises(IdentificationError, match="unknown estimand 'XE'"):
        estimand("XE")
    with pytest.raises(IdentificationError, match="alpha"):
        overall_effect(1.5, 1.0, 1.0, 0.0)


def test_identification_verdicts_on_bundled_dag(linear_case):
    _, _, result = linear_case
    for dim in DIMENSIONS:
        # prior sociability confounds participation: DE, IE, TE not identified as drawn
        for name in ("DE", "IE", "TE"):
            assert not result.is_identified(name, dim)
            assert result.is_identified(name, dim, assumption="no_unobserved_confounding")
            entry = result.entries[(name, dim)]
            assert entry["dag"]["blocked_by"] == ["prior_sociability"]
        # the community-level effect of CBO presence (OE at the natural alpha) is identified
        assert result.is_identified("OE", dim)
        for name in ESTIMANDS:
            adj = result.adjustment_set(name, dim)
            assert "residence_months" in adj and "age" in adj
            assert not {"cbo_participation", "cbo_presence", "community"} & set(adj)
            assert set(adj) <= set(result_columns(linear_case))
    with pytest.raises(IdentificationError, match="assumption"):
        result.is_identified("DE", DIMENSIONS[0], assumption="hope")
    assert result.exposure_coding("DE")["restrict_to"] == {"cbo_presence": 1}


def result_columns(case):
    survey, _, _ = case
    return list(survey.data.columns)


def test_linear_estimator_with_returned_sets_recovers_de_and_ie(linear_case):
    survey, y, result = linear_case
    data = survey.data.assign(y=y)
    truth = {"DE": 0.6, "IE": 0.4, "TE": 1.0}
    dim = "behavior_adaptation"
    for name, value in truth.items():
        coding = result.exposure_coding(name)
        sub = data[data["exposure"].isin(coding["groups"])]
        treat = sub["exposure"].isin(coding["treated"]).astype(float).rename("treat")
        adj = list(result.adjustment_set(name, dim))
        x = sm.add_constant(pd.concat([treat, sub[adj].astype(float)], axis=1))
        fit = sm.OLS(sub["y"], x).fit()
        assert fit.params["treat"] == pytest.approx(value, abs=0.1), name
        naive = sub.loc[treat == 1, "y"].mean() - sub.loc[treat == 0, "y"].mean()
        assert abs(naive - value) > 0.15, f"{name}: confounding too weak for the test to bite"


# ---------------------------------------------------------------- refutations / outputs


@pytest.fixture(scope="module")
def simulated_survey():
    simulate = pytest.importorskip("pari_bayes.simulate")
    sim = simulate.simulate_survey(n_households=287, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return validate_frame(sim.data, load_registry(), load_codebook())


REFUTE_KW = dict(seed=3, n_simulations=10, dimensions=("neighborly_interaction",))


@pytest.fixture(scope="module")
def refuted(simulated_survey):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return identify(simulated_survey, **REFUTE_KW)


def test_refuters_present_and_sane(refuted):
    table = refuted.refutation_table()
    for name in ESTIMANDS:
        rows = table[table["estimand"] == name]
        assert set(rows["refuter"]) == {
            "estimate",
            "placebo_treatment",
            "random_common_cause",
            "data_subset",
            "unobserved_common_cause",
        }
        estimate = rows.loc[rows["refuter"] == "estimate", "estimate"].iloc[0]
        placebo = rows.loc[rows["refuter"] == "placebo_treatment", "new_effect"].iloc[0]
        sens = rows[rows["refuter"] == "unobserved_common_cause"].iloc[0]
        assert abs(placebo) < max(0.2, 0.5 * abs(estimate))
        assert abs(placebo) < abs(estimate) or abs(estimate) < 0.1
        assert 0.0 <= sens["robustness_value"] <= 1.0
        assert sens["robustness_value_alpha05"] <= sens["robustness_value"]
        rcc = rows.loc[rows["refuter"] == "random_common_cause", "new_effect"].iloc[0]
        assert rcc == pytest.approx(estimate, abs=0.1)


def test_refuting_a_computed_identification_matches_identify(simulated_survey, refuted):
    """The main job identifies once and refutes that result: same rows as identify()."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bare = identify(simulated_survey, **{**REFUTE_KW, "refute": False})
        assert bare.refutations == []
        later = refute_identification(bare, simulated_survey, n_simulations=10)
    pd.testing.assert_frame_equal(refuted.refutation_table(), later.refutation_table())
    assert later.entries is bare.entries


def test_refuting_needs_the_same_data(simulated_survey, refuted):
    import pari_bayes as pb

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = pb.load_survey()
    with pytest.raises(IdentificationError, match="other data"):
        refute_identification(refuted, other)


def test_main_job_identifies_once(tmp_path, monkeypatch):
    """Identification, OLS and IPW share one identify() call; the report is refuted."""
    import importlib

    import pari_bayes as pb
    from pari_bayes.pipeline import RunOptions, run_pipeline

    identify_module = importlib.import_module("pari_bayes.identification.identify")
    calls = []
    real = identify_module.identify

    def counting(*args, **kwargs):
        calls.append(kwargs.get("refute", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(identify_module, "identify", counting)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        survey = pb.load_survey()
        run_pipeline(
            survey,
            tmp_path,
            RunOptions(steps=("ols", "identification"), progress=False),
        )
    assert calls == [False]
    refutations = pd.read_csv(tmp_path / "identification" / "refutations.csv")
    assert len(refutations) > 0


def test_same_seed_same_refutations(simulated_survey, refuted):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = identify(simulated_survey, **REFUTE_KW).refutation_table()
    pd.testing.assert_frame_equal(refuted.refutation_table(), again)


def test_six_communities_and_written_outputs(tmp_path):
    simulate = pytest.importorskip("pari_bayes.simulate")
    registry = _six_registry(tmp_path)
    sim = simulate.simulate_survey(n_households=300, registry=registry, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        survey = validate_frame(sim.data, registry, load_codebook())
        result = write_identification(survey, tmp_path, refute=False)
    clusters = result.positivity["clusters"]
    n_with = clusters["n_clusters_with_cbo"]
    n_without = clusters["n_clusters_without_cbo"]
    assert n_with + n_without == 6
    assert clusters["randomization_assignments"] > 6
    assert clusters["smallest_randomization_p"] == pytest.approx(
        1 / clusters["randomization_assignments"]
    )
    payload = json.loads((tmp_path / "identification.json").read_text())
    assert len(payload["identification"]) == len(ESTIMANDS) * len(DIMENSIONS)
    for name in ("estimands.csv", "positivity.csv", "residence_by_community.csv", "dag.png"):
        assert (tmp_path / name).stat().st_size > 0
    table = pd.read_csv(tmp_path / "estimands.csv")
    assert len(table) == len(ESTIMANDS) * len(DIMENSIONS)
    md = (tmp_path / "identification.md").read_text()
    assert "NOT IDENTIFIED" in md and "Positivity" in md
    assert len(payload["positivity"]["residence_by_community"]) == 6


def test_cli_identify(tmp_path, simulated_survey):
    from pari_bayes.cli import main

    csv = tmp_path / "survey.csv"
    simulated_survey.data.drop(
        columns=["cbo_presence", "cbo_existence", "exposure", "income_level", "income_scale"]
    ).to_csv(csv, index=False)
    out = tmp_path / "ident"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["identify", "--data", str(csv), "--out", str(out), "--no-refute"])
    assert code == 0
    assert (out / "identification.json").exists() and (out / "identification.md").exists()
    code = main(["identify", "--data", str(csv), "--out", str(out), "--no-refute"])
    assert code != 0  # non-empty --out without --force
