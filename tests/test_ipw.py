"""IPW under partial interference: propensity ML, weights, sandwich, recovery, errors, CLI."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import integrate
from scipy.special import expit

from pari_bayes import cli
from pari_bayes.errors import EstimationError, PariBayesWarning, SurveyDataError
from pari_bayes.estimation.ipw import (
    COMMON_COLUMNS,
    INFERFERENCE_COLUMNS,
    _weight_integral,
    group_weights,
    ipw_effects,
    simulate_two_stage,
    two_stage_truth,
    write_ipw_survey,
)
from pari_bayes.estimation.propensity import (
    GroupedDesign,
    fit_propensity,
    group_log_integral,
    loglik_and_scores,
)

KEYS = ["effect", "alpha1", "trt1", "alpha2", "trt2"]


def _mixed_data(n_groups=150, size=10, beta=(-0.4, 0.8, -0.5), sigma=0.9, seed=11):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), size)
    x1 = rng.normal(2.0, 3.0, len(g))  # off-centre and wide: exercises the standardization
    x2 = rng.binomial(1, 0.4, len(g)).astype(float)
    b = rng.normal(0.0, sigma, n_groups)
    eta = beta[0] + beta[1] * (x1 - 2.0) / 3.0 + beta[2] * x2 + b[g]
    y = (rng.random(len(g)) < expit(eta)).astype(float)
    return np.column_stack([x1, x2]), g, y


@pytest.fixture(scope="module")
def mixed():
    X, g, y = _mixed_data()
    design = GroupedDesign.build(X, g, ("x1", "x2"))
    return X, g, y, design


@pytest.fixture(scope="module")
def two_stage():
    data = simulate_two_stage(n_groups=400, group_size=(6, 14), seed=7)
    result = ipw_effects(data, "y", "a", "group", ["x"], allocations=(0.3, 0.45, 0.6))
    return data, result


# --------------------------------------------------------------------------- propensity


def test_no_random_intercept_matches_statsmodels_logit(mixed):
    X, _, y, design = mixed
    fit = fit_propensity(design, y[design.order], random_intercept=False)
    ref = sm.Logit(y, sm.add_constant(X)).fit(disp=0)
    np.testing.assert_allclose(fit.coef, ref.params, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fit.coef_se, ref.bse, rtol=1e-4)
    assert fit.log_likelihood == pytest.approx(ref.llf, rel=1e-9)
    assert fit.sigma == 0


def test_marginal_likelihood_tends_to_logit_as_sigma_vanishes(mixed):
    X, _, y, design = mixed
    ref = sm.Logit(y, sm.add_constant(X)).fit(disp=0)
    beta_std = np.linalg.solve(design.to_original(), ref.params)
    for nodes in (1, 15):
        out = group_log_integral(design, beta_std, 1e-5, y[design.order], n_nodes=nodes)
        assert out.log_value.sum() == pytest.approx(ref.llf, abs=1e-6)


@pytest.mark.parametrize("r", [1.0, 0.6])
def test_group_integral_matches_brute_force_quadrature(mixed, r):
    _, _, y, design = mixed
    beta, sigma = np.array([0.3, -0.7, 0.4]), 1.4
    ys = y[design.order]
    out = group_log_integral(design, beta, sigma, ys, r, n_nodes=40, gradient=True)
    for i in (0, 7, 42):
        rows = design.group_index == i
        eta, yy = design.X[rows] @ beta, ys[rows]

        def integrand(b, eta=eta, yy=yy):
            h = r * expit(eta + b)
            dens = np.exp(-0.5 * (b / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
            return np.prod(h**yy * (1 - h) ** (1 - yy)) * dens

        value = integrate.quad(integrand, -np.inf, np.inf, epsabs=0, epsrel=1e-12)[0]
        assert out.log_value[i] == pytest.approx(np.log(value), abs=1e-8)
    # gradient (posterior expectations) against differences of the integral itself
    h = 1e-6
    for k in range(4):
        up, down = beta.copy(), beta.copy()
        s_up = s_down = sigma
        if k < 3:
            up[k] += h
            down[k] -= h
        else:
            s_up, s_down = sigma * np.exp(h), sigma * np.exp(-h)
        f_up = group_log_integral(design, up, s_up, ys, r, n_nodes=40).log_value
        f_down = group_log_integral(design, down, s_down, ys, r, n_nodes=40).log_value
        np.testing.assert_allclose(out.gradient[:, k], (f_up - f_down) / (2 * h), atol=1e-5)


@pytest.mark.parametrize("nodes", [1, 3, 15])
def test_analytic_scores_match_differences_of_the_approximate_loglik(mixed, nodes):
    _, _, y, design = mixed
    ys = y[design.order]
    theta = np.array([0.2, -0.5, 0.3, np.log(0.8)])

    def loglik(t):
        return loglik_and_scores(design, t[:3], float(np.exp(t[3])), ys, nodes)[0]

    _, scores, _ = loglik_and_scores(design, theta[:3], 0.8, ys, nodes)
    h = 1e-6
    for k in range(4):
        e = np.zeros(4)
        e[k] = h
        np.testing.assert_allclose(
            scores[:, k], (loglik(theta + e) - loglik(theta - e)) / (2 * h), atol=1e-6
        )


def test_laplace_is_close_but_not_equal_to_agh(mixed):
    _, _, y, design = mixed
    beta = np.array([0.3, -0.7, 0.4])
    lap = group_log_integral(design, beta, 1.4, y[design.order], n_nodes=1).log_value
    agh = group_log_integral(design, beta, 1.4, y[design.order], n_nodes=30).log_value
    assert np.max(np.abs(lap - agh)) < 0.05
    assert np.max(np.abs(lap - agh)) > 1e-6


@pytest.mark.parametrize("quadrature", ["laplace", "agh"])
def test_propensity_recovers_known_parameters(quadrature):
    X, g, y = _mixed_data(n_groups=300, size=10, seed=3)
    design = GroupedDesign.build(X, g, ("x1", "x2"))
    fit = fit_propensity(design, y[design.order], quadrature=quadrature)
    truth = np.array([-0.4 - 0.8 * 2.0 / 3.0, 0.8 / 3.0, -0.5])
    assert np.all(np.abs(fit.coef - truth) < 3.5 * fit.coef_se)
    assert abs(fit.sigma - 0.9) < 3.5 * fit.sigma_se
    assert fit.converged and not fit.boundary
    table = fit.table()
    assert list(table["term"][:4]) == ["(Intercept)", "x1", "x2", "sigma"]
    assert table.set_index("term").loc["n_groups", "estimate"] == 300


def test_propensity_without_group_variation_lands_on_boundary_or_small_sigma():
    X, g, y = _mixed_data(n_groups=100, size=10, sigma=0.0, seed=5)
    design = GroupedDesign.build(X, g, ("x1", "x2"))
    fit = fit_propensity(design, y[design.order])
    ref = sm.Logit(y, sm.add_constant(X)).fit(disp=0)
    assert fit.sigma < 0.35
    assert fit.log_likelihood >= ref.llf - 1e-6


# --------------------------------------------------------------------------- weights


def test_weights_match_closed_form_without_random_effect(mixed):
    X, g, b, design = mixed
    rng = np.random.default_rng(2)
    r = 0.7
    a = b * (rng.random(len(b)) < r)  # treatment randomized among participants
    fit = fit_propensity(design, b[design.order], random_intercept=False)
    log_f, _, nodes = _weight_integral(design, fit, a[design.order], r, 1e-8)
    assert nodes == 0
    h = r * expit(sm.add_constant(X) @ fit.coef)
    log_closed = np.bincount(g, weights=a * np.log(h) + (1 - a) * np.log1p(-h))
    np.testing.assert_allclose(log_f, log_closed, rtol=1e-10)
    alpha = 0.4
    treated = np.bincount(g, weights=a)
    sizes = np.bincount(g)
    closed = alpha**treated * (1 - alpha) ** (sizes - treated) / np.exp(log_closed)
    np.testing.assert_allclose(group_weights(log_f, treated, sizes, alpha), closed, rtol=1e-10)


def test_weight_integral_matches_quad_of_the_issue_formula(mixed):
    _, _, b, design = mixed
    rng = np.random.default_rng(4)
    r, alpha = 0.8, 0.35
    a = b * (rng.random(len(b)) < r)
    bs, as_ = b[design.order], a[design.order]
    fit = fit_propensity(design, bs)
    assert fit.sigma > 0.3
    log_f, _, nodes = _weight_integral(design, fit, as_, r, 1e-10)
    assert nodes >= 40
    treated, sizes = design.reduce(as_), design.sizes
    weights = group_weights(log_f, treated, sizes, alpha)
    beta, sigma = fit.beta_standardized, fit.sigma
    for i in (1, 30, 99):
        rows = design.group_index == i
        eta, aa = design.X[rows] @ beta, as_[rows]

        def integrand(u, eta=eta, aa=aa):
            h = r * expit(eta + u)
            dens = np.exp(-0.5 * (u / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
            return np.prod((h / alpha) ** aa * ((1 - h) / (1 - alpha)) ** (1 - aa)) * dens

        value = integrate.quad(integrand, -np.inf, np.inf, epsabs=0, epsrel=1e-12)[0]
        assert weights[i] == pytest.approx(1.0 / value, rel=1e-7)


# --------------------------------------------------------------------------- estimator


def test_effects_table_layout_and_sign_convention(two_stage):
    _, res = two_stage
    e = res.effects
    assert list(e.columns) == list(INFERFERENCE_COLUMNS)
    # inferference::effect_grid for 3 allocations: 6 direct, 12 indirect, 12 total, 6 overall
    assert e["effect"].value_counts().to_dict() == {
        "direct": 6,
        "indirect": 12,
        "total": 12,
        "overall": 6,
    }
    out = res.outcomes.set_index(["alpha1", "trt1"])["estimate"]
    d = res.effect("direct", 0.45, trt1=0)
    assert d["estimate"] == pytest.approx(out[(0.45, 0.0)] - out[(0.45, 1.0)])
    i = res.effect("indirect", 0.3, trt1=0, alpha2=0.6)
    assert i["estimate"] == pytest.approx(out[(0.3, 0.0)] - out[(0.6, 0.0)])
    t = res.effect("total", 0.3, trt1=0, alpha2=0.6)
    assert t["estimate"] == pytest.approx(out[(0.3, 0.0)] - out[(0.6, 1.0)])
    assert e[e.effect == "overall"][["trt1", "trt2"]].isna().all().all()
    z = (e["conf_high"] - e["estimate"]) / e["std_error"]
    np.testing.assert_allclose(z, 1.959964, rtol=1e-5)


def test_recovers_known_effects_on_two_stage_design(two_stage):
    _, res = two_stage
    merged = res.effects.merge(two_stage_truth(res.allocations), on=KEYS, validate="1:1")
    zscores = (merged["estimate"] - merged["truth"]) / merged["std_error"]
    assert np.all(np.abs(zscores) < 3.5), merged.assign(z=zscores)
    key = merged[(merged.effect.isin(["direct", "indirect"])) & (merged.trt1 == 0)]
    # truth: DE(alpha) = -(1 + 0.5 alpha), IE(a1, a2) = -2 (a1 - a2): clearly non-zero
    assert np.all(np.sign(key["estimate"]) == np.sign(key["truth"]))


def test_opg_bread_close_to_hessian_bread(two_stage):
    data, res = two_stage
    opg = ipw_effects(data, "y", "a", "group", ["x"], allocations=res.allocations, bread="opg")
    ratio = opg.effects["std_error"] / res.effects["std_error"]
    assert ratio.between(0.9, 1.1).all()
    np.testing.assert_allclose(opg.effects["estimate"], res.effects["estimate"])


def test_propensity_estimation_changes_the_variance(two_stage):
    # ignoring the propensity estimation (plain group variance) gives other SEs
    _, res = two_stage
    q = res.quantities[(0, 0.3)]
    assert q.std_error > 0
    assert abs(np.sum(q.influence)) < 1e-8  # influences are centred at the estimate


def test_sandwich_agrees_with_group_bootstrap():
    data = simulate_two_stage(n_groups=100, group_size=8, seed=21)
    allocations = (0.3, 0.6)
    # Laplace keeps the 100 refits fast; the sandwich is checked for the estimator as fit
    res = ipw_effects(data, "y", "a", "group", ["x"], allocations, quadrature="laplace")
    rng = np.random.default_rng(0)
    groups = data["group"].unique()
    by_group = {g: sub for g, sub in data.groupby("group")}
    picks = ["direct", "indirect", "overall"]
    draws = []
    for _ in range(100):
        chosen = rng.choice(groups, len(groups), replace=True)
        boot = pd.concat(
            [by_group[g].assign(group=f"b{k}") for k, g in enumerate(chosen)], ignore_index=True
        )
        e = ipw_effects(boot, "y", "a", "group", ["x"], allocations, quadrature="laplace").effects
        draws.append(e["estimate"].to_numpy())
    boot_se = np.std(np.array(draws), axis=0, ddof=1)
    rows = res.effects["effect"].isin(picks) & (res.effects["trt1"].fillna(0) == 0)
    ratio = res.effects["std_error"][rows] / boot_se[rows.to_numpy()]
    assert ratio.between(0.7, 1.4).all(), ratio


def test_participation_and_randomization_enter_the_weights():
    data = simulate_two_stage(n_groups=120, group_size=8, seed=9)
    rng = np.random.default_rng(1)
    data["b"] = data["a"]
    data["a"] = data["b"] * (rng.random(len(data)) < 0.5)
    res = ipw_effects(
        data, "y", "a", "group", ["x"], (0.2, 0.3), participation="b", randomization=0.5
    )
    plain = ipw_effects(data, "y", "a", "group", ["x"], (0.2, 0.3))
    # the propensity model is fit to B in the first case, to A in the second
    assert res.propensity_fit.coef[0] > plain.propensity_fit.coef[0] + 0.3
    assert not np.allclose(res.effects["estimate"], plain.effects["estimate"])


# --------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def small():
    return simulate_two_stage(n_groups=30, group_size=6, seed=2)


@pytest.mark.parametrize("alloc", [0.0, 1.0, 1.5, -0.2])
def test_allocation_outside_unit_interval(small, alloc):
    with pytest.raises(EstimationError, match=f"allocation {alloc:g} is outside"):
        ipw_effects(small, "y", "a", "group", ["x"], allocations=(0.3, alloc))


def test_group_with_one_member(small):
    data = pd.concat([small, small.iloc[[0]].assign(group="lonely")], ignore_index=True)
    with pytest.raises(SurveyDataError, match="'lonely' have a single member"):
        ipw_effects(data, "y", "a", "group", ["x"], allocations=(0.3,))


def test_treatment_not_binary(small):
    data = small.assign(a=small["a"].replace({1: 2}))
    with pytest.raises(SurveyDataError, match="treatment column 'a' must be 0/1; found 2"):
        ipw_effects(data, "y", "a", "group", ["x"], allocations=(0.3,))


def test_missing_columns_are_named(small):
    with pytest.raises(SurveyDataError, match="column\\(s\\) 'z', 'w' not in the data"):
        ipw_effects(small, "y", "a", "group", ["x", "z", "w"], allocations=(0.3,))


def test_missing_values_named(small):
    data = small.copy()
    data.loc[3, "x"] = np.nan
    with pytest.raises(SurveyDataError, match="column 'x' has 1 missing value\\(s\\) \\(rows 3\\)"):
        ipw_effects(data, "y", "a", "group", ["x"], allocations=(0.3,))


def test_treatment_without_participation(small):
    data = small.assign(b=0)
    data.loc[0, "b"] = 1
    with pytest.raises(SurveyDataError, match="only participants can be treated"):
        ipw_effects(data, "y", "a", "group", ["x"], (0.3,), participation="b", randomization=0.5)


def test_randomization_needs_participation(small):
    with pytest.raises(EstimationError, match="needs a participation column"):
        ipw_effects(small, "y", "a", "group", ["x"], (0.3,), randomization=0.5)


def test_separation_is_a_convergence_error(small):
    data = small.assign(x=small["a"] + np.random.default_rng(0).uniform(0, 0.5, len(small)))
    with pytest.raises(EstimationError, match="did not converge") as info:
        ipw_effects(data, "y", "a", "group", ["x"], allocations=(0.3,))
    assert not any(ch.isdigit() for ch in str(info.value))


def test_iteration_limit_is_a_convergence_error(mixed):
    _, _, y, design = mixed
    with pytest.raises(EstimationError, match="did not converge: the optimizer stopped"):
        fit_propensity(design, y[design.order], max_iter=1)


# --------------------------------------------------------------------------- CLI


def test_cli_writes_reproducible_tables(tmp_path, capsys):
    data = simulate_two_stage(n_groups=40, group_size=6, seed=4)
    path = tmp_path / "d.csv"
    data.to_csv(path, index=False)
    args = [
        "ipw",
        "--data",
        str(path),
        "--outcome",
        "y",
        "--treatment",
        "a",
        "--group",
        "group",
        "--covariates",
        "x",
        "--allocations",
        "0.3,0.45,0.6",
    ]
    assert cli.main([*args, "--out", str(tmp_path / "o1")]) == 0
    assert cli.main([*args, "--out", str(tmp_path / "o2")]) == 0
    for name in ("ipw_effects.csv", "ipw_propensity.csv", "ipw_outcomes.csv"):
        assert (tmp_path / "o1" / name).read_bytes() == (tmp_path / "o2" / name).read_bytes()
    effects = pd.read_csv(tmp_path / "o1" / "ipw_effects.csv")
    assert list(effects.columns) == list(INFERFERENCE_COLUMNS) and len(effects) == 36
    prop = pd.read_csv(tmp_path / "o1" / "ipw_propensity.csv")
    assert {"(Intercept)", "x", "sigma", "log_likelihood", "converged"} <= set(prop["term"])
    assert "wrote" in capsys.readouterr().out


def test_cli_names_missing_column(tmp_path, capsys):
    path = tmp_path / "d.csv"
    simulate_two_stage(n_groups=10, group_size=4).to_csv(path, index=False)
    code = cli.main(
        [
            "ipw",
            "--data",
            str(path),
            "--outcome",
            "score",
            "--treatment",
            "a",
            "--group",
            "group",
            "--allocations",
            "0.5",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == cli.EXIT_INPUT
    err = capsys.readouterr().err
    assert "'score' not in the data" in err and str(path) in err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- survey


def test_survey_ipw(tmp_path):
    from conftest import make_fake_survey
    from pari_bayes.codebook import load_codebook
    from pari_bayes.registry import load_registry
    from pari_bayes.survey import validate_frame

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PariBayesWarning)
        survey = validate_frame(make_fake_survey(160, seed=3), load_registry(), load_codebook())
    with pytest.warns(PariBayesWarning, match="estimates are descriptive"):
        res = write_ipw_survey(survey, tmp_path, allocations=(0.3, 0.6))
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {
        "ipw_effects.csv",
        "ipw_outcomes.csv",
        "ipw_propensity.csv",
        "ipw_effects_common.csv",
        "ipw_notes.txt",
    }
    common = pd.read_csv(tmp_path / "ipw_effects_common.csv")
    assert list(common.columns) == list(COMMON_COLUMNS)
    assert set(common["estimand"]) == {"DE", "IE", "TE", "OE"}
    assert common.loc[common.estimand != "OE", "alpha"].isna().all()
    assert common.loc[common.estimand == "OE", "alpha"].notna().all()
    assert (common["scope"] == "observed").all()
    # allocation 0 is the plain mean of the CBO-free community means
    from pari_bayes.estimation.ipw import _survey_outcomes

    scores, _ = _survey_outcomes(survey)
    dim = scores.columns[0]
    free = survey.data["cbo_presence"].to_numpy() == 0
    hand = (
        pd.Series(scores[dim].to_numpy()[free])
        .groupby(survey.data["community"].to_numpy()[free])
        .mean()
        .mean()
    )
    out = res.outcomes[(res.outcomes.dimension == dim) & (res.outcomes.alpha1 == 0)]
    assert out["estimate"].to_numpy() == pytest.approx([hand, hand])
    # common IE = Y(0, a_obs) - Y(0, 0); DE flips inferference's direct sign
    a = res.alpha_observed
    y0 = res.outcomes[(res.outcomes.dimension == dim) & (res.outcomes.alpha1 == a)]
    y0 = y0.set_index("trt1")["estimate"]
    row = common[(common.dimension == dim)].set_index("estimand")
    assert row.loc["IE", "mean"] == pytest.approx(y0[0.0] - hand, abs=1e-5)
    assert row.loc["DE", "mean"] == pytest.approx(y0[1.0] - y0[0.0], abs=1e-5)
    notes = (tmp_path / "ipw_notes.txt").read_text()
    assert "4 communities" in notes and "descriptive" in notes


def test_weight_integral_failure_names_a_real_option(mixed):
    _, _, b, design = mixed
    fit = fit_propensity(design, b[design.order])
    assert fit.sigma > 0
    with pytest.raises(EstimationError, match=r"--tol of `pari-bayes ipw`"):
        _weight_integral(design, fit, b[design.order], 1.0, tol=0.0, max_nodes=40)
    # the option the message names exists
    import argparse

    from pari_bayes.commands import ipw as ipw_command

    parser = argparse.ArgumentParser()
    ipw_command.add_arguments(parser)
    assert parser.parse_args(["--tol", "1e-6", "--out", "o"]).tol == 1e-6


IPW_FILES = (
    "ipw_effects.csv",
    "ipw_outcomes.csv",
    "ipw_propensity.csv",
    "ipw_effects_common.csv",
    "ipw_notes.txt",
)


@pytest.fixture(scope="module")
def bundled_survey():
    import pari_bayes as pb

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PariBayesWarning)
        return pb.load_survey()


def test_cli_default_reproduces_the_main_jobs_ipw(tmp_path, capsys, bundled_survey):
    from pari_bayes.pipeline import RunOptions, run_pipeline

    run = tmp_path / "run"
    run.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PariBayesWarning)
        run_pipeline(bundled_survey, run, RunOptions(steps=("ipw",), progress=False))
    assert cli.main(["ipw", "--out", str(tmp_path / "cli")]) == 0
    for name in IPW_FILES:
        assert (tmp_path / "cli" / name).read_bytes() == (run / "ipw" / name).read_bytes(), name
    # the main job's effects_all.csv carries the same IPW rows, in the one schema
    from pari_bayes.effects import EFFECT_COLUMNS

    every = pd.read_csv(run / "effects_all.csv")
    assert list(every.columns) == list(EFFECT_COLUMNS)
    common = pd.read_csv(tmp_path / "cli" / "ipw_effects_common.csv")
    np.testing.assert_allclose(every.loc[every["method"] == "ipw", "mean"], common["mean"])


def test_cli_survey_mode_rejects_generic_options(tmp_path, capsys):
    code = cli.main(["ipw", "--participation", "cbo_presence", "--out", str(tmp_path / "o")])
    assert code == cli.EXIT_INPUT
    assert "allocation 0 by design" in capsys.readouterr().err
    code = cli.main(["ipw", "--outcome", "y", "--out", str(tmp_path / "o")])
    assert code == cli.EXIT_INPUT
    assert "missing --treatment, --group" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_dag_sets_the_participation_covariates(tmp_path, bundled_survey):
    from pari_bayes._paths import DEFAULT_DAG
    from pari_bayes.estimation.ipw import SURVEY_COVARIATES

    lines = [
        line
        for line in DEFAULT_DAG.read_text().splitlines()
        if not line.strip().startswith("education ")
        and "-> education " not in line
        and "-> education;" not in line
    ]
    dag = tmp_path / "no_education.dot"
    dag.write_text("\n".join(lines) + "\n")
    for name, extra in (
        ("plain", []),
        ("bundled", ["--dag", str(DEFAULT_DAG)]),
        ("other", ["--dag", str(dag)]),
    ):
        assert cli.main(["ipw", *extra, "--out", str(tmp_path / name)]) == 0
    terms = {
        name: set(pd.read_csv(tmp_path / name / "ipw_propensity.csv")["term"])
        for name in ("plain", "bundled", "other")
    }
    assert set(SURVEY_COVARIATES) <= terms["plain"] and "education" not in terms["plain"]
    assert {"education", "household_size", "income_scale"} <= terms["bundled"]
    assert "education" not in terms["other"] and "household_size" in terms["other"]
    notes = (tmp_path / "other" / "ipw_notes.txt").read_text()
    assert "adjustment set of DE on the DAG" in notes


# --------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_nominal_coverage_over_repeated_simulations():
    # 500 groups of 4-10: with fewer groups (200 of 6-14) the Wald intervals for contrasts
    # at allocations far from the design's (e.g. Yhat(1, 0.3)) under-cover (about 0.89),
    # a finite-sample property of the heavy-tailed group weights that vanishes as N grows.
    reps, hits = 200, []
    for rep in range(reps):
        data = simulate_two_stage(n_groups=500, group_size=(4, 10), seed=1000 + rep)
        res = ipw_effects(data, "y", "a", "group", ["x"], allocations=(0.3, 0.6))
        merged = res.effects.merge(two_stage_truth(res.allocations), on=KEYS)
        hit = (merged["conf_low"] <= merged["truth"]) & (merged["truth"] <= merged["conf_high"])
        hits.append(hit.to_numpy(dtype=float))
    coverage = np.mean(hits, axis=0)
    mc_error = np.sqrt(0.95 * 0.05 / reps)
    assert len(coverage) == 14
    assert np.all(np.abs(coverage - 0.95) < 4 * mc_error), coverage
    assert abs(np.mean(coverage) - 0.95) < 3 * mc_error, coverage
