"""One replicate of a design: simulate a survey with known truth, estimate, compare.

The simulated study (``measurement = "score"``)
-----------------------------------------------
``J`` communities, ``round(cbo_share * J)`` of them with CBOs (presence ``s_c``), ``m``
households in each (``household_sizes = "equal"``; ``"multinomial"``: at least 2 per
community, the rest of the fixed total ``J m`` spread at random). In a CBO community each
household participates (``a_i = 1``) with probability ``participation`` (the saturation),
independently of everything else -- a randomized saturation design (Baird, Bohren,
McIntosh and Ozler 2018) in which both the CBO communities and the participants are
assigned at random, so DE and IE are identified without adjustment. Per dimension ``k``::

    y_ik = u_ck + DE_k a_i + IE_k s_c + e_ik,   u_ck ~ N(0, tau_k^2),  e_ik ~ N(0, sigma_k^2)

in sd units of the outcome (``icc = tau^2 / (tau^2 + sigma^2)``). Truth per replicate:
DE, IE, TE = DE + IE, and OE = IE + p DE, with ``p`` the realized share of participants
among the households of CBO communities (the contrast of CBO with no-CBO communities).

Estimators
----------
``ols_cr2``
    ``y ~ 1 + participation + existence`` (the paper's coding: existence = non-participant
    in a CBO community; participation = TE, existence = IE, their difference = DE) and
    ``y ~ 1 + presence`` for OE, with the CR2 covariance and a t-test on Bell-McCaffrey
    degrees of freedom (:mod:`pari_bayes.estimation.few_clusters`); the interval is the
    CR2 t interval at ``interval``.
``ols_wild``
    The same estimates, tested by the restricted wild cluster bootstrap (Webb weights); it
    gives a p-value only (no interval).
``bayes``
    The multilevel model of the spec named in ``[estimators.bayes]`` (default
    ``models/table4.toml``, :func:`pari_bayes.estimation.multilevel.build_model`: community
    deviations integrated out), compiled once per worker and grid point and re-fed each
    replicate's data (``CompiledModel.with_data``); posterior mean and equal-tailed
    ``interval`` interval; the convergence gate of :mod:`pari_bayes.diagnostics`.

Every random number of a replicate comes from its own ``SeedSequence`` (spawned into
data, bootstrap and sampler streams), so a replicate's rows do not depend on which worker
ran it or when.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from pari_bayes.design.spec import DesignSpec, GridPoint, Truth
from pari_bayes.errors import EstimationError, PariBayesError

__all__ = [
    "REPLICATE_COLUMNS",
    "CR2Design",
    "SimulatedStudy",
    "simulate_study",
    "ols_rows",
    "bayes_rows",
    "run_replicate",
]

#: Columns of ``replicates.parquet``: one row per replicate x dimension x estimand x estimator.
REPLICATE_COLUMNS = (
    "point",
    "communities",
    "cbo_communities",
    "cbo_share",
    "households",
    "participation",
    "replicate",
    "dimension",
    "estimand",
    "estimator",
    "truth",
    "estimate",
    "se",
    "lower",
    "upper",
    "p_value",
    "df",
    "rejected",
    "detected",
    "gate_passed",
    "seconds",
    "error",
)


@dataclass(frozen=True)
class SimulatedStudy:
    """One simulated survey of a design, as arrays, with its truth."""

    community_index: np.ndarray  # (n,)
    presence: np.ndarray  # (J,) 0/1
    participation: np.ndarray  # (n,) 0/1
    y: np.ndarray  # (n, K)
    dimensions: tuple[str, ...]
    truth: dict[str, dict[str, float]]  # dimension -> estimand -> value

    @property
    def n(self) -> int:
        """Households."""
        return len(self.community_index)

    @property
    def participation_share(self) -> float:
        """Realized share of participants among CBO-community households."""
        in_cbo = self.presence[self.community_index] == 1
        return float(self.participation[in_cbo].mean())


def _sizes(point: GridPoint, mode: str, rng: np.random.Generator) -> np.ndarray:
    j, m = point.communities, point.households
    if mode == "equal":
        return np.full(j, m)
    floor = 2
    extra = rng.multinomial(j * (m - floor), np.full(j, 1.0 / j))
    return floor + extra


def simulate_study(
    point: GridPoint,
    truths: dict[str, Truth],
    rng: np.random.Generator,
    household_sizes: str = "equal",
) -> SimulatedStudy:
    """Simulate one survey of a design (see the module docstring for the model).

    Parameters
    ----------
    point
        The design.
    truths
        True effects and variance components per dimension.
    rng
        The replicate's data stream.
    household_sizes
        ``"equal"`` or ``"multinomial"``.

    Returns
    -------
    SimulatedStudy
    """
    sizes = _sizes(point, household_sizes, rng)
    j = point.communities
    presence = np.zeros(j)
    presence[: point.cbo_communities] = 1.0  # communities are exchangeable: no shuffle needed
    cidx = np.repeat(np.arange(j), sizes)
    n = len(cidx)
    s_i = presence[cidx]
    a = (s_i == 1) & (rng.random(n) < point.participation)
    a = a.astype(float)
    dims = tuple(truths)
    y = np.empty((n, len(dims)))
    p_hat = float(a[s_i == 1].mean())
    truth: dict[str, dict[str, float]] = {}
    for k, dim in enumerate(dims):
        t = truths[dim]
        u = rng.normal(0.0, t.community_sd, j) if t.community_sd > 0 else np.zeros(j)
        e = rng.normal(0.0, t.residual_sd, n)
        y[:, k] = u[cidx] + t.de * a + t.ie * s_i + e
        truth[dim] = {"DE": t.de, "IE": t.ie, "TE": t.de + t.ie, "OE": t.ie + p_hat * t.de}
    return SimulatedStudy(cidx, presence, a, y, dims, truth)


def _row(point: GridPoint, replicate: int, dim: str, estimand: str, estimator: str, **values):
    row = {
        "point": point.index,
        "communities": point.communities,
        "cbo_communities": point.cbo_communities,
        "cbo_share": point.cbo_share,
        "households": point.households,
        "participation": point.participation,
        "replicate": replicate,
        "dimension": dim,
        "estimand": estimand,
        "estimator": estimator,
        "truth": math.nan,
        "estimate": math.nan,
        "se": math.nan,
        "lower": math.nan,
        "upper": math.nan,
        "p_value": math.nan,
        "df": math.nan,
        "rejected": False,
        "detected": False,
        "gate_passed": True,
        "seconds": math.nan,
        "error": "",
    }
    row.update(values)
    return row


def _detected(rejected: bool, estimate: float, truth: float) -> bool:
    """Bayesian detection: the interval excludes 0 on the side of the truth (any side at 0).

    Frequentist power is the usual ``p < alpha`` in either direction (``detected =
    rejected``); rejections of the wrong sign are the type-S rate.
    """
    if not rejected:
        return False
    return True if truth == 0 else bool(np.sign(estimate) == np.sign(truth))


class CR2Design:
    """CR2 (Bell-McCaffrey) pieces of one design matrix, for many outcomes at once.

    The same numbers as :func:`pari_bayes.estimation.few_clusters.cr2_tests` (tested
    against it), computed in O(N K^2) instead of O(sum n_g^3 + N G): ``H_gg`` has rank at
    most K, so ``A_g = (I - H_gg)^(-1/2) = I + U_g (diag((1 - s^2)^(-1/2)) - I) U_g'`` with
    ``U_g s`` the thin SVD of ``X_g chol((X'X)^-1)`` (a pseudo-inverse where ``s = 1``, as
    clubSandwich); and with ``w_g = A_g X_g B c`` the Bell-McCaffrey matrix is
    ``M = diag(|w_g|^2) - V' B V``, ``V = [X_g' w_g]`` (``I - H`` is idempotent).
    """

    def __init__(self, X: np.ndarray, codes: np.ndarray, n_clusters: int) -> None:
        from pari_bayes.estimation.few_clusters import _bread

        self.X = X
        self.codes = codes
        self.bread = _bread(X)
        chol = np.linalg.cholesky(self.bread)
        order = np.argsort(codes, kind="stable")
        self.order = order
        bounds = np.searchsorted(codes[order], np.arange(n_clusters + 1))
        self.starts = bounds[:-1]
        if np.any(np.diff(bounds) == 0):
            raise EstimationError("a community has no households")
        xs = X[order]
        # P = X' A (K x N, rows in cluster order): s_g = P_g e_g, A_g X_g = P_g'
        p = np.empty((X.shape[1], len(codes)))
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            xg = xs[lo:hi]
            u, sv, _ = np.linalg.svd(xg @ chol, full_matrices=False)
            gap = 1.0 - sv**2
            f = np.where(gap > 1e-10, 1.0 / np.sqrt(np.clip(gap, 1e-10, None)), 0.0) - 1.0
            p[:, lo:hi] = xg.T + ((xg.T @ u) * f) @ u.T
        self.p = p

    def _cluster_sums(self, values: np.ndarray) -> np.ndarray:
        """Per-cluster sums of the columns of ``values`` (K x N, cluster order) -> G x K."""
        return np.add.reduceat(values, self.starts, axis=1).T

    def vcov(self, resid: np.ndarray) -> np.ndarray:
        """CR2 covariance ``B (sum_g X_g' A_g e_g e_g' A_g X_g) B``."""
        scores = self._cluster_sums(self.p * resid[self.order][None, :])
        return self.bread @ (scores.T @ scores) @ self.bread

    def bm_df(self, contrast: np.ndarray) -> float:
        """Bell-McCaffrey degrees of freedom of ``contrast @ beta``."""
        w = self.p.T @ (self.bread @ contrast)  # A_g X_g B c, stacked (N)
        norms = np.add.reduceat(w**2, self.starts)
        v = self._cluster_sums(self.X[self.order].T * w[None, :]).T  # K x G
        m = np.diag(norms) - v.T @ self.bread @ v
        return float(np.trace(m) ** 2 / np.sum(m * m))


#: estimand -> (regression, contrast over its coefficients)
_CONTRASTS = {
    "TE": ("cell", np.array([0.0, 1.0, 0.0])),
    "IE": ("cell", np.array([0.0, 0.0, 1.0])),
    "DE": ("cell", np.array([0.0, 1.0, -1.0])),
    "OE": ("arm", np.array([0.0, 1.0])),
}


def ols_rows(
    study: SimulatedStudy,
    spec: DesignSpec,
    point: GridPoint,
    replicate: int,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """OLS estimates of every estimand with CR2 (and wild bootstrap) tests.

    The CR2 adjustments and Bell-McCaffrey degrees of freedom depend on the design only,
    so they are computed once per regression and shared by the dimensions.
    """
    from pari_bayes.estimation import few_clusters as fc

    start = time.perf_counter()
    s_i = study.presence[study.community_index]
    a = study.participation
    ones = np.ones(study.n)
    designs = {
        "cell": np.column_stack([ones, a, s_i * (1 - a)]),
        "arm": np.column_stack([ones, s_i]),
    }
    level = spec.interval
    g = len(study.presence)
    weights = (
        rng.choice(fc.WEBB_WEIGHTS, size=(g, spec.ols.bootstrap))
        if "wild" in spec.ols.tests
        else None
    )
    out: list[dict[str, Any]] = []
    prepared: dict[str, Any] = {}
    for name, X in designs.items():
        wanted = [e for e in spec.estimands if _CONTRASTS[e][0] == name]
        try:
            cr2 = CR2Design(X, study.community_index, g)
            dfs = {e: cr2.bm_df(_CONTRASTS[e][1]) for e in wanted}
            prepared[name] = (X, cr2, dfs, None)
        except (EstimationError, np.linalg.LinAlgError) as exc:
            prepared[name] = (X, None, {}, f"{type(exc).__name__}: {exc}")
    for k, dim in enumerate(study.dimensions):
        y = study.y[:, k]
        for name, (X, cr2, dfs, error) in prepared.items():
            wanted = [e for e in spec.estimands if _CONTRASTS[e][0] == name]
            if not wanted:
                continue
            if error is not None:
                for e in wanted:
                    for est in (f"ols_{t}" for t in spec.ols.tests):
                        out.append(
                            _row(
                                point,
                                replicate,
                                dim,
                                e,
                                est,
                                truth=study.truth[dim][e],
                                error=error,
                            )
                        )
                continue
            beta = cr2.bread @ (X.T @ y)
            vcov = cr2.vcov(y - X @ beta)
            contrasts = np.vstack([_CONTRASTS[e][1] for e in wanted])
            p_wild = None
            if weights is not None:
                p_wild, _ = fc.wild_cluster_bootstrap(
                    X, y, study.community_index, contrasts, weights=weights
                )
            for h, e in enumerate(wanted):
                c = contrasts[h]
                estimate = float(c @ beta)
                se = float(np.sqrt(c @ vcov @ c))
                df = dfs[e]
                truth = study.truth[dim][e]
                if "cr2" in spec.ols.tests:
                    p = float(2 * stats.t.sf(abs(estimate / se), df)) if se > 0 else math.nan
                    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
                    rejected = bool(p < spec.alpha)
                    out.append(
                        _row(
                            point, replicate, dim, e, "ols_cr2",
                            truth=truth, estimate=estimate, se=se,
                            lower=estimate - half, upper=estimate + half,
                            p_value=p, df=df, rejected=rejected,
                            detected=rejected,
                        )
                    )  # fmt: skip
                if p_wild is not None:
                    p = float(p_wild[h])
                    rejected = bool(p < spec.alpha)
                    out.append(
                        _row(
                            point, replicate, dim, e, "ols_wild",
                            truth=truth, estimate=estimate, se=se, p_value=p,
                            rejected=rejected, detected=rejected,
                        )
                    )  # fmt: skip
    seconds = (time.perf_counter() - start) / max(len(out), 1)
    for row in out:
        row["seconds"] = seconds
    return out


# ---------------------------------------------------------------------------------------
# multilevel Bayes: compiled once per worker process and design shape, re-fed per replicate
# ---------------------------------------------------------------------------------------

_COMPILED: dict[tuple, Any] = {}
GATED = ("intercept", "direct_effect", "spillover_effect", "community_sd", "residual_sd")


def _multilevel_design(study: SimulatedStudy):
    from pari_bayes.estimation.multilevel import MultilevelDesign

    y_mean = study.y.mean(axis=0)
    y_sd = study.y.std(axis=0)
    k = study.y.shape[1]
    return MultilevelDesign(
        household_ids=tuple(f"H{i}" for i in range(study.n)),
        communities=tuple(f"C{c}" for c in range(len(study.presence))),
        dimensions=study.dimensions,
        covariates=(),
        y=(study.y - y_mean) / y_sd,
        y_mean=y_mean,
        y_sd=y_sd,
        X=np.zeros((study.n, 0)),
        x_mean=np.zeros(0),
        x_sd=np.zeros(0),
        covariate_mask=np.zeros((0, k)),
        treatment=study.participation,
        presence=study.presence,
        community_index=study.community_index.astype(np.int64),
        adjustment={d: () for d in study.dimensions},
        adjustment_source="randomized design",
        outcome_source="simulated",
        data_hash="",
        treatment_center=float(study.participation.mean()),
        presence_center=float(study.presence.mean()),
    )


def _model_spec(spec: DesignSpec):
    from pari_bayes.estimation.spec import load_spec

    model_spec = load_spec(spec.bayes.spec).for_dimensions(spec.dimensions)
    if model_spec.kind not in ("multilevel", "multivariate"):
        raise PariBayesError(
            f"{spec.path}: estimators.bayes.spec {spec.bayes.spec} is of kind "
            f"{model_spec.kind!r}; allowed: a multilevel or multivariate spec"
        )
    return model_spec.with_sampler(
        draws=spec.bayes.draws,
        tune=spec.bayes.tune,
        chains=spec.bayes.chains,
        cores=1,
        target_accept=spec.bayes.target_accept,
    )


def _compiled(spec: DesignSpec, design) -> tuple[Any, Any, float]:
    key = (spec.bayes.spec, design.n, len(design.communities), design.dimensions)
    if key not in _COMPILED:
        import nutpie

        from pari_bayes.estimation.multilevel import build_model

        model_spec = _model_spec(spec)
        start = time.perf_counter()
        model = build_model(design, model_spec)
        compiled = nutpie.compile_pymc_model(model)
        _COMPILED[key] = (compiled, model_spec, time.perf_counter() - start)
    return _COMPILED[key]


def bayes_rows(
    study: SimulatedStudy,
    spec: DesignSpec,
    point: GridPoint,
    replicate: int,
    seed: int,
) -> list[dict[str, Any]]:
    """Fit the multilevel model to one simulated survey; one row per dimension x estimand."""
    import xarray as xr

    from pari_bayes.diagnostics import diagnostics_table, gate_failures
    from pari_bayes.estimation.sampling import nutpie_sample

    start = time.perf_counter()
    design = _multilevel_design(study)
    compiled, model_spec, _ = _compiled(spec, design)
    data = {
        "y": design.y,
        "participation": design.treatment - design.treatment_center,
        "presence": design.presence - design.presence_center,
        "community_index": design.community_index,
        "community_size": np.maximum(
            np.bincount(design.community_index, minlength=len(design.communities)), 1
        ).astype(float),
    }
    s = model_spec.sampler
    y_sd = xr.DataArray(
        design.y_sd, dims="dimension", coords={"dimension": list(design.dimensions)}
    )
    # the lifecycle's ladder, one rung: a fit that misses the gate is refitted once with
    # twice the draws and tuning and target_accept >= 0.95 (the compiled model is reused)
    ladder = [
        (s.draws, s.tune, s.target_accept),
        (2 * s.draws, 2 * s.tune, max(s.target_accept, 0.95)),
    ]
    for attempt, (n_draws, n_tune, accept) in enumerate(ladder, start=1):
        idata = nutpie_sample(
            compiled,
            draws=n_draws,
            tune=n_tune,
            chains=s.chains,
            cores=1,
            seed=seed + attempt - 1,
            target_accept=accept,
            data=data,
        )
        post = idata.posterior
        de = post["direct_effect"] * y_sd
        ie = post["spillover_effect"] * y_sd
        draws = {"DE": de, "IE": ie, "TE": de + ie, "OE": ie + study.participation_share * de}
        derived = xr.Dataset({f"effect_{e}": draws[e] for e in spec.estimands})
        gated = post[[v for v in GATED if v in post]]
        merged = xr.merge([gated, derived])
        table = diagnostics_table(
            type("Posterior", (), {"posterior": merged, "sample_stats": idata.sample_stats})()
        )
        failures = gate_failures(table)
        if not failures:
            break
    passed = not failures
    reason = f"after {attempt} attempt(s): " + "; ".join(failures)[:300]
    tail = (1 - spec.interval) / 2
    seconds = time.perf_counter() - start
    out = []
    for dim in design.dimensions:
        for e in spec.estimands:
            x = draws[e].sel(dimension=dim).to_numpy().ravel()
            lo, hi = np.quantile(x, [tail, 1 - tail])
            rejected = bool(lo > 0 or hi < 0)
            truth = study.truth[dim][e]
            estimate = float(x.mean())
            out.append(
                _row(
                    point, replicate, dim, e, "bayes",
                    truth=truth, estimate=estimate, se=float(x.std(ddof=1)),
                    lower=float(lo), upper=float(hi), rejected=rejected,
                    detected=_detected(rejected, estimate, truth), gate_passed=passed,
                    seconds=seconds, error="" if passed else f"gate: {reason}",
                )
            )  # fmt: skip
    return out


def run_replicate(
    spec: DesignSpec,
    point: GridPoint,
    replicate: int,
    seed: np.random.SeedSequence,
    bayes: bool = False,
    prior: Any = None,
) -> list[dict[str, Any]]:
    """Simulate and estimate one replicate of a grid point (the engine's task function).

    Parameters
    ----------
    spec
        The design spec.
    point
        The grid point.
    replicate
        Replicate number within the point.
    seed
        This replicate's seed sequence (spawned into data, bootstrap and sampler streams).
    bayes
        Also fit the multilevel Bayes model.
    prior
        A :class:`pari_bayes.design.prior.PosteriorTruth` to draw this replicate's truth
        from (``--prior-from``); the spec's ``[truth]`` otherwise.

    Returns
    -------
    list of dict
        Rows with the :data:`REPLICATE_COLUMNS`.
    """
    # children built from the seed's identity, not seed.spawn(): spawn() is stateful, and a
    # replicate run twice (a retry, a comparison) must draw the same numbers
    data_seed, boot_seed, sampler_seed = (
        np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, i)) for i in range(3)
    )
    rng = np.random.default_rng(data_seed)
    truths = prior.draw(rng, spec.dimensions) if prior is not None else spec.truth
    study = simulate_study(point, truths, rng, spec.household_sizes)
    rows: list[dict[str, Any]] = []
    if spec.ols.enabled:
        rows += ols_rows(study, spec, point, replicate, np.random.default_rng(boot_seed))
    if bayes:
        sampler_int = int(np.random.default_rng(sampler_seed).integers(2**31 - 1))
        try:
            rows += bayes_rows(study, spec, point, replicate, sampler_int)
        except Exception as exc:  # noqa: BLE001 - one failed fit must not take the sweep down
            rows += [
                _row(
                    point, replicate, dim, e, "bayes", truth=study.truth[dim][e],
                    gate_passed=False, error=f"{type(exc).__name__}: {exc}"[:300],
                )
                for dim in study.dimensions
                for e in spec.estimands
            ]  # fmt: skip
    return rows
