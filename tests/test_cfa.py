"""Continuous and count items, and the measurement model alone (issue 15, item 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from pari_bayes._paths import DATA_DIR, MODELS_DIR
from pari_bayes.errors import SpecError, SurveyDataError
from pari_bayes.estimation import cfa
from pari_bayes.estimation import latent as L
from pari_bayes.measurement.items import (
    ItemSpec,
    count_logp,
    count_logp_numpy,
    masked_normal_logp,
    normal_logp_numpy,
    prepare_items,
    simulate_items,
)

VALIDATION = DATA_DIR / "validation"

CFA_SPEC = {
    "kind": "measurement",
    "name": "small_cfa",
    "factors": {"names": ["f", "g"]},
    "items": [
        {"name": "y1", "type": "normal", "factor": "f"},
        {"name": "y2", "type": "normal", "factor": "f", "log": True},
        {"name": "y3", "type": "poisson", "factor": "f"},
        {"name": "z1", "type": "normal", "factor": "g"},
        {"name": "z2", "type": "negative_binomial", "factor": "g"},
        {"name": "z3", "type": "ordinal", "factor": "g", "levels": [1, 2, 3]},
    ],
    "sampler": {"draws": 1000, "tune": 1000, "chains": 4, "cores": 2, "target_accept": 0.9},
}

#: The truth of :func:`cfa_frame`: loadings per factor sd on each item's model scale.
TRUTH = {
    "y1": {"loading": 2.0, "mu": 10.0, "sigma": 1.5},
    "y2": {"loading": 0.5, "mu": 1.0, "sigma": 0.4},  # of log y
    "y3": {"loading": 0.6, "intercept": 1.0},
    "z1": {"loading": 1.0, "mu": 0.0, "sigma": 1.0},
    "z2": {"loading": 0.8, "intercept": 0.5, "alpha": 2.0},
    "z3": {"loading": 1.5, "cutpoints": np.array([-0.5, 1.0])},
}
TRUE_CORR = 0.4


def cfa_frame(n: int = 500, seed: int = 11) -> pd.DataFrame:
    """Answers simulated from the CFA with the :data:`TRUTH` parameters."""
    rng = np.random.default_rng(seed)
    chol = np.linalg.cholesky(np.array([[1.0, TRUE_CORR], [TRUE_CORR, 1.0]]))
    eta = pd.DataFrame(rng.standard_normal((n, 2)) @ chol.T, columns=["f", "g"])
    spec = L.parse_latent_spec(CFA_SPEC)
    return simulate_items(spec.items, eta, TRUTH, rng)


# ----------------------------------------------------------------------------- items


def test_count_logp_matches_scipy_and_skips_missing() -> None:
    count = np.array([[0.0, 3.0], [7.0, 1.0], [2.0, 0.0]])
    log_mean = np.array([[0.2, 1.1], [1.9, -0.4], [0.7, 0.0]])
    alpha = 2.5
    mask = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    from scipy.special import gammaln

    got = count_logp(
        count,
        log_mean,
        np.full_like(count, np.log(alpha)),
        np.array([[0.0, 1.0]] * 3),  # first item Poisson, second negative binomial
        mask,
        gammaln(count + 1),
    ).eval()
    want = np.column_stack(
        [
            count_logp_numpy(count[:, 0], log_mean[:, 0]),
            count_logp_numpy(count[:, 1], log_mean[:, 1], alpha),
        ]
    )
    np.testing.assert_allclose(got[mask == 1], want[mask == 1], rtol=1e-10)
    assert got[2, 1] == 0.0
    # very large means stay finite (log(alpha + mu) by logaddexp)
    big = count_logp(
        np.array([5e4]),
        np.array([11.0]),
        np.array([0.0]),
        np.array([1.0]),
        np.ones(1),
        gammaln(np.array([5e4 + 1])),
    ).eval()
    assert np.isfinite(big).all()


def test_normal_item_logp_is_the_normal_density() -> None:
    value, mu, sigma = np.array([0.3, -1.2]), np.array([0.1, 0.0]), 0.7
    got = masked_normal_logp(value, mu, sigma, np.ones(2)).eval()
    np.testing.assert_allclose(got, normal_logp_numpy(value, mu, sigma))


def test_prepare_continuous_and_count_items() -> None:
    frame = pd.DataFrame(
        {"a": [1.0, 2.0, np.nan, 4.0], "b": [1.0, np.e, np.e**2, 1.0], "c": [0, 3, 1, np.nan]}
    )
    items = [
        ItemSpec("a", "normal", "f"),
        ItemSpec("b", "normal", "f", log=True),
        ItemSpec("c", "poisson", "f"),
    ]
    data = prepare_items(frame, items, ["f"])
    cont = data.continuous
    assert cont.mask[:, 0].tolist() == [1, 1, 0, 1]
    answered = cont.value[cont.mask[:, 0] == 1, 0]
    assert answered.mean() == pytest.approx(0.0) and answered.std() == pytest.approx(1.0)
    # the log-normal item is standardized on the log scale
    assert cont.center[1] == pytest.approx(np.mean([0, 1, 2, 0]))
    assert data.count.count[:, 0].tolist() == [0, 3, 1, 0]
    assert data.count.mask[:, 0].tolist() == [1, 1, 1, 0]
    assert data.count.log_mean_count[0] == pytest.approx(np.log(4 / 3 + 0.5))


@pytest.mark.parametrize(
    ("column", "item", "message"),
    [
        ([1.0, -1.0, 2.0], ItemSpec("v", "poisson", "f"), r"value -1 in row 3 is not a count"),
        ([1.0, 2.5, 2.0], ItemSpec("v", "negative_binomial", "f"), r"value 2.5 in row 3"),
        (
            [1.0, 0.0, 2.0],
            ItemSpec("v", "normal", "f", log=True),
            r"value 0 in row 3 is not positive",
        ),
        ([2.0, 2.0, 2.0], ItemSpec("v", "normal", "f"), r"fewer than two distinct"),
    ],
)
def test_bad_continuous_and_count_values_are_named(column, item, message) -> None:
    with pytest.raises(SurveyDataError, match=message):
        prepare_items(pd.DataFrame({"v": column}), [item], ["f"])


def test_log_option_is_for_normal_items_only() -> None:
    with pytest.raises(SpecError, match="log = true applies to normal items only"):
        ItemSpec("v", "poisson", "f", log=True)


# ----------------------------------------------------------------------------- spec


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"structural": {"covariates": []}},
            r"\[structural\] is not used by kind = \"measurement\"",
        ),
        (
            {"measurement": {"identification": "first"}},
            r"identification = 'first'; allowed: unit_variance, marker",
        ),
        ({"measurement": {"invariance": "loadings_by_community"}}, r"no group is named"),
    ],
)
def test_measurement_spec_errors(change, message) -> None:
    with pytest.raises(SpecError, match=message):
        L.parse_latent_spec(dict(CFA_SPEC, **change))


def test_shipped_measurement_spec_matches_the_latent_items() -> None:
    from pari_bayes.estimation.spec import load_spec

    meas = L.load_latent_spec(load_spec(MODELS_DIR / "measurement.toml"))
    latent = L.load_latent_spec(load_spec(MODELS_DIR / "latent.toml"))
    assert meas.kind == "measurement" and not meas.structural_part
    assert meas.items == latent.items and meas.factors == latent.factors
    hs = L.load_latent_spec(VALIDATION / "holzinger_swineford_cfa.toml")
    assert hs.identification == "marker" and {it.kind for it in hs.items} == {"normal"}


# ----------------------------------------------------------------------------- model


@pytest.fixture(scope="module")
def cfa_model():
    spec = L.parse_latent_spec(CFA_SPEC)
    design = L.latent_design(cfa_frame(), spec)
    return spec, design, L.build_latent_model(design, spec)


def test_measurement_model_has_no_structural_part(cfa_model) -> None:
    import pymc as pm

    spec, design, model = cfa_model
    names = set(model.named_vars)
    assert not names & {"direct_effect", "spillover_effect", "community_sd", "eta_structural"}
    assert {"y_continuous", "y_count", "y_ordinal", "count_dispersion"} <= names
    # eta ~ Normal(0, R), R ~ LKJ; positive loadings of every type, the continuous ones
    # from total sd and variance share (one compiled draw function for all of it)
    eta, corr, lam, total, r2 = pm.draw(
        [
            model["eta"],
            model["disturbance_corr"],
            model["loading"],
            model["continuous_total_sd"],
            model["continuous_r2"],
        ],
        draws=400,
        random_seed=5,
    )
    assert eta.shape == (400, design.n, 2)
    np.testing.assert_allclose(corr[:, 0, 0], 1.0)
    # unit variances: the sd of eta over households and draws is 1 (400 x 500 x 2 values)
    assert eta.std() == pytest.approx(1.0, abs=0.02)
    assert (lam > 0).all()
    cont = [[it.name for it in spec.items].index(n) for n in ("y1", "y2", "z1")]
    np.testing.assert_allclose(lam[:, cont], total * np.sqrt(r2))
    # the joint log density is finite at the initial point
    assert np.isfinite(model.compile_logp()(model.initial_point()))


def test_new_item_types_also_enter_the_structural_model() -> None:
    spec = L.parse_latent_spec(dict(CFA_SPEC, kind="latent", structural={"covariates": []}))
    rng = np.random.default_rng(2)
    frame = cfa_frame(60).assign(
        community=np.array(["A", "B", "C"])[np.arange(60) % 3],
        cbo_presence=lambda d: (d["community"] != "A").astype(int),
        cbo_participation=lambda d: d["cbo_presence"] * rng.integers(0, 2, 60),
    )
    design = L.latent_design(frame, spec)
    model = L.build_latent_model(design, spec)
    assert {"direct_effect", "y_continuous", "y_count"} <= set(model.named_vars)
    updates = L.data_updates(design.items)
    assert {"continuous_value", "count_value", "count_log_factorial"} <= set(updates)


def _fake_posterior(loading, corr, continuous_sd, continuous_mean) -> xr.Dataset:
    chain_draw = {"chain": [0], "draw": [0, 1]}
    return xr.Dataset(
        {
            "loading": (("chain", "draw", "indicator"), np.broadcast_to(loading, (1, 2, 4))),
            "disturbance_corr": (
                ("chain", "draw", "dimension", "dimension_bis"),
                np.broadcast_to(corr, (1, 2, 2, 2)),
            ),
            "continuous_sd": (
                ("chain", "draw", "continuous_indicator"),
                np.broadcast_to(continuous_sd, (1, 2, 4)),
            ),
            "continuous_mean": (
                ("chain", "draw", "continuous_indicator"),
                np.broadcast_to(continuous_mean, (1, 2, 4)),
            ),
        },
        coords=chain_draw,
    )


def test_marker_scaling_is_the_unit_variance_solution_rescaled() -> None:
    spec_raw = {
        "kind": "measurement",
        "name": "m",
        "factors": {"names": ["f", "g"]},
        "items": [
            {"name": n, "type": "normal", "factor": f}
            for n, f in (("a", "f"), ("b", "f"), ("c", "g"), ("d", "g"))
        ],
    }
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(50, 4)) * [1, 2, 3, 4], columns=list("abcd"))
    unit = L.parse_latent_spec(spec_raw)
    marker = L.parse_latent_spec(dict(spec_raw, measurement={"identification": "marker"}))
    design = L.latent_design(frame, unit)
    scale = design.items.continuous.scale
    lam = np.array([0.8, 0.4, 0.5, 0.9])  # standardized-scale loadings
    corr = np.array([[1.0, 0.3], [0.3, 1.0]])
    post = _fake_posterior(lam, corr, np.sqrt(1 - lam**2), np.zeros(4))
    idata = type("I", (), {"posterior": post})()
    u = cfa.measurement_draws(idata, design, unit)
    m = cfa.measurement_draws(idata, design, marker)
    raw = lam * scale
    np.testing.assert_allclose(u["cfa_loading"][0, 0], raw)
    np.testing.assert_allclose(u["cfa_factor_cov"][0, 0], corr)
    # marker: first loading of each factor 1, factor variance = marker loading squared,
    # covariance = correlation times both markers' loadings; residual variances unchanged
    np.testing.assert_allclose(m["cfa_loading"][0, 0], [1, raw[1] / raw[0], 1, raw[3] / raw[2]])
    np.testing.assert_allclose(np.diag(m["cfa_factor_cov"][0, 0]), [raw[0] ** 2, raw[2] ** 2])
    assert float(m["cfa_factor_cov"][0, 0, 0, 1]) == pytest.approx(0.3 * raw[0] * raw[2])
    np.testing.assert_allclose(m["cfa_residual_variance"][0, 0], (np.sqrt(1 - lam**2) * scale) ** 2)

    # the model-implied covariance of the items is the same under both scalings
    def implied(d):
        L_ = np.zeros((4, 2))
        L_[[0, 1], 0] = d["cfa_loading"][0, 0][:2]
        L_[[2, 3], 1] = d["cfa_loading"][0, 0][2:]
        return L_ @ d["cfa_factor_cov"][0, 0].to_numpy() @ L_.T

    np.testing.assert_allclose(implied(u), implied(m))
    # standardized loadings are the items' correlations with their factor
    np.testing.assert_allclose(u["cfa_standardized_loading"][0, 0], lam)
    table = cfa.measurement_table(m, marker)
    fixed = table[table["fixed"]]
    assert set(zip(fixed["parameter"], fixed["rhs"], strict=True)) == {
        ("loading", "a"),
        ("loading", "c"),
    }
    assert table.loc[table["fixed"], "r_hat"].isna().all()


# ----------------------------------------------------------------------------- fits


def _coverage(table: pd.DataFrame) -> list[bool]:
    """Whether each 90% interval covers the :data:`TRUTH` (10 parameters)."""

    def covers(parameter: str, rhs: str, want: float) -> bool:
        row = table[(table["parameter"] == parameter) & (table["rhs"] == rhs)].iloc[0]
        return bool(row["q05"] <= want <= row["q95"])

    # unit variance: loadings in item units (continuous) or on the link scale per factor sd
    covered = [covers("loading", name, truth["loading"]) for name, truth in TRUTH.items()]
    covered.append(covers("factor_correlation", "g", TRUE_CORR))
    covered += [
        covers("residual_variance", name, TRUTH[name]["sigma"] ** 2) for name in ("y1", "y2", "z1")
    ]
    return covered


@pytest.mark.slow
def test_cfa_recovers_continuous_and_count_item_parameters(tmp_path: Path) -> None:
    result = cfa.fit_measurement_spec(
        cfa_frame(), CFA_SPEC, tmp_path, seed=3, allow_unconverged=True
    )
    assert result.converged, result.failures
    covered = _coverage(result.measurement)
    # 10 90% intervals: all 10 cover with probability 0.35, 8+ with 0.93
    assert sum(covered) >= 8, covered
    files = {p.name for p in tmp_path.iterdir()}
    assert {
        "measurement.csv",
        "diagnostics.csv",
        "factor_scores.csv",
        "posterior.nc",
        "loadings.png",
    } <= files


@pytest.mark.slow
def test_holzinger_swineford_matches_lavaans_published_ml_estimates(tmp_path: Path) -> None:
    """Posterior means within one published SE of lavaan's ML estimates (n = 301).

    With weakly informative priors and 301 children the posterior mean differs from the ML
    estimate by O(1/n) while the SE is O(1/sqrt(n)); one SE is a loose bound on that.
    """
    from pari_bayes.estimation.fitting import fit_spec_file

    data = pd.read_csv(VALIDATION / "holzinger_swineford_1939.csv")
    fit = fit_spec_file(data, VALIDATION / "holzinger_swineford_cfa.toml", tmp_path, seed=2)
    assert fit.gate["passed"], fit.gate["reason"]
    published = pd.read_csv(VALIDATION / "holzinger_swineford_lavaan.csv")
    merged = published.merge(
        fit.result.measurement, on=["parameter", "lhs", "op", "rhs"], how="left"
    )
    assert merged["mean"].notna().all()
    z = (merged["mean"] - merged["estimate"]) / merged["se"]
    assert (z.abs() < 1).all(), merged.assign(z=z)


def test_prior_predictive_of_the_new_item_types_is_on_a_plausible_scale() -> None:
    """Prior predictive check: counts and continuous answers the priors imply.

    With the count intercept prior N(log 2, 1) and loadings LogNormal(0, 0.5) the prior
    predictive count should rarely exceed a few hundred; continuous items (on their
    standardized scale) should stay within a few sds.
    """
    spec = L.parse_latent_spec(CFA_SPEC)
    design = L.latent_design(cfa_frame(300), spec)
    rng = np.random.default_rng(8)
    highs, spreads = [], []
    for _ in range(40):
        items, truth = L.simulate_from_prior(design, spec, rng)
        highs.append(np.quantile(items.count.count, 0.99))
        assert (truth["loading"] > 0).all()
        spreads.append(np.abs(items.continuous.value).max())
    assert np.median(highs) < 100 and max(highs) < 5000
    assert np.all(np.isfinite(spreads))
