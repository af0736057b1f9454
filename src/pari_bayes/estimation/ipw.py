"""Group-level IPW estimators of direct, indirect, total and overall effects.

Design-based estimators under partial interference (individuals interfere only within
their group) of Tchetgen Tchetgen & VanderWeele (2012) with the participation extension of
Perez-Heydrich et al. (2014, Biometrics 70:731), as implemented in the R package
``inferference`` (Saul & Hudgens 2017, JSS 82(2)). Definitions, following ``inferference``:

- **Treatment and participation.** ``A_ij`` is the treatment, ``B_ij`` the participation
  indicator: a unit can be treated only if it participates, and participants are treated
  with known probability ``r`` (the randomization). Without ``B``, ``B = A`` and ``r = 1``.
- **Propensity model.** A logistic model of ``B`` on covariates ``X`` with a group random
  intercept ``b_i ~ N(0, sigma^2)``, fit by maximum likelihood
  (:mod:`pari_bayes.estimation.propensity`); ``h_ij(b) = expit(X_ij beta + b)``.
- **Group weight** for allocation ``alpha`` (each unit treated with probability ``alpha``):
  ``w_i(alpha) = 1 / Integral prod_j [(r h_ij(b)/alpha)^A_ij ((1 - r h_ij(b))/(1-alpha))^(1-A_ij)]
  phi(b; 0, sigma) db = pi(A_i; alpha) / f(A_i | X_i)``, with
  ``pi(A_i; alpha) = prod_j alpha^A_ij (1-alpha)^(1-A_ij)`` and
  ``f(A_i | X_i) = Integral prod_j (r h_ij)^A_ij (1 - r h_ij)^(1-A_ij) phi db``. Note that the
  weight uses the *treatment* ``A`` and ``r h``, while the likelihood (and the scores of
  the variance) uses ``B`` with ``r = 1``, exactly as ``inferference`` does. The integral
  is computed by adaptive Gauss-Hermite quadrature with the number of nodes doubled until
  two successive values of ``log f`` agree within ``tol`` (default ``1e-8``, i.e. a
  relative error of about 1e-8 in each weight).
- **Group estimates.** ``Yhat_i(a, alpha) = w_i(alpha) sum_j Y_ij 1(A_ij = a) / n_i /
  (alpha^a (1-alpha)^(1-a))`` and ``Yhat_i(alpha) = w_i(alpha) sum_j Y_ij / n_i``; the
  population estimates ``Yhat(a, alpha)`` and ``Yhat(alpha)`` average them over groups.
- **Contrasts** (``inferference``'s sign convention: the first minus the second):
  every row is ``Yhat(trt1, alpha1) - Yhat(trt2, alpha2)``, or ``Yhat(alpha1) - Yhat(alpha2)``
  for overall effects. As in ``inferference::effect_grid``: *direct* has
  ``alpha1 = alpha2`` and ``trt1 != trt2``, so the conventional direct effect is the row
  with ``trt1 = 0, trt2 = 1``: ``Yhat(0, alpha) - Yhat(1, alpha)``, positive when treatment
  *lowers* the outcome (a protective vaccine); *indirect* has ``alpha1 != alpha2`` and
  ``trt1 = trt2``; *total* has ``alpha1 != alpha2`` and ``trt1 != trt2``
  (``Yhat(0, alpha1) - Yhat(1, alpha2)`` for ``trt1 = 0``); *overall* has
  ``alpha1 != alpha2``.
- **Variance.** The M-estimation sandwich that stacks the propensity scores ``psi_i`` with
  the group estimating functions: the influence of group i on a contrast ``C`` is
  ``(C_i - C) + D U^-1 psi_i`` with ``D`` the group mean of ``dC_i/dtheta`` (derivatives of
  the weights, ``dw_i/dtheta = -w_i dlog f_i/dtheta``, by quadrature) and ``U`` the
  per-group information, either the observed information (``bread="hessian"``, the
  general sandwich) or the mean outer product of the scores (``bread="opg"``, which is
  ``inferference``'s formula ``((U21 - 2 V21) V11^-1 U21' + V22) / N``); the variance is
  the sum of squared influences over ``N^2``; Wald intervals at ``level``.

Group-level estimators need many groups: the sandwich is a large-N(groups)
approximation. With a handful of groups (the bundled survey has four), the estimates are
descriptive and the standard errors are not to be trusted (see :func:`write_ipw_survey`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from pari_bayes.effects import EFFECT_COLUMNS as SHARED_EFFECT_COLUMNS
from pari_bayes.effects import EffectTable
from pari_bayes.errors import EstimationError, PariBayesWarning, SurveyDataError
from pari_bayes.estimation.propensity import (
    GroupedDesign,
    PropensityFit,
    fit_propensity,
    group_log_integral,
    single_threaded_blas,
)

__all__ = [
    "INFERFERENCE_COLUMNS",
    "COMMON_COLUMNS",
    "IPWResult",
    "SurveyIPWResult",
    "ipw_effects",
    "group_weights",
    "write_ipw_survey",
    "SURVEY_COVARIATES",
    "PROPENSITY_ESTIMAND",
    "survey_propensity_covariates",
    "FEW_GROUPS_NOTE",
]

#: Columns of :attr:`IPWResult.effects` (``inferference``'s estimates table; not the shared
#: effects schema, which is :data:`COMMON_COLUMNS`).
INFERFERENCE_COLUMNS = (
    "effect",
    "alpha1",
    "trt1",
    "alpha2",
    "trt2",
    "estimate",
    "std_error",
    "conf_low",
    "conf_high",
)
#: The shared effects schema (:class:`pari_bayes.effects.EffectTable`) of the common table.
COMMON_COLUMNS = SHARED_EFFECT_COLUMNS
#: Estimand whose adjustment set gives the participation model's covariates when an
#: identification result (a DAG) is given: the propensity is that of own participation in
#: CBO communities, the exposure of the direct effect.
PROPENSITY_ESTIMAND = "DE"
#: Covariates of the survey's participation model without a DAG (the paper's Table 4
#: controls).
SURVEY_COVARIATES = (
    "residence_months",
    "age",
    "gender",
    "urban_hukou",
    "offfarm_employed",
    "income_level",
)
FEW_GROUPS_NOTE = (
    "IPW under partial interference treats groups (communities) as the units of inference. "
    "This survey has {n_groups} communities: {n_cbo} with CBOs ({cbo}), where the "
    "participation propensity and the allocation-alpha estimates come from, and {n_free} "
    "without ({free}), which supply allocation 0 (participation impossible). With so few "
    "groups the random-intercept sd of the propensity model is barely identified, the "
    "sandwich variance rests on {n_cbo} + {n_free} group contributions and means nothing "
    "(its large-number-of-groups justification fails), and every contrast between "
    "allocation 0 and alpha > 0 compares the CBO communities with the CBO-free ones, so it "
    "is confounded with anything else that differs between those communities. Read the "
    "estimates as descriptive reweighted means, not as inference; the std_error, conf_low "
    "and conf_high columns are reported only for completeness."
)
_KEY_MARGINAL = "marginal"


def _weight_integral(
    design: GroupedDesign,
    fit: PropensityFit,
    treatment: np.ndarray,
    randomization: float,
    tol: float,
    max_nodes: int = 320,
) -> tuple[np.ndarray, np.ndarray, int]:
    """``log f(A_i | X_i)`` per group and its derivatives in ``fit.theta``; nodes used."""
    beta = fit.beta_standardized
    if fit.sigma == 0:
        out = group_log_integral(design, beta, 0.0, treatment, randomization, gradient=True)
        return out.log_value, out.gradient, 0
    nodes = 20
    previous = group_log_integral(design, beta, fit.sigma, treatment, randomization, nodes)
    while True:
        nodes *= 2
        current = group_log_integral(
            design, beta, fit.sigma, treatment, randomization, nodes, gradient=True
        )
        if np.max(np.abs(current.log_value - previous.log_value)) < tol:
            return current.log_value, current.gradient, nodes
        if nodes >= max_nodes:
            raise EstimationError(
                "the group-weight integrals did not reach the requested tolerance with "
                f"{max_nodes} quadrature nodes; the random-intercept distribution may be "
                "degenerate. Raise the tolerance (`tol` of ipw_effects, --tol of "
                "`pari-bayes ipw`; default 1e-8) or simplify the propensity model (fewer "
                "covariates)."
            )
        previous = current


def group_weights(
    log_f: np.ndarray, treated: np.ndarray, sizes: np.ndarray, alpha: float
) -> np.ndarray:
    """``w_i(alpha) = pi(A_i; alpha) / f(A_i | X_i)``.

    Parameters
    ----------
    log_f
        ``log f(A_i | X_i)`` per group.
    treated, sizes
        Treated units and group sizes.
    alpha
        Allocation in ``(0, 1)``.

    """
    log_pi = treated * np.log(alpha) + (sizes - treated) * np.log1p(-alpha)
    return np.exp(log_pi - log_f)


@dataclass
class _Quantity:
    """A population estimate with its scaled group influences (variance = sum of squares)."""

    estimate: float
    influence: np.ndarray

    def __sub__(self, other: _Quantity) -> _Quantity:
        return _Quantity(self.estimate - other.estimate, self.influence - other.influence)

    @property
    def std_error(self) -> float:
        return float(np.sqrt(np.sum(self.influence**2)))


def _row(effect, alpha1, trt1, alpha2, trt2, q: _Quantity, z: float) -> dict:
    se = q.std_error
    return {
        "effect": effect,
        "alpha1": alpha1,
        "trt1": trt1,
        "alpha2": alpha2,
        "trt2": trt2,
        "estimate": q.estimate,
        "std_error": se,
        "conf_low": q.estimate - z * se,
        "conf_high": q.estimate + z * se,
    }


def _effect_grid(allocations: Sequence[float]) -> list[tuple]:
    """``inferference::effect_grid`` without the outcome rows."""
    rows = []
    for t1 in (0, 1):
        for a in allocations:
            rows.append(("direct", a, t1, a, 1 - t1))
    for t in (0, 1):
        for a1 in allocations:
            for a2 in allocations:
                if a1 != a2:
                    rows.append(("indirect", a1, t, a2, t))
    for t1 in (0, 1):
        for a1 in allocations:
            for a2 in allocations:
                if a1 != a2:
                    rows.append(("total", a1, t1, a2, 1 - t1))
    for a1 in allocations:
        for a2 in allocations:
            if a1 != a2:
                rows.append(("overall", a1, None, a2, None))
    return rows


def _tables(
    quantities: dict[tuple, _Quantity], allocations: Sequence[float], level: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Contrast rows (every effect the quantities allow) and the outcome rows."""
    z = float(norm.ppf(0.5 + level / 2))
    rows = []
    for effect, a1, t1, a2, t2 in _effect_grid(allocations):
        k1 = (_KEY_MARGINAL if t1 is None else t1, a1)
        k2 = (_KEY_MARGINAL if t2 is None else t2, a2)
        if k1 in quantities and k2 in quantities:
            rows.append(_row(effect, a1, t1, a2, t2, quantities[k1] - quantities[k2], z))
    outcomes = []
    for t in (0, 1, None):
        for a in allocations:
            key = (_KEY_MARGINAL if t is None else t, a)
            if key in quantities:
                outcomes.append(_row("outcome", a, t, None, None, quantities[key], z))
    effects = pd.DataFrame(rows, columns=list(INFERFERENCE_COLUMNS))
    outcome_frame = pd.DataFrame(outcomes, columns=list(INFERFERENCE_COLUMNS))
    for frame in (effects, outcome_frame):
        for col in ("alpha1", "trt1", "alpha2", "trt2", "estimate"):
            frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return effects, outcome_frame


@dataclass
class IPWResult:
    """IPW estimates under partial interference.

    Attributes
    ----------
    effects
        Columns :data:`INFERFERENCE_COLUMNS`: every direct, indirect, total and overall contrast
        ``Yhat(trt1, alpha1) - Yhat(trt2, alpha2)`` (``trt`` empty for overall effects).
    outcomes
        The same columns for the population estimates ``Yhat(a, alpha)`` (``trt1`` empty
        for the marginal ``Yhat(alpha)``); ``effect == "outcome"``.
    propensity
        Fitted propensity parameters (:meth:`PropensityFit.table`).
    propensity_fit
        The fitted model.
    weights
        Long frame: group, alpha, weight.
    allocations, level, randomization
        As requested.
    quadrature_nodes
        Nodes used for the weight integrals (0 when ``sigma == 0``: no integral).
    quantities
        ``{(trt or "marginal", alpha): _Quantity}`` with the scaled group influences
        (``variance = sum(influence**2)``), for combining with other estimates.
    groups
        Group labels, in the order of the influences.

    """

    effects: pd.DataFrame
    outcomes: pd.DataFrame
    propensity: pd.DataFrame
    propensity_fit: PropensityFit
    weights: pd.DataFrame
    allocations: tuple[float, ...]
    level: float
    randomization: float
    quadrature_nodes: int
    quantities: dict = field(repr=False, default_factory=dict)
    groups: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    def effect(self, effect: str, alpha1: float, trt1=None, alpha2=None, trt2=None) -> pd.Series:
        """One row of :attr:`effects` (``inferference``'s helpers in one function)."""
        e = self.effects
        mask = (e["effect"] == effect) & np.isclose(e["alpha1"], alpha1)
        if alpha2 is not None:
            mask &= np.isclose(e["alpha2"], alpha2)
        if trt1 is not None:
            mask &= e["trt1"] == trt1
        if trt2 is not None:
            mask &= e["trt2"] == trt2
        if mask.sum() != 1:
            raise EstimationError(
                f"no single {effect} row for alpha1={alpha1}, trt1={trt1}, alpha2={alpha2}, "
                f"trt2={trt2}; allocations estimated: {list(self.allocations)}"
            )
        return e[mask].iloc[0]


# --------------------------------------------------------------------------- validation


def _check_allocations(allocations: Sequence[float]) -> tuple[float, ...]:
    try:
        values = [float(a) for a in allocations]
    except (TypeError, ValueError) as exc:
        raise EstimationError(
            f"allocations must be numbers in (0, 1); got {allocations!r}"
        ) from exc
    if not values:
        raise EstimationError("give at least one allocation in (0, 1).")
    for a in values:
        if not (0.0 < a < 1.0) or not np.isfinite(a):
            raise EstimationError(
                f"allocation {a:g} is outside (0, 1); an allocation is the probability "
                "with which each unit of a group is treated, strictly between 0 and 1."
            )
    if len(set(values)) != len(values):
        raise EstimationError(f"allocations {values} repeat a value; list each once.")
    return tuple(values)


def _binary(frame: pd.DataFrame, column: str, what: str) -> np.ndarray:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = ~values.isin([0, 1])
    if bad.any():
        shown = sorted({str(v) for v in frame.loc[bad, column]})[:5]
        rows = ", ".join(str(i) for i in frame.index[bad][:5])
        raise SurveyDataError(
            f"{what} column {column!r} must be 0/1; found {', '.join(shown)} "
            f"(rows {rows}{', ...' if bad.sum() > 5 else ''}); allowed: 0, 1."
        )
    return values.to_numpy(dtype=float)


def _prepare(
    data: pd.DataFrame,
    outcome: str,
    treatment: str,
    group: str,
    covariates: Sequence[str],
    participation: str | None,
    randomization: float,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if not isinstance(data, pd.DataFrame):
        raise SurveyDataError(f"expected a pandas DataFrame, got {type(data).__name__}.")
    covariates = list(covariates)
    needed = [outcome, treatment, group, *covariates] + ([participation] if participation else [])
    missing = [c for c in dict.fromkeys(needed) if c not in data.columns]
    if missing:
        raise SurveyDataError(
            f"column(s) {', '.join(repr(c) for c in missing)} not in the data; "
            f"available: {', '.join(map(str, data.columns))}."
        )
    frame = data[list(dict.fromkeys(needed))].reset_index(drop=True)
    for column in frame.columns:
        empty = frame[column].isna()
        if empty.any():
            rows = ", ".join(str(i) for i in frame.index[empty][:5])
            raise SurveyDataError(
                f"column {column!r} has {int(empty.sum())} missing value(s) (rows {rows}); "
                "drop or impute those rows first."
            )
    if not 0.0 < randomization <= 1.0:
        raise EstimationError(
            f"randomization {randomization:g} is outside (0, 1]; it is the probability "
            "that a participant is treated."
        )
    if participation is None and randomization != 1.0:
        raise EstimationError(
            "a randomization probability other than 1 needs a participation column "
            "(treatment is randomized among participants); pass `participation`."
        )
    A = _binary(frame, treatment, "treatment")
    B = _binary(frame, participation, "participation") if participation else A
    if participation:
        impossible = (A == 1) & (B == 0)
        if impossible.any():
            rows = ", ".join(str(i) for i in frame.index[impossible][:5])
            raise SurveyDataError(
                f"treatment {treatment!r} is 1 where participation {participation!r} is 0 "
                f"(rows {rows}); only participants can be treated."
            )
    propensity_column = participation or treatment
    if np.all(B == B[0]):
        raise SurveyDataError(
            f"column {propensity_column!r} is {int(B[0])} for every row; the propensity "
            "model needs both values."
        )
    Y = pd.to_numeric(frame[outcome], errors="coerce")
    if Y.isna().any() or not np.all(np.isfinite(Y)):
        bad = frame.loc[Y.isna() | ~np.isfinite(Y.fillna(0)), outcome]
        raise SurveyDataError(
            f"outcome column {outcome!r} must be numeric; found {bad.iloc[0]!r} "
            f"(row {bad.index[0]})."
        )
    X = np.empty((len(frame), len(covariates)))
    for k, name in enumerate(covariates):
        values = pd.to_numeric(frame[name], errors="coerce")
        if values.isna().any():
            bad = frame.loc[values.isna(), name]
            raise SurveyDataError(
                f"covariate column {name!r} must be numeric; found {bad.iloc[0]!r} "
                f"(row {bad.index[0]}). Code categories as 0/1 columns."
            )
        if values.nunique() < 2:
            raise SurveyDataError(
                f"covariate column {name!r} takes a single value; it cannot enter the "
                "propensity model beside the intercept. Drop it."
            )
        X[:, k] = values.to_numpy(dtype=float)
    sizes = frame[group].value_counts()
    singles = sizes[sizes < 2]
    if len(singles):
        shown = ", ".join(repr(g) for g in list(singles.index)[:5])
        raise SurveyDataError(
            f"group column {group!r}: group(s) {shown} have a single member; the estimator "
            "needs at least two members per group (merge or drop those groups)."
        )
    if len(sizes) < 2:
        raise SurveyDataError(
            f"group column {group!r} has {len(sizes)} group(s); at least two are needed."
        )
    return frame, Y.to_numpy(dtype=float), A, B, X


# --------------------------------------------------------------------------- estimator


def _quantities(
    fit: PropensityFit,
    y: np.ndarray,
    treatment: np.ndarray,
    randomization: float,
    allocations: Sequence[float],
    tol: float,
    bread: str,
) -> tuple[dict, pd.DataFrame, int]:
    """Compute population estimates and scaled influences (inputs sorted like the design)."""
    design = fit.design
    G = design.n_groups
    log_f, dlog_f, nodes = _weight_integral(design, fit, treatment, randomization, tol)
    if bread == "hessian":
        info = fit.information / G
    elif bread == "opg":
        info = fit.scores.T @ fit.scores / G
    else:
        raise EstimationError(f"bread {bread!r} is not known; allowed: 'hessian', 'opg'.")
    try:
        projector = fit.scores @ np.linalg.pinv(info, rcond=1e-12, hermitian=True)  # (G, k)
    except np.linalg.LinAlgError as exc:  # pragma: no cover - pinv rarely fails
        raise EstimationError("the propensity information matrix cannot be inverted.") from exc
    sizes = design.sizes.astype(float)
    treated = design.reduce(treatment)
    ybar = design.reduce(y) / sizes
    ybar_trt = {a: design.reduce(y * (treatment == a)) / sizes for a in (0, 1)}
    quantities: dict[tuple, _Quantity] = {}
    weight_rows = []

    def add(key, values):
        est = float(np.mean(values))
        derivative = -(values[:, None] * dlog_f).mean(axis=0)
        influence = (values - est) + projector @ derivative
        quantities[key] = _Quantity(est, influence / G)

    for alpha in allocations:
        w = group_weights(log_f, treated, sizes, alpha)
        weight_rows.append(pd.DataFrame({"group": design.labels, "alpha": alpha, "weight": w}))
        add((_KEY_MARGINAL, alpha), w * ybar)
        for a in (0, 1):
            add((a, alpha), w * ybar_trt[a] / (alpha**a * (1 - alpha) ** (1 - a)))
    return quantities, pd.concat(weight_rows, ignore_index=True), nodes


def ipw_effects(
    data: pd.DataFrame,
    outcome: str,
    treatment: str,
    group: str,
    covariates: Sequence[str] = (),
    allocations: Sequence[float] = (0.3, 0.45, 0.6),
    participation: str | None = None,
    randomization: float = 1.0,
    level: float = 0.95,
    quadrature: str = "agh",
    n_agq: int = 15,
    bread: str = "hessian",
    tol: float = 1e-8,
) -> IPWResult:
    """IPW estimates of direct, indirect, total and overall effects (partial interference).

    Parameters
    ----------
    data
        One row per individual.
    outcome, treatment, group
        Column names: numeric outcome ``Y``, 0/1 treatment ``A``, group identifier.
    covariates
        Numeric columns of the propensity model (an intercept is always included).
    allocations
        Allocations ``alpha`` in ``(0, 1)`` to estimate effects for.
    participation
        Optional 0/1 participation column ``B`` (treatment possible only when ``B = 1``);
        the propensity model is fit to ``B``. Default: ``B = A``.
    randomization
        Probability ``r`` that a participant is treated (needs ``participation`` unless 1).
    level
        Confidence level of the Wald intervals.
    quadrature, n_agq
        Propensity-model likelihood: ``"agh"`` (default; adaptive Gauss-Hermite with
        ``n_agq`` nodes) or ``"laplace"`` (``glmer``'s default, so ``inferference``'s unless
        ``nAGQ`` is passed). Laplace underestimates the random-intercept sd for small
        groups of binary outcomes, which biased ``Yhat(1, 0.3)`` in our simulations
        (groups of 4-10); AGH removed the bias at little cost.
    bread
        ``"hessian"`` (observed information, the general sandwich) or ``"opg"`` (outer
        product of scores, ``inferference``'s formula).
    tol
        Tolerance on ``log f(A_i | X_i)`` of the weight integrals.

    Returns
    -------
    IPWResult

    Raises
    ------
    SurveyDataError
        Missing columns or values, a treatment or participation value other than 0/1,
        treatment without participation, a non-numeric outcome or covariate, a constant
        covariate, a group with a single member.
    EstimationError
        An allocation outside (0, 1), a bad level or randomization, a propensity model that
        does not converge.

    Examples
    --------
    >>> res = ipw_effects(df, "y", "a", "g", ["x"], allocations=[0.3, 0.6])  # doctest: +SKIP
    >>> res.effect("direct", 0.3, trt1=0)  # Yhat(0, .3) - Yhat(1, .3)  # doctest: +SKIP

    """
    allocations = _check_allocations(allocations)
    if not 0.0 < float(level) < 1.0:
        raise EstimationError(f"level {level} is outside (0, 1); e.g. 0.95.")
    with single_threaded_blas():
        return _ipw_effects(
            data,
            outcome,
            treatment,
            group,
            covariates,
            allocations,
            participation,
            float(randomization),
            float(level),
            quadrature,
            n_agq,
            bread,
            tol,
        )


def _ipw_effects(
    data,
    outcome,
    treatment,
    group,
    covariates,
    allocations,
    participation,
    randomization,
    level,
    quadrature,
    n_agq,
    bread,
    tol,
) -> IPWResult:
    frame, Y, A, B, X = _prepare(
        data, outcome, treatment, group, covariates, participation, float(randomization)
    )
    design = GroupedDesign.build(X, frame[group].to_numpy(), tuple(covariates))
    order = design.order
    fit = fit_propensity(design, B[order], quadrature=quadrature, n_agq=n_agq)
    quantities, weights, nodes = _quantities(
        fit, Y[order], A[order], float(randomization), allocations, tol, bread
    )
    effects, outcomes = _tables(quantities, allocations, float(level))
    return IPWResult(
        effects=effects,
        outcomes=outcomes,
        propensity=fit.table(),
        propensity_fit=fit,
        weights=weights,
        allocations=allocations,
        level=float(level),
        randomization=float(randomization),
        quadrature_nodes=nodes,
        quantities=quantities,
        groups=design.labels,
    )


# --------------------------------------------------------------------------- our survey


@dataclass
class SurveyIPWResult:
    """IPW on the survey, per integration dimension.

    Attributes
    ----------
    effects, outcomes
        :data:`INFERFERENCE_COLUMNS` with a leading ``dimension`` column; allocation 0 stands
        for the CBO-free communities (participation impossible).
    propensity
        The participation model fitted in the CBO communities (with a leading
        ``dimensions`` column when dimensions have different adjustment sets).
    common
        DE/IE/TE/OE rows in the shared effects format (:data:`COMMON_COLUMNS`).
    alpha_observed
        Share of participants among households of CBO communities (rounded to 0.01);
        DE, IE and TE in :attr:`common` are evaluated at this allocation.
    notes
        Plain-language statements about what four groups can support.
    covariates
        Participation-model covariates of each dimension.

    """

    effects: pd.DataFrame
    outcomes: pd.DataFrame
    propensity: pd.DataFrame
    common: pd.DataFrame
    alpha_observed: float
    notes: list[str]
    covariates: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _survey_outcomes(survey) -> tuple[pd.DataFrame, str]:
    """Outcome per dimension: PCA scores, or standardized item means as a fallback."""
    data, codebook = survey.data, survey.codebook
    try:
        from pari_bayes.measurement.pca import pca_scores
    except ImportError:  # pragma: no cover - the measurement step is part of the package
        pca_scores = None
    if pca_scores is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PariBayesWarning)
            scores = pca_scores(data, codebook).scores
        return scores.reset_index(drop=True), "first principal-component score (paper 3.3.1)"
    out = {}
    for dim, items in codebook.indicators.items():
        z = data[list(items)].astype(float)
        z = (z - z.mean()) / z.std(ddof=1).replace(0, 1)
        m = z.mean(axis=1)
        out[dim] = (m - m.mean()) / m.std(ddof=1)
    return pd.DataFrame(out).reset_index(drop=True), "standardized mean of the items"


def _common_rows(
    dimension: str, q: dict, alpha_obs: float, allocations, n_groups: int | None = None
) -> EffectTable:
    """DE/IE/TE at the observed allocation and OE(alpha), in the shared effects schema.

    Wald intervals from the sandwich standard errors (normal quantiles, 90%); with fewer
    than 30 groups every row's ``note`` says the intervals are descriptive.
    """
    none = q[(0, 0.0)]
    contrasts = [
        ("DE", np.nan, q[(1, alpha_obs)] - q[(0, alpha_obs)]),
        ("IE", np.nan, q[(0, alpha_obs)] - none),
        ("TE", np.nan, q[(1, alpha_obs)] - none),
    ]
    contrasts += [("OE", alpha, q[(_KEY_MARGINAL, alpha)] - none) for alpha in allocations]
    keys = pd.DataFrame(
        {
            "dimension": dimension,
            "estimand": [c[0] for c in contrasts],
            "alpha": [c[1] for c in contrasts],
            "scope": "observed",
        }
    )
    note = (
        f"{n_groups} groups: sandwich SE not meaningful, descriptive"
        if n_groups is not None and n_groups < 30
        else ""
    )
    return EffectTable.from_estimates(
        keys,
        estimate=[c[2].estimate for c in contrasts],
        se=[c[2].std_error for c in contrasts],
        method="ipw",
        note=note,
    )


def survey_propensity_covariates(
    dimensions: Sequence[str],
    identification: Any = None,
    covariates: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
) -> dict[str, tuple[str, ...]]:
    """Covariates of the participation model for each dimension.

    Parameters
    ----------
    dimensions
        Integration dimensions (outcomes).
    identification
        An :class:`~pari_bayes.identification.identify.IdentificationResult` (the run's
        DAG): each dimension gets the adjustment set of :data:`PROPENSITY_ESTIMAND`
        (``identification.adjustment_set("DE", dimension)``), restricted to ``columns``,
        like :func:`pari_bayes.estimation.ols.fit_adjusted_ols`.
    covariates
        An explicit list for every dimension (cannot be combined with ``identification``).
    columns
        Columns available in the data (all, when None).

    Returns
    -------
    dict
        ``{dimension: covariates}``; :data:`SURVEY_COVARIATES` without a DAG or list.

    Raises
    ------
    EstimationError
        If both ``identification`` and ``covariates`` are given.
    """
    if identification is not None and covariates is not None:
        raise EstimationError(
            "give the propensity covariates either as a list or through the identification "
            "result (a DAG's adjustment set), not both."
        )
    if identification is None:
        chosen = tuple(SURVEY_COVARIATES if covariates is None else covariates)
        return {dim: chosen for dim in dimensions}
    out = {}
    for dim in dimensions:
        found = identification.adjustment_set(PROPENSITY_ESTIMAND, dim)
        out[dim] = tuple(c for c in found if columns is None or c in columns)
    return out


def write_ipw_survey(
    survey,
    directory: Path,
    allocations: Sequence[float] = (0.3, 0.45, 0.6),
    covariates: Sequence[str] | None = None,
    level: float = 0.95,
    quadrature: str = "agh",
    seed: int | None = None,
    identification: Any = None,
    tol: float = 1e-8,
    bread: str = "hessian",
) -> SurveyIPWResult:
    """Apply the IPW estimators to the survey and write the tables into ``directory``.

    Treatment ``A`` is CBO participation and the groups are the communities. In a
    community without CBOs participation is impossible, so its only feasible allocation is
    0: there ``f(A_i | X_i) = 1`` and ``pi(A_i; alpha) = (1 - alpha)^n_i``, i.e. these
    communities carry no information about ``alpha > 0`` (positivity fails) and, for
    ``alpha = 0``, ``Yhat_i(0, 0)`` is simply the community mean. Pooling them with the CBO
    communities in one Horvitz-Thompson average would shrink ``Yhat(0, 0)`` by the share of
    CBO-free groups, so the estimator is stratified: ``Yhat(a, alpha)`` for ``alpha`` in
    ``(0, 1)`` averages over the CBO communities (propensity model fit there), and
    ``Yhat(0, 0) = Yhat(alpha = 0)`` averages the CBO-free community means; contrasts across
    the strata add their (independent) variances.

    Files: ``ipw_effects.csv`` and ``ipw_outcomes.csv`` (dimension + :data:`INFERFERENCE_COLUMNS`,
    ``inferference``'s sign convention), ``ipw_propensity.csv``, ``ipw_effects_common.csv``
    (DE = Y(1, a) - Y(0, a), IE = Y(0, a) - Y(0, 0), TE = Y(1, a) - Y(0, 0) at the observed
    participation share ``a``, OE(alpha) = Y(alpha) - Y(0, 0); q05/q50/q95 from the normal
    approximation) and ``ipw_notes.txt`` (what four groups can support).

    Parameters
    ----------
    survey
        A :class:`pari_bayes.survey.Survey`.
    directory
        Existing folder to write into.
    allocations
        Allocations in ``(0, 1)``; the observed participation share is added.
    covariates
        Covariates of the participation model for every dimension; default
        :data:`SURVEY_COVARIATES` (the paper's Table 4 controls) unless ``identification``
        is given.
    level
        Confidence level.
    quadrature
        ``"laplace"`` or ``"agh"``.
    seed
        Unused (the estimator is deterministic); accepted for a uniform interface.
    identification
        The run's identification result (its DAG): each dimension's participation model
        then adjusts for the DAG's adjustment set of the direct effect
        (:func:`survey_propensity_covariates`); dimensions with the same set share one fit.
    tol
        Tolerance on ``log f(A_i | X_i)`` of the weight integrals.
    bread
        Sandwich bread, ``"hessian"`` or ``"opg"`` (see :func:`ipw_effects`).

    Returns
    -------
    SurveyIPWResult

    """
    from pari_bayes.io import atomic_write_text, write_csv

    del seed
    data = survey.data.reset_index(drop=True)
    scores, outcome_label = _survey_outcomes(survey)
    cbo = data["cbo_presence"].to_numpy() == 1
    if not cbo.any():
        raise EstimationError(
            "no surveyed community has CBOs, so participation never varies; IPW effects "
            "of participation cannot be estimated."
        )
    alpha_obs = round(float(data.loc[cbo, "cbo_participation"].mean()), 2)
    if not 0.0 < alpha_obs < 1.0:
        raise EstimationError(
            "in the CBO communities every household (or none) participates; the "
            "participation propensity cannot be modelled."
        )
    allocs = _check_allocations(sorted(set(map(float, allocations)) | {alpha_obs}))
    frame = data.loc[cbo].copy()
    for dim in scores.columns:
        frame[f"__y_{dim}"] = scores.loc[cbo, dim].to_numpy()
    chosen = survey_propensity_covariates(
        list(scores.columns), identification, covariates, list(data.columns)
    )
    fits: dict[tuple[str, ...], tuple[GroupedDesign, PropensityFit]] = {}
    for covs in dict.fromkeys(chosen.values()):
        _, _, A, _, X = _prepare(
            frame,
            f"__y_{scores.columns[0]}",
            "cbo_participation",
            "community",
            covs,
            None,
            1.0,
        )
        design = GroupedDesign.build(X, frame["community"].to_numpy(), tuple(covs))
        fits[covs] = (design, fit_propensity(design, A[design.order], quadrature=quadrature))
    free = data.loc[~cbo]
    free_groups = sorted(free["community"].unique())
    n_cbo, n_free = design.n_groups, len(free_groups)
    effects, outcomes, common = [], [], []
    weights = None
    for dim in scores.columns:
        design, fit = fits[chosen[dim]]
        order = design.order
        y = frame[f"__y_{dim}"].to_numpy(dtype=float)
        q, weights, _ = _quantities(fit, y[order], A[order], 1.0, allocs, float(tol), bread)
        # embed the CBO-stratum influences in a vector over all groups, then add the
        # allocation-0 stratum: the plain mean of the CBO-free community means
        q = {k: _Quantity(v.estimate, np.r_[v.influence, np.zeros(n_free)]) for k, v in q.items()}
        keys = allocs
        if n_free:
            means = free.assign(y=scores.loc[~cbo, dim].to_numpy()).groupby("community")["y"].mean()
            means = means.loc[free_groups].to_numpy()
            est = float(means.mean())
            infl = np.r_[np.zeros(n_cbo), (means - est) / n_free]
            q[(0, 0.0)] = _Quantity(est, infl)
            q[(_KEY_MARGINAL, 0.0)] = _Quantity(est, infl.copy())
            keys = (0.0, *allocs)
        eff, out = _tables(q, keys, float(level))
        effects.append(eff.assign(dimension=dim))
        outcomes.append(out.assign(dimension=dim))
        if n_free:
            common.append(_common_rows(dim, q, alpha_obs, allocs, n_cbo + n_free))
    cols = ["dimension", *INFERFERENCE_COLUMNS]
    effects_frame = pd.concat(effects, ignore_index=True)[cols]
    outcomes_frame = pd.concat(outcomes, ignore_index=True)[cols]
    common_frame = EffectTable.concat(common).frame
    if len(fits) == 1:
        propensity = fit.table()
    else:  # one participation model per distinct adjustment set
        propensity = pd.concat(
            [
                f.table().assign(dimensions=" ".join(d for d, c in chosen.items() if c == covs))
                for covs, (_, f) in fits.items()
            ],
            ignore_index=True,
        )[["dimensions", "term", "estimate", "std_error"]]
    if len(fits) == 1:
        covs, (_, only) = next(iter(fits.items()))
        model_text = f"on {', '.join(covs) or 'an intercept only'}, fit by maximum likelihood "
        model_text += f"({quadrature}) in the CBO communities" + (
            " (the random-intercept sd was estimated at 0)." if only.boundary else "."
        )
    else:
        model_text = f"fit by maximum likelihood ({quadrature}) in the CBO communities, one "
        model_text += "per adjustment set: " + "; ".join(
            f"{', '.join(d for d, c in chosen.items() if c == covs)} on "
            f"{', '.join(covs) or 'an intercept only'}"
            + (" (random-intercept sd estimated at 0)" if f.boundary else "")
            for covs, (_, f) in fits.items()
        )
        model_text += "."
    if identification is not None:
        model_text += (
            f" Covariates: the adjustment set of {PROPENSITY_ESTIMAND} on the DAG "
            f"{getattr(identification, 'dag_path', '') or '(identification result)'}."
        )
    cbo_names = list(design.labels)
    notes = [
        FEW_GROUPS_NOTE.format(
            n_groups=n_cbo + n_free,
            n_cbo=n_cbo,
            cbo=", ".join(map(str, cbo_names)),
            n_free=n_free,
            free=", ".join(map(str, free_groups)) or "none",
        ),
        f"Outcome: {outcome_label} per dimension. Treatment: cbo_participation. Propensity "
        f"model: logistic with a community random intercept {model_text}",
        f"Observed participation share in the CBO communities: {alpha_obs:.2f}; the common "
        "table's DE, IE and TE are evaluated at that allocation; OE(alpha) = Y(alpha) - "
        "Y(0, 0). ipw_effects.csv follows inferference's sign convention (direct = "
        "Y(0, alpha) - Y(1, alpha)); the common table uses DE = Y(1, a) - Y(0, a).",
    ]
    mean_weight = float(weights.loc[np.isclose(weights["alpha"], alpha_obs), "weight"].mean())
    shown = "; ".join(
        f"alpha {alpha:.2f}: "
        + ", ".join(f"{g} {w:.3g}" for g, w in zip(sub["group"], sub["weight"], strict=True))
        for alpha, sub in weights.groupby("alpha")
    )
    notes.append(
        "Group weights w_i(alpha) = pi(A_i; alpha) / f(A_i | X_i) of the CBO communities "
        f"({shown}). With dozens of households per community these weights are extreme "
        "unless alpha is close to the community's own participation share, so each "
        "estimate leans on one or two communities. The estimator is a Horvitz-Thompson "
        "average (inferference's definition): the weights average about 1 only over many "
        f"groups; here their mean at alpha {alpha_obs:.2f} is {mean_weight:.2f}, which "
        "scales every Yhat(a, alpha) by that factor (a Hajek, weight-normalized, mean "
        "would not), so even as descriptions the allocation-alpha estimates are distorted."
    )
    if not n_free:
        notes.append(
            "No CBO-free community was surveyed: allocation 0 (and IE/TE/OE in the common "
            "table) cannot be estimated."
        )
    directory = Path(directory)
    write_csv(effects_frame, directory / "ipw_effects.csv")
    write_csv(outcomes_frame, directory / "ipw_outcomes.csv")
    write_csv(propensity, directory / "ipw_propensity.csv")
    write_csv(common_frame, directory / "ipw_effects_common.csv")
    atomic_write_text(directory / "ipw_notes.txt", "\n\n".join(notes) + "\n")
    warnings.warn(
        f"IPW on {n_cbo + n_free} communities: estimates are descriptive; the sandwich "
        "standard errors are not meaningful with so few groups (see ipw_notes.txt).",
        PariBayesWarning,
        stacklevel=2,
    )
    return SurveyIPWResult(
        effects=effects_frame,
        outcomes=outcomes_frame,
        propensity=propensity,
        common=common_frame,
        alpha_observed=alpha_obs,
        notes=notes,
        covariates=dict(chosen),
    )


# --------------------------------------------------------------------------- simulation


def simulate_two_stage(
    n_groups: int = 250,
    group_size: int | tuple[int, int] = 12,
    beta: tuple[float, float] = (-0.2, 0.6),
    sigma: float = 0.7,
    effects: tuple[float, float, float] = (1.0, -2.0, 0.5),
    seed: int = 0,
) -> pd.DataFrame:
    """Simulate a two-stage design with a known logistic random-intercept propensity.

    Group ``i`` draws ``b_i ~ N(0, sigma^2)`` (its allocation varies around
    ``expit(beta0)``), units draw ``x_ij ~ N(0, 1)`` and are treated with probability
    ``expit(beta0 + beta1 x_ij + b_i)``. Outcomes depend on own treatment and on the share
    ``s`` of *other* group members treated:
    ``Y = 1 + delta A + gamma s + kappa A s + 0.5 x + u_i + e``, ``u_i ~ N(0, 0.5^2)``,
    ``e ~ N(0, 1)``, with ``effects = (delta, gamma, kappa)``. The covariate confounds
    treatment and outcome. The true estimands are given by :func:`two_stage_truth`.

    Parameters
    ----------
    n_groups
        Number of groups.
    group_size
        Fixed size, or ``(low, high)`` for sizes drawn uniformly from ``low..high``.
    beta, sigma
        Propensity intercept and slope; random-intercept sd.
    effects
        ``(delta, gamma, kappa)``.
    seed
        Random seed.

    Returns
    -------
    pandas.DataFrame
        Columns group, x, a, y.

    """
    rng = np.random.default_rng(seed)
    if isinstance(group_size, int):
        sizes = np.full(n_groups, group_size)
    else:
        sizes = rng.integers(group_size[0], group_size[1] + 1, n_groups)
    group = np.repeat(np.arange(n_groups), sizes)
    n = len(group)
    x = rng.normal(size=n)
    b = rng.normal(0.0, sigma, n_groups)
    prob = 1.0 / (1.0 + np.exp(-(beta[0] + beta[1] * x + b[group])))
    a = (rng.random(n) < prob).astype(int)
    treated = np.bincount(group, weights=a)
    share_others = (treated[group] - a) / (sizes[group] - 1)
    delta, gamma, kappa = effects
    u = rng.normal(0.0, 0.5, n_groups)
    y = 1.0 + delta * a + gamma * share_others + kappa * a * share_others + 0.5 * x
    y = y + u[group] + rng.normal(size=n)
    return pd.DataFrame({"group": [f"g{i:04d}" for i in group], "x": x, "a": a, "y": y})


def two_stage_truth(
    allocations: Sequence[float], effects: tuple[float, float, float] = (1.0, -2.0, 0.5)
) -> pd.DataFrame:
    """Return the true contrasts of :func:`simulate_two_stage` (``IPWResult.effects`` layout).

    ``Y(a, alpha) = 1 + delta a + gamma alpha + kappa a alpha`` and
    ``Y(alpha) = alpha Y(1, alpha) + (1 - alpha) Y(0, alpha)``.
    """
    delta, gamma, kappa = effects

    def value(t, a):
        if t is None:
            return a * value(1, a) + (1 - a) * value(0, a)
        return 1.0 + delta * t + gamma * a + kappa * t * a

    rows = [
        {
            "effect": e,
            "alpha1": a1,
            "trt1": t1,
            "alpha2": a2,
            "trt2": t2,
            "truth": value(t1, a1) - value(t2, a2),
        }
        for e, a1, t1, a2, t2 in _effect_grid(tuple(float(a) for a in allocations))
    ]
    frame = pd.DataFrame(rows)
    for col in ("trt1", "trt2"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame
