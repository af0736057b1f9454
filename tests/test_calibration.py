"""Calibration of the bundled survey to the published figures, and the audit rules."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from pari_bayes.calibration import (
    audit_published,
    bhatia_davis_sd,
    calibration_targets,
    fast_ols,
    fast_pca,
    granularity_ok,
    implied_income_scale,
    published_tables,
    write_calibration,
)
from pari_bayes.cli import main
from pari_bayes.survey import load_survey


@pytest.fixture(scope="module")
def tables():
    return published_tables()


@pytest.fixture(scope="module")
def survey():
    return load_survey()


@pytest.fixture(scope="module")
def result(survey, tmp_path_factory):
    out = tmp_path_factory.mktemp("calibration")
    return write_calibration(survey, out), out


def test_bhatia_davis_bound():
    n = 287
    assert bhatia_davis_sd(0.5, 0, 1, n) == pytest.approx(math.sqrt(0.25 * n / (n - 1)))
    # two-point data at the ends attain the bound
    x = np.r_[np.zeros(100), np.ones(187)]
    assert x.std(ddof=1) == pytest.approx(bhatia_davis_sd(x.mean(), 0, 1, len(x)))
    assert bhatia_davis_sd(1.0, 1, 3) == 0.0


def test_granularity():
    assert not granularity_ok(0.159, 1.0, 287)[0]  # 45/287 = 0.1568, 46/287 = 0.1603
    assert granularity_ok(0.160, 1.0, 287)[0]
    assert granularity_ok(0.652, 1.0, 287)[0]  # 187/287
    ok, near = granularity_ok(0.159, 1.0, 287)
    assert any(abs(v - 46 / 287) < 1e-3 for v in near)


def test_audit_detects_a_planted_impossible_sd(tables):
    planted = copy.deepcopy(tables)
    t2 = planted["table2"]
    row = t2["indicator"] == "economic_pressure"
    # mean 1.394 on 1..3 allows an sd of at most sqrt(1.606 * 0.394) ~ 0.795
    t2.loc[row, "sd"] = 0.95
    audit = audit_published(planted)
    hits = audit[(audit["variable"] == "economic_pressure") & (audit["statistic"] == "sd")]
    assert len(hits) == 1 and "Bhatia-Davis" in hits["finding"].iloc[0]
    clean = audit_published(tables)
    assert clean[(clean["variable"] == "economic_pressure") & (clean["statistic"] == "sd")].empty


def test_audit_findings_on_the_paper(tables):
    audit = audit_published(tables)
    assert list(audit.columns) == [
        "table",
        "variable",
        "statistic",
        "published",
        "finding",
        "action",
    ]
    sd_rows = audit[audit["statistic"] == "sd"]
    # the two 1/2-coded identity items print sds above what a two-valued item allows
    assert {"mate_selection_advantage", "psychological_distance"} <= set(sd_rows["variable"])
    # shares that no count out of 287 rounds to
    shares = audit[audit["statistic"] == "share"]
    assert {"participant", "nonparticipant_cbo"} <= set(shares["variable"])
    assert "no_cbo" not in set(shares["variable"])  # 187 / 287 = 65.16%
    # hukou: Table 3's label contradicts the text
    assert not audit[(audit["variable"] == "hukou") & (audit["statistic"] == "coding")].empty
    # income: the regression scale implied by Table 4's SEs is ~13.5, not 1.306
    scale = audit[
        (audit["variable"] == "income_level") & (audit["statistic"] == "implied regressor sd")
    ]
    assert len(scale) == 1 and "13." in scale["finding"].iloc[0]
    # a consistent figure is not flagged
    assert audit[(audit["variable"] == "new_friends") & (audit["statistic"] == "sd")].empty


def test_implied_income_scale(tables):
    implied = implied_income_scale(tables)
    assert 31 < implied["mean"] < 35
    assert 11 < implied["sd"] < 17


def test_targets_use_nearest_feasible_values(tables):
    targets = calibration_targets(tables)
    row = targets[
        (targets["variable"] == "mate_selection_advantage") & (targets["statistic"] == "sd")
    ]
    assert row["published"].iloc[0] == pytest.approx(0.748)
    assert row["target"].iloc[0] < 0.44
    part = targets[(targets["variable"] == "participant") & (targets["statistic"] == "share")]
    assert part["target"].iloc[0] * 287 == pytest.approx(round(part["target"].iloc[0] * 287))


def test_fast_ols_matches_statsmodels():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3))
    y = X @ [1.0, -0.5, 0.2] + rng.normal(size=50)
    fit = fast_ols(y, X, ["a", "b", "c"])
    ref = sm.OLS(y, np.column_stack([X, np.ones(50)])).fit()
    np.testing.assert_allclose(fit.coef, ref.params)
    np.testing.assert_allclose(fit.se, ref.bse)
    assert fit.adj_r2 == pytest.approx(ref.rsquared_adj)
    assert fit.aic == pytest.approx(ref.aic)


def test_fast_pca_share_and_sign():
    rng = np.random.default_rng(1)
    f = rng.normal(size=400)
    items = np.column_stack([f + rng.normal(size=400) * s for s in (0.5, 0.8, 1.0)])
    score, share, kmo = fast_pca(items)
    corr = np.corrcoef(items, rowvar=False)
    assert share == pytest.approx(100 * np.linalg.eigvalsh(corr)[-1] / 3)
    assert np.corrcoef(score, f)[0, 1] > 0.8  # sign: higher = more of the factor
    assert score.std(ddof=1) == pytest.approx(1.0)
    assert 0.5 < kmo < 1


def test_calibration_table_rows(result, tables):
    res, out = result
    cal = res.calibration
    assert sorted(p.name for p in out.iterdir()) == ["audit.csv", "calibration.csv"]
    cols = [
        "source",
        "variable",
        "statistic",
        "published",
        "target",
        "achieved",
        "difference",
        "tolerance",
        "within_tolerance",
    ]
    assert cols == list(cal.columns[: len(cols)])
    # one row per published figure
    n_t2 = len(tables["table2"]) * 4
    assert (cal["source"] == "Table 2").sum() == n_t2
    assert (cal["source"] == "Table 3").sum() == len(tables["table3"]) * 3
    assert (cal["statistic"] == "coef").sum() == len(tables["table4"]) == 64
    assert (cal["statistic"] == "adj_r2").sum() == 8
    np.testing.assert_allclose(cal["difference"], cal["achieved"] - cal["published"])


def _known_gaps(cal: pd.DataFrame) -> pd.Series:
    """Rows the generator cannot reach (docs/calibration.md, "Known gaps")."""
    return (cal["variable"] == "per_capita_employment_income") & (cal["statistic"] == "max")


def test_every_row_within_tolerance_or_explained(result):
    res, _ = result
    unexplained = res.unexplained
    unexplained = unexplained[~_known_gaps(unexplained)]
    assert unexplained.empty, unexplained[["source", "variable", "statistic", "target", "achieved"]]


@pytest.mark.xfail(
    strict=True,
    reason="known gap (docs/calibration.md): the employment income of Table 2 (lognormal "
    "given its covariates, with Table 2's mean and sd) has a sample maximum near 3500-4000 "
    "yuan, not the printed 9500",
)
def test_known_gap_rows_within_tolerance(result):
    cal = result[0].calibration
    gaps = cal[_known_gaps(cal)]
    assert gaps["within_tolerance"].all()


def test_economic_fit_meets_issue_3(result):
    """Models 1-2 (economic) through items -> PCA -> OLS: issue 3's targets."""
    cal = result[0].calibration
    economic = cal["source"].isin(["Table 4 (Model 1)", "Table 4 (Model 2)"]) | (
        cal["variable"] == "economic_integration"
    )
    rows = cal[economic]
    assert len(rows) == 16 + 2 + 2 + 2  # coefficients, CBO stars, adj R2, PCA share + KMO
    assert rows["within_tolerance"].all(), rows[~rows["within_tolerance"]].to_string()


def test_table4_reproduction_targets(result):
    cal = result[0].calibration
    coef = cal[cal["statistic"] == "coef"]
    se = (coef["achieved"] - coef["published"]).abs() / (coef["tolerance"] / 2)
    cbo = coef["variable"].isin(["cbo_participation", "cbo_existence"])
    # issue 3: CBO coefficients within 0.5 SE with the same stars, all others within 2 SE,
    # at least 56 of 64 within 1 SE
    assert ((coef["achieved"] - coef["published"]).abs() <= coef["tolerance"])[cbo].all()
    assert (se[~cbo] <= 2).all()
    stars = cal[cal["statistic"] == "stars"]
    assert len(stars) == 8 and stars["within_tolerance"].all()
    count = cal[cal["statistic"] == "count_within_1se"]
    assert count["within_tolerance"].all() and count["achieved"].iloc[0] >= 56
    r2 = cal[cal["statistic"] == "adj_r2"]
    assert ((r2["achieved"] - r2["published"]).abs() <= 0.03 + 1e-9).all()
    pca = cal[cal["source"] == "Table 2 (PCA)"]
    assert pca["within_tolerance"].all()


def test_exposure_shares_and_residence_hit(result):
    cal = result[0].calibration

    def row(variable, statistic):
        hit = cal[(cal["variable"] == variable) & (cal["statistic"] == statistic)]
        assert len(hit) == 1
        return hit.iloc[0]

    for key in ("participant", "nonparticipant_cbo", "no_cbo"):
        r = row(key, "share")
        assert abs(r["achieved"] - r["target"]) < 1 / 287
    assert bool(row("residence_months", "mean")["within_tolerance"])


def test_cli_calibrate(tmp_path, capsys):
    out = tmp_path / "cal"
    assert main(["calibrate", "--out", str(out)]) == 0
    assert "within tolerance" in capsys.readouterr().out
    assert pd.read_csv(out / "audit.csv").shape[0] > 0
    before = (out / "calibration.csv").read_bytes()
    assert main(["calibrate", "--out", str(out)]) == 2  # not empty, no --force
    assert "--force" in capsys.readouterr().err
    assert (out / "calibration.csv").read_bytes() == before


def test_calibration_runs_the_baseline_pca_and_ols(survey):
    from pari_bayes import calibration
    from pari_bayes.estimation import ols
    from pari_bayes.measurement.pca import pca_scores

    # one stars function, one Table 4 vocabulary: the baseline's
    assert calibration.stars is ols.stars
    assert calibration.TABLE4_TERMS is ols.TERMS
    assert calibration.MODEL_DIMENSION is ols.MODELS
    assert calibration.regressor_vifs is ols.regressor_vifs
    coefs, fits, pca = calibration.table4_statistics(survey.data, survey.codebook)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = ols.fit_table4(survey.data, n_boot=0, codebook=survey.codebook)
        reference = pca_scores(survey.data, survey.codebook)
    printed = table.coefficients[table.coefficients.term != ols.DIRECT_EFFECT]
    assert len(coefs) == 64
    np.testing.assert_array_equal(coefs["coef"], printed["coef"])
    np.testing.assert_array_equal(coefs["se"], printed["se"])
    assert list(coefs["stars"]) == list(printed["stars"])
    np.testing.assert_array_equal(fits["adj_r2"], table.fit["adj_r2"])
    for r in pca.itertuples():
        items = survey.data[list(survey.codebook.indicators[r.dimension])].to_numpy(float)
        score, share, kmo = fast_pca(items)
        np.testing.assert_array_equal(score, reference.scores[r.dimension])
        assert share == r.share == reference.fits[r.dimension].variance_explained_pct
        assert kmo == r.kmo == reference.fits[r.dimension].kmo


def test_audit_reliability_ceiling_flags_only_the_economic_fit(tables):
    audit = audit_published(tables)
    hits = audit[audit["statistic"].str.startswith("adj_r2")]
    assert set(hits["variable"]) == {"economic_integration"}
    assert "Armor's theta) is 0.621" in hits["finding"].iloc[0]
