"""PCA measurement (paper section 3.3.1): scores, KMO, Bartlett, against plain numpy."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import pari_bayes as pb
from pari_bayes.codebook import DIMENSIONS
from pari_bayes.errors import SurveyDataError
from pari_bayes.measurement import fit_dimension_pca, pca_scores
from pari_bayes.measurement.pca import DIAGNOSTIC_COLUMNS, fit_pca


def _correlated(n: int = 200, p: int = 4, seed: int = 0, strength: float = 0.8) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    factor = rng.normal(size=n)
    loadings = np.linspace(0.4, 1.2, p) * strength
    x = factor[:, None] * loadings + rng.normal(size=(n, p))
    return pd.DataFrame(x * np.arange(1, p + 1) + 3.0, columns=[f"item{j}" for j in range(p)])


def _kmo_numpy(x: np.ndarray) -> tuple[np.ndarray, float]:
    """KMO from the anti-image: partial correlations from the inverse correlation matrix."""
    r = np.corrcoef(x, rowvar=False)
    inv = np.linalg.inv(r)
    d = np.sqrt(np.diag(inv))
    q = -inv / np.outer(d, d)
    off = ~np.eye(len(r), dtype=bool)
    r2, q2 = np.where(off, r**2, 0), np.where(off, q**2, 0)
    return r2.sum(0) / (r2.sum(0) + q2.sum(0)), r2.sum() / (r2.sum() + q2.sum())


def _bartlett_numpy(x: np.ndarray) -> tuple[float, float, float]:
    n, p = x.shape
    r = np.corrcoef(x, rowvar=False)
    chi2 = -(n - 1 - (2 * p + 5) / 6) * np.log(np.linalg.det(r))
    df = p * (p - 1) / 2
    return chi2, df, stats.chi2.sf(chi2, df)


@pytest.fixture(scope="module")
def simulated():
    from pari_bayes.simulate import simulate_survey

    sim = simulate_survey(n_households=287, seed=11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pb.validate_frame(sim.data, pb.load_registry(), pb.load_codebook())


def test_kmo_and_bartlett_match_plain_numpy():
    data = _correlated()
    fit = fit_dimension_pca(data, "test", tuple(data.columns))
    kmo_items, kmo = _kmo_numpy(data.to_numpy())
    chi2, df, pval = _bartlett_numpy(data.to_numpy())
    np.testing.assert_allclose(fit.kmo_items, kmo_items, rtol=1e-8)
    assert fit.kmo == pytest.approx(kmo, rel=1e-8)
    assert fit.bartlett_chi2 == pytest.approx(chi2, rel=1e-8)
    assert fit.bartlett_df == df == 6
    assert fit.bartlett_p == pytest.approx(pval, rel=1e-6, abs=1e-300)


def test_kmo_of_two_items_is_one_half():
    # Known result: with two items the partial correlation equals the correlation.
    data = _correlated(p=2, seed=3)
    fit = fit_dimension_pca(data, "pair", tuple(data.columns))
    assert fit.kmo == pytest.approx(0.5, abs=1e-12)
    np.testing.assert_allclose(fit.kmo_items, [0.5, 0.5], atol=1e-12)


def test_bartlett_does_not_reject_independent_items_but_rejects_correlated():
    rng = np.random.default_rng(5)
    independent = pd.DataFrame(rng.normal(size=(300, 3)), columns=list("abc"))
    assert fit_dimension_pca(independent, "x", ("a", "b", "c")).bartlett_p > 0.001
    data = _correlated(n=300, p=3, seed=5, strength=1.5)
    assert fit_dimension_pca(data, "y", tuple(data.columns)).bartlett_p < 1e-6


def test_first_component_matches_svd_of_standardized_items():
    data = _correlated(p=4, seed=7)
    fit = fit_dimension_pca(data, "d", tuple(data.columns))
    x = data.to_numpy()
    z = (x - x.mean(0)) / x.std(0, ddof=1)
    _, sing, vt = np.linalg.svd(z, full_matrices=False)
    eig = sing**2 / (len(z) - 1)
    np.testing.assert_allclose(fit.eigenvalues, eig, rtol=1e-10)
    assert fit.variance_explained_pct == pytest.approx(100 * eig[0] / eig.sum(), rel=1e-10)
    assert fit.n_kaiser == int((eig > 1).sum())
    score = fit.transform(data)
    svd_score = z @ vt[0]
    assert abs(np.corrcoef(score, svd_score)[0, 1]) == pytest.approx(1.0, abs=1e-12)
    # loadings are the correlations of the items with the component score
    corr = [np.corrcoef(x[:, j], score)[0, 1] for j in range(x.shape[1])]
    np.testing.assert_allclose(fit.loadings, corr, rtol=1e-8)


def test_array_fit_is_the_frame_fit():
    data = _correlated(p=3, seed=4)
    fit = fit_dimension_pca(data, "d", tuple(data.columns))
    arr = fit_pca(data.to_numpy(), "d", tuple(data.columns))
    for name in ("eigenvalues", "weights", "loadings", "item_means", "kmo_items"):
        np.testing.assert_array_equal(getattr(arr, name), getattr(fit, name))
    assert (arr.kmo, arr.bartlett_p, arr.score_sd) == (fit.kmo, fit.bartlett_p, fit.score_sd)
    np.testing.assert_array_equal(arr.score(data.to_numpy()), fit.transform(data).to_numpy())
    assert fit_pca(data.to_numpy()).items == ("column 1", "column 2", "column 3")
    with pytest.raises(SurveyDataError, match="column 2"):
        fit_pca(np.column_stack([data.to_numpy()[:, 0], np.ones(len(data))]))


def test_sign_is_fixed_so_that_higher_means_more_integrated():
    data = _correlated(p=3, seed=9)
    fit = fit_dimension_pca(data, "d", tuple(data.columns))
    flipped = fit_dimension_pca(-data, "d", tuple(data.columns))
    assert fit.loadings.sum() > 0 and flipped.loadings.sum() > 0
    # reversing every item reverses the score
    np.testing.assert_allclose(fit.transform(data), -flipped.transform(-data), atol=1e-10)


def test_scores_standardized_and_transform_reuses_the_fit(simulated):
    result = pca_scores(simulated.data, simulated.codebook)
    assert list(result.scores.columns) == list(DIMENSIONS)
    assert result.scores.index.equals(simulated.data.index)
    np.testing.assert_allclose(result.scores.mean(), 0, atol=1e-12)
    np.testing.assert_allclose(result.scores.std(ddof=1), 1, atol=1e-12)
    # a subset scored with transform keeps the full-sample scale (not re-standardized)
    subset = simulated.data.iloc[:25]
    pd.testing.assert_frame_equal(result.transform(subset), result.scores.iloc[:25])
    # raising an item with a positive loading raises the score
    dim = "behavior_adaptation"
    fit = result.fits[dim]
    item = fit.items[int(np.argmax(fit.loadings))]
    shifted = subset.copy()
    shifted[item] = shifted[item] + 1
    assert np.all(result.transform(shifted)[dim] > result.scores[dim].iloc[:25])


def test_diagnostics_are_tidy_with_published_values(simulated):
    result = pca_scores(simulated.data, simulated.codebook)
    d = result.diagnostics
    assert tuple(d.columns) == DIAGNOSTIC_COLUMNS
    published = pd.read_csv(pb._paths.PUBLISHED_DIR / "table2_pca.csv").set_index("dimension")
    for dim in DIMENSIONS:
        share = d[(d.dimension == dim) & (d.statistic == "variance_explained_pct")].iloc[0]
        assert share.published == published.loc[dim, "variance_explained_pct"]
        assert share.value == pytest.approx(result.fits[dim].variance_explained_pct)
        items = simulated.codebook.indicators[dim]
        loadings = d[(d.dimension == dim) & (d.statistic == "loading")]
        assert list(loadings.item) == list(items)
        assert (d[(d.dimension == dim) & (d.statistic == "kmo_item")].value.between(0, 1)).all()
    summary = result.summary()
    assert list(summary.dimension) == list(DIMENSIONS)
    assert summary.kmo.between(0, 1).all()


def test_constant_item_is_reported():
    data = _correlated(p=3)
    data["item1"] = 2.0
    with pytest.raises(SurveyDataError, match=r"item1 \(every value 2\) do not vary"):
        fit_dimension_pca(data, "d", tuple(data.columns))


def test_missing_item_is_reported(simulated):
    frame = simulated.data.drop(columns=["new_friends"])
    with pytest.raises(SurveyDataError, match="neighborly_interaction.*new_friends"):
        pca_scores(frame, simulated.codebook)
    result = pca_scores(simulated.data, simulated.codebook)
    with pytest.raises(SurveyDataError, match="missing indicator column.*new_friends"):
        result.transform(frame)
