"""The multilevel likelihood with the community deviations integrated out (issue 14).

``marginal_loglik`` must equal the hand formula (the whole survey's residual vector is
Normal(0, I kron Sigma + Z T Z' kron ...)), and ``draw_community_deviations`` must draw from
the exact Gaussian conditional posterior of the deviations.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy import stats

from pari_bayes.estimation import multilevel as ml


def _joint_logpdf(r, cidx, sigma, tau):
    n, k = r.shape
    z = np.zeros((n, cidx.max() + 1))
    z[np.arange(n), cidx] = 1.0
    cov = np.kron(np.eye(n), sigma) + np.kron(z @ z.T, np.diag(tau**2))
    return stats.multivariate_normal(np.zeros(n * k), cov).logpdf(r.ravel())


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("tau", [[1e-4, 0.3, 1.2], [0.5, 2.0, 0.05]])
def test_marginal_loglik_matches_the_joint_normal(k, tau):
    import pytensor
    import pytensor.tensor as pt

    rng = np.random.default_rng(k)
    counts = np.array([1, 3, 5, 2])
    cidx = np.repeat(np.arange(4), counts)
    r = rng.standard_normal((cidx.size, k))
    a = rng.standard_normal((k, k))
    sigma = a @ a.T + 0.5 * np.eye(k)
    tau = np.asarray(tau[:k])
    R, L, T = pt.matrix("r"), pt.matrix("chol"), pt.vector("tau")
    graph = ml.marginal_loglik(R, cidx, counts.astype(float), L, T, k)
    f = pytensor.function([R, L, T], graph)
    got = f(r, np.linalg.cholesky(sigma), tau)
    assert got == pytest.approx(_joint_logpdf(r, cidx, sigma, tau), rel=1e-10)


def _zero_sum_joint_logpdf(r, cidx, sigma, tau):
    """Dense density when the deviations are ZeroSumNormal: Cov(u) = T kron (I - J / C)."""
    n, k = r.shape
    C = cidx.max() + 1
    z = np.zeros((n, C))
    z[np.arange(n), cidx] = 1.0
    centre = np.eye(C) - np.full((C, C), 1.0 / C)
    cov = np.kron(np.eye(n), sigma) + np.kron(z @ centre @ z.T, np.diag(tau**2))
    return stats.multivariate_normal(np.zeros(n * k), cov, allow_singular=True).logpdf(r.ravel())


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("tau", [[1e-4, 0.3, 1.2, 0.7], [0.5, 2.0, 0.05, 5.0]])
def test_zero_sum_marginal_loglik_matches_the_joint_normal(k, tau):
    """The latent model's sum-to-zero deviations, integrated out, against the dense formula."""
    import pytensor
    import pytensor.tensor as pt

    rng = np.random.default_rng(10 + k)
    counts = np.array([1, 3, 5, 2, 4])
    cidx = np.repeat(np.arange(counts.size), counts)
    r = rng.standard_normal((cidx.size, k))
    a = rng.standard_normal((k, k))
    sigma = a @ a.T + 0.5 * np.eye(k)
    tau = np.asarray(tau[:k])
    R, L, T = pt.matrix("r"), pt.matrix("chol"), pt.vector("tau")
    graph = ml.marginal_loglik(R, cidx, counts.astype(float), L, T, k, zero_sum=True)
    # nutpie runs the numba backend: checked on one size (its compile of the unrolled graph
    # is 15-80 s per size on 2 CI cores); every size on PyTensor's own FAST_COMPILE backend.
    for mode in ("FAST_COMPILE", "NUMBA") if k == 2 else ("FAST_COMPILE",):
        f = pytensor.function([R, L, T], graph, mode=mode)
        got = f(r, np.linalg.cholesky(sigma), tau)
        assert got == pytest.approx(_zero_sum_joint_logpdf(r, cidx, sigma, tau), rel=1e-9)
    if tau.max() < 0.1:
        return  # deviations this small: the constraint hardly matters
    # the constraint changes the density (it is not the independent-deviation one)
    free = pytensor.function([R, L, T], ml.marginal_loglik(R, cidx, counts.astype(float), L, T, k))
    assert abs(free(r, np.linalg.cholesky(sigma), tau) - got) > 1e-3


def test_marginal_loglik_is_nan_not_an_error_for_a_degenerate_proposal():
    import pytensor
    import pytensor.tensor as pt

    cidx = np.array([0, 0, 1, 1])
    R, L, T = pt.matrix("r"), pt.matrix("chol"), pt.vector("tau")
    f = pytensor.function(
        [R, L, T], ml.marginal_loglik(R, cidx, np.array([2.0, 2.0]), L, T, 2), mode="NUMBA"
    )
    value = f(np.ones((4, 2)), np.array([[np.inf, 0.0], [0.0, 1.0]]), np.array([0.1, 0.1]))
    assert not np.isfinite(value)


def _design(n_per=(40, 3, 25), k=2, seed=0):
    rng = np.random.default_rng(seed)
    cidx = np.repeat(np.arange(len(n_per)), n_per)
    n = cidx.size
    return ml.MultilevelDesign(
        household_ids=tuple(str(i) for i in range(n)),
        communities=tuple(f"c{c}" for c in range(len(n_per))),
        dimensions=tuple(f"d{j}" for j in range(k)),
        covariates=(),
        y=rng.standard_normal((n, k)) + np.array([0.8, -0.5, 0.1])[cidx, None],
        y_mean=np.zeros(k),
        y_sd=np.ones(k),
        X=np.zeros((n, 0)),
        x_mean=np.zeros(0),
        x_sd=np.zeros(0),
        covariate_mask=np.zeros((0, k)),
        treatment=np.zeros(n),
        presence=np.array([1.0, 0.0, 1.0]),
        community_index=cidx,
        adjustment={},
        adjustment_source="given",
        outcome_source="given",
        data_hash="x",
        has_treatment=False,
        has_presence=False,
    )


def test_deviation_draws_follow_the_exact_conditional_posterior():
    design = _design()
    k, draws = 2, 20000
    tau = np.array([0.6, 0.05])
    sd = np.array([1.0, 0.7])
    corr = np.array([[1.0, 0.4], [0.4, 1.0]])
    sigma = corr * np.outer(sd, sd)
    post = xr.Dataset(
        {
            "intercept": (("chain", "draw", "dimension"), np.zeros((1, draws, k))),
            "community_sd": (("chain", "draw", "dimension"), np.tile(tau, (1, draws, 1))),
            "residual_sd": (("chain", "draw", "dimension"), np.tile(sd, (1, draws, 1))),
            "residual_corr": (
                ("chain", "draw", "dimension", "dimension_bis"),
                np.tile(corr, (1, draws, 1, 1)),
            ),
        }
    )
    out = ml.draw_community_deviations(post, design, np.random.default_rng(1))
    dev = out["community_deviation"].to_numpy()[0]  # (draw, community, dimension)
    t = np.diag(tau**2)
    for c, n_c in enumerate((40, 3, 25)):
        rbar = design.y[design.community_index == c].mean(axis=0)
        m = t + sigma / n_c
        mean = t @ np.linalg.solve(m, rbar)
        cov = t - t @ np.linalg.solve(m, t)
        se = np.sqrt(cov.diagonal() / draws)
        assert np.all(np.abs(dev[:, c].mean(axis=0) - mean) < 4 * se + 1e-9)
        # sampling sd of a covariance estimate is about sqrt(v_i v_j / draws)
        tol = 4 * np.sqrt(np.outer(cov.diagonal(), cov.diagonal()) / draws)
        assert np.all(np.abs(np.cov(dev[:, c].T) - cov) < tol)
    # community_effect = deviation when the design has no presence term
    np.testing.assert_array_equal(
        out["community_effect"].to_numpy(), out["community_deviation"].to_numpy()
    )


def test_zero_sum_deviation_draws_follow_the_exact_conditional_posterior():
    """Matheron's rule conditioned on sum-to-zero, against dense Gaussian conditioning."""
    rng = np.random.default_rng(5)
    counts = np.array([40.0, 3.0, 25.0, 8.0])
    C, k, draws = counts.size, 2, 20000
    tau = np.array([0.6, 0.05])
    corr = np.array([[1.0, 0.4], [0.4, 1.0]])
    sigma = corr * np.outer([1.0, 0.7], [1.0, 0.7])
    rbar = rng.normal(size=(C, k))
    dev = ml.conditional_deviations(
        np.broadcast_to(rbar, (1, draws, C, k)),
        counts,
        np.broadcast_to(sigma, (1, draws, k, k)),
        np.broadcast_to(tau, (1, draws, k)),
        np.random.default_rng(2),
        zero_sum=True,
    )[0]
    np.testing.assert_allclose(dev.sum(axis=1), 0.0, atol=1e-10)
    # vec over (community, dimension): prior (I - J/C) kron T, noise blockdiag(Sigma / n_c)
    prior = np.kron(np.eye(C) - 1.0 / C, np.diag(tau**2))
    noise = np.kron(np.diag(1.0 / counts), sigma)
    gain = prior @ np.linalg.inv(prior + noise)
    mean = gain @ rbar.ravel()
    cov = prior - gain @ prior
    flat = dev.reshape(draws, -1)
    var = np.clip(cov.diagonal(), 1e-12, None)
    assert np.all(np.abs(flat.mean(axis=0) - mean) < 4 * np.sqrt(var / draws) + 1e-9)
    tol = 4 * np.sqrt(np.outer(var, var) / draws) + 1e-9
    assert np.all(np.abs(np.cov(flat.T) - cov) < tol)


def _community_mean_cov(counts, sigma, tau, zero_sum):
    """Dense covariance of the community means b_c = u_c + ebar_c, (C K) x (C K)."""
    C = counts.size
    u = np.eye(C) - (np.full((C, C), 1.0 / C) if zero_sum else 0.0)
    return np.kron(u, np.diag(tau**2)) + np.kron(np.diag(1.0 / counts), sigma)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("zero_sum", [False, True])
def test_community_mean_logdensity_matches_the_dense_normal(k, zero_sum):
    """The non-centred latent model's density of the community means, by hand."""
    import pytensor
    import pytensor.tensor as pt

    rng = np.random.default_rng(20 + k)
    counts = np.array([1.0, 3.0, 5.0, 2.0, 4.0])
    a = rng.standard_normal((k, k))
    sigma = a @ a.T + 0.5 * np.eye(k)
    tau = np.array([0.4, 1.5, 0.05][:k])
    b = rng.standard_normal((counts.size, k))
    B, L, T = pt.matrix("b"), pt.matrix("chol"), pt.vector("tau")
    f = pytensor.function(
        [B, L, T],
        ml.community_mean_logdensity(B, counts, L, T, k, zero_sum=zero_sum),
        mode="FAST_COMPILE",
    )
    got = f(b, np.linalg.cholesky(sigma), tau)
    cov = _community_mean_cov(counts, sigma, tau, zero_sum)
    dense = stats.multivariate_normal(np.zeros(cov.shape[0]), cov, allow_singular=True)
    want = dense.logpdf(b.ravel())
    if zero_sum:
        # ZeroSumNormal deviations: b lives in all of R^{CK} (ebar is not constrained) and
        # the dense covariance is full rank; its density is the one the sampler needs
        assert np.linalg.matrix_rank(cov) == cov.shape[0]
    assert got == pytest.approx(want, rel=1e-9)
