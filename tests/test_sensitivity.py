"""Sensitivity to an unobserved confounder: OLS bounds (sensemakr) and the Bayesian model."""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from pari_bayes._paths import MODELS_DIR, PROJECT_ROOT
from pari_bayes.errors import EstimationError
from pari_bayes.sensitivity.ovb import (
    OVB_COLUMNS,
    adjusted_estimate,
    adjusted_se,
    ovb_sensitivity,
    partial_r2_bounds,
)

VALIDATION = PROJECT_ROOT / "data" / "validation"
DARFUR_COVARIATES = [
    "directlyharmed",
    "age",
    "farmer_dar",
    "herder_dar",
    "pastvoted",
    "hhsize_darfur",
    "female",
]


@pytest.fixture(scope="module")
def darfur():
    data = pd.read_csv(VALIDATION / "darfur.csv")
    X = data[DARFUR_COVARIATES].astype(float)
    villages = pd.get_dummies(data["village"], prefix="village", drop_first=True).astype(float)
    X = pd.concat([X, villages], axis=1)
    X.insert(0, "const", 1.0)
    return ovb_sensitivity(data["peacefactor"], X, "directlyharmed", "female", kd=[1, 2, 3])


def test_unclustered_equals_pysensemakr(darfur):
    ref = pd.read_csv(VALIDATION / "darfur_sensemakr.csv", keep_default_na=False)
    scalars = ref[ref["benchmark"] == ""].set_index("quantity")["value"]
    r = darfur
    assert r.se_type == "classical"
    for name, ours in {
        "estimate": r.estimate,
        "se": r.se,
        "dof": r.dof,
        "partial_r2": r.partial_r2,
        "rv_q1": r.rv_q1,
        "rv_q1_alpha": r.rv_q1_alpha,
    }.items():
        assert ours == pytest.approx(scalars[name], abs=1e-6), name
    bounds = ref[ref["benchmark"] == "female"]
    names = {
        "r2dz_x": "r2dz_x",
        "r2yz_dx": "r2yz_dx",
        "adjusted_estimate": "adjusted_estimate",
        "adjusted_se": "adjusted_se",
        "adjusted_t": "adjusted_t",
        "adjusted_lower_CI": "adjusted_lower",
        "adjusted_upper_CI": "adjusted_upper",
    }
    for _, row in bounds.iterrows():
        ours = r.bounds[r.bounds["k"] == float(row["kd"])].iloc[0]
        assert ours[names[row["quantity"]]] == pytest.approx(row["value"], abs=1e-6), (
            row["quantity"],
            row["kd"],
        )


def test_published_darfur_numbers(darfur):
    # Cinelli & Hazlett (2020), section 2 / Table 1, at their printed precision
    assert round(darfur.estimate, 3) == 0.097
    assert round(darfur.partial_r2, 3) == 0.022
    assert round(darfur.rv_q1, 3) == 0.139
    assert round(darfur.rv_q1_alpha, 3) == 0.076


def test_k_vanish_and_cover_zero_solve_their_equations(darfur):
    r = darfur
    for k, target in ((r.k_vanish, "estimate"), (r.k_cover_zero, "lower")):
        assert 0 < k < r.k_max
        b = partial_r2_bounds(r.r2dxj_x, r.r2yxj_dx, [k])
        value = r.adjusted(b["r2dz_x"].to_numpy(), b["r2yz_dx"].to_numpy())[target][0]
        assert value == pytest.approx(0.0, abs=1e-8)
    # female x 3 leaves the interval just below zero (sensemakr: lower CI -0.006)
    assert 2 < r.k_cover_zero < 3 < r.k_vanish


def _clustered(seed: int = 3, n_clusters: int = 12, per: int = 40):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_clusters), per)
    n = len(g)
    cluster_effect = rng.normal(size=n_clusters)[g]
    x = rng.normal(size=n) + 0.5 * cluster_effect
    d = 0.6 * x + rng.normal(size=n) + 0.5 * cluster_effect
    y = 0.4 * d + 0.8 * x + cluster_effect + rng.normal(size=n)
    X = pd.DataFrame({"const": 1.0, "d": d, "x": x})
    return y, X, g


def test_clustered_rv_alpha_solves_the_robust_t_equation():
    y, X, g = _clustered()
    r = ovb_sensitivity(y, X, "d", "x", clusters=g)
    assert r.se_type == "CR2" and 1 < r.df < 11
    assert r.se != pytest.approx(r.se_classical, rel=0.05)  # clustering matters here
    crit = abs(stats.t.ppf(0.025, r.df))

    def excess(q: float) -> float:  # adjusted robust |t| minus its critical value, R2d = R2y = q
        est = adjusted_estimate(q, q, r.estimate, r.se_classical, r.dof)
        return float(abs(est) / adjusted_se(q, q, r.se, r.dof) - crit)

    brute = optimize.brentq(excess, 1e-9, r.rv_q1 - 1e-9)
    assert r.rv_q1_alpha == pytest.approx(brute, abs=1e-8)
    # without clusters: a different (sensemakr) answer from the same data
    plain = ovb_sensitivity(y, X, "d", "x")
    assert plain.rv_q1 == pytest.approx(r.rv_q1)  # the point-estimate part is the same
    assert plain.rv_q1_alpha != pytest.approx(r.rv_q1_alpha, abs=1e-3)


@pytest.mark.parametrize("clustered", [False, True])
def test_bounds_for_the_true_strength_contain_the_truth(clustered: bool):
    # a confounder z weaker than the benchmark x (smaller coefficients, same distribution,
    # independent of x): the bounds for a confounder as strong as x (k = 1) must contain
    # the true effect, though z biases the naive estimate well beyond its interval
    rng = np.random.default_rng(11)
    n_clusters, per = 40, 100
    g = np.repeat(np.arange(n_clusters), per)
    n = len(g)
    c = rng.normal(size=n_clusters)[g] * 0.3
    x, z = rng.normal(size=n), rng.normal(size=n)
    d = 0.8 * x + 0.6 * z + rng.normal(size=n)
    tau = 0.25
    y = tau * d + 0.9 * x + 0.7 * z + c + rng.normal(size=n)
    X = pd.DataFrame({"const": 1.0, "d": d, "x": x})
    r = ovb_sensitivity(y, X, "d", "x", clusters=g if clustered else None, kd=[1.0])
    crit = abs(stats.t.ppf(0.025, r.ci_df))
    naive = (r.estimate - crit * r.se, r.estimate + crit * r.se)
    assert not naive[0] <= tau <= naive[1]  # the confounder really biases the estimate
    k1 = r.bounds.iloc[0]
    assert k1.adjusted_lower <= tau <= r.estimate + crit * r.se
    assert k1.adjusted_estimate < r.estimate  # moved towards zero
    # the k = 1 bias bound is at least z's actual bias (up to sampling error)
    assert r.estimate - k1.adjusted_estimate >= r.estimate - tau - 3 * r.se


def test_errors_name_the_problem():
    y, X, g = _clustered()
    with pytest.raises(EstimationError, match="benchmark 'w' is not a regressor"):
        ovb_sensitivity(y, X, "d", "w")
    r = ovb_sensitivity(y, X, "d", "x")
    with pytest.raises(EstimationError, match="allowed: kd <"):
        partial_r2_bounds(r.r2dxj_x, r.r2yxj_dx, [r.k_max * 1.01])
    with pytest.raises(EstimationError, match="at least 2 clusters"):
        ovb_sensitivity(y, X, "d", "x", clusters=np.zeros(len(y)))


def test_cli_writes_the_ovb_contract(tmp_path):
    from pari_bayes.cli import main

    out = tmp_path / "sens"
    assert main(["sensitivity", "--no-bayes", "--out", str(out)]) == 0
    ovb = pd.read_csv(out / "ovb.csv")
    assert tuple(ovb.columns) == OVB_COLUMNS
    assert set(ovb["estimand"]) == {"DE", "IE"}
    assert (ovb["se_type"] == "CR2").all()
    de = ovb[ovb["estimand"] == "DE"]
    assert de["sentence"].str.contains("times as strong as residence months").all()
    for dim in ovb["dimension"].unique():
        assert (out / f"contour_{dim}.png").stat().st_size > 10_000
    assert not (out / "bayes.csv").exists()
    bad = main(
        ["sensitivity", "--no-bayes", "--benchmark", "shoe_size", "--out", str(tmp_path / "x")]
    )
    assert bad == 2 and not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- Bayesian


def _design(
    seed: int,
    n_comm: int = 6,
    per: int = 60,
    de: float = 0.4,
    ie: float = 0.3,
    gamma_u: float = 0.0,
    delta_u: float = 0.0,
):
    """A synthetic multilevel design with a known unobserved confounder U."""
    from pari_bayes.estimation.multilevel import MultilevelDesign

    rng = np.random.default_rng(seed)
    cidx = np.repeat(np.arange(n_comm), per)
    n = len(cidx)
    presence = (np.arange(n_comm) < n_comm // 2).astype(float)
    x = rng.normal(size=(n, 2))
    u = rng.normal(size=n)
    logit = -0.3 + 0.8 * x[:, 0] + gamma_u * u
    a = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float) * presence[cidx]
    d = rng.normal(scale=0.2, size=n_comm)
    y = 0.5 * x[:, 0] - 0.3 * x[:, 1] + de * a + ie * presence[cidx] + d[cidx]
    y = y + delta_u * u + rng.normal(scale=0.7, size=n)
    y_mean, y_sd = y.mean(), y.std()
    return MultilevelDesign(
        household_ids=tuple(f"h{i}" for i in range(n)),
        communities=tuple(f"c{j}" for j in range(n_comm)),
        dimensions=("score",),
        covariates=("x1", "x2"),
        y=((y - y_mean) / y_sd)[:, None],
        y_mean=np.array([y_mean]),
        y_sd=np.array([y_sd]),
        X=x,
        x_mean=np.zeros(2),
        x_sd=np.ones(2),
        covariate_mask=np.ones((2, 1)),
        treatment=a,
        presence=presence,
        community_index=cidx,
        adjustment={"score": ("x1", "x2")},
        adjustment_source="given",
        outcome_source="given",
        data_hash="synthetic",
        treatment_center=float(a.mean()),
        presence_center=float(presence.mean()),
    )


def _spec(**sampler):
    from pari_bayes.estimation.spec import load_spec

    spec = load_spec(MODELS_DIR / "table4.toml")
    return replace(spec.with_sampler(**sampler), sensitivity=(), loo_drop=())


def test_benchmark_strengths_rank_the_strongest_first():
    from pari_bayes.sensitivity.bayes import benchmark_strengths

    bench = benchmark_strengths(_design(1))["score"]
    assert [b.covariate for b in bench] == ["x1", "x2"]  # x2 has no effect on participation
    assert bench[0].gamma > 0.4 and bench[0].delta > 0
    g, d = bench[0].strength(2.0)
    assert g == pytest.approx(2 * abs(bench[0].gamma)) and d == pytest.approx(2 * bench[0].delta)


def test_summarize_curve_interpolates_and_flags_failures():
    from pari_bayes.sensitivity.bayes import CURVE_COLUMNS, summarize_curve

    def row(k, lo, hi, passed=True):
        base = dict.fromkeys(CURVE_COLUMNS, 0.0)
        base.update(
            dimension="d1",
            estimand="DE",
            k=k,
            benchmark="age",
            q05=lo,
            q95=hi,
            passed=passed,
            reason="",
        )
        return base

    curve = pd.DataFrame([row(0, 0.2, 0.6), row(1, 0.1, 0.5), row(2, -0.1, 0.3)])
    s = summarize_curve(curve).iloc[0]
    assert s.k_cover_zero == pytest.approx(1.5)  # q05 crosses 0 halfway between 1 and 2
    assert "1.50 times as strong as age" in s.sentence
    failed = pd.DataFrame([row(0, 0.2, 0.6), row(1, 0.1, 0.5, passed=False), row(2, -0.1, 0.3)])
    s = summarize_curve(failed).iloc[0]
    assert math.isnan(s.k_cover_zero) and s.sentence.startswith("UNCONVERGED")
    never = pd.DataFrame([row(0, 0.2, 0.6), row(1, 0.1, 0.5)])
    assert math.isinf(summarize_curve(never).iloc[0].k_cover_zero)


def test_sensitivity_model_builds_with_u_in_both_parts():
    """The PyMC graph: U is a free household variable, its strengths are data."""
    from pari_bayes.sensitivity.bayes import build_sensitivity_model

    design = _design(2, n_comm=4, per=25)
    model = build_sensitivity_model(design, _spec())
    free = {v.name for v in model.free_RVs}
    assert {"confounder", "direct_effect", "participation_coef"} <= free
    assert model.named_vars_to_dims["confounder"] == ("household",)
    assert {"u_participation", "u_outcome"} <= set(model.named_vars)
    with pytest.raises(EstimationError, match="one outcome at a time"):
        build_sensitivity_model(replace(design, dimensions=("a", "b")), _spec())


def test_sensitivity_curve_wiring(monkeypatch):
    """The grid loop with a stand-in sampler: strengths reach the model, rows carry the gate."""
    import xarray as xr

    import pari_bayes.estimation.multilevel as ml
    from pari_bayes.sensitivity.bayes import CURVE_COLUMNS, sensitivity_curve

    seen = []

    class FakeSampler:
        def __init__(self, model, spec, seed):
            self.model = model

        def sample(self, **data):
            seen.append(data)
            rng = np.random.default_rng(len(seen))
            shift = float(data["u_outcome"][0])
            post = xr.Dataset(
                {
                    "direct_effect": (
                        ("chain", "draw", "dimension"),
                        0.5 - shift + 0.1 * rng.normal(size=(2, 300, 1)),
                    ),
                    "spillover_effect": (
                        ("chain", "draw", "dimension"),
                        0.2 + 0.1 * rng.normal(size=(2, 300, 1)),
                    ),
                },
                coords={"dimension": ["score"]},
            )
            stats = xr.Dataset({"diverging": (("chain", "draw"), np.zeros((2, 300), bool))})
            return post, stats, 0.1

    monkeypatch.setattr(ml, "_Sampler", FakeSampler)
    design = _design(2, n_comm=4, per=25)
    curve = sensitivity_curve(design, _spec(), grid=(0.0, 1.0, 2.0))
    assert tuple(curve.columns) == CURVE_COLUMNS
    assert len(curve) == 6 and set(curve["benchmark"]) == {"x1"}
    assert [float(d["u_participation"][0]) for d in seen] == pytest.approx(
        [k * abs(curve["u_participation"].iloc[2]) for k in (0.0, 1.0, 2.0)]
    )
    de = curve[curve["estimand"] == "DE"].set_index("k")
    assert de.loc[2.0, "mean"] < de.loc[0.0, "mean"]  # a positive confounder lowers DE
    assert curve["r_hat"].notna().all() and curve["passed"].dtype == bool
    with pytest.raises(EstimationError, match="benchmark 'x9' is not a covariate"):
        sensitivity_curve(design, _spec(), benchmark="x9")


@pytest.mark.slow
def test_zero_strength_reproduces_the_ordinary_model():
    from pari_bayes.diagnostics import diagnostics_table
    from pari_bayes.estimation.multilevel import build_model, sample_model
    from pari_bayes.sensitivity.bayes import sensitivity_curve

    design = _design(5)
    spec = _spec(draws=1000, tune=1000, chains=2, cores=2, target_accept=0.9)
    curve = sensitivity_curve(design, spec, strengths={"score": [(0, 0.0, 0.0)]}, seed=7)
    post, _, _ = sample_model(build_model(design, spec, multivariate=False), spec, seed=8)
    for estimand, var in (("DE", "direct_effect"), ("IE", "spillover_effect")):
        ours = curve[curve["estimand"] == estimand].iloc[0].to_dict()
        assert bool(ours["passed"]), str(ours["reason"])
        draws = post[var].isel(dimension=0).to_numpy() * design.y_sd[0]
        ess = diagnostics_table(SimpleNamespace(posterior=post), var_names=[var])["ess_bulk"]
        mcse = float(draws.std()) / math.sqrt(float(ess.iloc[0]))
        ours_mcse = float(ours["sd"]) / math.sqrt(float(ours["ess_bulk"]))
        assert abs(ours["mean"] - draws.mean()) < 4 * math.hypot(mcse, ours_mcse), estimand
        assert ours["sd"] == pytest.approx(draws.std(), rel=0.12), estimand


@pytest.mark.slow
def test_true_strength_covers_the_true_direct_effect():
    from pari_bayes.sensitivity.bayes import sensitivity_curve

    true_de, gamma_u, delta_u = 0.4, 1.5, 0.6
    design = _design(9, n_comm=6, per=80, de=true_de, gamma_u=gamma_u, delta_u=delta_u)
    spec = _spec(draws=1000, tune=1000, chains=2, cores=2, target_accept=0.9)
    sd = design.y_sd[0]
    curve = sensitivity_curve(
        design, spec, strengths={"score": [(0, 0.0, 0.0), (1, gamma_u, delta_u / sd)]}, seed=3
    )
    de = curve[curve["estimand"] == "DE"].set_index("k")
    assert de["passed"].all(), de["reason"].tolist()
    assert de.loc[1, "q05"] <= true_de <= de.loc[1, "q95"]  # the true strength covers it
    assert de.loc[0, "mean"] > de.loc[1, "mean"]  # ignoring U overstates DE
