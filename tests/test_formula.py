"""The ``formula`` estimator: Bambi formulas and families, effects by counterfactual prediction.

Fast tests check the spec's validation, the adjustment set entering the formula and the
g-computation arithmetic on hand-made posteriors (a Bambi model is built, never sampled).
Slow tests fit: the shipped ``models/heterogeneous.toml`` through the lifecycle, a cumulative
and a bernoulli single-item model, and a recovery study of a known heterogeneous DE.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.special import expit

import pari_bayes as pb
from pari_bayes._paths import PROJECT_ROOT
from pari_bayes.effects import EFFECT_COLUMNS, EXPOSURES, estimand_draws
from pari_bayes.errors import SpecError
from pari_bayes.estimation import formula as fm
from pari_bayes.estimation.registry import ESTIMATORS
from pari_bayes.estimation.spec import load_spec, parse_spec

SPEC = PROJECT_ROOT / "models" / "heterogeneous.toml"
COVARIATES = ("residence_months", "age", "gender", "urban_hukou", "education")


def _raw(**changes):
    raw = {
        "kind": "formula",
        "name": "t",
        "identification": "TE",
        "family": "gaussian",
        "formula": "cbo_participation * residence_months + cbo_presence + (1 | community)",
    }
    raw.update(changes)
    return {k: v for k, v in raw.items() if v is not None}


def _fspec(**changes) -> fm.FormulaSpec:
    return fm.parse_formula_spec(parse_spec(_raw(**changes), where="t.toml"))


class _Identification:
    """Stands in for an IdentificationResult: one adjustment set for every dimension."""

    def __init__(self, columns):
        self.columns = tuple(columns)
        self.calls = []

    def adjustment_set(self, estimand, dimension):
        self.calls.append((estimand, dimension))
        return self.columns


@pytest.fixture(scope="module")
def survey():
    return pb.load_survey()


# ------------------------------------------------------------------ spec validation


def test_registered_with_own_sections_and_shipped_spec_parses():
    assert ESTIMATORS["formula"].own_sections
    fspec = fm.parse_formula_spec(load_spec(SPEC))
    assert fspec.family == "gaussian" and fspec.moderator == "residence_months"
    assert fspec.points == 10 and fspec.outcome_column is None
    # every prior of the shipped spec states a reason
    assert fspec.priors and all(p.reason for p in fspec.priors.values())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"family": "weibull"},
            r"t\.toml: key family: 'weibull'; allowed: gaussian, bernoulli, cumulative, "
            r"poisson, negativebinomial",
        ),
        (
            {"formula": "cbo_participation + + (1 |"},
            r"t\.toml: key formula: .* is not a valid Bambi/formulae formula .*allowed: terms",
        ),
        ({"formula": "cbo_participation $ x"}, r"key formula: .*ScanError"),
        ({"formula": ""}, r"key formula: ''; allowed: a Bambi right-hand side"),
        ({"formula": "cbo_participation + (1 | community)"}, r"does not name 'cbo_presence'"),
        (
            {"formula": "cbo_participation + cbo_presence + age"},
            r"no group term for 'community'",
        ),
        (
            {"formula": "cbo_participation + cbo_presence + cbo_existence + (1 | community)"},
            r"cbo_existence is a function of the exposures",
        ),
        ({"family": "cumulative"}, r"key family: 'cumulative' needs outcome_column"),
        (
            {"outcome_column": "life_satisfaction", "outcomes": ["identity_recognition"]},
            r"keys outcomes and outcome_column: give one of them",
        ),
        (
            {"colour": "red"},
            r"unknown key\(s\) 'colour'; allowed: kind, name, .*formula, family",
        ),
        (
            {"conditional": {"moderator": "age"}},
            r"key conditional.moderator: 'age'; allowed: .*residence_months",
        ),
        ({"conditional": {"points": 1}}, r"key conditional.points: 1; allowed: an integer"),
        (
            {"gate": {"r_hat_max": 1.05}},
            r"key gate.r_hat_max: 1.05 is looser than the project's gate \(1.01\)",
        ),
        ({"gate": {"ess": 100}}, r"unknown key gate.ess; allowed: r_hat_max"),
        (
            {
                "family": "bernoulli",
                "outcome_column": "new_friends",
                "priors": {"residual_sd": {"family": "halfnormal", "sigma": 1, "reason": "r"}},
            },
            r"key priors.residual_sd: family 'bernoulli' has no residual_sd; allowed slots "
            r"for bernoulli: intercept, coefficients",
        ),
        (
            {"priors": {"slope_sd": {"family": "normal", "mu": 0, "sigma": 1, "reason": "r"}}},
            r"key priors.slope_sd.family: 'normal'; allowed: halfnormal, halfstudent_t",
        ),
        (
            {"priors": {"wiggle": {"family": "normal", "mu": 0, "sigma": 1, "reason": "r"}}},
            r"unknown key priors.wiggle; allowed: intercept, .*or a Bambi term name",
        ),
    ],
)
def test_spec_errors_name_key_value_and_allowed(changes, message):
    with pytest.raises(SpecError, match=message):
        _fspec(**changes)


def test_prior_of_a_named_term_is_accepted():
    prior = {"family": "normal", "mu": 0, "sigma": 0.2, "reason": "a stated reason"}
    fspec = _fspec(priors={"cbo_participation:residence_months": prior})
    assert fspec.priors["cbo_participation:residence_months"].params["sigma"] == 0.2


def test_unknown_column_and_outcome_column_name_the_key(survey):
    ident = _Identification(())
    bad = _fspec(formula="cbo_participation + cbo_presence + moon_phase + (1 | community)")
    with pytest.raises(SpecError, match=r"key formula: 'moon_phase' is not a column of the survey"):
        fm.build_design(survey, bad, identification=ident)
    bad = _fspec(outcome_column="happiness", family="cumulative")
    with pytest.raises(SpecError, match=r"key outcome_column: 'happiness' is not a column"):
        fm.build_design(survey, bad, identification=ident)
    not_ordinal = _fspec(outcome_column="new_friends", family="cumulative")
    with pytest.raises(SpecError, match=r"'new_friends' has 2 levels; family cumulative needs 3"):
        fm.build_design(survey, not_ordinal, identification=ident)
    not_count = _fspec(outcome_column="human_capital", family="poisson")
    with pytest.raises(SpecError, match=r"'human_capital' is not a count"):
        fm.build_design(survey, not_count, identification=ident)


# ------------------------------------------------------------------ design


def test_adjustment_set_is_added_to_the_formula_and_standardized(survey):
    ident = _Identification((*COVARIATES, "cbo_presence"))
    fspec = _fspec(
        formula="cbo_participation * residence_months + cbo_presence + "
        "C(education) + (1 + cbo_participation | community)"
    )
    design = fm.build_design(survey, fspec, identification=ident)
    assert design.outcomes == survey.codebook.dimensions
    assert {c[1] for c in ident.calls} == set(survey.codebook.dimensions)
    assert all(c[0] == "TE" for c in ident.calls)
    for dim in design.outcomes:
        formula = design.formulas[dim]
        # added once each; neither the moderator nor C(education)'s column is repeated
        assert formula.endswith(" + age + gender + urban_hukou"), formula
        assert formula.count("residence_months") == 1 and formula.count("education") == 1
        assert "cbo_presence + age" not in formula.split("community)")[0]
    assert set(design.standardized) == {"residence_months", "age", "gender", "urban_hukou"}
    months = survey.data["residence_months"].to_numpy(float)
    assert design.standardized["residence_months"] == pytest.approx((months.mean(), months.std()))
    assert design.frame["residence_months"].mean() == pytest.approx(0.0, abs=1e-12)
    # exposures stay 0/1; C(education) sees the raw levels
    assert set(design.frame["cbo_participation"]) == {0.0, 1.0}
    assert set(design.frame["education"]) == set(survey.data["education"])
    for dim in design.outcomes:
        y = design.frame[design.response_names[dim]]
        assert y.mean() == pytest.approx(0.0, abs=1e-9) and y.std(ddof=0) == pytest.approx(1.0)


def test_item_outcome_uses_its_dimension_adjustment_set(survey):
    ident = _Identification(COVARIATES)
    fspec = _fspec(outcome_column="life_satisfaction", family="cumulative")
    design = fm.build_design(survey, fspec, identification=ident)
    assert ident.calls == [("TE", "behavior_adaptation")]
    assert design.outcomes == ("life_satisfaction",)
    assert design.levels == (1.0, 2.0, 3.0, 4.0, 5.0)
    offfarm = _fspec(outcome_column="offfarm_employed", family="bernoulli")
    with pytest.raises(SpecError, match=r"key dimension: None; 'offfarm_employed' is no "):
        fm.build_design(survey, offfarm, identification=ident)
    given = _fspec(
        outcome_column="offfarm_employed", family="bernoulli", dimension="economic_integration"
    )
    ident = _Identification((*COVARIATES, "offfarm_employed"))
    design = fm.build_design(survey, given, identification=ident)
    assert "offfarm_employed" not in design.formulas["offfarm_employed"]  # not its own cause
    assert design.success == 1


# ------------------------------------------------------------------ g-computation arithmetic


def _posterior(values: dict, levels) -> xr.Dataset:
    """A 1-chain, 2-draw posterior with Bambi's variable names."""
    data = {}
    for name, value in values.items():
        value = np.asarray(value, float)
        if value.ndim == 1:  # one value per draw
            data[name] = (("chain", "draw"), value[None, :])
        else:  # (draw, community)
            data[name] = (("chain", "draw", "community__factor_dim"), value[None])
    return xr.Dataset(
        data, coords={"chain": [0], "draw": [0, 1], "community__factor_dim": list(levels)}
    )


@pytest.fixture(scope="module")
def slope_model(survey):
    fspec = _fspec(
        formula="cbo_participation * residence_months + cbo_presence + "
        "(1 + cbo_participation | community)"
    )
    rng = np.random.default_rng(3)
    scores = pd.DataFrame(
        {d: rng.normal(2.0, 3.0, survey.n_households) for d in survey.codebook.dimensions}
    )
    adjustment = {d: () for d in survey.codebook.dimensions}
    design = fm.build_design(survey, fspec, scores=scores, adjustment=adjustment)
    dim = design.outcomes[0]
    return fspec, design, dim, fm.build_model(design, fspec, dim)


def test_g_computation_recovers_known_de_ie_and_conditional_de(slope_model, survey):
    fspec, design, dim, model = slope_model
    levels = sorted(design.communities)
    C = len(levels)
    de, ie, inter = np.array([0.3, -0.2]), np.array([0.5, 0.1]), np.array([0.2, -0.4])
    b_months = np.array([0.7, 0.7])
    slopes = np.array([[0.05, -0.1, 0.2, 0.0], [0.3, 0.0, -0.3, 0.1]])
    post = _posterior(
        {
            "Intercept": [1.0, -1.0],
            "cbo_participation": de,
            "residence_months": b_months,
            "cbo_participation:residence_months": inter,
            "cbo_presence": ie,
            "1|community": np.arange(2 * C, dtype=float).reshape(2, C) / 10,
            "cbo_participation|community": slopes,
            "1|community_sigma": [0.2, 0.3],
            "cbo_participation|community_sigma": [0.1, 0.5],
            "sigma": [1.0, 1.0],
        },
        levels,
    )
    means = fm.potential_means(model, post, design, dim, "gaussian", EXPOSURES)
    draws = estimand_draws(means)
    y_sd = design.y_sd[dim]
    # households' own communities' slopes enter DE (observed scope); months have mean 0
    community = survey.data["community"].to_numpy()
    own_slope = np.stack([slopes[:, levels.index(c)] for c in community], axis=1).mean(axis=1)
    np.testing.assert_allclose(draws[("DE", None)][0], y_sd * (de + own_slope), rtol=1e-9)
    np.testing.assert_allclose(draws[("IE", None)][0], y_sd * ie, rtol=1e-9)
    np.testing.assert_allclose(draws[("TE", None)][0], y_sd * (de + own_slope + ie), rtol=1e-9)
    # conditional: the moderator set to v months for every household
    mean, sd = design.standardized["residence_months"]
    cond = fm.conditional_effects(
        model, post, design, dim, "gaussian", "residence_months", [4.0, 16.0]
    )
    for v in (4.0, 16.0):
        row = cond[(cond["moderator_value"] == v) & (cond["estimand"] == "DE")].iloc[0]
        expect = y_sd * (de + own_slope + inter * (v - mean) / sd)
        assert row["mean"] == pytest.approx(expect.mean(), rel=1e-9)
        row = cond[(cond["moderator_value"] == v) & (cond["estimand"] == "IE")].iloc[0]
        assert row["mean"] == pytest.approx(y_sd * ie.mean(), rel=1e-9)
    # new community: its slope is sigma_slope * z, the same z for the three exposures
    z = {
        "1|community": np.array([[1.5, -2.0]]),
        "cbo_participation|community": np.array([[2.0, 1.0]]),
    }
    new = estimand_draws(
        fm.potential_means(model, post, design, dim, "gaussian", EXPOSURES, scope="new", z=z)
    )
    np.testing.assert_allclose(
        new[("DE", None)][0],
        y_sd * (de + np.array([0.1, 0.5]) * z["cbo_participation|community"][0]),
    )
    np.testing.assert_allclose(new[("IE", None)][0], y_sd * ie, rtol=1e-9)
    # the dense group design gives Bambi's own (sparse) prediction exactly
    import arviz as az

    frame = fm.counterfactual_frame(design, 1, 1)
    plain = model.predict(az.InferenceData(posterior=post), data=frame, inplace=False)
    np.testing.assert_allclose(
        means[(1, 1)], plain.posterior["mu"].to_numpy() * y_sd + design.y_mean[dim], rtol=1e-12
    )
    # levels: y_mean is added back on the outcome's own scale
    y00 = means[(0, 0)][0].mean(axis=-1)
    months = design.frame["residence_months"].to_numpy()
    own_int = np.stack(
        [post["1|community"].values[0][:, levels.index(c)] for c in community], axis=1
    )
    expect00 = np.array([1.0, -1.0]) + (b_months[:, None] * months + own_int).mean(axis=1)
    np.testing.assert_allclose(y00, expect00 * y_sd + design.y_mean[dim], rtol=1e-9)


def test_cumulative_prediction_is_the_expected_category(survey):
    fspec = _fspec(
        outcome_column="life_satisfaction",
        family="cumulative",
        formula="cbo_participation + cbo_presence + (1 | community)",
    )
    design = fm.build_design(survey, fspec, adjustment={"life_satisfaction": ()})
    model = fm.build_model(design, fspec, "life_satisfaction")
    levels = sorted(design.communities)
    thresholds = np.array([[-2.0, -0.5, 0.8, 2.5], [-1.0, 0.0, 1.0, 2.0]])
    post = _posterior(
        {
            "cbo_participation": [0.8, -0.3],
            "cbo_presence": [0.4, 0.2],
            "1|community": np.zeros((2, len(levels))),
            "1|community_sigma": [0.3, 0.3],
        },
        levels,
    )
    post["threshold"] = xr.DataArray(
        thresholds[None],
        dims=("chain", "draw", "threshold_dim"),
        coords={"threshold_dim": [0, 1, 2, 3]},
    )
    means = fm.potential_means(model, post, design, "life_satisfaction", "cumulative", EXPOSURES)

    def expected(eta, cuts):
        cdf = np.concatenate([[0.0], expit(cuts - eta), [1.0]])
        return float(np.sum(np.diff(cdf) * np.arange(1, 6)))

    for (a, s), m in means.items():
        for d in range(2):
            eta = a * [0.8, -0.3][d] + s * [0.4, 0.2][d]
            assert m[0, d] == pytest.approx(np.full(design.n, expected(eta, thresholds[d])))
    assert np.all((means[(1, 1)] >= 1) & (means[(1, 1)] <= 5))


def test_moderator_grid_quantiles_and_repeats():
    q, v = fm.moderator_grid(np.array([1.0] * 50 + [2.0] * 50), 5)
    assert v.tolist() == [1.0, 2.0] and q.tolist() == [0.05, 0.725]


def test_conditional_failures_name_the_grid_point():
    frame = pd.DataFrame(
        {
            "moderator": ["m", "m"],
            "moderator_value": [2.0, 5.0],
            "estimand": ["DE", "IE"],
            "dimension": ["d", "d"],
            "r_hat": [1.0, 1.2],
            "ess_bulk": [1000.0, 50.0],
            "ess_tail": [1000.0, 1000.0],
        }
    )
    from pari_bayes.diagnostics import GATE

    failures = fm._conditional_failures(frame, GATE)
    assert failures == [
        "R-hat > 1.01 for conditional effect IE[d, m=5] (1.200)",
        "ess bulk < 400 for conditional effect IE[d, m=5] (50)",
    ]


# ------------------------------------------------------------------ slow: real fits


def _check_files(directory, moderator=True):
    names = {p.name for p in directory.iterdir()}
    expected = {"posterior.nc", "effects.csv", "diagnostics.csv", "summary.csv"}
    if moderator:
        expected |= {"conditional_effects.csv", "conditional_effects.png"}
    assert expected <= names, names
    effects = pd.read_csv(directory / "effects.csv")
    assert list(effects.columns[: len(EFFECT_COLUMNS)]) == list(EFFECT_COLUMNS)
    return effects


@pytest.mark.slow
def test_heterogeneous_spec_through_the_lifecycle(survey, tmp_path):
    from pari_bayes.estimation.fitting import fit_spec_file

    fit = fit_spec_file(survey, SPEC, tmp_path, escalate=False)
    result, gate = fit.result, fit.gate
    assert gate["passed"], gate["reason"]
    assert gate["divergences"] == 0 and gate["effects_max_r_hat"] <= 1.01
    effects = _check_files(tmp_path)
    assert set(effects["scope"]) == {"observed", "new"}
    assert effects["r_hat"].notna().all() and effects["ess_bulk"].min() >= 400
    # one compiled model for the four outcomes (the paper's formula is shared)
    models = list(result.models.values())
    assert len(models) == 4 and all(m is models[0] for m in models)
    assert (result.summary["compiled_once_for"] == 4).all()
    for formula in result.summary["formula"]:
        assert "+ age + gender + urban_hukou + education + offfarm_employed" in formula
    idata = pb.load_posterior(tmp_path / "posterior.nc", spec=SPEC, survey=survey)
    assert idata.attrs["status"] == "converged" and "formulas" in idata.attrs
    assert idata.posterior.sizes["dimension"] == 4
    cond = pd.read_csv(tmp_path / "conditional_effects.csv")
    assert set(cond["estimand"]) == {"DE", "IE"} and cond["moderator_value"].nunique() == 10
    assert len(cond) == 4 * 2 * 10 and cond["r_hat"].max() <= 1.01
    months = survey.data["residence_months"]
    assert cond["moderator_value"].between(months.min(), months.max()).all()


def _small(raw_changes, tmp_path, survey_obj, draws=500):
    raw = _raw(**raw_changes)
    raw["sampler"] = {"draws": draws, "tune": 500, "chains": 4, "cores": 2, "target_accept": 0.9}
    spec = parse_spec(raw, where="test.toml")
    return fm.fit_formula_spec(
        survey_obj,
        spec,
        tmp_path,
        identification=_Identification(COVARIATES),
        allow_unconverged=True,
        prior=False,
    )


@pytest.mark.slow
def test_cumulative_single_item_fit(survey, tmp_path):
    result = _small(
        {
            "outcome_column": "life_satisfaction",
            "family": "cumulative",
            "formula": "cbo_participation + cbo_presence + (1 | community)",
        },
        tmp_path,
        survey,
    )
    assert result.converged, result.failures
    effects = _check_files(tmp_path, moderator=False)
    assert set(effects["dimension"]) == {"life_satisfaction"}
    # the expected category moves within the 1-5 scale
    assert effects["mean"].abs().max() < 4 and effects["q05"].le(effects["q95"]).all()
    assert "threshold" in result.idata.posterior


@pytest.mark.slow
def test_bernoulli_fit_on_a_zero_one_column(survey, tmp_path):
    data = survey.data.copy()
    data["made_new_friends"] = (data["new_friends"] == 2).astype(int)
    with_column = dataclasses.replace(survey, data=data)
    result = _small(
        {
            "outcome_column": "made_new_friends",
            "dimension": "neighborly_interaction",
            "family": "bernoulli",
            "formula": "cbo_participation + cbo_presence + (1 | community)",
        },
        tmp_path,
        with_column,
    )
    assert result.converged, result.failures
    assert result.design.success == 1
    effects = _check_files(tmp_path, moderator=False)
    # effects are differences of probabilities
    assert effects["q95"].max() <= 1 and effects["q05"].min() >= -1


@pytest.mark.slow
def test_recovery_of_a_heterogeneous_direct_effect(survey, tmp_path):
    """DE = b0 + b1 * months on simulated scores: the 90% intervals cover the truth."""
    rng = np.random.default_rng(11)
    data = survey.data
    a = data["cbo_participation"].to_numpy(float)
    s = data["cbo_presence"].to_numpy(float)
    months = data["residence_months"].to_numpy(float)
    community = data["community"].to_numpy()
    u = {c: rng.normal(0, 0.15) for c in survey.communities}
    b0, b1, ie = -0.4, 0.08, 0.3
    y = (
        (b0 + b1 * months) * a
        + ie * s
        + 0.03 * months
        + np.array([u[c] for c in community])
        + rng.normal(0, 0.5, len(a))
    )
    dim = survey.codebook.dimensions[0]
    scores = pd.DataFrame({dim: y})
    raw = _raw(
        outcomes=[dim],
        formula="cbo_participation * residence_months + cbo_presence + (1 | community)",
        conditional={"moderator": "residence_months", "points": 10},
    )
    raw["sampler"] = {"draws": 500, "tune": 500, "chains": 4, "cores": 2, "target_accept": 0.9}
    spec = parse_spec(raw, where="recovery.toml")
    result = fm.fit_formula_spec(
        survey,
        spec,
        tmp_path,
        scores=scores,
        adjustment={dim: ()},
        allow_unconverged=True,
        prior=False,
        plots=False,
    )
    cond = result.conditional[result.conditional["estimand"] == "DE"]
    truth = b0 + b1 * cond["moderator_value"].to_numpy()
    covered = (cond["q05"].to_numpy() <= truth) & (truth <= cond["q95"].to_numpy())
    assert covered.sum() >= 0.8 * len(cond), cond.assign(truth=truth)
    # and the estimated slope has the right sign: DE grows with months
    assert cond["mean"].iloc[-1] > cond["mean"].iloc[0]
