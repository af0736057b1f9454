"""Causal effects from posterior draws by g-computation (partial interference).

Estimands (Hudgens & Halloran 2008), ``Y(a, s)`` = outcome under own participation ``a`` and
community CBO presence ``s``:

* DE = E[Y(1,1) - Y(0,1)] (direct), IE = E[Y(0,1) - Y(0,0)] (spillover),
* TE = E[Y(1,1) - Y(0,0)] = DE + IE (total),
* OE(alpha) = alpha Y(1,1) + (1 - alpha) Y(0,1) - Y(0,0) (overall effect of bringing CBOs
  to a community where a share ``alpha`` participates).

The expectation is standardization over the sample's covariate distribution: for every
posterior draw, the model's mean outcome of *every* household under (a, s) is averaged
over households. Any model can use this module: it only needs, per draw, the potential
means of every household under the three exposures (a function or arrays). The latent
model (issue 6) and the multilevel models share :func:`estimand_draws`,
:func:`summarize_draws` and :func:`effects_table`.

**One schema.** Every producer of DE/IE/TE/OE rows (multilevel g-computation, the latent
model, IPW, the OLS baselines of the main job) builds an :class:`EffectTable`: the columns
:data:`EFFECT_COLUMNS`, from posterior draws (:meth:`EffectTable.from_draws`) or from
frequentist estimates and standard errors (:meth:`EffectTable.from_estimates`). The main
job's ``effects_all.csv`` and the report read the same columns. This module imports nothing
from :mod:`pari_bayes.estimation` (estimators import it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pari_bayes.errors import EstimationError

__all__ = [
    "EFFECT_COLUMNS",
    "INTERVALS",
    "EffectTable",
    "validate_effects",
    "ESTIMANDS",
    "SCOPES",
    "EXPOSURES",
    "estimand_draws",
    "summarize_draws",
    "weighted_summary",
    "effects_table",
    "comparison_table",
]

#: Columns of every effects table (one schema: :class:`EffectTable`). The first twelve are
#: the historical ``effects.csv`` columns, in their order, so older readers keep working.
EFFECT_COLUMNS = (
    "dimension",
    "estimand",
    "alpha",
    "scope",
    "mean",
    "sd",
    "q05",
    "q50",
    "q95",
    "prob_positive",
    "ess_bulk",
    "r_hat",
    "ess_tail",
    "method",
    "interval",
    "df",
    "note",
)
#: How q05/q50/q95 were obtained: quantiles of posterior draws, or a Wald interval
#: ``mean -/+ z se`` (``normal``) or ``mean -/+ t_df se`` (``t``, ``df`` column).
INTERVALS = ("posterior", "normal", "t")
_TEXT = ("dimension", "estimand", "scope", "method", "interval", "note")
_NUMERIC = tuple(c for c in EFFECT_COLUMNS if c not in _TEXT)
#: Columns a legacy frame must have for :meth:`EffectTable.coerce` (the rest are filled).
_IDENTITY = ("dimension", "estimand", "scope", "mean")

ESTIMANDS = ("DE", "IE", "TE", "OE")
SCOPES = ("observed", "new")
#: The exposures (a, s) the estimands need; (1, 0) is never used (positivity).
EXPOSURES = ((1, 1), (0, 1), (0, 0))


def estimand_draws(
    means: Mapping[tuple[int, int], np.ndarray],
    alphas: Sequence[float] = (),
    weights: np.ndarray | None = None,
) -> dict[tuple[str, float | None], np.ndarray]:
    """Draws of DE, IE, TE and OE(alpha) from potential means.

    Parameters
    ----------
    means
        ``{(a, s): array}`` for (1, 1), (0, 1), (0, 0); each array has shape
        (chain, draw, household): the model's mean outcome of each household.
    alphas
        Participation rates for OE.
    weights
        Household weights of the standardization (equal by default).

    Returns
    -------
    dict
        ``{(estimand, alpha): array (chain, draw)}``; alpha is None except for OE.

    Examples
    --------
    >>> m = {(1, 1): np.full((1, 2, 3), 3.0), (0, 1): np.full((1, 2, 3), 1.0),
    ...      (0, 0): np.zeros((1, 2, 3))}
    >>> d = estimand_draws(m, alphas=[0.5])
    >>> float(d[("DE", None)].mean()), float(d[("OE", 0.5)].mean())
    (2.0, 2.0)
    """
    missing = [e for e in EXPOSURES if e not in means]
    if missing:
        raise EstimationError(
            f"potential means missing for exposure(s) {missing}; needed: {list(EXPOSURES)}"
        )
    shape = np.shape(means[(1, 1)])
    if any(np.shape(means[e]) != shape for e in EXPOSURES) or len(shape) != 3:
        raise EstimationError("potential means must all have shape (chain, draw, household)")
    w = np.full(shape[-1], 1.0 / shape[-1]) if weights is None else np.asarray(weights, float)
    w = w / w.sum()
    avg = {e: np.tensordot(np.asarray(means[e], float), w, axes=([-1], [0])) for e in EXPOSURES}
    y11, y01, y00 = avg[(1, 1)], avg[(0, 1)], avg[(0, 0)]
    out: dict[tuple[str, float | None], np.ndarray] = {
        ("DE", None): y11 - y01,
        ("IE", None): y01 - y00,
        ("TE", None): y11 - y00,
    }
    for alpha in alphas:
        out[("OE", float(alpha))] = alpha * y11 + (1 - alpha) * y01 - y00
    return out


def summarize_draws(draws: np.ndarray) -> dict[str, float]:
    """Mean, sd, 5/50/95% quantiles, P(> 0), bulk and tail ESS and R-hat of (chain, draw) draws.

    One-dimensional draws count as one chain (R-hat is then NaN); constant draws have ESS
    equal to their number and R-hat 1.
    """
    import arviz as az

    x = np.asarray(draws, float)
    if x.ndim == 1:
        x = x[None, :]
    flat = x.ravel()
    q05, q50, q95 = np.quantile(flat, [0.05, 0.5, 0.95])
    if np.ptp(flat) == 0:
        ess = tail = float(flat.size)
        rhat = 1.0
    else:
        ess = float(az.ess(x, method="bulk"))
        tail = float(az.ess(x, method="tail"))
        rhat = float(az.rhat(x)) if x.shape[0] > 1 else float("nan")
    return {
        "mean": float(flat.mean()),
        "sd": float(flat.std(ddof=1)) if flat.size > 1 else 0.0,
        "q05": float(q05),
        "q50": float(q50),
        "q95": float(q95),
        "prob_positive": float((flat > 0).mean()),
        "ess_bulk": ess,
        "r_hat": rhat,
        "ess_tail": tail,
    }


def weighted_summary(draws: np.ndarray, weights: np.ndarray | None = None) -> dict[str, float]:
    """Mean, sd, 5/50/95% quantiles and P(> 0) of flat draws under normalized weights.

    With ``weights=None`` the draws count equally. Quantiles interpolate the weighted
    empirical distribution function at the midpoints of each draw's weight.

    Examples
    --------
    >>> s = weighted_summary(np.array([0.0, 1.0]), np.array([0.25, 0.75]))
    >>> s["mean"], s["prob_positive"]
    (0.75, 0.75)
    """
    x = np.asarray(draws, float).ravel()
    w = np.full(x.size, 1.0 / x.size) if weights is None else np.asarray(weights, float).ravel()
    w = w / w.sum()
    order = np.argsort(x, kind="stable")
    xs, ws = x[order], w[order]
    cdf = np.cumsum(ws) - ws / 2
    mean = float(np.sum(w * x))
    var = float(np.sum(w * (x - mean) ** 2)) / max(1.0 - float(np.sum(w**2)), 1e-12)
    q05, q50, q95 = np.interp([0.05, 0.5, 0.95], cdf, xs)
    return {
        "mean": mean,
        "sd": float(np.sqrt(var)),
        "q05": float(q05),
        "q50": float(q50),
        "q95": float(q95),
        "prob_positive": float(np.sum(w[x > 0])),
    }


def _column_list(names: Iterable[str]) -> str:
    return ", ".join(repr(c) for c in names)


def validate_effects(frame: pd.DataFrame, what: str = "effects table") -> None:
    """Check that ``frame`` has exactly the :data:`EFFECT_COLUMNS` and valid codes.

    Parameters
    ----------
    frame
        Candidate effects table.
    what
        How the message names the table (e.g. a file name).

    Raises
    ------
    EstimationError
        Naming every missing or unexpected column, a non-numeric value in a numeric
        column, an unknown estimand, scope or interval kind, or a ``t`` interval without
        ``df``.
    """
    if not isinstance(frame, pd.DataFrame):
        raise EstimationError(f"{what}: expected a pandas DataFrame, got {type(frame).__name__}")
    columns = [str(c) for c in frame.columns]
    missing = [c for c in EFFECT_COLUMNS if c not in columns]
    extra = [c for c in columns if c not in EFFECT_COLUMNS]
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    problems = []
    if missing:
        problems.append(f"missing column(s) {_column_list(missing)}")
    if extra:
        problems.append(f"unexpected column(s) {_column_list(extra)}")
    if repeated:
        problems.append(f"repeated column(s) {_column_list(repeated)}")
    if problems:
        raise EstimationError(
            f"{what}: {'; '.join(problems)}; an EffectTable has exactly the columns "
            f"{', '.join(EFFECT_COLUMNS)}"
        )
    for column in _NUMERIC:
        values = frame[column]
        bad = pd.to_numeric(values, errors="coerce").isna() & values.notna()
        if bad.any():
            raise EstimationError(
                f"{what}: column {column!r} must be numeric; found {values[bad].iloc[0]!r}"
            )
    for column, allowed in (("estimand", ESTIMANDS), ("scope", SCOPES), ("interval", INTERVALS)):
        bad = sorted({str(v) for v in frame[column] if v not in allowed})
        if bad:
            raise EstimationError(
                f"{what}: column {column!r} has value(s) {', '.join(bad)}; "
                f"allowed: {', '.join(allowed)}"
            )
    t_rows = (frame["interval"] == "t") & pd.to_numeric(frame["q05"], errors="coerce").notna()
    if t_rows.any() and pd.to_numeric(frame.loc[t_rows, "df"], errors="coerce").isna().any():
        raise EstimationError(f"{what}: column 'df' is empty in a row with interval 't'")


def _normalized(frame: pd.DataFrame) -> pd.DataFrame:
    """Return the frame in schema order: numeric columns float, text columns str."""
    out = frame[list(EFFECT_COLUMNS)].copy()
    for column in _NUMERIC:
        out[column] = pd.to_numeric(out[column], errors="coerce").astype(float)
    for column in ("dimension", "estimand", "scope", "method", "interval"):
        out[column] = out[column].astype(str)
    out["note"] = out["note"].fillna("").astype(str)
    return out.reset_index(drop=True)


def _wald_quantile(df: float | None) -> float:
    """Return the 95% quantile of N(0, 1) (``df`` None or +inf) or of Student t(df).

    An undefined ``df`` (NaN) gives NaN: no interval rather than a wrong one.
    """
    from scipy import stats

    if df is None or df == np.inf:
        return float(stats.norm.ppf(0.95))
    if not np.isfinite(df):
        return float("nan")
    return float(stats.t.ppf(0.95, df))


@dataclass(frozen=True)
class EffectTable:
    """DE/IE/TE/OE rows of one or more methods in the one effects schema.

    The wrapped :attr:`frame` has exactly the columns :data:`EFFECT_COLUMNS` (checked on
    construction by :func:`validate_effects`, which raises
    :class:`~pari_bayes.errors.EstimationError` naming a missing or extra column):

    - ``dimension``, ``estimand`` (DE, IE, TE, OE), ``alpha`` (OE's participation rate,
      empty otherwise), ``scope`` (``observed`` communities or a ``new`` one);
    - ``mean``, ``sd`` and ``q05``/``q50``/``q95``: posterior mean, sd and quantiles, or a
      point estimate, its standard error and the 90% Wald interval (``q50`` = estimate);
    - ``prob_positive`` = P(effect > 0) under the posterior (empty for frequentist rows);
    - ``ess_bulk``, ``r_hat``, ``ess_tail``: convergence of the effect's draws (empty for
      frequentist rows);
    - ``method``: who produced the row (``bayes``/``bayes:<model>``, ``ipw``, ``ols``,
      ``ols_cr2``, ``ols_dag_cr2``, ...);
    - ``interval``: ``posterior`` (quantiles of draws), ``normal`` (``mean -/+ z se``) or
      ``t`` (``mean -/+ t_df se``), with ``df`` the t degrees of freedom;
    - ``note``: free text, e.g. ``UNCONVERGED`` for a fit that missed the gate.

    Producers return :attr:`frame` where a DataFrame is expected (the estimators' own
    code adds columns to it); consumers that read effect files use :meth:`read_csv`.
    """

    frame: pd.DataFrame

    def __post_init__(self) -> None:
        validate_effects(self.frame)
        object.__setattr__(self, "frame", _normalized(self.frame))

    def __len__(self) -> int:
        return len(self.frame)

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_draws(
        cls,
        draws: Mapping[tuple[str, str, float | None, str], np.ndarray]
        | Iterable[tuple[str, str, float | None, str, np.ndarray]],
        method: str = "bayes",
        n_chains: int | None = None,
        note: str = "",
    ) -> EffectTable:
        """Summarize posterior draws of effects, one row per key.

        Parameters
        ----------
        draws
            ``{(dimension, estimand, alpha, scope): draws}`` or an iterable of
            ``(dimension, estimand, alpha, scope, draws)``; ``alpha`` is None except for OE.
            Draws have shape (chain, draw), or are flat with ``n_chains``.
        method
            The producer's name.
        n_chains
            Chains of flat draws (stored chain after chain); flat draws without it count
            as one chain.
        note
            Text for every row.

        Returns
        -------
        EffectTable
            Rows in the order given; ``interval = "posterior"``.
        """
        items = (
            [(*key, value) for key, value in draws.items()]
            if isinstance(draws, Mapping)
            else list(draws)
        )
        rows = []
        for dimension, estimand, alpha, scope, x in items:
            x = np.asarray(x, float)
            if x.ndim == 1 and n_chains:
                x = x.reshape(int(n_chains), -1)
            rows.append(
                {
                    "dimension": dimension,
                    "estimand": estimand,
                    "alpha": np.nan if alpha is None else float(alpha),
                    "scope": scope,
                    **summarize_draws(x),
                    "method": method,
                    "interval": "posterior",
                    "df": np.nan,
                    "note": note,
                }
            )
        return cls(pd.DataFrame(rows, columns=list(EFFECT_COLUMNS)))

    @classmethod
    def from_estimates(
        cls,
        keys: pd.DataFrame | Sequence[Mapping],
        estimate: str | Sequence[float] | np.ndarray,
        se: str | Sequence[float] | np.ndarray,
        df: str | float | Sequence[float] | np.ndarray | None = None,
        method: str | None = None,
        note: str = "",
    ) -> EffectTable:
        """Rows from point estimates and standard errors (frequentist results).

        Parameters
        ----------
        keys
            One row per effect with ``dimension`` and ``estimand``, optionally ``alpha``
            (default empty), ``scope`` (default ``observed``), ``method`` and ``note``.
        estimate, se
            Column names of ``keys`` or arrays, one value per row.
        df
            None: normal (Wald z) intervals; else Student t degrees of freedom (a column
            name, a number or an array; ``inf`` means normal, NaN leaves the interval
            empty).
        method
            The producer's name (required unless ``keys`` has a ``method`` column).
        note
            Text for rows without their own ``note``.

        Returns
        -------
        EffectTable
            ``mean = q50 = estimate``, ``sd = se``, ``q05``/``q95`` = the 90% interval,
            ``interval`` ``normal`` or ``t``; posterior columns empty.

        Examples
        --------
        >>> t = EffectTable.from_estimates(
        ...     [{"dimension": "d", "estimand": "DE"}], [1.0], [0.5], method="ols")
        >>> round(float(t.frame["q95"][0]), 3), t.frame["interval"][0]
        (1.822, 'normal')
        """
        frame = pd.DataFrame(keys).reset_index(drop=True)
        n = len(frame)

        def values(arg, name: str) -> np.ndarray:
            if isinstance(arg, str):
                if arg not in frame.columns:
                    raise EstimationError(
                        f"from_estimates: column {arg!r} ({name}) not in the keys; "
                        f"columns: {', '.join(map(str, frame.columns))}"
                    )
                out = pd.to_numeric(frame[arg], errors="coerce").to_numpy(dtype=float)
            else:
                out = np.broadcast_to(np.asarray(arg, dtype=float), (n,)).astype(float)
            if out.shape != (n,):
                raise EstimationError(f"from_estimates: {name} needs {n} values")
            return out

        for column in ("dimension", "estimand"):
            if column not in frame.columns:
                raise EstimationError(f"from_estimates: the keys need a {column!r} column")
        if method is None and "method" not in frame.columns:
            raise EstimationError("from_estimates: give method= or a 'method' column")
        est, err = values(estimate, "estimate"), values(se, "se")
        dfs = np.full(n, np.inf) if df is None else values(df, "df")
        z = np.array([_wald_quantile(d) for d in dfs]) if n else np.zeros(0)
        out = pd.DataFrame(
            {
                "dimension": frame["dimension"],
                "estimand": frame["estimand"],
                "alpha": frame["alpha"] if "alpha" in frame.columns else np.nan,
                "scope": frame["scope"] if "scope" in frame.columns else "observed",
                "mean": est,
                "sd": err,
                "q05": est - z * err,
                "q50": est,
                "q95": est + z * err,
                "prob_positive": np.nan,
                "ess_bulk": np.nan,
                "r_hat": np.nan,
                "ess_tail": np.nan,
                "method": method if method is not None else frame["method"],
                "interval": np.where(dfs == np.inf, "normal", "t"),
                "df": np.where(np.isfinite(dfs), dfs, np.nan),
                "note": frame["note"].fillna(note) if "note" in frame.columns else note,
            },
            columns=list(EFFECT_COLUMNS),
        )
        return cls(out)

    @classmethod
    def coerce(
        cls, frame: pd.DataFrame, method: str | None = None, what: str = "effects table"
    ) -> EffectTable:
        """Bring an older or partial effects frame (an ``effects.csv``) into the schema.

        Columns the schema does not have are dropped (``status == "UNCONVERGED"`` or
        ``converged == false`` becomes ``note = "UNCONVERGED"``); missing ones are filled:
        ``method`` from the argument (which also overrides an existing column), numeric
        columns empty, ``interval`` ``posterior``, ``note`` empty.

        Raises
        ------
        EstimationError
            If ``dimension``, ``estimand``, ``scope`` or ``mean`` is missing (named).
        """
        missing = [c for c in _IDENTITY if c not in frame.columns]
        if missing:
            raise EstimationError(
                f"{what}: missing column(s) {_column_list(missing)}; an effects table needs "
                f"at least {', '.join(_IDENTITY)}"
            )
        out = frame.copy().reset_index(drop=True)
        unconverged = pd.Series(False, index=out.index)
        if "status" in out.columns:
            unconverged |= out["status"].astype(str).str.upper() == "UNCONVERGED"
        if "converged" in out.columns:
            unconverged |= out["converged"].astype(str).str.lower() == "false"
        for column in EFFECT_COLUMNS:
            if column not in out.columns:
                out[column] = {"interval": "posterior", "note": "", "method": "bayes"}.get(
                    column, np.nan
                )
        if method is not None:
            out["method"] = method
        note = out["note"].fillna("").astype(str)
        out["note"] = np.where(
            unconverged & ~note.str.contains("UNCONVERGED"),
            (note + " UNCONVERGED").str.strip(),
            note,
        )
        return cls(out[list(EFFECT_COLUMNS)])

    # ------------------------------------------------------------------ combine and write

    @classmethod
    def concat(cls, tables: Iterable[EffectTable | pd.DataFrame]) -> EffectTable:
        """Stack tables (each validated) into one."""
        frames = [t.frame if isinstance(t, EffectTable) else cls(t).frame for t in tables]
        if not frames:
            return cls(pd.DataFrame(columns=list(EFFECT_COLUMNS)))
        return cls(pd.concat(frames, ignore_index=True))

    @classmethod
    def read_csv(cls, path: str | os.PathLike, method: str | None = None) -> EffectTable:
        """Read an effects CSV (any producer's, older ones included) into the schema."""
        frame = pd.read_csv(path, keep_default_na=True)
        return cls.coerce(frame, method=method, what=str(path))

    def to_csv(self, path: str | os.PathLike) -> os.PathLike:
        """Write atomically (:func:`pari_bayes.io.write_csv`); returns the path."""
        from pari_bayes.io import write_csv

        return write_csv(self.frame, path)


def effects_table(
    predict: Callable[[int, int, str, np.ndarray | None], np.ndarray],
    dimensions: Sequence[str],
    alphas: Sequence[float] = (),
    rng: np.random.Generator | None = None,
    shape: tuple[int, int] | None = None,
    scopes: Sequence[str] = SCOPES,
    weights: np.ndarray | None = None,
    method: str = "bayes",
) -> pd.DataFrame:
    """Compute the effects table (``effects.csv`` format) by g-computation.

    Parameters
    ----------
    predict
        ``predict(a, s, scope, new_z)`` -> array (chain, draw, household, dimension) of
        mean outcomes under exposure (a, s). For ``scope = "new"`` the caller's model
        places every household in one new community whose random effects are
        ``new_z`` (standard normal draws, shape (chain, draw, dimension)); the same
        ``new_z`` is passed for every exposure, so contrasts compare the same community.
    dimensions
        Names of the last axis of ``predict``'s output.
    alphas
        Participation rates of OE (the observed rate, 0.25, 0.5).
    rng
        Source of ``new_z`` (seeded by the caller).
    shape
        (chain, draw), needed for ``new_z``.
    scopes
        ``observed`` and/or ``new``.
    weights
        Household weights of the standardization.
    method
        The ``method`` column (the main job relabels it ``bayes:<model>``).

    Returns
    -------
    pandas.DataFrame
        The :attr:`EffectTable.frame` of :meth:`EffectTable.from_draws` (columns
        :data:`EFFECT_COLUMNS`); one row per dimension x estimand (x alpha) x scope.
    """
    draws: dict[tuple[str, str, float | None, str], np.ndarray] = {}
    for scope in scopes:
        if scope not in SCOPES:
            raise EstimationError(f"scope {scope!r}; allowed: {', '.join(SCOPES)}")
        new_z = None
        if scope == "new":
            if shape is None:
                raise EstimationError("effects_table needs shape=(chain, draw) for scope new")
            rng = rng or np.random.default_rng(0)
            new_z = rng.standard_normal((*shape, len(dimensions)))
        means = {e: np.asarray(predict(e[0], e[1], scope, new_z)) for e in EXPOSURES}
        for k, dim in enumerate(dimensions):
            per_dim = estimand_draws({e: m[..., k] for e, m in means.items()}, alphas, weights)
            for (estimand, alpha), x in per_dim.items():
                draws[(dim, estimand, alpha, scope)] = x
    frame = EffectTable.from_draws(draws, method=method).frame
    order = {e: i for i, e in enumerate(ESTIMANDS)}
    frame["_d"] = frame["dimension"].map({d: i for i, d in enumerate(dimensions)})
    frame["_e"] = frame["estimand"].map(order)
    frame["_s"] = frame["scope"].map({s: i for i, s in enumerate(SCOPES)})
    frame = frame.sort_values(["_d", "_s", "_e", "alpha"], kind="stable", na_position="first")
    return frame.drop(columns=["_d", "_e", "_s"]).reset_index(drop=True)


#: Table 4 term of each estimand (participation = TE, existence = IE, DE = difference).
_OLS_TERM = {"TE": "cbo_participation", "IE": "cbo_existence", "DE": "direct_effect"}


def comparison_table(
    effects: pd.DataFrame, survey: object = None, ols: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Bayesian DE/IE/TE beside OLS (classical, cluster-robust) and the published values.

    Parameters
    ----------
    effects
        An effects table (scope ``observed`` rows are used).
    survey
        Accepted for compatibility and unused: this module no longer refits Table 4 by OLS
        inside every Bayesian fit (it imports nothing from the estimation layer). Without
        ``ols`` the OLS columns are empty; the main job fills them from its OLS step.
    ols
        OLS coefficients (``ols_table4.csv`` format: ``dimension``, ``term``,
        ``with_cbo_terms``, ``coef``, ``se``, ``se_cluster``, ``p_cluster``).

    Returns
    -------
    pandas.DataFrame
        One row per dimension and estimand (DE, IE, TE).
    """
    from pari_bayes._paths import PUBLISHED_DIR

    del survey
    published = pd.read_csv(PUBLISHED_DIR / "table4_ols.csv")
    rows = []
    sub = effects[(effects["scope"] == "observed") & effects["estimand"].isin(["DE", "IE", "TE"])]
    for _, r in sub.iterrows():
        dim, est = r["dimension"], r["estimand"]
        row = {
            "dimension": dim,
            "estimand": est,
            "bayes_mean": r["mean"],
            "bayes_sd": r["sd"],
            "bayes_q05": r["q05"],
            "bayes_q95": r["q95"],
        }
        o = None
        if ols is not None:
            m = ols[
                (ols["dimension"] == dim)
                & (ols["term"] == _OLS_TERM[est])
                & (ols["with_cbo_terms"].astype(int) == 1)
            ]
            o = m.iloc[0] if len(m) else None
        row.update(
            {
                "ols_coef": o["coef"] if o is not None else np.nan,
                "ols_se": o["se"] if o is not None else np.nan,
                "ols_se_cluster": o["se_cluster"] if o is not None else np.nan,
                "ols_p_cluster": o["p_cluster"] if o is not None else np.nan,
            }
        )
        p = published[(published["dimension"] == dim) & (published["with_cbo_terms"] == 1)]
        te = p[p["term"] == "cbo_participation"]
        ie = p[p["term"] == "cbo_existence"]
        if est == "TE" and len(te):
            pub, pub_se = te["coef"].iloc[0], te["se"].iloc[0]
        elif est == "IE" and len(ie):
            pub, pub_se = ie["coef"].iloc[0], ie["se"].iloc[0]
        elif est == "DE" and len(te) and len(ie):
            pub, pub_se = te["coef"].iloc[0] - ie["coef"].iloc[0], np.nan  # no covariance printed
        else:
            pub, pub_se = np.nan, np.nan
        row.update({"published_coef": pub, "published_se": pub_se})
        rows.append(row)
    return pd.DataFrame(rows)
