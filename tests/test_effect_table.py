"""One effects schema: every producer's rows validate as an EffectTable (issue 13).

Producers: multilevel g-computation (``effects_table``), the latent model (``_effect_row``,
``latent_effects``), IPW's common rows, the main job's OLS adapter. A frame that is not in
the schema raises our error naming the column; the IPW participation model takes its
covariates from the DAG's adjustment set when one is given.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import stats

from pari_bayes.effects import (
    EFFECT_COLUMNS,
    EffectTable,
    effects_table,
    validate_effects,
)
from pari_bayes.errors import EstimationError, PariBayesWarning

# --------------------------------------------------------------------------- producers


def _predict(de: float, ie: float, shape=(2, 300), n_households: int = 5):
    """Potential means with noisy draws: Y(1,1) - Y(0,1) = de, Y(0,1) - Y(0,0) = ie."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(*shape, n_households, 1))
    noise_de = rng.normal(0, 0.1, size=(*shape, 1, 1))
    noise_ie = rng.normal(0, 0.1, size=(*shape, 1, 1))

    def predict(a, s, scope, new_z):  # noqa: ARG001
        return base + s * (ie + noise_ie) + a * (de + noise_de)

    return predict


def test_multilevel_effects_table_is_an_effect_table():
    table = effects_table(
        _predict(0.4, 0.3),
        ["d1"],
        alphas=(0.5,),
        rng=np.random.default_rng(1),
        shape=(2, 300),
    )
    validate_effects(table)
    assert list(table.columns) == list(EFFECT_COLUMNS)
    assert (table["interval"] == "posterior").all() and (table["method"] == "bayes").all()
    assert table["ess_tail"].notna().all() and (table["ess_tail"] > 100).all()
    obs = table[table["scope"] == "observed"].set_index("estimand")
    assert obs.loc["DE", "mean"] == pytest.approx(0.4, abs=0.02)
    assert obs.loc["TE", "mean"] == pytest.approx(0.7, abs=0.03)
    assert obs.loc["OE", "alpha"] == 0.5 and np.isnan(obs.loc["DE", "alpha"])
    assert set(table["scope"]) == {"observed", "new"}
    # and the method label is the caller's
    relabelled = effects_table(_predict(0.4, 0.3), ["d1"], scopes=("observed",), method="x")
    assert set(relabelled["method"]) == {"x"}


def test_latent_effect_row_is_an_effect_table():
    import pari_bayes.estimation.latent as L

    rng = np.random.default_rng(2)
    draws = rng.normal(0.25, 0.1, size=2 * 400)  # two chains, stored one after the other
    row = L._effect_row("f1", "OE", 0.5, "new", draws, n_chains=2)
    assert isinstance(row, EffectTable) and len(row) == 1
    validate_effects(row.frame)
    r = row.frame.iloc[0]
    assert (r["dimension"], r["estimand"], r["alpha"], r["scope"]) == ("f1", "OE", 0.5, "new")
    assert r["mean"] == pytest.approx(draws.mean())
    assert r["q05"] == pytest.approx(np.quantile(draws, 0.05))
    assert r["prob_positive"] == pytest.approx((draws > 0).mean())
    assert r["r_hat"] < 1.02 and r["ess_tail"] > 200 and r["interval"] == "posterior"


def test_latent_effects_table_is_an_effect_table_and_keeps_ess_tail_for_the_gate():
    import pari_bayes.estimation.latent as L

    chains, draws, dims = 2, 200, 2
    rng = np.random.default_rng(3)
    shape = (chains, draws, dims)
    posterior = xr.Dataset(
        {
            "direct_effect": (("chain", "draw", "dimension"), rng.normal(0.5, 0.1, shape)),
            "spillover_effect": (("chain", "draw", "dimension"), rng.normal(-0.2, 0.1, shape)),
            "community_sd": (("chain", "draw", "dimension"), np.full(shape, 0.3)),
            "community_deviation": (
                ("chain", "draw", "community", "dimension"),
                rng.normal(size=(chains, draws, 3, dims)),
            ),
        }
    )
    design = SimpleNamespace(
        presence=np.array([1, 0, 1]),
        community_index=np.array([0, 0, 1, 1, 2, 2]),
        participation=np.array([1, 0, 0, 0, 1, 1]),
        n=6,
        x=np.zeros((6, 1)),
    )
    spec = SimpleNamespace(factors=("f1", "f2"), alphas=(0.25,))
    table = L.latent_effects(SimpleNamespace(posterior=posterior), design, spec, seed=1)
    validate_effects(table)
    assert table["ess_tail"].notna().all()  # the latent gate reads it
    de = table[(table["estimand"] == "DE") & (table["scope"] == "observed")]
    assert de.set_index("dimension")["mean"].to_numpy() == pytest.approx(
        posterior["direct_effect"].mean(("chain", "draw")).to_numpy()
    )
    # OE at the observed participation rate in CBO communities (3/4) and at 0.25
    assert sorted(table.loc[table["estimand"] == "OE", "alpha"].unique()) == [0.25, 0.75]


def test_ipw_common_rows_are_an_effect_table():
    from pari_bayes.estimation.ipw import _KEY_MARGINAL, _common_rows, _Quantity

    def q(est, infl):
        return _Quantity(est, np.asarray(infl, float))

    quantities = {
        (1, 0.4): q(2.0, [0.3, 0.0, 0.0]),
        (0, 0.4): q(1.5, [0.0, 0.4, 0.0]),
        (0, 0.0): q(1.0, [0.0, 0.0, 0.2]),
        (_KEY_MARGINAL, 0.4): q(1.7, [0.1, 0.1, 0.0]),
    }
    table = _common_rows("d1", quantities, 0.4, [0.4], n_groups=3)
    validate_effects(table.frame)
    rows = table.frame.set_index("estimand")
    assert rows.loc["DE", "mean"] == pytest.approx(0.5)
    assert rows.loc["IE", "mean"] == pytest.approx(0.5)
    assert rows.loc["TE", "mean"] == pytest.approx(1.0)
    assert rows.loc["OE", "mean"] == pytest.approx(0.7) and rows.loc["OE", "alpha"] == 0.4
    se_de = np.hypot(0.3, 0.4)
    assert rows.loc["DE", "sd"] == pytest.approx(se_de)
    assert rows.loc["DE", "q95"] - rows.loc["DE", "q05"] == pytest.approx(
        2 * stats.norm.ppf(0.95) * se_de
    )
    assert (rows["interval"] == "normal").all() and (rows["method"] == "ipw").all()
    assert rows["prob_positive"].isna().all() and rows["note"].str.contains("3 groups").all()


def _table4_like():
    terms = ("cbo_participation", "cbo_existence", "direct_effect", "age")
    coefficients = pd.DataFrame(
        {
            "dimension": "d1",
            "term": terms,
            "coef": [0.6, 0.4, 0.2, 9.0],
            "se": [0.1, 0.1, 0.1, 1.0],
            "se_cr2": [0.2, 0.2, 0.2, 1.0],
            "df_cr2": [2.5, 2.5, np.nan, 3.0],
        }
    )
    adjusted = coefficients.iloc[:3].assign(coef=[0.5, 0.3, 0.2])
    return SimpleNamespace(coefficients=coefficients, adjusted=adjusted)


def test_ols_adapter_is_an_effect_table():
    from pari_bayes.pipeline import _ols_effects

    table = _ols_effects(_table4_like())
    validate_effects(table.frame)
    f = table.frame
    assert list(f["method"]) == ["ols", "ols_cr2"] * 3 + ["ols_dag_cr2"] * 3
    assert "age" not in set(f["estimand"])  # only the effect terms become rows
    te = f[f["estimand"] == "TE"].set_index("method")
    assert te.loc["ols", "interval"] == "normal" and np.isnan(te.loc["ols", "df"])
    assert te.loc["ols", "q95"] == pytest.approx(0.6 + stats.norm.ppf(0.95) * 0.1)
    assert te.loc["ols_cr2", "interval"] == "t" and te.loc["ols_cr2", "df"] == 2.5
    assert te.loc["ols_cr2", "q05"] == pytest.approx(0.6 - stats.t.ppf(0.95, 2.5) * 0.2)
    assert te.loc["ols_dag_cr2", "mean"] == 0.5
    # an undefined df leaves the interval empty rather than pretending it is normal
    de = f[(f["estimand"] == "DE") & (f["method"] == "ols_cr2")].iloc[0]
    assert np.isnan(de["q05"]) and de["interval"] == "t"


def test_concat_and_csv_round_trip(tmp_path):
    from pari_bayes.pipeline import _ols_effects

    bayes = EffectTable(effects_table(_predict(0.4, 0.3), ["d1"], scopes=("observed",)))
    both = EffectTable.concat([bayes, _ols_effects(_table4_like())])
    assert len(both) == len(bayes) + 9
    path = both.to_csv(tmp_path / "effects.csv")
    back = EffectTable.read_csv(path)
    pd.testing.assert_frame_equal(back.frame, both.frame, rtol=1e-5)


# --------------------------------------------------------------------------- bad frames


def _good_frame() -> pd.DataFrame:
    return EffectTable.from_estimates(
        [{"dimension": "d", "estimand": "DE"}], [1.0], [0.5], method="m"
    ).frame


def test_missing_and_extra_columns_are_named():
    with pytest.raises(EstimationError, match=r"missing column\(s\) 'ess_tail'"):
        EffectTable(_good_frame().drop(columns=["ess_tail"]))
    with pytest.raises(EstimationError, match=r"unexpected column\(s\) 'status'"):
        EffectTable(_good_frame().assign(status="UNCONVERGED"))
    with pytest.raises(EstimationError, match=r"missing column\(s\) 'method'.*unexpected.*'x'"):
        validate_effects(_good_frame().rename(columns={"method": "x"}))


def test_bad_values_are_named():
    with pytest.raises(EstimationError, match=r"column 'estimand' has value\(s\) XE"):
        EffectTable(_good_frame().assign(estimand="XE"))
    with pytest.raises(EstimationError, match=r"column 'scope'"):
        EffectTable(_good_frame().assign(scope="everywhere"))
    with pytest.raises(EstimationError, match=r"column 'mean' must be numeric"):
        EffectTable(_good_frame().assign(mean="big"))
    with pytest.raises(EstimationError, match=r"column 'df' is empty"):
        EffectTable(_good_frame().assign(interval="t"))


def test_coerce_reads_older_effect_files_and_marks_unconverged():
    legacy = pd.DataFrame(
        {
            "dimension": ["d"],
            "estimand": ["TE"],
            "scope": ["observed"],
            "mean": [0.3],
            "r_hat": [1.2],
            "status": ["UNCONVERGED"],
        }
    )
    table = EffectTable.coerce(legacy, method="bayes:m")
    row = table.frame.iloc[0]
    assert row["method"] == "bayes:m" and row["note"] == "UNCONVERGED"
    assert np.isnan(row["ess_tail"]) and row["r_hat"] == 1.2
    with pytest.raises(EstimationError, match=r"missing column\(s\) 'mean'"):
        EffectTable.coerce(legacy.drop(columns=["mean"]))


# --------------------------------------------------------------------------- ipw --dag


def _fake_identification(sets: dict[str, tuple[str, ...]]):
    """Stands in for IdentificationResult: adjustment_set(estimand, dimension)."""
    calls = []

    def adjustment_set(estimand, dimension):
        calls.append(estimand)
        return sets[dimension]

    return SimpleNamespace(
        dimensions=tuple(sets), adjustment_set=adjustment_set, dag_path="fake.dot", calls=calls
    )


def test_propensity_covariates_come_from_the_adjustment_set():
    from pari_bayes.estimation.ipw import SURVEY_COVARIATES, survey_propensity_covariates

    assert survey_propensity_covariates(["a", "b"]) == {
        "a": SURVEY_COVARIATES,
        "b": SURVEY_COVARIATES,
    }
    ident = _fake_identification({"a": ("age", "not_a_column"), "b": ("gender",)})
    got = survey_propensity_covariates(["a", "b"], ident, columns=["age", "gender"])
    assert got == {"a": ("age",), "b": ("gender",)} and set(ident.calls) == {"DE"}
    with pytest.raises(EstimationError, match="not both"):
        survey_propensity_covariates(["a"], ident, covariates=["age"])


def test_a_dag_with_another_adjustment_set_changes_the_ipw_propensity_model(tmp_path):
    from conftest import make_fake_survey
    from pari_bayes.codebook import load_codebook
    from pari_bayes.estimation.ipw import SURVEY_COVARIATES, write_ipw_survey
    from pari_bayes.registry import load_registry
    from pari_bayes.survey import validate_frame

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PariBayesWarning)
        survey = validate_frame(make_fake_survey(160, seed=3), load_registry(), load_codebook())
        default = write_ipw_survey(survey, _mk(tmp_path, "a"))
        dims = list(default.covariates)
        sets = {d: ("age", "gender") for d in dims}
        sets[dims[0]] = ("residence_months",)
        dag = write_ipw_survey(
            survey, _mk(tmp_path, "b"), identification=_fake_identification(sets)
        )
    assert set(default.covariates.values()) == {SURVEY_COVARIATES}
    assert dag.covariates == sets
    # one participation model per distinct set, labelled by its dimensions
    prop = pd.read_csv(tmp_path / "b" / "ipw_propensity.csv")
    first = prop[prop["dimensions"] == dims[0]]
    assert "residence_months" in set(first["term"]) and "age" not in set(first["term"])
    rest = prop[prop["dimensions"] == " ".join(dims[1:])]
    assert {"age", "gender"} <= set(rest["term"]) and "income_level" not in set(rest["term"])
    # the estimates move with the covariates (DE at the observed allocation)
    de_default = default.common[default.common["estimand"] == "DE"]["mean"].to_numpy()
    de_dag = dag.common[dag.common["estimand"] == "DE"]["mean"].to_numpy()
    assert not np.allclose(de_default, de_dag)
    assert (
        "adjustment set of DE on the DAG fake.dot" in (tmp_path / "b" / "ipw_notes.txt").read_text()
    )


def _mk(tmp_path, name):
    path = tmp_path / name
    path.mkdir()
    return path


def test_effects_module_imports_nothing_from_estimation():
    import ast
    from pathlib import Path

    import pari_bayes.effects as effects

    tree = ast.parse(Path(effects.__file__).read_text(encoding="utf-8"))
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert not [m for m in imported if m and m.startswith("pari_bayes.estimation")]


def test_comparison_table_without_ols_leaves_the_ols_columns_empty():
    from pari_bayes.effects import comparison_table

    table = effects_table(_predict(0.4, 0.3), ["behavior_adaptation"], scopes=("observed",))
    comp = comparison_table(table, survey=object())  # no refit: the survey is not used
    assert set(comp["estimand"]) == {"DE", "IE", "TE"}
    assert comp["ols_coef"].isna().all() and comp["published_coef"].notna().all()


def test_main_job_fills_a_fits_comparison_from_its_ols_step(tmp_path):
    from pari_bayes.effects import comparison_table
    from pari_bayes.pipeline import _fill_comparison

    effects = effects_table(_predict(0.4, 0.3), ["behavior_adaptation"], scopes=("observed",))
    comparison_table(effects).assign(status="UNCONVERGED").to_csv(
        tmp_path / "comparison.csv", index=False
    )
    coefficients = pd.DataFrame(
        {
            "dimension": "behavior_adaptation",
            "term": ["cbo_participation", "cbo_existence", "direct_effect"],
            "with_cbo_terms": 1,
            "coef": [0.7, 0.8, -0.1],
            "se": 0.2,
            "se_cluster": 0.3,
            "p_cluster": 0.1,
        }
    )
    table = EffectTable.coerce(effects, method="bayes:table4")  # the fit's rows, in memory
    _fill_comparison(tmp_path, SimpleNamespace(coefficients=coefficients), table)
    filled = pd.read_csv(tmp_path / "comparison.csv").set_index("estimand")
    assert filled.loc["TE", "ols_coef"] == 0.7 and filled.loc["DE", "ols_coef"] == -0.1
    assert (filled["status"] == "UNCONVERGED").all()
    assert filled.loc["TE", "bayes_mean"] == pytest.approx(0.7, abs=0.03)
