"""The synthetic survey generator: shapes, codings, determinism, truth, counterfactuals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pari_bayes._paths import DATA_DIR, PROJECT_ROOT
from pari_bayes.cli import main
from pari_bayes.codebook import DIMENSIONS, load_codebook
from pari_bayes.errors import PariBayesError, SurveyDataError
from pari_bayes.io import write_csv
from pari_bayes.registry import load_registry
from pari_bayes.simulate import (
    default_params,
    load_params,
    simulate_potential_outcomes,
    simulate_survey,
)
from pari_bayes.survey import validate_frame

SIX = PROJECT_ROOT / "tests" / "data" / "communities6.toml"


@pytest.fixture(scope="module")
def sim():
    return simulate_survey(287, seed=11)


@pytest.fixture(scope="module")
def book():
    return load_codebook()


def test_columns_types_and_ranges(sim, book):
    data = sim.data
    expected = [c for c in book.columns if book[c].role != "optional"]
    assert list(data.columns) == expected
    assert len(data) == 287 and data["household_id"].is_unique
    for name in expected:
        col = book[name]
        values = data[name]
        if col.type in ("binary", "ordinal", "count", "integer"):
            assert pd.api.types.is_integer_dtype(values), name
        if col.type == "binary":
            assert set(values.unique()) <= {0, 1}, name
        elif col.type == "ordinal":
            assert set(values.unique()) <= set(col.values), name
        elif col.type in ("count", "integer", "real"):
            if col.min is not None:
                assert values.min() >= col.min, name
            if col.max is not None:
                assert values.max() <= col.max, name
    # zeros and a heavy tail in employment income; zero exactly when nobody is employed
    inc = data["per_capita_employment_income"]
    assert ((inc == 0) == (data["human_capital"] == 0)).all()
    assert 0 < (inc == 0).mean() < 1
    assert inc.max() > 3 * inc[inc > 0].median()


def test_validates_and_respects_registry(sim, book):
    registry = load_registry()
    survey = validate_frame(sim.data, registry, book)
    limits = survey.data["community"].map(
        {c.name: c.max_residence_months for c in registry.communities}
    )
    assert (survey.data["residence_months"] <= limits).all()
    no_cbo = survey.data["cbo_presence"] == 0
    assert (survey.data.loc[no_cbo, "cbo_participation"] == 0).all()
    assert survey.data["cbo_participation"].sum() > 0


def test_determinism_under_seed():
    a = simulate_survey(60, seed=5)
    b = simulate_survey(60, seed=5)
    c = simulate_survey(60, seed=6)
    pd.testing.assert_frame_equal(a.data, b.data)
    assert a.truth == b.truth
    assert not a.data.equals(c.data)


def test_truth_contents(sim):
    truth = json.loads(sim.truth_json())
    registry = load_registry()
    for dim in DIMENSIONS:
        eff = truth["effects_latent"][dim]
        assert eff["TE"] == pytest.approx(eff["DE"] + eff["IE"])
        st = truth["structural"][dim]
        assert set(st["beta"]) == set(truth["regressors"])
        assert st["community_sd"] > 0 and st["gamma_sociability"] >= 0
        assert set(truth["community_effects"][dim]) == set(registry.names)
    corr = np.array(truth["disturbance_corr"])
    assert corr.shape == (4, 4) and np.allclose(np.diag(corr), 1) and np.allclose(corr, corr.T)
    for item, spec in truth["measurement"].items():
        assert spec["loading"] > 0, item
        if spec["type"] == "ordinal":
            assert spec["thresholds"] == sorted(spec["thresholds"]), item
    assert truth["confounder"]["participation_log_odds_per_sd"] != 0
    counts = truth["exposure_counts"]
    assert sum(counts.values()) == 287
    assert counts["participant"] == int(sim.data["cbo_participation"].sum())


def test_latent_matches_structural_equation(sim):
    """Exposure enters eta exactly as DE * a + IE * s (checked through counterfactuals)."""
    y11 = simulate_potential_outcomes(sim, 1, 1)
    y01 = simulate_potential_outcomes(sim, 0, 1)
    y00 = simulate_potential_outcomes(sim, 0, 0)
    for dim in DIMENSIONS:
        eff = sim.truth["effects_latent"][dim]
        col = f"eta_{dim}"
        assert np.allclose(y11[col] - y01[col], eff["DE"])
        assert np.allclose(y01[col] - y00[col], eff["IE"])


def test_potential_outcomes_reproduce_observed(sim, book):
    observed = simulate_potential_outcomes(
        sim, sim.latent["cbo_participation"].to_numpy(), sim.latent["cbo_presence"].to_numpy()
    )
    for item in book.indicator_names:
        np.testing.assert_array_equal(observed[item].to_numpy(), sim.data[item].to_numpy())
    for dim in DIMENSIONS:
        np.testing.assert_allclose(observed[f"eta_{dim}"], sim.latent[dim])


def test_potential_outcomes_move_items_with_positive_effects():
    params = default_params()
    for dim in DIMENSIONS:
        params["structural"][dim]["DE"] = 1.0
    sim = simulate_survey(200, params=params, seed=3)
    y1 = simulate_potential_outcomes(sim, 1, 1)
    y0 = simulate_potential_outcomes(sim, 0, 1)
    # common random numbers: raising eta never lowers an item
    for item in ("new_friends", "activities_with_new_friends", "sense_of_belonging"):
        assert (y1[item] >= y0[item]).all()
        assert (y1[item] > y0[item]).any()
    with pytest.raises(PariBayesError, match="0 or 1"):
        simulate_potential_outcomes(sim, 2, 1)


def test_six_community_registry(book):
    registry = load_registry(SIX)
    sim = simulate_survey(120, registry=registry, seed=2)
    survey = validate_frame(sim.data, registry, book)
    assert set(survey.data["community"]) == set(registry.names)
    with_cbo = {c.name for c in registry.communities if c.has_cbo}
    assert len(with_cbo) == 3
    part = survey.data.groupby("community")["cbo_participation"].sum()
    assert all(part[c] == 0 for c in registry.names if c not in with_cbo)
    assert set(sim.truth["community_effects"]["economic_integration"]) == set(registry.names)


def test_bad_arguments():
    with pytest.raises(PariBayesError, match="at least 2"):
        simulate_survey(1)


def test_registry_without_cbos_is_refused(tmp_path):
    path = tmp_path / "none.toml"
    path.write_text('[[community]]\nname = "X"\nformed = "2019-01"\nsurveyed = "2020-08"\n')
    with pytest.raises(SurveyDataError, match="no community has CBOs"):
        simulate_survey(20, registry=path, seed=1)


def test_bundled_survey_is_a_draw_of_the_recorded_generator(tmp_path):
    params, seed = load_params()
    raw = json.loads((DATA_DIR / "generator_params.json").read_text())
    sim = simulate_survey(int(raw.get("n_households", 287)), params=params, seed=seed)
    write_csv(sim.data, tmp_path / "survey.csv")
    assert (tmp_path / "survey.csv").read_bytes() == (DATA_DIR / "survey.csv").read_bytes()
    assert json.loads((DATA_DIR / "truth.json").read_text()) == json.loads(sim.truth_json())


def test_cli_simulate(tmp_path, capsys):
    out, truth = tmp_path / "s.csv", tmp_path / "t.json"
    args = [
        "simulate",
        "--out",
        str(out),
        "--households",
        "80",
        "--seed",
        "4",
        "--communities",
        str(SIX),
        "--truth",
        str(truth),
    ]
    assert main(args) == 0
    assert "80 households in 6 communities" in capsys.readouterr().out
    frame = pd.read_csv(out)
    assert len(frame) == 80
    assert "effects_latent" in json.loads(truth.read_text())
    before = out.read_bytes()
    assert main(args) == 2  # exists: refused without --force
    assert "--force" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main([*args, "--force"]) == 0
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


# ------------------------------------------------------------ direct covariate effects


def _with_direct(params, item, direct):
    params = json.loads(json.dumps(params))
    params["items"][item]["direct"] = direct
    return params


def test_params_without_direct_give_the_same_survey_as_an_empty_direct(tmp_path):
    """Absent or empty ``direct``: the survey is byte-identical (old parameter files)."""
    base = default_params()
    empty = json.loads(json.dumps(base))
    for spec in empty["items"].values():
        spec["direct"] = {}
    a = simulate_survey(150, params=base, seed=8)
    b = simulate_survey(150, params=empty, seed=8)
    write_csv(a.data, tmp_path / "a.csv")
    write_csv(b.data, tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    np.testing.assert_array_equal(a.latent[list(DIMENSIONS)], b.latent[list(DIMENSIONS)])
    assert "direct" not in a.truth["measurement"]["per_capita_employment_income"]


def test_direct_effect_moves_only_its_item_in_its_direction():
    """Higher income -> higher per-capita employment income, everything else fixed."""
    base = default_params()
    ref = base["reference"]["income_scale"]
    item = "per_capita_employment_income"
    plain = simulate_survey(300, params=base, seed=4)
    moved = simulate_survey(300, params=_with_direct(base, item, {"income_scale": 0.05}), seed=4)
    # same households, same factors: only the item with the direct effect changes
    np.testing.assert_array_equal(plain.latent[list(DIMENSIONS)], moved.latent[list(DIMENSIONS)])
    others = [c for c in plain.data.columns if c != item]
    pd.testing.assert_frame_equal(plain.data[others], moved.data[others])
    x = np.sqrt(plain.data["household_income"].to_numpy(float)) - ref
    y0 = plain.data[item].to_numpy(float)
    y1 = moved.data[item].to_numpy(float)
    working = y0 > 0
    assert ((y1 > 0) == working).all()  # zeros stay zeros (nobody employed)
    assert (y1[working & (x > 0)] >= y0[working & (x > 0)]).all()
    assert (y1[working & (x < 0)] <= y0[working & (x < 0)]).all()
    # on the log scale the shift is exactly 0.05 (x - ref), up to rounding to whole yuan
    big = working & (y0 > 200) & (y1 > 200)
    shift = np.log(y1[big] / y0[big])
    np.testing.assert_allclose(shift, 0.05 * x[big], atol=0.01)


@pytest.mark.parametrize(
    ("item", "regressor"),
    [("economic_pressure", "offfarm_employed"), ("human_capital", "offfarm_employed")],
)
def test_direct_effect_on_ordinal_and_share_items(item, regressor):
    base = default_params()
    plain = simulate_survey(300, params=base, seed=6)
    moved = simulate_survey(300, params=_with_direct(base, item, {regressor: 2.0}), seed=6)
    x = plain.data[regressor].to_numpy(float) - base["reference"][regressor]
    y0 = plain.data[item].to_numpy(float)
    y1 = moved.data[item].to_numpy(float)
    assert (y1[x > 0] >= y0[x > 0]).all() and (y1[x > 0] > y0[x > 0]).any()
    assert (y1[x < 0] <= y0[x < 0]).all()
    assert moved.truth["measurement"][item]["direct"] == {regressor: 2.0}


def test_direct_terms_do_not_change_under_an_intervention():
    """Covariates are not intervened on: items move between exposures only through eta."""
    params = _with_direct(default_params(), "economic_pressure", {"income_scale": 0.2})
    params["items"]["economic_pressure"]["loading"] = 1e-9  # the item ignores the factor
    sim = simulate_survey(200, params=params, seed=9)
    outcomes = [simulate_potential_outcomes(sim, a, s) for a, s in ((1, 1), (0, 1), (0, 0))]
    for other in outcomes[1:]:
        np.testing.assert_array_equal(
            outcomes[0]["economic_pressure"].to_numpy(), other["economic_pressure"].to_numpy()
        )
    observed = simulate_potential_outcomes(
        sim, sim.latent["cbo_participation"].to_numpy(), sim.latent["cbo_presence"].to_numpy()
    )
    pd.testing.assert_frame_equal(observed[sim.data.columns], sim.data)


def test_per_employed_divides_household_employment_income():
    base = default_params()
    item = "per_capita_employment_income"
    plain = simulate_survey(300, params=base, seed=5)
    params = json.loads(json.dumps(base))
    params["items"][item]["per_employed"] = True
    divided = simulate_survey(300, params=params, seed=5)
    employed = np.round(plain.data["human_capital"] * plain.data["household_size"]).to_numpy()
    y0 = plain.data[item].to_numpy(float)
    y1 = divided.data[item].to_numpy(float)
    assert ((y1 == 0) == (employed == 0)).all()
    working = employed > 0
    # y0 = round(E), y1 = max(round(E / employed), 1): equal up to rounding
    np.testing.assert_allclose(y1[working] * employed[working], y0[working], atol=employed.max())


def test_unknown_direct_regressor_is_refused():
    params = _with_direct(default_params(), "human_capital", {"education": 1.0})
    with pytest.raises(PariBayesError, match="unknown regressors"):
        simulate_survey(50, params=params, seed=1)
