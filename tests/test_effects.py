"""g-computation of DE/IE/TE/OE on hand-made posteriors with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from pari_bayes.effects import (
    EFFECT_COLUMNS,
    comparison_table,
    effects_table,
    estimand_draws,
    summarize_draws,
)
from pari_bayes.errors import EstimationError
from pari_bayes.estimation.multilevel import MultilevelDesign, potential_means


def test_estimand_draws_known_answer_with_heterogeneous_households():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(2, 50, 10))
    gain = np.linspace(0, 2, 10)  # household-specific direct effect, mean 1
    means = {(0, 0): base, (0, 1): base + 0.5, (1, 1): base + 0.5 + gain}
    d = estimand_draws(means, alphas=[0.25])
    np.testing.assert_allclose(d[("DE", None)], 1.0)
    np.testing.assert_allclose(d[("IE", None)], 0.5)
    np.testing.assert_allclose(d[("TE", None)], 1.5)
    np.testing.assert_allclose(d[("OE", 0.25)], 0.25 * 1.0 + 0.5)
    # weights standardize over another covariate distribution
    w = np.r_[np.zeros(9), 1.0]
    np.testing.assert_allclose(estimand_draws(means, weights=w)[("DE", None)], 2.0)


def test_estimand_draws_rejects_missing_exposure():
    with pytest.raises(EstimationError, match=r"missing for exposure"):
        estimand_draws({(1, 1): np.zeros((1, 2, 3)), (0, 1): np.zeros((1, 2, 3))})


def test_summarize_draws():
    rng = np.random.default_rng(2)
    x = rng.normal(0.3, 1.0, size=(4, 2000))
    s = summarize_draws(x)
    assert s["mean"] == pytest.approx(0.3, abs=0.05)
    assert s["q05"] == pytest.approx(0.3 - 1.645, abs=0.1)
    assert s["prob_positive"] == pytest.approx(0.618, abs=0.03)
    assert s["ess_bulk"] > 4000 and s["r_hat"] < 1.01


def _hand_design(n_comm: int = 3) -> MultilevelDesign:
    """Households 0-3 in community A (CBO), 4-5 in B (no CBO), 6-7 in C (CBO)."""
    comm = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    presence = np.array([1.0, 0.0, 1.0])
    treat = np.array([1, 0, 1, 0, 0, 0, 1, 0], float)
    X = np.linspace(-1, 1, 8)[:, None]
    return MultilevelDesign(
        household_ids=tuple(f"h{i}" for i in range(8)),
        communities=("A", "B", "C"),
        dimensions=("d1",),
        covariates=("x",),
        y=np.zeros((8, 1)),
        y_mean=np.array([10.0]),
        y_sd=np.array([2.0]),
        X=X,
        x_mean=np.zeros(1),
        x_sd=np.ones(1),
        covariate_mask=np.ones((1, 1)),
        treatment=treat,
        presence=presence,
        community_index=comm,
        adjustment={"d1": ("x",)},
        adjustment_source="given",
        outcome_source="given",
        data_hash="x",
        treatment_center=float(treat.mean()),
        presence_center=float(presence.mean()),
    )


def _hand_posterior(de: float, ie: float, tau: float, draws: int = 40) -> xr.Dataset:
    rng = np.random.default_rng(3)
    shape = (2, draws)
    z = rng.normal(size=(*shape, 3, 1))
    d1 = {"dimension": ["d1"]}
    return xr.Dataset(
        {
            "intercept": (("chain", "draw", "dimension"), np.full((*shape, 1), 0.2)),
            "beta": (("chain", "draw", "covariate", "dimension"), np.full((*shape, 1, 1), 0.7)),
            "direct_effect": (("chain", "draw", "dimension"), np.full((*shape, 1), de)),
            "spillover_effect": (("chain", "draw", "dimension"), np.full((*shape, 1), ie)),
            "community_sd": (("chain", "draw", "dimension"), np.full((*shape, 1), tau)),
            "community_z": (("chain", "draw", "community", "dimension"), z),
        },
        coords={**d1, "community": ["A", "B", "C"], "covariate": ["x"]},
    )


@pytest.mark.parametrize("scope", ["observed", "new"])
def test_potential_means_and_effects_table_known_answer(scope):
    design = _hand_design()
    post = _hand_posterior(de=0.4, ie=0.3, tau=0.5)
    # the level is on the outcome scale: y = 10 + 2 * (standardized mean)
    m00 = potential_means(post, design, 0, 0, "observed")
    assert m00.shape == (2, 40, 8, 1)
    table = effects_table(
        lambda a, s, sc, z: potential_means(post, design, a, s, sc, new_z=z),
        ["d1"],
        alphas=(0.5,),
        rng=np.random.default_rng(0),
        shape=(2, 40),
        scopes=(scope,),
    )
    assert list(table.columns) == list(EFFECT_COLUMNS)
    got = table.set_index("estimand")["mean"]
    # effects are reported on the outcome's scale (y_sd = 2)
    assert got["DE"] == pytest.approx(0.8)
    assert got["IE"] == pytest.approx(0.6)
    assert got["TE"] == pytest.approx(1.4)
    assert got["OE"] == pytest.approx(0.5 * 0.8 + 0.6)
    assert (table["scope"] == scope).all()
    assert table.loc[table["estimand"] == "OE", "alpha"].item() == 0.5


def test_new_scope_uses_fresh_community_draws():
    design = _hand_design()
    post = _hand_posterior(de=0.4, ie=0.3, tau=0.5)
    z = np.random.default_rng(5).normal(size=(2, 40, 1))
    new = potential_means(post, design, 0, 1, "new", new_z=z)
    obs = potential_means(post, design, 0, 1, "observed")
    # in a new community every household shares the same drawn community effect
    diff = new - potential_means(post, design, 0, 1, "new", new_z=np.zeros_like(z))
    np.testing.assert_allclose(diff, 2.0 * 0.5 * z[:, :, None, :] * np.ones((1, 1, 8, 1)))
    assert not np.allclose(new, obs)


def test_comparison_table_maps_table4_terms():
    effects = pd.DataFrame(
        [
            {
                "dimension": "behavior_adaptation",
                "estimand": e,
                "alpha": np.nan,
                "scope": "observed",
                "mean": m,
                "sd": 0.1,
                "q05": m - 0.2,
                "q50": m,
                "q95": m + 0.2,
                "prob_positive": 1.0,
                "ess_bulk": 1000.0,
                "r_hat": 1.0,
            }
            for e, m in (("DE", 0.1), ("IE", 0.5), ("TE", 0.6))
        ]
    )
    ols = pd.DataFrame(
        [
            {
                "dimension": "behavior_adaptation",
                "term": t,
                "with_cbo_terms": 1,
                "coef": c,
                "se": 0.2,
                "se_cluster": 0.3,
                "p_cluster": 0.1,
            }
            for t, c in (
                ("cbo_participation", 0.7),
                ("cbo_existence", 0.8),
                ("direct_effect", -0.1),
            )
        ]
    )
    comp = comparison_table(effects, ols=ols).set_index("estimand")
    assert comp.loc["TE", "ols_coef"] == 0.7 and comp.loc["IE", "ols_coef"] == 0.8
    # published Table 4, Model 6: participation 0.726, existence 0.807
    assert comp.loc["TE", "published_coef"] == pytest.approx(0.726)
    assert comp.loc["DE", "published_coef"] == pytest.approx(0.726 - 0.807)
