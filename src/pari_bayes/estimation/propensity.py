"""Logistic mixed model with a group random intercept, fit by maximum likelihood.

The group-level propensity score of the IPW estimators under partial interference
(:mod:`pari_bayes.estimation.ipw`) needs a logistic model with one random intercept per
group, ``logit P(B_ij = 1 | X_ij, b_i) = X_ij beta + b_i`` with ``b_i ~ N(0, sigma^2)``, fit
by maximum likelihood as ``lme4::glmer`` does for the R package ``inferference``. No
well-kept Python package fits it by ML (statsmodels' ``BinomialBayesMixedGLM`` is
variational Bayes), so it is written here plainly:

- the marginal likelihood of group i, ``L_i = Integral prod_j f(B_ij | b) phi(b; 0, sigma) db``,
  is computed by adaptive Gauss-Hermite quadrature (AGH): the integrand's mode and
  curvature are found per group by a safeguarded Newton iteration (vectorized over groups),
  and the Gauss-Hermite nodes are centred and scaled there. One node is the Laplace
  approximation (``glmer``'s default, ``nAGQ = 1``);
- the log-likelihood is maximized over ``(beta, log sigma)`` with L-BFGS-B and the exact
  gradient of the quadrature approximation (:func:`loglik_and_scores`), on internally
  standardized covariates (coefficients are reported on the original scale);
- standard errors come from the observed information (central differences of the
  analytic score).

The same quadrature engine (:func:`group_log_integral`) computes the integrals of the IPW
group weights, which replace ``f(B_ij | b)`` by ``(r h_ij(b))^A_ij (1 - r h_ij(b))^(1-A_ij)``
(randomization probability ``r``), and their derivatives with respect to the parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from numpy.polynomial.hermite import hermgauss
from scipy.optimize import minimize
from scipy.special import expit, logsumexp
from threadpoolctl import ThreadpoolController

from pari_bayes.errors import EstimationError

__all__ = [
    "GroupedDesign",
    "PropensityFit",
    "group_log_integral",
    "fit_propensity",
    "loglik_and_scores",
    "SIGMA_BOUNDARY",
    "single_threaded_blas",
]

#: A random-intercept sd below this is treated as 0 (the fit is on the boundary and the
#: model reduces to ordinary logistic regression, as glmer reports a singular fit).
SIGMA_BOUNDARY = 1e-3
_LOG_SIGMA_BOUNDS = (np.log(SIGMA_BOUNDARY), np.log(50.0))
_SQRT2 = np.sqrt(2.0)
_LOG_2PI = np.log(2.0 * np.pi)
#: Standardized coefficients beyond this in absolute value mean (quasi-)separation.
_DIVERGED = 10.0


_CONTROLLER: ThreadpoolController | None = None


def single_threaded_blas():
    """Context manager limiting BLAS to one thread.

    The matrices here are small: multithreaded BLAS (inside L-BFGS-B and the matrix
    products) only adds contention, which on a shared machine made fits several times
    slower. The controller is built once (building it scans the loaded libraries).
    """
    global _CONTROLLER
    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")


@dataclass
class GroupedDesign:
    """Individuals sorted by group, with a standardized design matrix.

    Attributes
    ----------
    X
        ``(n, p)`` design: a column of ones and the standardized covariates.
    group_index
        ``(n,)`` group position (0..G-1) of each row, non-decreasing.
    starts
        ``(G,)`` first row of each group (for :func:`numpy.add.reduceat`).
    sizes
        ``(G,)`` group sizes.
    labels
        Group labels, in order.
    terms
        Names of the columns of ``X`` (``"(Intercept)"`` then the covariates).
    center, scale
        Covariate means and sds used to standardize (length ``p - 1``).
    order
        Row permutation that sorted the input by group (``sorted = input[order]``).

    """

    X: np.ndarray
    group_index: np.ndarray
    starts: np.ndarray
    sizes: np.ndarray
    labels: np.ndarray
    terms: tuple[str, ...]
    center: np.ndarray
    scale: np.ndarray
    order: np.ndarray

    @property
    def n_groups(self) -> int:
        """Number of groups."""
        return len(self.starts)

    @property
    def n_obs(self) -> int:
        """Number of individuals."""
        return self.X.shape[0]

    def reduce(self, values: np.ndarray) -> np.ndarray:
        """Sum rows of ``values`` within groups (first axis)."""
        return np.add.reduceat(values, self.starts, axis=0)

    def to_original(self) -> np.ndarray:
        """Matrix ``T`` with ``beta_original = T @ beta_standardized``."""
        p = self.X.shape[1]
        T = np.eye(p)
        T[1:, 1:] = np.diag(1.0 / self.scale)
        T[0, 1:] = -self.center / self.scale
        return T

    @classmethod
    def build(
        cls, covariates: np.ndarray, groups: np.ndarray, names: tuple[str, ...]
    ) -> GroupedDesign:
        """Sort by group and standardize covariates.

        Parameters
        ----------
        covariates
            ``(n, k)`` numeric covariates (no intercept column), in input row order.
        groups
            ``(n,)`` group labels.
        names
            Covariate names (for :attr:`terms`).

        """
        labels, codes = np.unique(np.asarray(groups), return_inverse=True)
        order = np.argsort(codes, kind="stable")
        codes = codes[order]
        Z = np.asarray(covariates, dtype=float).reshape(len(codes), -1)[order]
        center = Z.mean(axis=0) if Z.shape[1] else np.zeros(0)
        scale = Z.std(axis=0) if Z.shape[1] else np.zeros(0)
        scale = np.where(scale > 0, scale, 1.0)
        X = np.column_stack([np.ones(len(codes)), (Z - center) / scale])
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        sizes = np.diff(np.r_[starts, len(codes)])
        return cls(
            X=X,
            group_index=codes,
            starts=starts,
            sizes=sizes,
            labels=labels,
            terms=("(Intercept)", *names),
            center=center,
            scale=scale,
            order=order,
        )


def _obs_terms(eta: np.ndarray, y1: np.ndarray, r: float):
    """Per-row log factor and its first two derivatives in the linear predictor.

    The factor is ``(r h)^y (1 - r h)^(1 - y)`` with ``h = expit(eta)``.
    """
    h = expit(eta)
    one_minus_h = expit(-eta)
    if r == 1.0:
        ll = np.where(y1, -np.logaddexp(0.0, -eta), -np.logaddexp(0.0, eta))
        d1 = np.where(y1, one_minus_h, -h)
        d2 = -h * one_minus_h
        return ll, d1, d2
    q = r * h
    log_one_minus_q = np.logaddexp(0.0, np.log1p(-r) + eta) - np.logaddexp(0.0, eta)
    ll = np.where(y1, np.log(r) - np.logaddexp(0.0, -eta), log_one_minus_q)
    one_minus_q = 1.0 - q
    d1 = np.where(y1, one_minus_h, -q * one_minus_h / one_minus_q)
    d2 = np.where(
        y1,
        -h * one_minus_h,
        -q * one_minus_h * (1.0 - h * (2.0 - q)) / one_minus_q**2,
    )
    return ll, d1, d2


def _modes(
    design: GroupedDesign,
    eta: np.ndarray,
    y1: np.ndarray,
    r: float,
    sigma: float,
    start: np.ndarray | None,
    max_iter: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """Mode of each group's log integrand in b, and the second derivative there."""
    prec = 1.0 / sigma**2
    idx = design.group_index
    b = np.zeros(design.n_groups) if start is None else start.copy()

    def evaluate(bb: np.ndarray):
        ll, d1, d2 = _obs_terms(eta + bb[idx], y1, r)
        g = design.reduce(ll) - 0.5 * prec * bb * bb
        return g, design.reduce(d1) - prec * bb, design.reduce(d2) - prec

    g, g1, g2 = evaluate(b)
    for _ in range(max_iter):
        # Newton step; where the curvature is not safely negative (possible when r < 1),
        # fall back to a gradient step scaled by the prior precision; halve the step for
        # groups whose integrand would decrease.
        curv = np.where(-g2 > 0.1 * prec, -g2, prec)
        step = g1 / curv
        t = np.ones_like(b)
        for _ in range(60):
            gn, g1n, g2n = evaluate(b + t * step)
            bad = gn < g - 1e-13 * (1.0 + np.abs(g))
            if not bad.any():
                break
            t = np.where(bad, 0.5 * t, t)
        b = b + t * step
        g, g1, g2 = gn, g1n, g2n
        if np.max(np.abs(t * step)) < 1e-11 * max(1.0, sigma):
            break
    return b, g2


@dataclass
class _Integral:
    log_value: np.ndarray
    gradient: np.ndarray | None
    modes: np.ndarray


def group_log_integral(
    design: GroupedDesign,
    beta: np.ndarray,
    sigma: float,
    y: np.ndarray,
    randomization: float = 1.0,
    n_nodes: int = 1,
    gradient: bool = False,
    start: np.ndarray | None = None,
) -> _Integral:
    """Log of ``Integral prod_j (r h_ij(b))^y_ij (1 - r h_ij(b))^(1-y_ij) phi(b; 0, sigma) db``.

    Computed for every group at once by adaptive Gauss-Hermite quadrature with
    ``n_nodes`` nodes centred at the mode of the integrand and scaled by its curvature
    (``n_nodes = 1`` is the Laplace approximation). With ``sigma == 0`` the integral is
    the product itself.

    Parameters
    ----------
    design
        Sorted, standardized design.
    beta
        Coefficients on ``design.X`` (standardized scale).
    sigma
        Random-intercept sd (0 = no random intercept).
    y
        ``(n,)`` 0/1 indicators, sorted like ``design``.
    randomization
        ``r`` in ``(0, 1]``.
    n_nodes
        Quadrature nodes.
    gradient
        Also return the derivatives of the log integral with respect to ``beta`` and
        ``log sigma`` (posterior expectations evaluated with the same nodes).
    start
        Starting values of the modes (speeds up repeated calls).

    Returns
    -------
    _Integral
        ``log_value`` ``(G,)``; ``gradient`` ``(G, p)`` or ``(G, p + 1)`` when
        ``sigma > 0``; ``modes`` ``(G,)``.

    """
    y1 = np.asarray(y) == 1
    eta = design.X @ beta
    r = float(randomization)
    if sigma <= 0:
        ll, d1, _ = _obs_terms(eta, y1, r)
        grad = design.reduce(d1[:, None] * design.X) if gradient else None
        return _Integral(design.reduce(ll), grad, np.zeros(design.n_groups))
    b_hat, g2 = _modes(design, eta, y1, r, sigma, start)
    scale = np.where(g2 < 0, 1.0 / np.sqrt(np.abs(g2)), sigma)
    x, w = hermgauss(n_nodes)
    bk = b_hat[:, None] + _SQRT2 * scale[:, None] * x[None, :]  # (G, K)
    ll, d1, _ = _obs_terms(eta[:, None] + bk[design.group_index], y1[:, None], r)
    log_prior = -0.5 * (bk / sigma) ** 2 - np.log(sigma) - 0.5 * _LOG_2PI
    log_terms = design.reduce(ll) + log_prior + np.log(w)[None, :] + (x**2)[None, :]
    log_value = np.log(_SQRT2 * scale) + logsumexp(log_terms, axis=1)
    grad = None
    if gradient:
        post = np.exp(log_terms - logsumexp(log_terms, axis=1, keepdims=True))  # (G, K)
        per_row = np.sum(d1 * post[design.group_index], axis=1)
        g_beta = design.reduce(per_row[:, None] * design.X)
        g_log_sigma = np.sum(post * ((bk / sigma) ** 2 - 1.0), axis=1)
        grad = np.column_stack([g_beta, g_log_sigma])
    return _Integral(log_value, grad, b_hat)


def loglik_and_scores(
    design: GroupedDesign,
    beta: np.ndarray,
    sigma: float,
    y: np.ndarray,
    n_nodes: int = 1,
    start: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group log-likelihoods of the logistic random-intercept model and their exact gradients.

    The gradient is that of the quadrature approximation itself (Laplace for one node,
    AGH otherwise), including the dependence of the nodes on the parameters through each
    group's mode ``b_hat`` and scale ``s = (-g2)^(-1/2)``, where ``g`` is the log integrand
    and ``g1, g2, g3`` its derivatives in ``b``: with ``db_hat = -d_theta g1 / g2`` and
    ``dg2 = d_theta g2 + g3 db_hat``, ``d log L_i = d log s + sum_k p_k [d_theta g(b_k) +
    g1(b_k) (db_hat + sqrt(2) x_k ds)]`` (``p_k`` the normalized quadrature terms), so the
    optimizer sees a consistent objective and the scores are those of the equations solved.

    Parameters
    ----------
    design, beta, sigma, y, n_nodes, start
        As :func:`group_log_integral` (with ``randomization = 1``).

    Returns
    -------
    log_lik, scores, modes
        ``(G,)`` log-likelihoods, ``(G, k)`` gradients with respect to ``beta`` (and
        ``log sigma`` when ``sigma > 0``), ``(G,)`` modes.

    """
    y1 = np.asarray(y) == 1
    X = design.X
    eta = X @ beta
    if sigma <= 0:
        ll, d1, _ = _obs_terms(eta, y1, 1.0)
        return design.reduce(ll), design.reduce(d1[:, None] * X), np.zeros(design.n_groups)
    idx = design.group_index
    prec = 1.0 / sigma**2
    b_hat, g2 = _modes(design, eta, y1, 1.0, sigma, start)
    s = 1.0 / np.sqrt(-g2)
    h = expit(eta + b_hat[idx])
    d2 = -h * (1.0 - h)
    d3 = d2 * (1.0 - 2.0 * h)
    # partial derivatives at the mode; columns: beta..., log sigma
    dg1 = np.column_stack([design.reduce(d2[:, None] * X), 2.0 * b_hat * prec])
    dg2 = np.column_stack([design.reduce(d3[:, None] * X), np.full(len(b_hat), 2.0 * prec)])
    g3 = design.reduce(d3)
    db_hat = -dg1 / g2[:, None]
    dg2_total = dg2 + g3[:, None] * db_hat
    ds = 0.5 * (s**3)[:, None] * dg2_total
    dlog_s = 0.5 * (s**2)[:, None] * dg2_total
    x, w = hermgauss(n_nodes)
    bk = b_hat[:, None] + _SQRT2 * s[:, None] * x[None, :]  # (G, K)
    ll, d1, _ = _obs_terms(eta[:, None] + bk[idx], y1[:, None], 1.0)
    log_prior = -0.5 * prec * bk**2 - np.log(sigma) - 0.5 * _LOG_2PI
    log_terms = design.reduce(ll) + log_prior + np.log(w)[None, :] + (x**2)[None, :]
    norm = logsumexp(log_terms, axis=1, keepdims=True)
    log_lik = np.log(_SQRT2 * s) + norm[:, 0]
    post = np.exp(log_terms - norm)  # (G, K)
    g1_nodes = design.reduce(d1) - prec * bk  # (G, K)
    weighted = design.reduce(np.sum(d1 * post[idx], axis=1)[:, None] * X)  # (G, p)
    d_log_sigma = np.sum(post * (prec * bk**2 - 1.0), axis=1)
    partial = np.column_stack([weighted, d_log_sigma])
    moved = (post * g1_nodes).sum(axis=1)[:, None] * db_hat + (post * g1_nodes * x[None, :]).sum(
        axis=1
    )[:, None] * (_SQRT2 * ds)
    return log_lik, dlog_s + partial + moved, b_hat


@dataclass
class PropensityFit:
    """A fitted logistic random-intercept model.

    Attributes
    ----------
    terms
        Coefficient names (``"(Intercept)"`` then covariates).
    coef, coef_se
        Coefficients and standard errors on the covariates' original scale.
    sigma, sigma_se
        Random-intercept sd and its standard error (delta method from ``log sigma``);
        ``sigma == 0`` when the fit is on the boundary (or no random intercept was asked).
    log_likelihood
        Maximized (approximate) marginal log-likelihood.
    converged
        Whether the optimizer met its tolerance (a fit that does not is never returned by
        :func:`fit_propensity`; it raises instead).
    boundary
        The random-intercept sd was estimated at 0.
    quadrature, n_nodes
        ``"laplace"`` (1 node) or ``"agh"``.
    theta
        Parameters on the internal scale (standardized ``beta``, then ``log sigma`` when
        ``sigma > 0``), used for derivatives of the IPW weights.
    information
        Observed information of ``theta`` (negative Hessian of the log-likelihood).
    scores
        ``(G, len(theta))`` group contributions to the score at ``theta``.
    design
        The sorted, standardized design the model was fit on.
    n_obs, n_groups
        Individuals and groups.

    """

    terms: tuple[str, ...]
    coef: np.ndarray
    coef_se: np.ndarray
    sigma: float
    sigma_se: float
    log_likelihood: float
    converged: bool
    boundary: bool
    quadrature: str
    n_nodes: int
    theta: np.ndarray
    information: np.ndarray
    scores: np.ndarray
    design: GroupedDesign = field(repr=False)
    n_obs: int = 0
    n_groups: int = 0

    @property
    def beta_standardized(self) -> np.ndarray:
        """Coefficients on the standardized design."""
        return self.theta[: len(self.terms)]

    def table(self) -> pd.DataFrame:
        """Parameters as a tidy frame: term, estimate, std_error.

        Rows: the coefficients, ``sigma`` (random-intercept sd), ``log_likelihood``,
        ``converged`` (1/0), ``boundary`` (1 = sigma estimated at 0), ``n_obs``,
        ``n_groups`` and ``quadrature_nodes`` (std_error empty for the last six).
        """
        rows = [
            {"term": t, "estimate": float(c), "std_error": float(s)}
            for t, c, s in zip(self.terms, self.coef, self.coef_se, strict=True)
        ]
        rows.append({"term": "sigma", "estimate": self.sigma, "std_error": self.sigma_se})
        for term, value in (
            ("log_likelihood", self.log_likelihood),
            ("converged", float(self.converged)),
            ("boundary", float(self.boundary)),
            ("n_obs", float(self.n_obs)),
            ("n_groups", float(self.n_groups)),
            ("quadrature_nodes", float(self.n_nodes)),
        ):
            rows.append({"term": term, "estimate": value, "std_error": np.nan})
        return pd.DataFrame(rows, columns=["term", "estimate", "std_error"])


class _Objective:
    """Negative mean log-likelihood with a warm-started mode cache."""

    def __init__(self, design: GroupedDesign, y: np.ndarray, n_nodes: int, with_sigma: bool):
        self.design = design
        self.y = y
        self.n_nodes = n_nodes
        self.with_sigma = with_sigma
        self.p = design.X.shape[1]
        self._start: np.ndarray | None = None

    def _split(self, theta: np.ndarray) -> tuple[np.ndarray, float]:
        sigma = float(np.exp(theta[self.p])) if self.with_sigma else 0.0
        return theta[: self.p], sigma

    def evaluate(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Group log-likelihoods and their gradients (scores)."""
        beta, sigma = self._split(theta)
        ll, scores, modes = loglik_and_scores(
            self.design, beta, sigma, self.y, self.n_nodes, start=self._start
        )
        if sigma > 0:
            self._start = modes
        return ll, scores

    def group_loglik(self, theta: np.ndarray) -> np.ndarray:
        return self.evaluate(theta)[0]

    def group_scores(self, theta: np.ndarray) -> np.ndarray:
        return self.evaluate(theta)[1]

    def __call__(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        ll, scores = self.evaluate(theta)
        value = -np.sum(ll) / self.design.n_obs
        if not np.isfinite(value):
            return 1e10, np.zeros(len(theta))
        return float(value), -np.sum(scores, axis=0) / self.design.n_obs

    def gradient(self, theta: np.ndarray) -> np.ndarray:
        return self(theta)[1]

    def hessian(self, theta: np.ndarray, h: float = 1e-5) -> np.ndarray:
        """Hessian of the total log-likelihood (central differences of the total score)."""
        k = len(theta)
        H = np.empty((k, k))
        for i in range(k):
            e = np.zeros(k)
            e[i] = h
            up = np.sum(self.group_scores(theta + e), axis=0)
            down = np.sum(self.group_scores(theta - e), axis=0)
            H[:, i] = (up - down) / (2 * h)
        return 0.5 * (H + H.T)


def _logistic_start(design: GroupedDesign, y: np.ndarray) -> np.ndarray:
    """Ordinary logistic regression by a few damped Newton steps (starting values)."""
    X = design.X
    beta = np.zeros(X.shape[1])
    mean = np.clip(np.mean(y), 1e-3, 1 - 1e-3)
    beta[0] = np.log(mean / (1 - mean))
    for _ in range(25):
        p = expit(X @ beta)
        W = p * (1 - p) + 1e-9
        step = np.linalg.solve(X.T @ (W[:, None] * X) + 1e-8 * np.eye(X.shape[1]), X.T @ (y - p))
        beta = beta + np.clip(step, -5, 5)
        if np.max(np.abs(step)) < 1e-10:
            break
    return np.clip(beta, -0.9 * _DIVERGED, 0.9 * _DIVERGED)


def _not_converged(reason: str) -> EstimationError:
    return EstimationError(
        f"the propensity model (logistic, group random intercept) did not converge: {reason}. "
        "Try fewer or less collinear covariates, check that no covariate separates "
        "treated from untreated units, or use quadrature='agh'."
    )


def fit_propensity(
    design: GroupedDesign,
    y: np.ndarray,
    random_intercept: bool = True,
    quadrature: str = "agh",
    n_agq: int = 15,
    max_iter: int = 500,
) -> PropensityFit:
    """Fit ``logit P(y_ij = 1) = X_ij beta + b_i``, ``b_i ~ N(0, sigma^2)``, by ML.

    Parameters
    ----------
    design
        Sorted, standardized design (:meth:`GroupedDesign.build`).
    y
        ``(n,)`` 0/1 outcome, sorted like ``design``.
    random_intercept
        Fit the group random intercept (``False``: ordinary logistic regression).
    quadrature
        ``"agh"`` (default; adaptive Gauss-Hermite with ``n_agq`` nodes) or
        ``"laplace"`` (one node, ``glmer``'s default; biased towards a small sd when
        groups are small).
    n_agq
        Nodes for ``quadrature="agh"``.
    max_iter
        Optimizer iteration limit.

    Returns
    -------
    PropensityFit

    Raises
    ------
    EstimationError
        If the optimizer does not converge, a coefficient diverges (separation) or the
        information matrix is not positive definite. The message gives the reason, not
        numbers.

    """
    with single_threaded_blas():
        return _fit_propensity(design, y, random_intercept, quadrature, n_agq, max_iter)


def _fit_propensity(
    design: GroupedDesign,
    y: np.ndarray,
    random_intercept: bool,
    quadrature: str,
    n_agq: int,
    max_iter: int,
) -> PropensityFit:
    if quadrature not in ("laplace", "agh"):
        raise EstimationError(f"quadrature {quadrature!r} is not known; allowed: 'laplace', 'agh'.")
    n_nodes = 1 if quadrature == "laplace" else int(n_agq)
    if n_nodes < 1:
        raise EstimationError(f"n_agq must be at least 1; got {n_agq}.")
    y = np.asarray(y, dtype=float)
    p = design.X.shape[1]
    beta0 = _logistic_start(design, y)

    def optimize(with_sigma: bool, start: np.ndarray):
        objective = _Objective(design, y, n_nodes, with_sigma)
        bounds = [(-50.0, 50.0)] * p + ([_LOG_SIGMA_BOUNDS] if with_sigma else [])
        res = minimize(
            objective,
            start,
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": max_iter, "gtol": 1e-9, "ftol": 1e-15, "maxcor": 20},
        )
        return objective, res

    boundary = False
    if random_intercept:
        objective, res = optimize(True, np.r_[beta0, np.log(0.5)])
        if res.x[p] <= _LOG_SIGMA_BOUNDS[0] + 1e-6:
            boundary = True
    if not random_intercept or boundary:
        objective, res = optimize(False, beta0)
    theta = np.asarray(res.x, dtype=float)
    grad = objective.gradient(theta)
    if objective.with_sigma and theta[p] >= _LOG_SIGMA_BOUNDS[1] - 1e-6:
        raise _not_converged("the random-intercept sd ran to its upper bound")
    converged = bool(res.success) or bool(np.max(np.abs(grad)) < 1e-6)
    if not converged or not np.isfinite(res.fun):
        raise _not_converged("the optimizer stopped before meeting its tolerance")
    if np.any(np.abs(theta[:p]) >= _DIVERGED):
        bad = [design.terms[i] for i in np.flatnonzero(np.abs(theta[:p]) >= _DIVERGED)]
        raise _not_converged(f"the coefficient(s) of {', '.join(bad)} diverge (separation)")
    info = -objective.hessian(theta)
    try:
        np.linalg.cholesky(info)
    except np.linalg.LinAlgError:
        raise _not_converged("the information matrix is not positive definite") from None
    cov_theta = np.linalg.inv(info)
    scores = objective.group_scores(theta)
    T = design.to_original()
    coef = T @ theta[:p]
    coef_cov = T @ cov_theta[:p, :p] @ T.T
    sigma = float(np.exp(theta[p])) if objective.with_sigma else 0.0
    sigma_se = float(sigma * np.sqrt(cov_theta[p, p])) if objective.with_sigma else np.nan
    return PropensityFit(
        terms=design.terms,
        coef=coef,
        coef_se=np.sqrt(np.diag(coef_cov)),
        sigma=sigma,
        sigma_se=sigma_se,
        log_likelihood=float(np.sum(objective.group_loglik(theta))),
        converged=True,
        boundary=boundary,
        quadrature=quadrature,
        n_nodes=n_nodes,
        theta=theta,
        information=info,
        scores=scores,
        design=design,
        n_obs=design.n_obs,
        n_groups=design.n_groups,
    )
