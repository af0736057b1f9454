"""The paper's measurement step: one principal-component score per integration dimension.

Yang & Xu (2024, section 3.3.1) standardize the indicators of each dimension, run a PCA on
their correlation matrix, keep components by the Kaiser criterion (eigenvalue > 1) and
score households on the first component, standardized to mean 0 and sd 1. They report the
first component's share of variance, the Kaiser-Meyer-Olkin measure of sampling adequacy
(KMO) and Bartlett's test of sphericity (Table 2 and the text). This module does the same,
fixes the sign of each component so that a higher score means more integration, and keeps
the fitted standardization so that counterfactual rows can be scored on the same scale.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from factor_analyzer.factor_analyzer import calculate_bartlett_sphericity, calculate_kmo

from pari_bayes._paths import PUBLISHED_DIR
from pari_bayes.codebook import Codebook
from pari_bayes.errors import EstimationError, PariBayesWarning, SurveyDataError

__all__ = [
    "DimensionPCA",
    "PCAResult",
    "pca_scores",
    "fit_dimension_pca",
    "fit_pca",
    "published_pca",
]

#: Columns of :attr:`PCAResult.diagnostics`, in order.
DIAGNOSTIC_COLUMNS = ("dimension", "item", "statistic", "value", "published", "diff")


@dataclass(frozen=True)
class DimensionPCA:
    """The fitted PCA of one dimension: everything needed to score new rows.

    Attributes
    ----------
    dimension
        Dimension name.
    items
        Indicator columns, in codebook order.
    item_means, item_sds
        Means and sample sds (ddof=1) used to standardize the items.
    eigenvalues
        Eigenvalues of the item correlation matrix, largest first.
    weights
        Unit-length first eigenvector, sign fixed so that the loadings sum to a positive
        number (higher score = more integrated, as every item is coded that way).
    loadings
        Component loadings (correlations of items with the first component):
        ``weights * sqrt(eigenvalues[0])``.
    score_mean, score_sd
        Mean and sd (ddof=1) of the raw component score in the fitting data; subtracted
        and divided so that fitted scores have mean 0 and sd 1.
    kmo, kmo_items
        Overall and per-item KMO.
    bartlett_chi2, bartlett_df, bartlett_p
        Bartlett's test of sphericity.
    n
        Rows used.

    """

    dimension: str
    items: tuple[str, ...]
    item_means: np.ndarray
    item_sds: np.ndarray
    eigenvalues: np.ndarray
    weights: np.ndarray
    loadings: np.ndarray
    score_mean: float
    score_sd: float
    kmo: float
    kmo_items: np.ndarray
    bartlett_chi2: float
    bartlett_df: float
    bartlett_p: float
    n: int

    @property
    def n_kaiser(self) -> int:
        """Components kept by the Kaiser criterion (eigenvalue > 1)."""
        return int(np.sum(self.eigenvalues > 1.0))

    @property
    def variance_explained_pct(self) -> float:
        """Share of the total (standardized) variance carried by the first component, in %."""
        return float(100.0 * self.eigenvalues[0] / len(self.items))

    def score(self, x: np.ndarray) -> np.ndarray:
        """Score an item matrix with the fitted standardization, weights, sign and scaling.

        Parameters
        ----------
        x
            Array (n, p) of the items, columns in :attr:`items` order.

        Returns
        -------
        numpy.ndarray
            One score per row (mean 0 and sd 1 on the fitting data).

        """
        z = (np.asarray(x, dtype=float) - self.item_means) / self.item_sds
        return (z @ self.weights - self.score_mean) / self.score_sd

    def transform(self, data: pd.DataFrame) -> pd.Series:
        """Score rows with the fitted standardization, weights, sign and scaling."""
        missing = [c for c in self.items if c not in data.columns]
        if missing:
            raise SurveyDataError(
                f"cannot score dimension {self.dimension}: missing indicator column(s) "
                f"{', '.join(missing)}; the fitted PCA needs {', '.join(self.items)}."
            )
        scores = self.score(data[list(self.items)].to_numpy(dtype=float))
        return pd.Series(scores, index=data.index, name=self.dimension)


@dataclass
class PCAResult:
    """PCA scores and diagnostics of every dimension.

    Attributes
    ----------
    scores
        One column per dimension (in the codebook's ``dimensions`` order), indexed
        like the input data; mean 0, sd 1, higher = more integrated.
    diagnostics
        Tidy frame with columns dimension, item, statistic, value, published, diff.
        Dimension-level statistics (``item`` empty): n, n_items, eigenvalue_<k>,
        n_components_kaiser, variance_explained_pct, kmo, bartlett_chi2, bartlett_df,
        bartlett_p. Item-level statistics: loading, weight, kmo_item, mean, sd (mean and sd
        beside Table 2's published values).
    fits
        The fitted :class:`DimensionPCA` per dimension.
    notes
        Plain-language notes (e.g. more than one component passing the Kaiser criterion).

    """

    scores: pd.DataFrame
    diagnostics: pd.DataFrame
    fits: dict[str, DimensionPCA]
    notes: list[str] = field(default_factory=list)

    def transform(self, new_data: pd.DataFrame) -> pd.DataFrame:
        """Score other rows (e.g. counterfactual surveys) on the fitted scales.

        The same item means/sds, component weights, sign and final mean/sd are applied, so a
        score of 0.5 means the same in ``new_data`` as in the fitting data.

        Parameters
        ----------
        new_data
            Rows with the indicator columns.

        Returns
        -------
        pandas.DataFrame
            One column per dimension, indexed like ``new_data``.

        """
        return pd.DataFrame({dim: fit.transform(new_data) for dim, fit in self.fits.items()})

    def summary(self) -> pd.DataFrame:
        """One row per dimension: share of variance, KMO, Bartlett, Kaiser, with published."""
        d = self.diagnostics
        rows = []
        for dim in self.fits:
            sub = d[(d["dimension"] == dim) & (d["item"] == "")].set_index("statistic")
            rows.append(
                {
                    "dimension": dim,
                    "n_items": int(sub.loc["n_items", "value"]),
                    "n_components_kaiser": int(sub.loc["n_components_kaiser", "value"]),
                    "variance_explained_pct": sub.loc["variance_explained_pct", "value"],
                    "published_variance_explained_pct": sub.loc[
                        "variance_explained_pct", "published"
                    ],
                    "kmo": sub.loc["kmo", "value"],
                    "published_kmo": sub.loc["kmo", "published"],
                    "bartlett_chi2": sub.loc["bartlett_chi2", "value"],
                    "bartlett_p": sub.loc["bartlett_p", "value"],
                    "published_bartlett_p": sub.loc["bartlett_p", "published"],
                }
            )
        return pd.DataFrame(rows)


def published_pca() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read the published Table 2 PCA summary and indicator table (``data/published``)."""
    pca = pd.read_csv(PUBLISHED_DIR / "table2_pca.csv")
    items = pd.read_csv(PUBLISHED_DIR / "table2_indicators.csv")
    return pca, items


def _kmo_bartlett(z: np.ndarray) -> tuple[np.ndarray, float, float, float, float]:
    """KMO (per item, overall) and Bartlett (chi2, df, p) via factor_analyzer."""
    p = z.shape[1]
    if p < 2:
        return np.array([np.nan]), np.nan, np.nan, np.nan, np.nan
    with warnings.catch_warnings():
        # factor_analyzer warns when it falls back to a pseudo-inverse; our own check of
        # the correlation matrix (below) reports singular item sets more clearly.
        warnings.simplefilter("ignore")
        kmo_items, kmo = calculate_kmo(z)
        chi2, pval = calculate_bartlett_sphericity(z)
    return np.asarray(kmo_items, dtype=float), float(kmo), float(chi2), p * (p - 1) / 2, float(pval)


def fit_dimension_pca(data: pd.DataFrame, dimension: str, items: tuple[str, ...]) -> DimensionPCA:
    """Fit the PCA of one dimension.

    Parameters
    ----------
    data
        Survey rows holding ``items``.
    dimension
        Dimension name (used in messages and results).
    items
        Indicator columns of the dimension.

    Returns
    -------
    DimensionPCA

    Raises
    ------
    SurveyDataError
        If an item is missing, has missing values or does not vary.

    """
    missing = [c for c in items if c not in data.columns]
    if missing:
        raise SurveyDataError(
            f"dimension {dimension}: indicator column(s) {', '.join(missing)} not in the data; "
            "the codebook lists the items of each dimension."
        )
    return fit_pca(data[list(items)].to_numpy(dtype=float), dimension, items)


def fit_pca(
    x: np.ndarray, dimension: str = "items", items: Sequence[str] | None = None
) -> DimensionPCA:
    """Fit the PCA of one dimension's item matrix (the array form of :func:`fit_dimension_pca`).

    Parameters
    ----------
    x
        Array (n, p) of the dimension's indicators.
    dimension
        Dimension name (used in messages and results).
    items
        Names of the columns of ``x``; ``column 1`` ... ``column p`` when omitted.

    Returns
    -------
    DimensionPCA
        The fit; ``fit.score(x)`` gives the standardized first-component scores.

    Raises
    ------
    SurveyDataError
        If there are fewer than 3 rows, or an item has missing values or does not vary.

    """
    x = np.asarray(x, dtype=float).reshape(len(x), -1)
    if items is None:
        items = tuple(f"column {j + 1}" for j in range(x.shape[1]))
    if len(x) < 3:
        raise SurveyDataError(
            f"dimension {dimension}: {len(x)} household(s); a PCA needs at least 3."
        )
    bad = [items[j] for j in range(x.shape[1]) if not np.all(np.isfinite(x[:, j]))]
    if bad:
        raise SurveyDataError(
            f"dimension {dimension}: indicator(s) {', '.join(bad)} hold missing or infinite "
            "values; validate the survey with `pari-bayes validate` first."
        )
    means = x.mean(axis=0)
    sds = x.std(axis=0, ddof=1)
    flat = [f"{items[j]} (every value {x[0, j]:g})" for j in range(x.shape[1]) if sds[j] == 0]
    if flat:
        raise SurveyDataError(
            f"dimension {dimension}: indicator(s) {', '.join(flat)} do not vary, so they "
            "cannot be standardized; a PCA needs variation in every item."
        )
    z = (x - means) / sds
    corr = np.atleast_2d(np.corrcoef(z, rowvar=False))
    eigval, eigvec = np.linalg.eigh(corr)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = eigval[order], eigvec[:, order]
    weights = eigvec[:, 0].copy()
    if weights.sum() < 0:  # loadings are weights * sqrt(eigval): same sign as their sum
        weights = -weights
    loadings = weights * np.sqrt(eigval[0])
    raw = z @ weights
    score_sd = float(raw.std(ddof=1))
    if not score_sd > 0:
        raise EstimationError(f"dimension {dimension}: the first component score does not vary.")
    kmo_items, kmo, chi2, df, pval = _kmo_bartlett(z)
    return DimensionPCA(
        dimension=dimension,
        items=tuple(items),
        item_means=means,
        item_sds=sds,
        eigenvalues=eigval,
        weights=weights,
        loadings=loadings,
        score_mean=float(raw.mean()),
        score_sd=score_sd,
        kmo=kmo,
        kmo_items=kmo_items,
        bartlett_chi2=chi2,
        bartlett_df=df,
        bartlett_p=pval,
        n=len(x),
    )


def _diagnostics(fits: dict[str, DimensionPCA]) -> pd.DataFrame:
    pub_pca, pub_items = published_pca()
    pub_pca = pub_pca.set_index("dimension")
    pub_items = pub_items.set_index("indicator")

    def published(dim: str, stat: str) -> float:
        column = {
            "variance_explained_pct": "variance_explained_pct",
            "kmo": "kmo",
            "bartlett_p": "bartlett_p",
        }.get(stat)
        if column is None or dim not in pub_pca.index:
            return np.nan
        return float(pub_pca.loc[dim, column])

    def published_item(item: str, stat: str) -> float:
        if stat not in ("mean", "sd") or item not in pub_items.index:
            return np.nan
        return float(pub_items.loc[item, stat])

    rows: list[tuple[str, str, str, float, float]] = []
    for dim, fit in fits.items():
        level = [
            ("n", fit.n),
            ("n_items", len(fit.items)),
            *((f"eigenvalue_{k + 1}", fit.eigenvalues[k]) for k in range(len(fit.items))),
            ("n_components_kaiser", fit.n_kaiser),
            ("variance_explained_pct", fit.variance_explained_pct),
            ("kmo", fit.kmo),
            ("bartlett_chi2", fit.bartlett_chi2),
            ("bartlett_df", fit.bartlett_df),
            ("bartlett_p", fit.bartlett_p),
        ]
        rows.extend((dim, "", stat, float(v), published(dim, stat)) for stat, v in level)
        for j, item in enumerate(fit.items):
            for stat, v in (
                ("loading", fit.loadings[j]),
                ("weight", fit.weights[j]),
                ("kmo_item", fit.kmo_items[j] if len(fit.items) > 1 else np.nan),
                ("mean", fit.item_means[j]),
                ("sd", fit.item_sds[j]),
            ):
                rows.append((dim, item, stat, float(v), published_item(item, stat)))
    frame = pd.DataFrame(rows, columns=list(DIAGNOSTIC_COLUMNS[:-1]))
    frame["diff"] = frame["value"] - frame["published"]
    return frame


def pca_scores(data: pd.DataFrame, codebook: Codebook) -> PCAResult:
    """Score every household on the first principal component of each dimension.

    Parameters
    ----------
    data
        Validated survey rows (``Survey.data``) holding the indicator columns.
    codebook
        Codebook naming each dimension's indicators (``Survey.codebook``).

    Returns
    -------
    PCAResult
        ``scores`` (mean 0, sd 1, higher = more integrated), ``diagnostics`` beside the
        published Table 2 values, the fitted PCAs (``fits``) and ``transform`` for new rows.

    Raises
    ------
    SurveyDataError
        If a dimension has no indicators in the codebook, or an item is missing, has
        missing values or does not vary.

    Examples
    --------
    >>> import pari_bayes as pb
    >>> from pari_bayes.measurement import pca_scores
    >>> survey = pb.load_survey()  # doctest: +SKIP
    >>> result = pca_scores(survey.data, survey.codebook)  # doctest: +SKIP
    >>> result.summary()  # doctest: +SKIP

    """
    indicators = codebook.indicators
    absent = [d for d in codebook.dimensions if d not in indicators]
    if absent:
        raise SurveyDataError(
            f"{codebook.path}: no indicator is assigned to dimension(s) {', '.join(absent)}; "
            'give indicators role = "indicator" and dimension = <name>.'
        )
    dims = list(codebook.dimensions)
    fits = {dim: fit_dimension_pca(data, dim, indicators[dim]) for dim in dims}
    notes = []
    for dim, fit in fits.items():
        if fit.n_kaiser != 1:
            notes.append(
                f"dimension {dim}: {fit.n_kaiser} components have an eigenvalue above 1 "
                f"(eigenvalues {', '.join(f'{v:.3f}' for v in fit.eigenvalues)}); the paper "
                "reports one per dimension, and the score uses the first component only"
            )
    for message in notes:
        warnings.warn(message, PariBayesWarning, stacklevel=2)
    scores = pd.DataFrame({dim: fit.transform(data) for dim, fit in fits.items()})
    return PCAResult(scores=scores, diagnostics=_diagnostics(fits), fits=fits, notes=notes)
