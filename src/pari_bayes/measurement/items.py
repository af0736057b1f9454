"""Item types of latent-factor measurement models and their likelihoods.

Every indicator of a latent factor is declared as an :class:`ItemSpec`: the survey column,
the item type, the factor it loads on and the type's options. The types, each with a
vectorised log-likelihood (PyTensor, for the PyMC model) and a simulator (NumPy, for
simulation-based checks), are

``ordinal``
    Ordered logistic: ``P(y <= k) = logistic(tau_k - lambda * eta)`` with ordered cutpoints
    ``tau``. Also used for 0/1 (two-level) items.
``binomial``
    Count of "options selected" out of ``trials`` (a fixed number, e.g. 9, or a column such as
    ``household_size``): ``y ~ Binomial(n, logistic(c + lambda * eta))``. With
    ``proportion = true`` the column holds ``y / n`` (e.g. the employed share of household
    members) and is turned back into a count.
``hurdle_lognormal``
    Non-negative amount with zeros and a heavy right tail: ``log y ~ Normal(mu + lambda * eta,
    sigma)`` for ``y > 0``; the zeros are modelled by ``P(y > 0) = logistic(c0 + lambda0 *
    eta)`` when ``zero_model = true``, or taken as given (conditioned on) when another item
    already explains them (e.g. no employment income when nobody is employed).
``normal``
    Continuous score (a scale score, a test result): ``y ~ Normal(mu + lambda * eta, sigma)``
    on the standardized values; with ``log = true`` the log of a positive value is normal
    (log-normal item).
``poisson``, ``negative_binomial``
    Counts without an upper bound (visits, friends named): ``log E[y] = c + lambda * eta``;
    the negative binomial adds overdispersion, ``Var[y] = mu + mu**2 / alpha``.

All items of one type are stacked into one long-format likelihood call (one row per
observed household-item pair), so the model graph does not grow with the number of items.
Missing answers (NaN) are dropped from the long format, not imputed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pari_bayes.errors import SpecError, SurveyDataError

__all__ = [
    "ITEM_KINDS",
    "LINK_KINDS",
    "ItemSpec",
    "OrdinalData",
    "BinomialData",
    "HurdleData",
    "ContinuousData",
    "CountData",
    "ItemData",
    "prepare_items",
    "ordinal_logp",
    "masked_normal_logp",
    "binomial_logit_logp",
    "ordinal_logp_numpy",
    "binomial_logp_numpy",
    "hurdle_lognormal_logp_numpy",
    "count_logp",
    "normal_logp_numpy",
    "count_logp_numpy",
    "simulate_items",
]

#: Item types a spec may declare.
ITEM_KINDS = ("ordinal", "binomial", "hurdle_lognormal", "normal", "poisson", "negative_binomial")

#: Item types whose loading is on a link scale (logit or log), with a log-normal prior; the
#: others (continuous parts) get theirs from the share of variance the factor explains.
LINK_KINDS = ("ordinal", "binomial", "poisson", "negative_binomial")

#: Finite stand-in for the infinite outer cutpoints (keeps gradients finite).
_PAD = 1.0e3


@dataclass(frozen=True)
class ItemSpec:
    """One indicator of a latent factor.

    Parameters
    ----------
    name
        Survey column.
    kind
        One of :data:`ITEM_KINDS`.
    factor
        The factor (dimension) the item loads on.
    levels
        ``ordinal``: the category codes in increasing order (e.g. ``(1, 2, 3)``).
    trials
        ``binomial``: the number of trials, an integer or the name of a column.
    proportion
        ``binomial``: the column holds the share ``y / trials`` rather than the count.
    zero_model
        ``hurdle_lognormal``: model the zeros (true) or condition on them (false).
    direct
        Survey columns with a direct effect on the item beyond the factor (MIMIC direct
        effects, i.e. differential item functioning by these covariates), on the scale of the
        item's linear predictor (ordinal latent response, binomial logit, log amount).
    divided_by
        ``hurdle_lognormal``: survey columns whose product divides a household total to give
        the item (e.g. ``["employed_share", "household_size"]``, the employed members, for an
        income per employed member). The item is modelled as the total, i.e. with the offset
        ``-log(product)`` on the log amount; the offset has coefficient 1, so this is the
        same likelihood up to a constant.
    log
        ``normal``: the log of the (positive) value is normal, i.e. a log-normal item.
    """

    name: str
    kind: str
    factor: str
    levels: tuple[int, ...] | None = None
    trials: int | str | None = None
    proportion: bool = False
    zero_model: bool = True
    direct: tuple[str, ...] = ()
    divided_by: tuple[str, ...] = ()
    log: bool = False

    def __post_init__(self) -> None:
        if self.log and self.kind != "normal":
            raise SpecError(
                f"item {self.name!r}: log = true applies to normal items only (this item is "
                f'{self.kind!r}); remove it or use type = "normal".'
            )
        if self.divided_by and self.kind != "hurdle_lognormal":
            raise SpecError(
                f"item {self.name!r}: divided_by applies to hurdle_lognormal items only "
                f"(this item is {self.kind!r}); remove it or change the type."
            )
        if self.kind not in ITEM_KINDS:
            raise SpecError(
                f"item {self.name!r}: type {self.kind!r} is unknown; allowed: "
                + ", ".join(ITEM_KINDS)
            )
        if self.kind == "ordinal":
            if self.levels is None or len(self.levels) < 2:
                raise SpecError(
                    f"item {self.name!r}: an ordinal item needs at least two levels "
                    f"(got {self.levels!r}); give them as levels = [1, 2, 3]."
                )
            if list(self.levels) != sorted(set(self.levels)):
                raise SpecError(
                    f"item {self.name!r}: levels {list(self.levels)} must be distinct and "
                    "increasing."
                )
        if self.kind == "binomial":
            if self.trials is None or isinstance(self.trials, bool):
                raise SpecError(
                    f"item {self.name!r}: a binomial item needs trials = <integer> or "
                    'trials = "<column>".'
                )
            if isinstance(self.trials, int) and self.trials < 1:
                raise SpecError(f"item {self.name!r}: trials must be >= 1, got {self.trials}.")


@dataclass
class OrdinalData:
    """Wide-format data of all ordinal items (households x items)."""

    items: list[ItemSpec]
    category: np.ndarray  # (n, J) 0-based category; 0 where missing
    mask: np.ndarray  # (n, J) 1 where answered
    n_categories: np.ndarray  # (J,)


@dataclass
class BinomialData:
    """Wide-format data of all binomial items (missing answers: 0 of 0 trials)."""

    items: list[ItemSpec]
    count: np.ndarray  # (n, J)
    trials: np.ndarray  # (n, J)
    mask: np.ndarray  # (n, J)

    @property
    def log_coefficient(self) -> np.ndarray:
        """``log C(trials, count)``, the parameter-free part of the log-likelihood."""
        from scipy.special import gammaln

        return (
            gammaln(self.trials + 1)
            - gammaln(self.count + 1)
            - gammaln(self.trials - self.count + 1)
        )


@dataclass
class HurdleData:
    """Wide-format data of all hurdle-lognormal items.

    ``log_value`` holds ``(log y - center) / scale`` where ``y > 0`` (0 elsewhere); the centre
    and scale of each item's positive log values are kept for back-transformation.
    """

    items: list[ItemSpec]
    log_value: np.ndarray  # (n, J)
    positive: np.ndarray  # (n, J) 1 where y > 0
    mask: np.ndarray  # (n, J) 1 where answered
    zero_model: np.ndarray  # (J,) bool
    center: np.ndarray  # (J,)
    scale: np.ndarray  # (J,)


@dataclass
class ContinuousData:
    """Wide-format data of all ``normal`` items, standardized.

    ``value`` holds ``(y - center) / scale`` (of ``log y`` for log-normal items) where
    answered, 0 elsewhere; ``center`` and ``scale`` convert loadings and residual sds back to
    the item's own units (multiply by ``scale``).
    """

    items: list[ItemSpec]
    value: np.ndarray  # (n, J)
    mask: np.ndarray  # (n, J)
    center: np.ndarray  # (J,)
    scale: np.ndarray  # (J,)


@dataclass
class CountData:
    """Wide-format data of all count items (``poisson`` and ``negative_binomial``)."""

    items: list[ItemSpec]
    count: np.ndarray  # (n, J), 0 where missing
    mask: np.ndarray  # (n, J)
    negative_binomial: np.ndarray  # (J,) bool

    @property
    def log_mean_count(self) -> np.ndarray:
        """Log of each item's mean answered count (+0.5, finite for all-zero items)."""
        answered = np.maximum(self.mask.sum(axis=0), 1.0)
        return np.log((self.count * self.mask).sum(axis=0) / answered + 0.5)

    @property
    def log_factorial(self) -> np.ndarray:
        """``log y!``, the parameter-free part of both count log-likelihoods."""
        from scipy.special import gammaln

        return gammaln(self.count + 1.0)


@dataclass
class ItemData:
    """All items of a measurement model, prepared for the likelihood."""

    items: list[ItemSpec]
    factors: tuple[str, ...]
    n_households: int
    ordinal: OrdinalData | None = None
    binomial: BinomialData | None = None
    hurdle: HurdleData | None = None
    continuous: ContinuousData | None = None
    count: CountData | None = None
    notes: list[str] = field(default_factory=list)

    def factor_index(self, items: Sequence[ItemSpec]) -> np.ndarray:
        """Index of each item's factor in :attr:`factors`."""
        return np.array([self.factors.index(it.factor) for it in items], dtype=int)

    def factor_matrix(self, items: Sequence[ItemSpec]) -> np.ndarray:
        """One-hot (factors x items) matrix: ``eta @ F`` gives each item's factor value."""
        out = np.zeros((len(self.factors), len(items)))
        out[self.factor_index(items), np.arange(len(items))] = 1.0
        return out

    @property
    def names(self) -> tuple[str, ...]:
        """Item names in declaration order."""
        return tuple(it.name for it in self.items)


def _column(frame: pd.DataFrame, name: str, item: str) -> np.ndarray:
    if name not in frame.columns:
        raise SurveyDataError(
            f"item {item!r} needs column {name!r}, which the survey does not have; "
            f"available: {', '.join(map(str, frame.columns))}"
        )
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)


def prepare_items(
    frame: pd.DataFrame, items: Sequence[ItemSpec], factors: Sequence[str]
) -> ItemData:
    """Turn survey columns into wide likelihood data, one matrix per item type.

    Parameters
    ----------
    frame
        One row per household.
    items
        The declared items.
    factors
        The factors, in model order; every item's factor must be one of them.

    Returns
    -------
    ItemData

    Raises
    ------
    SpecError
        If an item names an unknown factor or appears twice, or a factor has no item.
    SurveyDataError
        If a column is missing or holds values outside the item's coding.
    """
    factors = tuple(factors)
    seen: set[str] = set()
    for it in items:
        if it.factor not in factors:
            raise SpecError(
                f"item {it.name!r} loads on factor {it.factor!r}, which is not declared; "
                f"declared factors: {', '.join(factors)}"
            )
        if it.name in seen:
            raise SpecError(f"item {it.name!r} is declared twice; declare each item once.")
        seen.add(it.name)
    empty = [f for f in factors if not any(it.factor == f for it in items)]
    if empty:
        raise SpecError(
            f"factor(s) {', '.join(empty)} have no items; give every factor at least one item."
        )
    n = len(frame)
    data = ItemData(items=list(items), factors=factors, n_households=n)

    ordinal = [it for it in items if it.kind == "ordinal"]
    if ordinal:
        cat = np.zeros((n, len(ordinal)), dtype=int)
        mask = np.zeros((n, len(ordinal)))
        for j, it in enumerate(ordinal):
            values = _column(frame, it.name, it.name)
            answered = ~np.isnan(values)
            levels = np.asarray(it.levels, dtype=float)
            bad = answered & ~np.isin(values, levels)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise SurveyDataError(
                    f"item {it.name!r}: value {values[row]:g} in row {row + 2} is not one of its "
                    f"levels {list(it.levels)}"
                )
            cat[answered, j] = np.searchsorted(levels, values[answered])
            mask[:, j] = answered
        data.ordinal = OrdinalData(
            items=ordinal,
            category=cat,
            mask=mask,
            n_categories=np.array([len(it.levels) for it in ordinal], dtype=int),
        )

    binomial = [it for it in items if it.kind == "binomial"]
    if binomial:
        cnt = np.zeros((n, len(binomial)), dtype=int)
        trl = np.zeros((n, len(binomial)), dtype=int)
        mask = np.zeros((n, len(binomial)))
        for j, it in enumerate(binomial):
            values = _column(frame, it.name, it.name)
            if isinstance(it.trials, str):
                n_trials = _column(frame, it.trials, it.name)
            else:
                n_trials = np.full(n, float(it.trials))
            answered = ~np.isnan(values) & ~np.isnan(n_trials)
            counts = values * n_trials if it.proportion else values.copy()
            rounded = np.round(counts)
            with np.errstate(invalid="ignore"):
                bad = answered & (
                    (np.abs(counts - rounded) > 1e-6 * np.maximum(1, n_trials))
                    | (rounded < 0)
                    | (rounded > n_trials)
                    | (n_trials < 1)
                )
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                what = "share" if it.proportion else "count"
                raise SurveyDataError(
                    f"item {it.name!r}: {what} {values[row]:g} in row {row + 2} is not a whole "
                    f"number of successes out of {n_trials[row]:g} trials"
                    + (f" (column {it.trials})" if isinstance(it.trials, str) else "")
                )
            cnt[answered, j] = rounded[answered]
            trl[answered, j] = n_trials[answered]
            mask[:, j] = answered
        data.binomial = BinomialData(items=binomial, count=cnt, trials=trl, mask=mask)

    hurdle = [it for it in items if it.kind == "hurdle_lognormal"]
    if hurdle:
        logv = np.zeros((n, len(hurdle)))
        pos = np.zeros((n, len(hurdle)), dtype=int)
        mask = np.zeros((n, len(hurdle)))
        center, scale = [], []
        for j, it in enumerate(hurdle):
            values = _column(frame, it.name, it.name)
            answered = ~np.isnan(values)
            with np.errstate(invalid="ignore"):
                bad = answered & (values < 0)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise SurveyDataError(
                    f"item {it.name!r}: value {values[row]:g} in row {row + 2} is negative; "
                    "allowed: a number of at least 0"
                )
            positive = answered & (np.nan_to_num(values) > 0)
            if it.divided_by:
                values = values * _divisor(frame, it, positive)
            if positive.sum() < 2:
                raise SurveyDataError(
                    f"item {it.name!r}: fewer than two positive values; a hurdle-lognormal "
                    "item needs positive amounts to estimate their distribution."
                )
            logs = np.log(values[positive])
            c, sd = float(logs.mean()), float(logs.std()) or 1.0
            center.append(c)
            scale.append(sd)
            logv[positive, j] = (logs - c) / sd
            pos[:, j] = positive
            mask[:, j] = answered
        data.hurdle = HurdleData(
            items=hurdle,
            log_value=logv,
            positive=pos,
            mask=mask,
            zero_model=np.array([it.zero_model for it in hurdle]),
            center=np.array(center),
            scale=np.array(scale),
        )
        data.notes.append(
            "hurdle-lognormal items are modelled on standardized log amounts: "
            + ", ".join(
                f"{it.name} (centre {c:.3f}, scale {sd:.3f})"
                for it, c, sd in zip(hurdle, center, scale, strict=True)
            )
        )
    continuous = [it for it in items if it.kind == "normal"]
    if continuous:
        data.continuous = _prepare_continuous(frame, continuous, n)
    counts = [it for it in items if it.kind in ("poisson", "negative_binomial")]
    if counts:
        data.count = _prepare_counts(frame, counts, n)
    return data


def _prepare_continuous(frame: pd.DataFrame, items: list[ItemSpec], n: int) -> ContinuousData:
    value = np.zeros((n, len(items)))
    mask = np.zeros((n, len(items)))
    center, scale = np.zeros(len(items)), np.ones(len(items))
    for j, it in enumerate(items):
        raw = _column(frame, it.name, it.name)
        answered = ~np.isnan(raw)
        if it.log:
            with np.errstate(invalid="ignore"):
                bad = answered & ~(raw > 0)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise SurveyDataError(
                    f"item {it.name!r}: value {raw[row]:g} in row {row + 2} is not positive; "
                    "a log-normal item (log = true) allows positive numbers only"
                )
            raw = np.where(answered, np.log(np.where(answered, raw, 1.0)), np.nan)
        if answered.sum() < 2 or np.nanstd(raw) == 0:
            raise SurveyDataError(
                f"item {it.name!r}: fewer than two distinct answered values; a normal item "
                "needs variation to estimate its loading and residual variance."
            )
        center[j], scale[j] = float(np.nanmean(raw)), float(np.nanstd(raw))
        value[answered, j] = (raw[answered] - center[j]) / scale[j]
        mask[:, j] = answered
    return ContinuousData(items=items, value=value, mask=mask, center=center, scale=scale)


def _prepare_counts(frame: pd.DataFrame, items: list[ItemSpec], n: int) -> CountData:
    count = np.zeros((n, len(items)))
    mask = np.zeros((n, len(items)))
    for j, it in enumerate(items):
        raw = _column(frame, it.name, it.name)
        answered = ~np.isnan(raw)
        with np.errstate(invalid="ignore"):
            bad = answered & ((raw < 0) | (np.abs(raw - np.round(raw)) > 1e-9))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise SurveyDataError(
                f"item {it.name!r}: value {raw[row]:g} in row {row + 2} is not a count; "
                "allowed: a whole number of at least 0"
            )
        count[answered, j] = np.round(raw[answered])
        mask[:, j] = answered
    return CountData(
        items=items,
        count=count,
        mask=mask,
        negative_binomial=np.array([it.kind == "negative_binomial" for it in items]),
    )


# --------------------------------------------------------------------------------------
# Likelihoods
# --------------------------------------------------------------------------------------


def ordinal_logp(category, linear, lower_cut, upper_cut, mask):
    """Ordered-logistic log-probability, elementwise (PyTensor).

    Parameters
    ----------
    category
        0-based observed categories (only used through ``lower_cut``/``upper_cut``).
    linear
        ``lambda * eta`` for each answer.
    lower_cut, upper_cut
        The cutpoints below and above each observed category (a large finite number stands
        in for -inf/+inf, which keeps gradients finite).
    mask
        1 for answered, 0 for missing (contributes 0).

    Returns
    -------
    TensorVariable
        ``log P(y = k) = log(logistic(b) - logistic(a))`` with ``b = tau_k - x`` and
        ``a = tau_{k-1} - x``, computed as
        ``-log1p(exp(-b)) - log1p(exp(a)) + log1p(-exp(a) exp(-b))``: exact, and with two
        exponentials per answer, which the gradient reuses (this is the most expensive term
        of the latent model's gradient). Finite for |a|, |b| < 700; the padded outer
        cutpoints (+-1000) give exp(-1000 - x) = 0, i.e. the one-sided terms.
    """
    import pytensor.tensor as pt

    exp_minus_upper = pt.exp(linear - upper_cut)
    exp_lower = pt.exp(lower_cut - linear)
    return mask * (
        -pt.log1p(exp_minus_upper) - pt.log1p(exp_lower) + pt.log1p(-exp_lower * exp_minus_upper)
    )


def binomial_logit_logp(count, logit_p, trials, log_coefficient):
    """Binomial log-probability on the logit scale, elementwise (PyTensor).

    ``log C(n, k) + k x - n softplus(x)``, with the log binomial coefficient passed as data:
    it does not depend on the parameters, and computing it from mutable data would cost
    three log-gamma evaluations per answer and gradient. Missing answers are 0 of 0 trials
    with coefficient 0, so they contribute 0.
    """
    import pytensor.tensor as pt

    return log_coefficient + count * logit_p - trials * pt.softplus(logit_p)


def masked_normal_logp(value, mu, sigma, mask):
    """Return the Normal log-density, counted only where ``mask`` is 1 (PyTensor)."""
    import pytensor.tensor as pt

    z = (value - mu) / sigma
    return mask * (-0.5 * z**2 - pt.log(sigma) - 0.5 * np.log(2 * np.pi))


def count_logp(count, log_mean, log_alpha, negative_binomial, mask, log_factorial):
    """Poisson or negative-binomial log-probability with a log link, elementwise (PyTensor).

    Poisson: ``y x - exp(x) - log y!``. Negative binomial with mean ``mu = exp(x)`` and
    shape ``alpha`` (``Var = mu + mu**2 / alpha``): ``lgamma(y + alpha) - lgamma(alpha) -
    log y! + alpha log(alpha / (alpha + mu)) + y log(mu / (alpha + mu))``, with the two logs
    computed from ``x`` and ``log alpha`` by ``logaddexp`` (stable for large means).
    ``negative_binomial`` (0/1 per item) selects the form; missing answers contribute 0.
    """
    import pytensor.tensor as pt

    poisson = count * log_mean - pt.exp(log_mean) - log_factorial
    alpha = pt.exp(log_alpha)
    log_total = pt.logaddexp(log_alpha, log_mean)  # log(alpha + mu)
    nb = (
        pt.gammaln(count + alpha)
        - pt.gammaln(alpha)
        - log_factorial
        + alpha * (log_alpha - log_total)
        + count * (log_mean - log_total)
    )
    return mask * pt.switch(negative_binomial > 0, nb, poisson)


def normal_logp_numpy(value: np.ndarray, mu: np.ndarray, sigma: float) -> np.ndarray:
    """Return the normal log-density (NumPy reference for tests)."""
    from scipy import stats

    return stats.norm.logpdf(value, loc=mu, scale=sigma)


def count_logp_numpy(
    count: np.ndarray, log_mean: np.ndarray, alpha: float | None = None
) -> np.ndarray:
    """Poisson (``alpha=None``) or negative-binomial log-probability (NumPy reference)."""
    from scipy import stats

    mu = np.exp(log_mean)
    if alpha is None:
        return stats.poisson.logpmf(count, mu)
    return stats.nbinom.logpmf(count, alpha, alpha / (alpha + mu))


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def ordinal_logp_numpy(
    category: np.ndarray, linear: np.ndarray, cutpoints: np.ndarray
) -> np.ndarray:
    """Ordered-logistic log-probability in NumPy (reference for tests).

    ``cutpoints`` is the unpadded ``(K - 1,)`` vector of one item.
    """
    tau = np.concatenate([[-np.inf], np.asarray(cutpoints, float), [np.inf]])
    upper = 1.0 / (1.0 + np.exp(-(tau[category + 1] - linear)))
    lower = 1.0 / (1.0 + np.exp(-(tau[category] - linear)))
    return np.log(upper - lower)


def binomial_logp_numpy(count: np.ndarray, trials: np.ndarray, logit_p: np.ndarray) -> np.ndarray:
    """Binomial log-probability with a logit-scale success probability (NumPy)."""
    from scipy.special import gammaln

    return (
        gammaln(trials + 1)
        - gammaln(count + 1)
        - gammaln(trials - count + 1)
        + count * _log_sigmoid(logit_p)
        + (trials - count) * _log_sigmoid(-logit_p)
    )


def _divisor(frame: pd.DataFrame, item: ItemSpec, positive: np.ndarray) -> np.ndarray:
    """Return the product of an item's ``divided_by`` columns (positive where the item is)."""
    product = np.ones(len(frame))
    for col in item.divided_by:
        product = product * _column(frame, col, item.name)
    bad = positive & ~(np.nan_to_num(product, nan=-1.0) > 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise SurveyDataError(
            f"item {item.name!r}: row {row + 2} has a positive amount but the product of "
            f"divided_by columns {', '.join(item.divided_by)} is {product[row]:g}; allowed: "
            "a positive product wherever the amount is positive"
        )
    return product


def hurdle_lognormal_logp_numpy(
    value: np.ndarray, mu: np.ndarray, sigma: float, logit_positive: np.ndarray | None
) -> np.ndarray:
    """Hurdle-lognormal log-density of raw amounts (NumPy).

    ``log P(y = 0) = log(1 - p)`` and ``log p + LogNormal(y | mu, sigma)`` for ``y > 0``, with
    ``p = logistic(logit_positive)``; ``logit_positive=None`` conditions on the zeros (their
    contribution is 0 and positives get the lognormal density only).
    """
    from scipy import stats

    value = np.asarray(value, float)
    out = np.zeros_like(value)
    pos = value > 0
    out[pos] = stats.lognorm.logpdf(
        value[pos], s=sigma, scale=np.exp(np.broadcast_to(mu, value.shape)[pos])
    )
    if logit_positive is not None:
        lp = np.broadcast_to(logit_positive, value.shape)
        out[pos] += _log_sigmoid(lp[pos])
        out[~pos] = _log_sigmoid(-lp[~pos])
    return out


# --------------------------------------------------------------------------------------
# Simulation
# --------------------------------------------------------------------------------------


def simulate_items(
    items: Sequence[ItemSpec],
    eta: pd.DataFrame,
    params: dict[str, dict[str, object]],
    rng: np.random.Generator,
    frame: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Draw item answers given factor values (the measurement model forwards).

    Parameters
    ----------
    items
        Declared items.
    eta
        Factor values, one column per factor, one row per household.
    params
        Per item name: ``loading`` and ``cutpoints`` (ordinal), ``intercept`` (binomial,
        poisson, and ``alpha`` for negative_binomial), ``mu``, ``sigma`` (normal; of the log
        for ``log = true``) and ``mu``, ``sigma`` and optionally ``zero_intercept``,
        ``zero_loading`` (hurdle; raw log scale); optionally ``offset``, an array added to
        the item's linear predictor (its direct covariate effects).
    rng
        Random generator.
    frame
        Household columns used as binomial trials (e.g. ``household_size``).

    Returns
    -------
    pandas.DataFrame
        One column per item, coded as the survey codes it.
    """
    out = {}
    for it in items:
        p = params[it.name]
        x = float(p["loading"]) * eta[it.factor].to_numpy()
        if "offset" in p:
            x = x + np.asarray(p["offset"], float)
        n = x.size
        if it.kind == "ordinal":
            tau = np.asarray(p["cutpoints"], float)
            cum = 1.0 / (1.0 + np.exp(-(tau[None, :] - x[:, None])))
            k = (rng.random(n)[:, None] > cum).sum(axis=1)
            out[it.name] = np.asarray(it.levels)[k]
        elif it.kind == "binomial":
            trials = (
                frame[it.trials].to_numpy(dtype=int)
                if isinstance(it.trials, str)
                else np.full(n, int(it.trials))
            )
            prob = 1.0 / (1.0 + np.exp(-(float(p["intercept"]) + x)))
            y = rng.binomial(trials, prob)
            out[it.name] = y / trials if it.proportion else y
        elif it.kind == "normal":
            value = float(p["mu"]) + x + float(p["sigma"]) * rng.standard_normal(n)
            out[it.name] = np.exp(value) if it.log else value
        elif it.kind in ("poisson", "negative_binomial"):
            mean = np.exp(float(p["intercept"]) + x)
            if it.kind == "negative_binomial":
                alpha = float(p["alpha"])
                mean = rng.gamma(alpha, mean / alpha)
            out[it.name] = rng.poisson(mean)
        else:
            amount = np.exp(float(p["mu"]) + x + float(p["sigma"]) * rng.standard_normal(n))
            if "zero_intercept" in p:
                lz = float(p["zero_intercept"]) + float(p.get("zero_loading", p["loading"])) * (
                    eta[it.factor].to_numpy()
                )
                amount = np.where(rng.random(n) < 1.0 / (1.0 + np.exp(-lz)), amount, 0.0)
            out[it.name] = amount
    return pd.DataFrame(out, index=eta.index)
