"""Inference for linear regressions with few clusters.

Three tools, each a plain numpy function on a design matrix, so they can be checked by
hand:

- :func:`cr1_vcov`: the usual cluster-robust (Liang-Zeger) covariance with the
  ``G/(G-1) * (N-1)/(N-K)`` correction (statsmodels' and Stata's default);
- :func:`cr2_vcov` and :func:`bell_mccaffrey_df`: the bias-reduced CR2 covariance of Bell
  and McCaffrey (2002) with their Satterthwaite degrees of freedom, as recommended for
  few clusters by Imbens and Kolesar (2016) and Pustejovsky and Tipton (2018);
- :func:`wild_cluster_bootstrap`: the restricted wild cluster bootstrap (WCR, null imposed)
  of a linear hypothesis ``R @ beta = 0`` with Webb's six-point weights (Webb 2023), the
  same algorithm and random draws as ``wildboottest``'s ``WildboottestCL`` with bootstrap
  type "11", vectorized so that many hypotheses cost milliseconds.

With G clusters, Rademacher weights give only 2**G distinct bootstrap samples (16 for
G = 4); Webb's weights give 6**G (1296). Neither fixes the deeper problem when only a
couple of clusters are treated (MacKinnon and Webb 2017): then every method here can
over- or under-reject badly, and the honest reading is that the data hold little
information about community-level contrasts.
"""

from __future__ import annotations

import numpy as np

from pari_bayes.errors import EstimationError

__all__ = [
    "WEBB_WEIGHTS",
    "cluster_codes",
    "cr1_vcov",
    "cr2_vcov",
    "bell_mccaffrey_df",
    "cr2_tests",
    "webb_weights",
    "wild_cluster_bootstrap",
]

#: Webb's six-point distribution: +-sqrt(1/2), +-1, +-sqrt(3/2), each with probability 1/6
#: (in wildboottest's order, so the same seed gives the same draws).
WEBB_WEIGHTS = np.concatenate([-np.sqrt(np.array([3, 2, 1]) / 2), np.sqrt(np.array([1, 2, 3]) / 2)])


def cluster_codes(clusters) -> tuple[np.ndarray, np.ndarray]:
    """Sorted cluster labels and each row's position among them."""
    labels, codes = np.unique(np.asarray(clusters), return_inverse=True)
    return labels, codes


def _bread(X: np.ndarray) -> np.ndarray:
    xtx = X.T @ X
    if np.linalg.matrix_rank(xtx) < X.shape[1]:
        raise EstimationError("the design matrix is rank deficient; drop collinear columns.")
    return np.linalg.inv(xtx)


def cr1_vcov(X: np.ndarray, resid: np.ndarray, clusters) -> np.ndarray:
    """CR1 cluster-robust covariance: ``G/(G-1) (N-1)/(N-K) B (sum_g s_g s_g') B``.

    Parameters
    ----------
    X
        Design matrix (N x K), constant included.
    resid
        OLS residuals (N).
    clusters
        Cluster label of each row.

    """
    X = np.asarray(X, dtype=float)
    resid = np.asarray(resid, dtype=float)
    labels, codes = cluster_codes(clusters)
    n, k = X.shape
    g = len(labels)
    if g < 2:
        raise EstimationError("cluster-robust standard errors need at least 2 clusters.")
    bread = _bread(X)
    scores = np.zeros((g, k))
    np.add.at(scores, codes, X * resid[:, None])
    meat = scores.T @ scores
    return g / (g - 1) * (n - 1) / (n - k) * bread @ meat @ bread


def _inv_sqrt_psd(m: np.ndarray, tol: float = 1e-10) -> np.ndarray:
    """Symmetric (pseudo-)inverse square root of a positive semi-definite matrix."""
    val, vec = np.linalg.eigh((m + m.T) / 2)
    inv = np.where(val > tol, 1.0 / np.sqrt(np.clip(val, tol, None)), 0.0)
    return (vec * inv) @ vec.T


def _cr2_adjustments(X: np.ndarray, codes: np.ndarray, n_clusters: int, bread: np.ndarray):
    """Per-cluster row indices and the CR2 adjustment ``A_g = (I - H_gg)^(-1/2)``."""
    out = []
    for g in range(n_clusters):
        rows = np.flatnonzero(codes == g)
        xg = X[rows]
        h_gg = xg @ bread @ xg.T
        out.append((rows, _inv_sqrt_psd(np.eye(len(rows)) - h_gg)))
    return out


def cr2_vcov(X: np.ndarray, resid: np.ndarray, clusters) -> np.ndarray:
    """Bell-McCaffrey CR2 covariance: ``B (sum_g X_g' A_g e_g e_g' A_g X_g) B``.

    ``A_g = (I - H_gg)^(-1/2)`` (symmetric square root; a pseudo-inverse where ``I - H_gg``
    is singular, as in clubSandwich), ``H_gg = X_g (X'X)^-1 X_g'``. With one row per
    cluster it equals HC2.
    """
    X = np.asarray(X, dtype=float)
    _, codes = cluster_codes(clusters)
    bread = _bread(X)
    adjustments = _cr2_adjustments(X, codes, int(codes.max()) + 1, bread)
    return _cr2_vcov(X, np.asarray(resid, dtype=float), bread, adjustments)


def _cr2_vcov(X, resid, bread, adjustments) -> np.ndarray:
    meat = np.zeros((X.shape[1], X.shape[1]))
    for rows, adj in adjustments:
        s = X[rows].T @ (adj @ resid[rows])
        meat += np.outer(s, s)
    return bread @ meat @ bread


def bell_mccaffrey_df(X: np.ndarray, clusters, contrast: np.ndarray) -> float:
    """Bell-McCaffrey degrees of freedom of a CR2 t-test of ``contrast @ beta``.

    ``df = (tr M)^2 / tr(M^2)`` with ``M = Gm' Gm`` and the N x G matrix
    ``Gm[:, g] = (I - H)[:, g] A_g X_g (X'X)^-1 c`` (Imbens and Kolesar 2016, working
    model: independent homoskedastic errors).
    """
    X = np.asarray(X, dtype=float)
    _, codes = cluster_codes(clusters)
    bread = _bread(X)
    adjustments = _cr2_adjustments(X, codes, int(codes.max()) + 1, bread)
    return _bm_df(X, bread, adjustments, np.asarray(contrast, dtype=float))


def _bm_df(X, bread, adjustments, c) -> float:
    bc = bread @ c
    columns = []
    for rows, adj in adjustments:
        w = adj @ (X[rows] @ bc)  # n_g vector
        col = -X @ (bread @ (X[rows].T @ w))  # -H[:, g] w
        col[rows] += w  # + I[:, g] w
        columns.append(col)
    gm = np.column_stack(columns)
    m = gm.T @ gm
    return float(np.trace(m) ** 2 / np.trace(m @ m))


def cr2_tests(
    X: np.ndarray, resid: np.ndarray, clusters, contrasts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CR2 covariance, standard errors and Bell-McCaffrey df of several contrasts at once.

    Returns
    -------
    vcov, se, df
        The CR2 covariance (K x K) and, per contrast row, its CR2 standard error and
        Bell-McCaffrey degrees of freedom.

    """
    X = np.asarray(X, dtype=float)
    contrasts = np.atleast_2d(np.asarray(contrasts, dtype=float))
    labels, codes = cluster_codes(clusters)
    if len(labels) < 2:
        raise EstimationError("CR2 standard errors need at least 2 clusters.")
    bread = _bread(X)
    adjustments = _cr2_adjustments(X, codes, len(labels), bread)
    vcov = _cr2_vcov(X, np.asarray(resid, dtype=float), bread, adjustments)
    se = np.sqrt(np.einsum("hk,kl,hl->h", contrasts, vcov, contrasts))
    df = np.array([_bm_df(X, bread, adjustments, c) for c in contrasts])
    return vcov, se, df


def webb_weights(n_clusters: int, n_boot: int, seed: int) -> np.ndarray:
    """Webb weights, one column per bootstrap draw (n_clusters x n_boot).

    Drawn as ``wildboottest`` draws them, so the same seed gives the same matrix.
    """
    rng = np.random.default_rng(seed)
    v = rng.choice(WEBB_WEIGHTS, size=n_clusters * n_boot, replace=True)
    return v.reshape(n_clusters, n_boot)


def wild_cluster_bootstrap(
    X: np.ndarray,
    y: np.ndarray,
    clusters,
    contrasts: np.ndarray,
    n_boot: int = 999,
    seed: int = 20240611,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Restricted wild cluster bootstrap (WCR) p-values of ``c @ beta = 0``.

    For each contrast ``c`` the null is imposed on the bootstrap data-generating process,
    residuals are multiplied by one Webb weight per cluster, and the CR1 t-statistic of
    each bootstrap sample is compared with the original one (two-sided, symmetric:
    ``p = mean(|t*| > |t|)``).

    Parameters
    ----------
    X, y
        Design matrix (N x K, constant included) and outcome (N).
    clusters
        Cluster label of each row.
    contrasts
        One contrast per row (H x K) or a single K-vector.
    n_boot
        Bootstrap draws.
    seed
        Seed of the weight draws (same seed, same p-values).
    weights
        Optional G x B weight matrix (overrides ``n_boot`` and ``seed``).

    Returns
    -------
    p_values, t_stats
        Arrays of length H: bootstrap p-values and the original CR1 t-statistics.

    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    contrasts = np.atleast_2d(np.asarray(contrasts, dtype=float))
    labels, codes = cluster_codes(clusters)
    n, k = X.shape
    g = len(labels)
    if g < 2:
        raise EstimationError("a wild cluster bootstrap needs at least 2 clusters.")
    v = webb_weights(g, n_boot, seed) if weights is None else np.asarray(weights, dtype=float)
    ssc = (n - 1) / (n - k) * g / (g - 1)
    bread = _bread(X)
    beta = bread @ (X.T @ y)
    xgxg = np.zeros((g, k, k))
    xgy = np.zeros((g, k))
    for j in range(g):
        rows = codes == j
        xgxg[j] = X[rows].T @ X[rows]
        xgy[j] = X[rows].T @ y[rows]
    resid = y - X @ beta
    s_hat = np.zeros((g, k))
    np.add.at(s_hat, codes, X * resid[:, None])
    p_values = np.empty(len(contrasts))
    t_stats = np.empty(len(contrasts))
    for h, c in enumerate(contrasts):
        bc = bread @ c
        # restricted estimate and its cluster scores X_g'(y_g - X_g beta_r)
        beta_r = beta - bc * (c @ beta) / (c @ bc)
        scores = xgy - xgxg @ beta_r  # g x k
        big_c = scores @ bc  # c'B s_g, per cluster
        # H[g, h] = c'B X_g'X_g B s_h: how cluster h's score moves cluster g's residual score
        big_h = np.einsum("k,gkl,lm,hm->gh", bc, xgxg, bread, scores)
        numer = big_c @ v
        z = big_c[:, None] * v - big_h @ v
        denom = ssc * np.sum(z**2, axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            t_boot = numer / np.sqrt(denom)
        se = np.sqrt(ssc * np.sum((s_hat @ bc) ** 2))
        t_stats[h] = (c @ beta) / se
        p_values[h] = np.mean(np.abs(t_stats[h]) < np.abs(t_boot))
    return p_values, t_stats
