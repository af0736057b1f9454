"""Tests of the joint measurement + structural latent model (issue 6)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pari_bayes._paths import MODELS_DIR
from pari_bayes.errors import SpecError, SurveyDataError
from pari_bayes.estimation import latent as L
from pari_bayes.measurement.items import (
    BinomialData,
    ItemSpec,
    binomial_logit_logp,
    binomial_logp_numpy,
    hurdle_lognormal_logp_numpy,
    masked_normal_logp,
    ordinal_logp,
    ordinal_logp_numpy,
    prepare_items,
)

SMALL_SPEC = {
    "kind": "latent",
    "name": "small",
    "factors": {"names": ["f1", "f2"]},
    "items": [
        {"name": "a1", "type": "ordinal", "factor": "f1", "levels": [1, 2, 3]},
        {"name": "a2", "type": "binomial", "factor": "f1", "trials": "size", "proportion": True},
        {"name": "a3", "type": "hurdle_lognormal", "factor": "f1", "zero_model": True},
        {"name": "b1", "type": "ordinal", "factor": "f2", "levels": [1, 2]},
        {"name": "b2", "type": "binomial", "factor": "f2", "trials": 5},
    ],
    "structural": {"covariates": ["x1"]},
    "sampler": {"sampler": "pymc", "draws": 20, "tune": 20, "chains": 2, "cores": 1},
}


class _Survey:
    def __init__(self, data):
        self.data = data
        self.registry = None
        self.data_hash = "test"


def small_frame(n: int = 40, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    comm = np.array(["C1", "C2", "C3"])[np.arange(n) % 3]
    presence = (comm != "C1").astype(int)
    size = rng.integers(1, 6, n)
    employed = rng.binomial(size, 0.4)
    return pd.DataFrame(
        {
            "household_id": [f"H{i}" for i in range(n)],
            "community": comm,
            "cbo_presence": presence,
            "cbo_participation": presence * rng.integers(0, 2, n),
            "x1": rng.normal(size=n),
            "size": size,
            "a1": rng.integers(1, 4, n),
            "a2": employed / size,
            "a3": np.where(employed > 0, rng.lognormal(6, 0.7, n), 0.0),
            "b1": rng.integers(1, 3, n),
            "b2": rng.integers(0, 6, n),
        }
    )


# ---------------------------------------------------------------- item likelihoods


def test_ordinal_logp_matches_manual_and_sums_to_one():
    import pytensor.tensor as pt

    cuts = np.array([-1.0, 0.5, 2.0])
    lin = np.array([0.3, -2.0, 1.7, 0.0])
    cats = np.array([0, 1, 2, 3])
    pad = np.concatenate([[-1e3], cuts, [1e3]])
    got = ordinal_logp(
        pt.as_tensor(cats),
        pt.as_tensor(lin),
        pt.as_tensor(pad[cats]),
        pt.as_tensor(pad[cats + 1]),
        pt.as_tensor(np.ones(4)),
    ).eval()
    cdf = 1 / (1 + np.exp(-(np.concatenate([[-np.inf], cuts, [np.inf]])[:, None] - lin[None, :])))
    manual = np.log(np.diff(cdf, axis=0))[cats, np.arange(4)]
    np.testing.assert_allclose(got, manual, rtol=1e-8)
    np.testing.assert_allclose(got, ordinal_logp_numpy(cats, lin, cuts), rtol=1e-8)
    # all categories for one x sum to probability one
    allk = ordinal_logp_numpy(np.arange(4), np.full(4, 0.7), cuts)
    assert np.exp(allk).sum() == pytest.approx(1.0)


def test_ordinal_logp_masked_answers_contribute_zero():
    import pytensor.tensor as pt

    got = ordinal_logp(
        pt.as_tensor([0]),
        pt.as_tensor([5.0]),
        pt.as_tensor([-1e3]),
        pt.as_tensor([0.0]),
        pt.as_tensor([0.0]),
    ).eval()
    assert got[0] == 0.0


def test_binomial_logp_matches_scipy():
    count, trials, logit = np.array([0, 3, 9]), np.array([9, 9, 9]), np.array([-1.0, 0.2, 2.5])
    p = 1 / (1 + np.exp(-logit))
    np.testing.assert_allclose(
        binomial_logp_numpy(count, trials, logit), stats.binom.logpmf(count, trials, p)
    )


def test_hurdle_lognormal_logp():
    y = np.array([0.0, 0.0, 120.0, 900.0])
    mu, sigma, lz = 6.0, 0.8, 0.4
    got = hurdle_lognormal_logp_numpy(y, mu, sigma, np.full(4, lz))
    p = 1 / (1 + np.exp(-lz))
    expect = np.where(
        y > 0,
        np.log(p) + stats.lognorm.logpdf(np.where(y > 0, y, 1), s=sigma, scale=np.exp(mu)),
        np.log1p(-p),
    )
    np.testing.assert_allclose(got, expect)
    # conditioning on zeros: they contribute nothing
    assert hurdle_lognormal_logp_numpy(y, mu, sigma, None)[:2].tolist() == [0.0, 0.0]


def test_masked_normal_logp():
    got = masked_normal_logp(np.array([0.5, 2.0]), 0.0, 1.5, np.array([1.0, 0.0])).eval()
    assert got[0] == pytest.approx(stats.norm.logpdf(0.5, 0, 1.5))
    assert got[1] == 0.0


# ---------------------------------------------------------------- item preparation


def test_prepare_items_proportion_and_hurdle():
    frame = small_frame()
    spec = L.parse_latent_spec(SMALL_SPEC)
    data = prepare_items(frame, spec.items, spec.factors)
    employed = np.round(frame["a2"] * frame["size"]).to_numpy()
    np.testing.assert_array_equal(data.binomial.count[:, 0], employed)
    np.testing.assert_array_equal(data.binomial.trials[:, 0], frame["size"])
    np.testing.assert_array_equal(data.binomial.trials[:, 1], 5)
    assert data.hurdle.positive[:, 0].sum() == (frame["a3"] > 0).sum()
    pos = data.hurdle.positive[:, 0] == 1
    assert data.hurdle.log_value[pos, 0].mean() == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_array_equal(data.ordinal.category[:, 0], frame["a1"] - 1)


def test_prepare_items_rejects_bad_values():
    frame = small_frame()
    spec = L.parse_latent_spec(SMALL_SPEC)
    bad = frame.assign(a1=frame["a1"].where(frame.index != 4, 7))
    with pytest.raises(
        SurveyDataError, match=r"item 'a1': value 7 in row 6 is not one of its levels"
    ):
        prepare_items(bad, spec.items, spec.factors)
    bad = frame.assign(a2=frame["a2"].where(frame.index != 0, 0.3337))
    with pytest.raises(SurveyDataError, match="not a whole number of successes"):
        prepare_items(bad, spec.items, spec.factors)
    with pytest.raises(SurveyDataError, match="needs column 'size'"):
        prepare_items(frame.drop(columns="size"), spec.items, spec.factors)


def test_item_on_undeclared_factor_is_spec_error():
    raw = dict(
        SMALL_SPEC,
        items=SMALL_SPEC["items"]
        + [{"name": "c1", "type": "ordinal", "factor": "f9", "levels": [1, 2]}],
    )
    with pytest.raises(SpecError, match=r"factor 'f9' is not declared; declared factors: f1, f2"):
        L.parse_latent_spec(raw)
    with pytest.raises(SpecError, match="loads on factor 'f3'"):
        prepare_items(small_frame(), [ItemSpec("a1", "ordinal", "f3", levels=(1, 2, 3))], ["f1"])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"invariance": "by_item"}, "invariance = 'by_item'; allowed: full"),
        ({"factors": {"names": []}}, "non-empty list of factor names"),
        (
            {"items": [{"name": "a1", "type": "beta", "factor": "f1"}]},
            "type 'beta' is unknown",
        ),
        (
            {"items": [{"name": "a1", "type": "ordinal", "factor": "f1", "levels": [2]}]},
            "at least two levels",
        ),
        ({"items": [{"name": "a1", "type": "binomial", "factor": "f1"}]}, "needs trials"),
        ({"latent_priors": {"community_sd": -1}}, "community_sd must be positive"),
        ({"latent_priors": {"nonsense": 1}}, "'nonsense' is unknown"),
        ({"factors": {"names": ["f1", "f2", "f3"]}}, "factor\\(s\\) without items: f3"),
    ],
)
def test_spec_errors(change, match):
    with pytest.raises(SpecError, match=match):
        L.parse_latent_spec(dict(SMALL_SPEC, **change))


def test_shipped_spec_parses_with_all_codebook_items(codebook):
    spec = L.load_latent_spec(MODELS_DIR / "latent.toml")
    assert {it.name for it in spec.items} == set(codebook.indicator_names)
    for it in spec.items:
        assert it.factor == codebook[it.name].dimension
        if it.kind == "ordinal":
            assert it.levels == codebook[it.name].values
    assert spec.invariance == "full"


# ---------------------------------------------------------------- model and identification


@pytest.fixture(scope="module")
def small_model():
    spec = L.parse_latent_spec(SMALL_SPEC)
    design = L.latent_design(_Survey(small_frame()), spec)
    return spec, design, L.build_latent_model(design, spec)


def test_identification_constraints(small_model):
    spec, design, model = small_model
    # loadings are positive by construction: the logit-scale ones log-transformed, the
    # hurdle item's the product of a positive total sd and the root of a share in (0, 1)
    assert model.rvs_to_transforms[model["logit_loading"]].name == "log"
    assert model.rvs_to_transforms[model["log_amount_total_sd"]].name == "log"
    assert model.rvs_to_transforms[model["log_amount_r2"]].name == "logodds"
    draws = __import__("pymc").draw(model["loading"], draws=200, random_seed=1)
    assert (draws > 0).all()
    # one loading per item, each item on one factor
    assert model.named_vars_to_dims["loading"] == ("indicator",)
    # Location: no structural intercept, and the community deviations sum to zero, so a
    # common shift c of every household's factor value cannot be absorbed by them: with the
    # structural terms at 0 and R = I (unconstrained point 0) the structural density of eta
    # falls by n K c^2 / 2, whatever community_sd is (exactly so with equal community
    # sizes; with unequal ones the deviations can tilt between large and small communities
    # and absorb a sliver of it). Independent deviations would absorb almost all of it
    # once community_sd is large: the ridge against the cutpoints that the constraint removes.
    ip = {k: np.zeros_like(v) for k, v in model.initial_point().items()}
    (pot,) = model.replace_rvs_by_values([model["eta_structural"]])
    fn = model.compile_fn(pot, inputs=model.value_vars, on_unused_input="ignore")
    n, k = ip["eta"].shape
    for log_tau in (-3.0, 0.0, 2.0):
        at = {**ip, "community_sd_log__": np.full(k, log_tau)}
        base = fn(at)
        for c in (0.3, -1.0):
            shifted = fn({**at, "eta": np.full((n, k), c)})
            assert 0.95 < (base - shifted) / (n * k * c**2 / 2) < 1.0 + 1e-9
    corr = __import__("pymc").draw(model["disturbance_corr"], draws=5, random_seed=2)
    np.testing.assert_allclose(np.diagonal(corr, axis1=1, axis2=2), 1.0)


@pytest.mark.parametrize("noncentred", [["f1", "f2"], ["f1"], ["f2"]])
def test_noncentred_households_imply_the_centred_models_law_of_eta(noncentred):
    """[structural] noncentred: the same model in other coordinates.

    With the structural terms at 0, eta = b[c] - ebar[c] + e, e = L [L_ss^-1 v; z], built
    by the model from v ~ Normal(0, R_ss) (centred factors), z ~ Normal(0, I) (non-centred)
    and the community means b drawn from their density (the dense Normal of
    ``community_mean_logdensity``), must have eta's law under the centred model:
    Normal(0, I kron R + Z (I - J / C) Z' kron T), ZeroSumNormal community deviations.
    """
    structural = {**SMALL_SPEC["structural"], "noncentred": noncentred}
    spec = L.parse_latent_spec({**SMALL_SPEC, "structural": structural})
    assert spec.noncentred == tuple(noncentred)
    design = L.latent_design(_Survey(small_frame(n=12)), spec)
    model = L.build_latent_model(design, spec)
    free = {v.name for v in model.free_RVs}
    assert {"eta_z", "community_residual_mean"} <= free and "eta" not in free
    assert ("eta_disturbance" in free) == (len(noncentred) < 2)
    n, k, C = design.n, len(spec.factors), len(design.communities)
    point = {key: np.zeros_like(v) for key, v in model.initial_point().items()}
    point["disturbance_cpc_raw_logodds__"] = np.array([1.2])  # correlation 2 / (1 + e^-1.2) - 1
    point["community_sd_log__"] = np.log([0.7, 1.3])
    (eta,) = model.replace_rvs_by_values([model["eta"]])
    fn = model.compile_fn(
        eta, inputs=model.value_vars, on_unused_input="ignore", mode="FAST_COMPILE"
    )
    rho = 2.0 / (1.0 + np.exp(-1.2)) - 1.0
    R = np.array([[1.0, rho], [rho, 1.0]])
    tau = np.array([0.7, 1.3])
    counts = np.bincount(design.community_index, minlength=C).astype(float)
    u = np.eye(C) - np.full((C, C), 1.0 / C)
    b_cov = np.kron(u, np.diag(tau**2)) + np.kron(np.diag(1.0 / counts), R)
    rng = np.random.default_rng(7)
    draws = 6000
    bs = rng.multivariate_normal(np.zeros(C * k), b_cov, size=draws).reshape(draws, C, k)
    k_w = len(noncentred)
    zs = rng.standard_normal((draws, n, k_w))
    vs = rng.standard_normal((draws, n, k - k_w))  # R_ss = [1]: one centred factor at most
    centred = {"eta_disturbance": None} if k_w < k else {}
    etas = np.stack(
        [
            fn({**point, "eta_z": z, "community_residual_mean": b, **{c: v for c in centred}})
            for z, b, v in zip(zs, bs, vs, strict=True)
        ]
    )
    onehot = np.eye(C)[design.community_index]
    want = np.kron(np.eye(n), R) + np.kron(onehot @ u @ onehot.T, np.diag(tau**2))
    got = np.cov(etas.reshape(draws, n * k), rowvar=False)
    # Monte Carlo sd of a covariance entry is about sqrt((1 + rho^2) / draws) * scale: 6 sd
    scale = np.sqrt(np.outer(np.diag(want), np.diag(want)))
    assert np.abs(got - want).max() < 6 * np.sqrt(2.0 / draws) * scale.max()
    assert np.abs(etas.mean(axis=0)).max() < 6 * np.sqrt(np.diag(want).max() / draws)
    # the correlation is stored in the spec's factor order whatever the Cholesky order
    corr = model.compile_fn(
        model.replace_rvs_by_values([model["disturbance_corr"]])[0],
        inputs=model.value_vars,
        on_unused_input="ignore",
        mode="FAST_COMPILE",
    )(point)
    np.testing.assert_allclose(corr, R)


def test_noncentred_factors_must_be_declared():
    bad = {**SMALL_SPEC, "structural": {"covariates": ["x1"], "noncentred": ["f9"]}}
    with pytest.raises(SpecError, match=r"noncentred = \['f9'\]; allowed: a list of the"):
        L.parse_latent_spec(bad)


def test_hurdle_item_is_parameterized_by_total_sd_and_variance_share(small_model):
    import pymc as pm

    spec, design, model = small_model
    total, r2, lam, resid = pm.draw(
        [
            model["log_amount_total_sd"],
            model["log_amount_r2"],
            model["loading"],
            model["log_amount_sd"],
        ],
        draws=4000,
        random_seed=3,
    )
    a3 = [it.name for it in design.items.items].index("a3")
    np.testing.assert_allclose(lam[:, a3], total[:, 0] * np.sqrt(r2[:, 0]))
    np.testing.assert_allclose(lam[:, a3] ** 2 + resid[:, 0] ** 2, total[:, 0] ** 2)
    # prior on the share: Beta(2, 2), so no mass piles up at R^2 = 1 (the Heywood boundary)
    a, b = spec.priors["hurdle_r2_alpha"], spec.priors["hurdle_r2_beta"]
    assert stats.kstest(r2[:, 0], stats.beta(a, b).cdf).pvalue > 1e-3
    assert (r2 < 0.99).mean() > 0.999
    # log density of the share against the hand formula on its logit scale
    value = np.array([0.3])
    logp = model.compile_logp(vars=[model["log_amount_r2"]], jacobian=False)(
        {**model.initial_point(), "log_amount_r2_logodds__": np.log(value / (1 - value))}
    )
    assert logp == pytest.approx(stats.beta(a, b).logpdf(0.3))


def test_removed_hurdle_loading_priors_name_their_replacement():
    with pytest.raises(SpecError, match="hurdle_r2_alpha"):
        L.parse_latent_spec(dict(SMALL_SPEC, latent_priors={"hurdle_loading_mu": -0.7}))


def test_invariance_options_add_community_deviations_except_anchor():
    spec = L.parse_latent_spec(
        dict(SMALL_SPEC, measurement={"invariance": "loadings_by_community"})
    )
    design = L.latent_design(_Survey(small_frame()), spec)
    model = L.build_latent_model(design, spec)
    dev = __import__("pymc").draw(model["loading_log_deviation"], random_seed=1)
    anchors = [0, 3]  # first item of f1 and f2
    assert np.all(dev[:, anchors] == 0)
    assert np.all(dev[:, [1, 2, 4]] != 0)
    model2 = L.build_latent_model(design, spec, invariance="thresholds_by_community")
    assert "intercept_shift" in model2.named_vars


#: Draws of the tiny fits of this file, by model (its variables) and seed: sampled once.
_TINY: dict = {}


def _tiny_draws(model, sampler, seed):
    """``sample_latent`` sampling each (model, seed) once per test process."""
    key = (tuple(sorted(model.named_vars)), int(seed))
    if key not in _TINY:
        _TINY[key] = _REAL_SAMPLE_LATENT(model, sampler, seed)
    idata, timing = _TINY[key]
    return idata.copy(), dict(timing)


_REAL_SAMPLE_LATENT = L.sample_latent


def test_tiny_draw_wiring(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "sample_latent", _tiny_draws)
    spec = L.parse_latent_spec(SMALL_SPEC)
    # the parameters outside the gate that miss the thresholds are named, not hidden
    with pytest.warns(UserWarning, match=r"other parameter check\(s\) miss the thresholds: "):
        result = L.fit_latent_spec(
            _Survey(small_frame()), spec, tmp_path, seed=5, allow_unconverged=True
        )
    effects = pd.read_csv(tmp_path / "effects.csv")
    from pari_bayes.effects import EFFECT_COLUMNS

    assert list(effects.columns[:12]) == list(EFFECT_COLUMNS[:12])
    assert set(effects["estimand"]) == {"DE", "IE", "TE", "OE"}
    assert set(effects["scope"]) == {"observed", "new"}
    # TE = DE + IE draw by draw, so the means add up
    obs = effects[(effects["scope"] == "observed") & effects["alpha"].isna()]
    mean = {(r.dimension, r.estimand): r.mean for r in obs.itertuples()}
    for dim in ("f1", "f2"):
        assert mean[(dim, "TE")] == pytest.approx(mean[(dim, "DE")] + mean[(dim, "IE")], abs=1e-4)
    scores = pd.read_csv(tmp_path / "factor_scores.csv")
    assert len(scores) == 2 * 40 and (scores["sd"] > 0).all()
    diag = pd.read_csv(tmp_path / "diagnostics.csv").set_index("parameter")
    info = diag.loc[["measurement_information.f1", "measurement_information.f2"], "value"]
    assert info.notna().all() and (info <= 1).all()
    assert effects["measurement_information"].notna().all()
    import arviz as az

    idata = az.from_netcdf(tmp_path / "posterior.nc")
    # per-draw factor values stay in memory; the file keeps their posterior mean and sd
    assert set(result.idata.posterior["eta"].dims) == {"chain", "draw", "household", "dimension"}
    assert "eta" not in idata.posterior
    assert set(idata.factor_scores["mean"].dims) == {"household", "dimension"}
    assert idata.log_likelihood["households"].shape[-1] == 40
    assert idata.attrs["kind"] == "latent" and idata.attrs["seed"] == 5
    assert result.timing["wall_s"] > 0
    # a gate with these few draws must fail and say why
    assert not result.converged and any("ess_bulk" in f for f in result.failures)


def test_gate_failure_raises_convergence_error(tmp_path, monkeypatch):
    from pari_bayes.errors import ConvergenceError

    spec = L.parse_latent_spec(SMALL_SPEC)
    # The tiny fit's draws (they miss the gate: test_tiny_draw_wiring publishes them only
    # with allow_unconverged), shared with that test instead of sampled twice (CI budget).
    monkeypatch.setattr(L, "sample_latent", _tiny_draws)
    with pytest.raises(ConvergenceError, match="failed the convergence gate"):
        L.fit_latent_spec(_Survey(small_frame()), spec, tmp_path, seed=5)


# ---------------------------------------------------------------- slow checks


LATENT_RECOVERY_REPLICATES = 4


@pytest.mark.slow
def test_recovery_default_size():
    """90% intervals cover the true loadings and DE/IE at about the nominal rate.

    Four surveys of the default size (287 households, 4 communities) simulated by the
    generator with known loadings and effects, no unobserved confounding. One survey alone
    cannot hold "every interval covers" (eight 90% intervals all cover ~43% of the time),
    so coverage is pooled over the replicates: at least 38 of 48 loading intervals (12 per
    survey, the hurdle item's loading is on another scale) and 24 of 32 effect intervals.
    For calibrated 90% intervals each bound fails with probability < 1% (independent
    intervals; those within a survey are positively correlated, which widens the spread).
    """
    from pari_bayes.codebook import load_codebook
    from pari_bayes.registry import load_registry
    from pari_bayes.simulate import default_params, simulate_survey
    from pari_bayes.survey import validate_frame

    params = default_params()
    for dim in params["structural"].values():
        dim["gamma"] = 0.0  # no unobserved confounding: DE is identified
    # the shipped spec models employment income per employed member (divided_by), as the
    # bundled survey's generator draws it
    params["items"]["per_capita_employment_income"]["per_employed"] = True
    spec = L.load_latent_spec(MODELS_DIR / "latent.toml")
    loading_hits, effect_hits, lines = [], [], []
    for seed in range(11, 11 + LATENT_RECOVERY_REPLICATES):
        sim = simulate_survey(287, params=params, seed=seed)
        survey = validate_frame(sim.data, load_registry(), load_codebook())
        design = L.latent_design(
            survey, spec, adjustment={d: L.FALLBACK_COVARIATES for d in spec.factors}
        )
        idata, _ = L.sample_latent(L.build_latent_model(design, spec), spec.sampler, seed=3)
        for j, it in enumerate(spec.items):
            if it.kind == "hurdle_lognormal":
                continue  # standardized log scale; the truth is on the raw log scale
            draws = idata.posterior["loading"].to_numpy()[..., j].ravel()
            lo, hi = np.quantile(draws, [0.05, 0.95])
            truth = sim.params["items"][it.name]["loading"]
            loading_hits.append(lo <= truth <= hi)
            lines.append(f"seed {seed} loading {it.name}: {truth} in [{lo:.3f}, {hi:.3f}]")
        effects = L.latent_effects(idata, design, spec)
        obs = effects[(effects["scope"] == "observed") & effects["estimand"].isin(["DE", "IE"])]
        for row in obs.itertuples():
            truth = sim.truth["effects_latent"][row.dimension][row.estimand]
            effect_hits.append(row.q05 <= truth <= row.q95)
            lines.append(
                f"seed {seed} {row.dimension} {row.estimand}: {truth} in "
                f"[{row.q05:.3f}, {row.q95:.3f}]"
            )
    report = "\n".join(lines)
    assert len(loading_hits) == 12 * LATENT_RECOVERY_REPLICATES
    assert sum(loading_hits) >= 38, report
    assert sum(effect_hits) >= 24, report


@pytest.mark.slow
def test_gate_on_bundled_survey(tmp_path):
    from pari_bayes.survey import load_survey

    result = L.fit_latent_spec(load_survey(), MODELS_DIR / "latent.toml", tmp_path)
    assert result.converged
    assert (result.effects["ess_bulk"] >= 400).all() and (result.effects["r_hat"] <= 1.01).all()


def test_lkj_from_partial_correlations_matches_pymc_lkjcorr():
    """The C-vine construction gives LKJ(eta): same law as PyMC's LKJCorr draws."""
    import pymc as pm

    rng = np.random.default_rng(1)
    n, eta = 4, 2.0
    ours = np.array([L.lkj_corr_draw(n, eta, rng) for _ in range(4000)])
    ref = pm.draw(pm.LKJCorr.dist(n=n, eta=eta, return_matrix=True), draws=4000, random_seed=2)
    np.testing.assert_allclose(np.diagonal(ours, axis1=1, axis2=2), 1.0)
    assert np.linalg.eigvalsh(ours).min() > 0
    assert stats.ks_2samp(np.linalg.det(ours), np.linalg.det(ref)).pvalue > 0.01
    for i, j in ((0, 1), (1, 3), (2, 3)):
        # marginal of every correlation under LKJ(eta): Beta(eta - 1 + n/2) on (-1, 1)
        b = eta - 1 + n / 2
        assert stats.kstest((ours[:, i, j] + 1) / 2, stats.beta(b, b).cdf).pvalue > 0.01


def _direct_spec(direct_a1=("x1",), direct_a2=()):
    items = [dict(it) for it in SMALL_SPEC["items"]]
    items[0]["direct"] = list(direct_a1)
    if direct_a2:
        items[1]["direct"] = list(direct_a2)
    return dict(SMALL_SPEC, items=items)


def test_direct_item_effects_enter_only_their_item():
    """A MIMIC direct effect of x1 on item a1 shifts a1's likelihood and nothing else."""
    import pymc as pm

    spec = L.parse_latent_spec(_direct_spec(), "direct.toml")
    assert spec.items[0].direct == ("x1",) and spec.items[1].direct == ()
    design = L.latent_design(_Survey(small_frame()), spec)
    assert design.direct_columns == ("x1",)
    np.testing.assert_allclose(design.direct_x[:, 0].std(), 1.0)
    model = L.build_latent_model(design, spec)
    assert model.named_vars_to_dims["item_direct"] == ("direct_pair",)
    assert list(model.coords["direct_pair"]) == ["a1~x1"]
    point = model.initial_point()
    logps = model.compile_fn(
        [model.logp(vars=[model[name]], sum=True) for name in ("y_ordinal", "y_binomial")],
        inputs=model.value_vars,
        on_unused_input="ignore",
    )
    before = logps(point)
    point["item_direct"] = np.array([1.5])
    after = logps(point)
    assert before[0] != after[0]  # the ordinal block holds a1
    assert before[1] == after[1]  # binomial items have no direct effect
    del pm


@pytest.mark.parametrize(
    "spec, match",
    [
        (
            {**SMALL_SPEC, "items": [{**SMALL_SPEC["items"][0], "direct": "x1"}]},
            r"direct = 'x1'; allowed: a list of survey column",
        ),
        (
            _direct_spec(direct_a1=("x1",), direct_a2=("x1",))
            | {
                "items": [
                    {**it, "direct": ["x1"]} if it["factor"] == "f1" else it
                    for it in SMALL_SPEC["items"]
                ]
            },
            r"every item of factor 'f1' has a direct effect of 'x1'",
        ),
    ],
)
def test_direct_item_effects_bad_specs(spec, match):
    with pytest.raises(SpecError, match=match):
        L.parse_latent_spec(spec, "direct.toml")


def test_direct_item_effect_on_unknown_column_names_it():
    spec = L.parse_latent_spec(_direct_spec(direct_a1=("nope",)), "direct.toml")
    with pytest.raises(SpecError, match=r"direct: column\(s\) nope not in the survey; allowed"):
        L.latent_design(_Survey(small_frame()), spec)


def test_divided_by_models_the_household_total():
    """An amount per employed member is modelled as the total: log y + log(share * size)."""
    frame = pd.DataFrame(
        {
            "amount": [100.0, 0.0, 250.0, 80.0],
            "share": [0.5, 0.0, 0.25, 1.0],
            "size": [4, 3, 4, 2],
        }
    )
    item = ItemSpec(
        "amount", "hurdle_lognormal", "f", zero_model=False, divided_by=("share", "size")
    )
    data = prepare_items(frame, [item], ["f"]).hurdle
    total = np.log([200.0, 250.0, 160.0])
    np.testing.assert_allclose(data.center[0], total.mean())
    np.testing.assert_allclose(data.log_value[[0, 2, 3], 0], (total - total.mean()) / total.std())
    assert data.positive[:, 0].tolist() == [1, 0, 1, 1]
    # a positive amount where the divisor is 0 cannot be a total divided by it
    bad = frame.assign(share=[0.5, 0.0, 0.0, 1.0])
    with pytest.raises(SurveyDataError, match=r"'amount': row 4 .* share, size is 0; allowed"):
        prepare_items(bad, [item], ["f"])
    with pytest.raises(SpecError, match="divided_by applies to hurdle_lognormal items only"):
        ItemSpec("a", "ordinal", "f", levels=(1, 2), divided_by=("size",))


def test_binomial_logit_logp_matches_scipy_and_skips_missing():
    count = np.array([[0.0, 3.0], [5.0, 0.0]])
    trials = np.array([[5.0, 9.0], [5.0, 0.0]])  # the last answer is missing: 0 of 0
    logit = np.array([[-0.3, 1.2], [2.0, 0.7]])
    data = BinomialData(items=[], count=count, trials=trials, mask=(trials > 0).astype(float))
    got = binomial_logit_logp(count, logit, trials, data.log_coefficient).eval()
    want = stats.binom.logpmf(count, trials, 1 / (1 + np.exp(-logit)))
    np.testing.assert_allclose(got[trials > 0], want[trials > 0])
    assert got[1, 1] == 0.0


@pytest.mark.slow  # CI budget: two latent fits with LOO (about 1 min on 2 cores)
def test_invariance_comparison_writes_loo_with_fit_diagnostics(tmp_path):
    """compare_invariance refits the variant and ranks both by LOO, with their diagnostics."""
    spec = L.parse_latent_spec(
        {**SMALL_SPEC, "measurement": {"compare_invariance": ["thresholds_by_community"]}}
    )
    with pytest.warns(UserWarning):
        L.fit_latent_spec(_Survey(small_frame()), spec, tmp_path, seed=5, allow_unconverged=True)
    loo = pd.read_csv(tmp_path / "loo.csv")
    assert sorted(loo["invariance"]) == ["full", "thresholds_by_community"]
    assert {"elpd_loo", "elpd_diff", "dse", "divergences", "max_r_hat_effects"} <= set(loo)
    assert loo.loc[loo["rank"] == 0, "elpd_diff"].item() == 0.0
    assert (loo["max_r_hat_effects"] > 1.0).all()  # 20 draws: far from converged, and shown


def test_measurement_information_is_one_minus_posterior_variance():
    import arviz as az

    rng = np.random.default_rng(0)
    eta = np.stack(
        [rng.normal(0, 0.5, (4, 500, 30)), rng.normal(0, 1.0, (4, 500, 30))], axis=-1
    )  # f1: items pin households down (var 0.25); f2: prior variance 1, no information
    idata = az.from_dict(posterior={"eta": eta}, dims={"eta": ["household", "dimension"]})
    spec = L.parse_latent_spec(SMALL_SPEC)
    info = L.measurement_information(idata, spec)
    assert list(info.index) == ["f1", "f2"]
    assert info["f1"] == pytest.approx(0.75, abs=0.02)
    assert abs(info["f2"]) < 0.03 and info["f2"] < L.WEAK_MEASUREMENT
