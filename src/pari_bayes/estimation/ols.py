"""The paper's baseline: OLS Models 1-8 of Table 4, with few-cluster inference.

Models 1, 3, 5, 7 regress each dimension's PCA score on residence months and controls;
Models 2, 4, 6, 8 add CBO participation and CBO existence (paper's coding: existence = 1
only for non-participants in a CBO community), so the participation coefficient is the
total effect, the existence coefficient the spillover effect, and their difference the
direct effect. Besides the paper's classical standard errors, every coefficient gets
cluster-robust (CR1, CR2) standard errors and a wild cluster bootstrap p-value, because the
households sit in a handful of communities and CBO presence varies only between them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.outliers_influence import variance_inflation_factor

from pari_bayes._paths import DEFAULT_SURVEY, PUBLISHED_DIR
from pari_bayes.codebook import Codebook, load_codebook
from pari_bayes.errors import EstimationError, PariBayesWarning, SurveyDataError
from pari_bayes.estimation.few_clusters import (
    WEBB_WEIGHTS,
    cluster_codes,
    cr2_tests,
    webb_weights,
    wild_cluster_bootstrap,
)
from pari_bayes.io import atomic_write_text, write_csv
from pari_bayes.measurement.pca import PCAResult, pca_scores

__all__ = [
    "DEFAULT_SEED",
    "MODELS",
    "table4_models",
    "TERMS",
    "OLSFit",
    "Table4Result",
    "classical_ols",
    "fit_table4",
    "regressor_vifs",
    "stars",
    "table4_markdown",
    "write_ols",
]

DEFAULT_SEED = 20240611

#: Our column -> the term name Table 4 prints, in the table's row order.
TERMS = {
    "residence_months": "residence_months",
    "age": "age",
    "gender": "gender",
    "offfarm_employed": "employment",
    "income_scale": "income_level",
    "urban_hukou": "hukou",
    "cbo_participation": "cbo_participation",
    "cbo_existence": "cbo_existence",
    "const": "const",
}
BASE_REGRESSORS = (
    "residence_months",
    "age",
    "gender",
    "offfarm_employed",
    "income_scale",
    "urban_hukou",
)
CBO_REGRESSORS = ("cbo_participation", "cbo_existence")
DIRECT_EFFECT = "direct_effect"
#: Row order of the outputs: Table 4's order, the implied direct effect after the CBO terms.
TERM_ORDER = (*list(TERMS.values())[:8], DIRECT_EFFECT, "const")


def table4_models(dimensions: Sequence[str]) -> dict[int, tuple[str, bool]]:
    """Model number -> (dimension, with CBO terms): two models per dimension, as Table 4.

    Models ``2i + 1`` and ``2i + 2`` are dimension ``i`` without and with the CBO terms.
    """
    return {
        2 * i + 1 + with_cbo: (dim, bool(with_cbo))
        for i, dim in enumerate(dimensions)
        for with_cbo in (0, 1)
    }


#: Table 4's Models 1-8 on the bundled codebook's dimensions (the paper's order).
MODELS = table4_models(load_codebook().dimensions)

LABELS = {
    "residence_months": "Residence months",
    "age": "Age",
    "gender": "Gender (male = 1)",
    "employment": "Off-farm employment",
    "income_level": "Income (regression scale)",
    "hukou": "Urban hukou",
    "cbo_participation": "CBO participation (total effect)",
    "cbo_existence": "CBO existence (spillover effect)",
    DIRECT_EFFECT: "Implied direct effect (participation - existence)",
    "const": "Constant",
}

COEF_COLUMNS = (
    "model",
    "dimension",
    "with_cbo_terms",
    "term",
    "coef",
    "se",
    "t",
    "p",
    "stars",
    "published_coef",
    "published_se",
    "published_stars",
    "diff_in_se",
    "se_cluster",
    "p_cluster",
    "stars_cluster",
    "se_cr2",
    "df_cr2",
    "p_cr2",
    "stars_cr2",
    "p_wild",
    "stars_wild",
    "vif",
    "published_vif",
)
FIT_COLUMNS = (
    "model",
    "dimension",
    "with_cbo_terms",
    "n",
    "r2",
    "adj_r2",
    "aic",
    "published_adj_r2",
    "published_aic",
    "published_n",
    "diff_adj_r2",
    "n_clusters",
    "n_treated_clusters",
)


def stars(p: float) -> str:
    """Significance stars as the paper prints them (* p<0.1, ** p<0.05, *** p<0.01)."""
    if p is None or not np.isfinite(p):
        return ""
    return "***" if p < 0.01 else "**" if p < 0.05 else "*" if p < 0.1 else ""


@dataclass(frozen=True)
class OLSFit:
    """One least-squares regression with the paper's classical standard errors.

    Attributes
    ----------
    names
        Regressor names, in the columns' order (Table 4's designs put ``const`` last).
    coef, se, p
        Coefficients, classical standard errors and two-sided t p-values.
    adj_r2, aic
        Adjusted R2 and Gaussian AIC.
    results
        The statsmodels results (covariance, residuals, degrees of freedom).

    """

    names: list[str]
    coef: np.ndarray
    se: np.ndarray
    p: np.ndarray
    adj_r2: float
    aic: float
    results: Any


def classical_ols(
    y: np.ndarray | pd.Series, X: np.ndarray | pd.DataFrame, names: Sequence[str] | None = None
) -> OLSFit:
    """Ordinary least squares with classical standard errors, as Table 4 prints them.

    Parameters
    ----------
    y
        Outcome, one value per row.
    X
        The full design, constant included (Table 4's designs have ``const`` last).
    names
        Column names when ``X`` is an array (a frame's columns otherwise).

    Returns
    -------
    OLSFit

    """
    res = sm.OLS(y, X).fit()
    if names is None:
        names = (
            list(X.columns) if isinstance(X, pd.DataFrame) else [f"x{j}" for j in range(X.shape[1])]
        )
    return OLSFit(
        names=list(names),
        coef=np.asarray(res.params, dtype=float),
        se=np.asarray(res.bse, dtype=float),
        p=np.asarray(res.pvalues, dtype=float),
        adj_r2=float(res.rsquared_adj),
        aic=float(res.aic),
        results=res,
    )


@dataclass
class Table4Result:
    """Table 4 reproduced, with few-cluster inference.

    Attributes
    ----------
    coefficients
        One row per (model, term), plus a ``direct_effect`` row per CBO model; columns
        :data:`COEF_COLUMNS` (``ols_table4.csv``).
    fit
        One row per model: n, R2, adjusted R2, AIC beside the published values
        (``ols_fit.csv``).
    models
        statsmodels results with classical standard errors, by model number.
    cluster_models
        The same fits with CR1 standard errors by community (t with G - 1 df).
    pca
        The measurement step, when the scores were computed here.
    notes
        Plain-language notes on the design and on what the inference can say.
    n_clusters, n_treated_clusters
        Communities, and communities with CBOs.
    n_boot, seed
        Wild bootstrap draws and seed.
    adjusted
        :func:`fit_adjusted_ols` on the run's DAG (``None`` unless asked for).

    """

    coefficients: pd.DataFrame
    fit: pd.DataFrame
    models: dict[int, object]
    cluster_models: dict[int, object]
    pca: PCAResult | None
    notes: list[str] = field(default_factory=list)
    n_clusters: int = 0
    n_treated_clusters: int = 0
    n_boot: int = 0
    seed: int = DEFAULT_SEED
    adjusted: pd.DataFrame | None = None


def _published() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    coefs = pd.read_csv(PUBLISHED_DIR / "table4_ols.csv", keep_default_na=False)
    coefs["coef"] = coefs["coef"].astype(float)
    coefs["se"] = coefs["se"].astype(float)
    fit = pd.read_csv(PUBLISHED_DIR / "table4_fit.csv")
    covariates = pd.read_csv(PUBLISHED_DIR / "table3_covariates.csv")
    return coefs, fit, covariates


def _check_inputs(
    data: pd.DataFrame, scores: pd.DataFrame, cluster: str, dimensions: Sequence[str]
) -> None:
    needed = [*BASE_REGRESSORS, *CBO_REGRESSORS, cluster]
    missing = [c for c in needed if c not in data.columns]
    if missing:
        raise SurveyDataError(
            f"Table 4 needs column(s) {', '.join(missing)}; pass Survey.data from "
            "pari_bayes.load_survey (it derives cbo_existence and income_scale)."
        )
    absent = [d for d in dimensions if d not in scores.columns]
    if absent:
        raise EstimationError(
            f"scores lack dimension column(s) {', '.join(absent)}; expected "
            f"{', '.join(dimensions)} (e.g. pca_scores(...).scores)."
        )
    if not scores.index.equals(data.index):
        raise EstimationError(
            "scores are not indexed like data; compute them from the same rows "
            "(pca_scores(data, codebook).scores)."
        )
    for name in [*BASE_REGRESSORS, *CBO_REGRESSORS]:
        if not np.all(np.isfinite(data[name].to_numpy(dtype=float))):
            raise SurveyDataError(f"column {name} holds missing or infinite values.")
    for dim in dimensions:
        if not np.all(np.isfinite(scores[dim].to_numpy(dtype=float))):
            raise EstimationError(f"score {dim} holds missing or infinite values.")


def _design(data: pd.DataFrame, with_cbo: bool, model: int) -> pd.DataFrame:
    columns = [*BASE_REGRESSORS, *(CBO_REGRESSORS if with_cbo else ())]
    X = data[columns].astype(float).copy()
    flat = [c for c in columns if X[c].nunique() < 2]
    if flat:
        values = ", ".join(f"{c} = {X[c].iloc[0]:g}" for c in flat)
        raise EstimationError(
            f"Model {model}: regressor(s) do not vary ({values} for every household), so "
            "the model is not identified. A survey without both CBO participants and "
            "non-participants in CBO communities cannot fit Models 2, 4, 6 and 8."
        )
    X["const"] = 1.0
    if np.linalg.matrix_rank(X.to_numpy()) < X.shape[1]:
        raise EstimationError(
            f"Model {model}: the regressors {', '.join(columns)} are collinear; "
            "Table 4 cannot be fitted on this survey."
        )
    return X


def _vif(X: pd.DataFrame) -> dict[str, float]:
    values = X.to_numpy()
    return {
        name: float(variance_inflation_factor(values, j))
        for j, name in enumerate(X.columns)
        if name != "const"
    }


def regressor_vifs(data: pd.DataFrame) -> dict[str, float]:
    """VIF of every Table 4 regressor in the CBO models (Table 3's VIF column).

    Parameters
    ----------
    data
        Rows holding :data:`BASE_REGRESSORS` and :data:`CBO_REGRESSORS`.

    Returns
    -------
    dict
        Regressor column -> 1 / (1 - R2) of its regression on the others and a constant.

    Raises
    ------
    EstimationError
        If a regressor does not vary or the regressors are collinear.

    """
    return _vif(_design(data, with_cbo=True, model=2))


def _treated_clusters(data: pd.DataFrame, cluster: str) -> int:
    if "cbo_presence" in data.columns:
        presence = data["cbo_presence"]
    else:
        presence = data["cbo_participation"] + data["cbo_existence"]
    return int((presence.groupby(data[cluster]).max() > 0).sum())


def fit_table4(
    data: pd.DataFrame,
    scores: pd.DataFrame | None = None,
    n_boot: int = 999,
    seed: int = DEFAULT_SEED,
    codebook: Codebook | None = None,
    cluster: str = "community",
    published: bool = True,
) -> Table4Result:
    """Fit Table 4's models with classical, cluster-robust and bootstrap inference.

    Two models per dimension of the codebook (without, then with the CBO terms): Models
    1-8 on the paper's four dimensions.

    Parameters
    ----------
    data
        Validated survey rows (``Survey.data``).
    scores
        Outcome scores, one column per dimension, indexed like ``data``; the paper's PCA
        scores (:func:`pari_bayes.measurement.pca_scores`) when omitted.
    n_boot
        Wild cluster bootstrap draws (Webb weights); 0 skips the bootstrap.
    seed
        Seed of the bootstrap weights (same seed, same p-values).
    codebook
        Codebook for the PCA when ``scores`` is omitted; the bundled one by default.
    cluster
        Column holding the cluster (community) of each household.
    published
        Put Yang & Xu's published values beside each model that is the paper's (same
        number, same dimension); ``False`` leaves the ``published_*`` columns empty (a
        survey other than the paper's).

    Returns
    -------
    Table4Result

    Raises
    ------
    SurveyDataError
        If a needed column is missing or holds missing values.
    EstimationError
        If a model is not identified (a regressor does not vary, collinear regressors)
        or the scores do not match the data.

    Examples
    --------
    >>> import pari_bayes as pb
    >>> from pari_bayes.estimation.ols import fit_table4
    >>> survey = pb.load_survey()  # doctest: +SKIP
    >>> table = fit_table4(survey.data, codebook=survey.codebook)  # doctest: +SKIP
    >>> table.coefficients.query("term == 'cbo_existence'")  # doctest: +SKIP

    """
    pca = None
    codebook = codebook if codebook is not None else load_codebook()
    if scores is None:
        pca = pca_scores(data, codebook)
        scores = pca.scores
    dimensions = codebook.dimensions
    _check_inputs(data, scores, cluster, dimensions)
    if n_boot < 0:
        raise EstimationError(f"n_boot must be 0 or more; got {n_boot}.")
    model_dims = table4_models(dimensions)
    pub_coefs, pub_fit, pub_cov = _published()
    # published values only where the model is the paper's (same number, same dimension)
    same = [
        model_dims.get(m, ("",))[0] == d
        for m, d in zip(pub_coefs["model"], pub_coefs["dimension"], strict=True)
    ]
    if not published:
        same = [False] * len(same)
    pub_coefs = pub_coefs[same].set_index(["model", "term"])
    same_fit = [
        model_dims.get(m, ("",))[0] == d
        for m, d in zip(pub_fit["model"], pub_fit["dimension"], strict=True)
    ]
    pub_fit = pub_fit[[published and x for x in same_fit]].set_index("model")
    pub_vif = dict(zip(pub_cov["variable"], pub_cov["vif"].astype(float), strict=True))
    labels, codes = cluster_codes(data[cluster].astype(str))
    n_clusters = len(labels)
    n_treated = _treated_clusters(data, cluster)
    clustered = n_clusters >= 2
    weights = webb_weights(n_clusters, n_boot, seed) if clustered and n_boot > 0 else None
    coef_rows: list[dict] = []
    fit_rows: list[dict] = []
    models: dict[int, object] = {}
    cluster_models: dict[int, object] = {}
    for model, (dim, with_cbo) in model_dims.items():
        X = _design(data, with_cbo, model)
        y = scores[dim].astype(float)
        res = classical_ols(y, X).results
        models[model] = res
        names = list(X.columns)
        contrasts = np.eye(len(names))
        row_terms = [TERMS[c] for c in names]
        if with_cbo:
            de = np.zeros(len(names))
            de[names.index("cbo_participation")] = 1.0
            de[names.index("cbo_existence")] = -1.0
            contrasts = np.vstack([contrasts, de])
            row_terms.append(DIRECT_EFFECT)
        est = contrasts @ res.params.to_numpy()
        se = np.sqrt(np.einsum("hk,kl,hl->h", contrasts, res.cov_params().to_numpy(), contrasts))
        t = est / se
        p = 2 * stats.t.sf(np.abs(t), res.df_resid)
        nan = np.full(len(contrasts), np.nan)
        se_cl, p_cl, se_cr2, df_cr2, p_cr2, p_wild = nan, nan, nan, nan, nan, nan
        if clustered:
            res_cl = sm.OLS(y, X).fit(cov_type="cluster", cov_kwds={"groups": codes}, use_t=True)
            cluster_models[model] = res_cl
            v_cl = res_cl.cov_params().to_numpy()
            se_cl = np.sqrt(np.einsum("hk,kl,hl->h", contrasts, v_cl, contrasts))
            p_cl = 2 * stats.t.sf(np.abs(est / se_cl), n_clusters - 1)
            _, se_cr2, df_cr2 = cr2_tests(X.to_numpy(), res.resid.to_numpy(), codes, contrasts)
            p_cr2 = 2 * stats.t.sf(np.abs(est / se_cr2), df_cr2)
            if weights is not None:
                p_wild, _ = wild_cluster_bootstrap(
                    X.to_numpy(), y.to_numpy(), codes, contrasts, weights=weights
                )
        vif = _vif(X)
        for h, term in enumerate(row_terms):
            key = (model, term)
            has_pub = key in pub_coefs.index
            pub_coef = float(pub_coefs.loc[key, "coef"]) if has_pub else np.nan
            pub_se = float(pub_coefs.loc[key, "se"]) if has_pub else np.nan
            pub_stars = str(pub_coefs.loc[key, "stars"]) if has_pub else ""
            if term == DIRECT_EFFECT:
                pp, pe = (model, "cbo_participation"), (model, "cbo_existence")
                if pp in pub_coefs.index and pe in pub_coefs.index:
                    pub_coef = float(pub_coefs.loc[pp, "coef"] - pub_coefs.loc[pe, "coef"])
            column = names[h] if h < len(names) else None
            coef_rows.append(
                {
                    "model": model,
                    "dimension": dim,
                    "with_cbo_terms": int(with_cbo),
                    "term": term,
                    "coef": est[h],
                    "se": se[h],
                    "t": t[h],
                    "p": p[h],
                    "stars": stars(p[h]),
                    "published_coef": pub_coef,
                    "published_se": pub_se,
                    "published_stars": pub_stars,
                    "diff_in_se": (est[h] - pub_coef) / pub_se if has_pub else np.nan,
                    "se_cluster": se_cl[h],
                    "p_cluster": p_cl[h],
                    "stars_cluster": stars(p_cl[h]),
                    "se_cr2": se_cr2[h],
                    "df_cr2": df_cr2[h],
                    "p_cr2": p_cr2[h],
                    "stars_cr2": stars(p_cr2[h]),
                    "p_wild": p_wild[h],
                    "stars_wild": stars(p_wild[h]),
                    "vif": vif.get(column, np.nan) if column else np.nan,
                    "published_vif": (
                        pub_vif.get(term, np.nan) if with_cbo and term != "const" else np.nan
                    ),
                }
            )
        has_fit = model in pub_fit.index
        pub_r2 = float(pub_fit.loc[model, "adj_r2"]) if has_fit else np.nan
        fit_rows.append(
            {
                "model": model,
                "dimension": dim,
                "with_cbo_terms": int(with_cbo),
                "n": int(res.nobs),
                "r2": res.rsquared,
                "adj_r2": res.rsquared_adj,
                "aic": res.aic,
                "published_adj_r2": pub_r2,
                "published_aic": float(pub_fit.loc[model, "aic"]) if has_fit else np.nan,
                "published_n": float(pub_fit.loc[model, "n"]) if has_fit else np.nan,
                "diff_adj_r2": res.rsquared_adj - pub_r2,
                "n_clusters": n_clusters,
                "n_treated_clusters": n_treated,
            }
        )
    coefficients = pd.DataFrame(coef_rows, columns=list(COEF_COLUMNS))
    order = {t: i for i, t in enumerate(TERM_ORDER)}
    coefficients = coefficients.sort_values(
        ["model", "term"], key=lambda s: s.map(order) if s.name == "term" else s
    ).reset_index(drop=True)
    notes = _design_notes(n_clusters, n_treated, n_boot, seed)
    if n_clusters < 10:
        warnings.warn(notes[0], PariBayesWarning, stacklevel=2)
    return Table4Result(
        coefficients=coefficients,
        fit=pd.DataFrame(fit_rows, columns=list(FIT_COLUMNS)),
        models=models,
        cluster_models=cluster_models,
        pca=pca,
        notes=notes,
        n_clusters=n_clusters,
        n_treated_clusters=n_treated,
        n_boot=n_boot,
        seed=seed,
    )


def _design_notes(n_clusters: int, n_treated: int, n_boot: int, seed: int) -> list[str]:
    g = n_clusters
    notes = [
        f"FEW CLUSTERS: the households sit in {g} communities and CBO presence varies only "
        f"between them ({n_treated} with CBOs, {g - n_treated} without), so the existence "
        f"(spillover) coefficient compares {n_treated} communities with {g - n_treated}; "
        "classical standard errors treat the households as independent and overstate "
        "certainty."
    ]
    if g >= 2:
        notes.append(
            f"CR1: cluster-robust by community with the G/(G-1)(N-1)/(N-K) correction; "
            f"p-values from a t distribution with G - 1 = {g - 1} df."
        )
        notes.append(
            "CR2: Bell-McCaffrey bias-reduced cluster-robust SE; p-values from a t "
            "distribution with Bell-McCaffrey (Satterthwaite) df, shown as df_cr2."
        )
        if n_boot > 0:
            notes.append(
                f"Wild cluster bootstrap: restricted (null imposed), Webb six-point weights, "
                f"{n_boot} draws, seed {seed}; with {g} clusters there are only "
                f"{len(WEBB_WEIGHTS) ** g} distinct weight vectors ({2**g} with Rademacher)."
            )
    if n_treated <= 2 or g - n_treated <= 2:
        notes.append(
            f"With only {min(n_treated, g - n_treated)} treated (or control) clusters no "
            "cluster-robust method is reliable (MacKinnon and Webb 2017): the wild "
            "bootstrap tends to under-reject and CR1 to over-reject. Read the CBO "
            "coefficients as weakly informed by the data, not as settled."
        )
    return notes


# --------------------------------------------------------------------------- Markdown


def _cell(coef: float, se: float, star: str) -> str:
    if not np.isfinite(coef):
        return ""
    se_text = f" ({se:.3f})" if np.isfinite(se) else ""
    return f"{coef:.3f}{star}{se_text}"


def _p(p: float) -> str:
    return "" if not np.isfinite(p) else f"{p:.3f}"


def _sig_label(star: str) -> str:
    return star if star else "n.s."


def _few_cluster_section(result: Table4Result) -> list[str]:
    c = result.coefficients
    cbo = c[c["term"].isin([*CBO_REGRESSORS, DIRECT_EFFECT])]
    lines = ["## Few-cluster inference for the CBO coefficients", ""]
    lines += [f"- {note}" for note in result.notes]
    if result.n_clusters < 2:
        return [*lines, "", "One cluster only: no cluster-robust inference is possible.", ""]
    lines += [
        "",
        "| Model | Dimension | Term | Coef | Paper | p classical | SE CR1 | p CR1 | "
        "SE CR2 | df CR2 | p CR2 | p wild |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in cbo.iterrows():
        paper = (
            _cell(r.published_coef, r.published_se, r.published_stars)
            if r.term != DIRECT_EFFECT
            else (f"{r.published_coef:.3f} (implied)" if np.isfinite(r.published_coef) else "")
        )
        lines.append(
            f"| {r.model} | {r.dimension} | {r.term} | {r.coef:.3f}{r.stars} | {paper} | "
            f"{_p(r.p)} | {r.se_cluster:.3f} | {_p(r.p_cluster)} | {r.se_cr2:.3f} | "
            f"{r.df_cr2:.2f} | {_p(r.p_cr2)} | {_p(r.p_wild)} |"
        )
    lines.append("")
    main = cbo[cbo["term"].isin(CBO_REGRESSORS)]
    paper_sig = main[main["published_stars"] != ""]
    methods = {
        "our classical SEs": "stars",
        "CR1 (t, G-1 df)": "stars_cluster",
        "CR2 (Bell-McCaffrey df)": "stars_cr2",
        "the wild cluster bootstrap": "stars_wild",
    }
    if main["p_wild"].isna().all():
        del methods["the wild cluster bootstrap"]
    counts = ", ".join(
        f"{int((main[col] != '').sum())} with {name}" for name, col in methods.items()
    )
    lines.append(
        f"**Counts.** The paper marks {len(paper_sig)} of the {len(main)} CBO coefficients "
        f"significant at the 10% level; on this survey {counts}."
    )
    lines.append("")
    lines.append("**Coefficient by coefficient** (paper / classical / CR1 / CR2 / wild):")
    lines.append("")
    for _, r in main.iterrows():
        marks = [r.published_stars, r.stars, r.stars_cluster, r.stars_cr2, r.stars_wild]
        verdict = _verdict(r)
        lines.append(
            f"- Model {r.model}, {r.term} on {r.dimension}: "
            + " / ".join(_sig_label(m) for m in marks)
            + f" (p wild = {_p(r.p_wild) or 'n/a'}). {verdict}"
        )
    lines.append("")
    survive = main[(main["published_stars"] != "") & (main["stars_wild"] != "")]
    lost = main[(main["published_stars"] != "") & (main["stars_wild"] == "")]
    if len(paper_sig) and np.all(np.isfinite(main["p_wild"])):
        if len(survive) == 0:
            lines.append(
                "**Conclusion.** None of the paper's significant CBO effects survives the wild "
                "cluster bootstrap: with these few communities the data cannot tell a CBO "
                "effect from a community difference."
            )
        else:
            kept = ", ".join(f"Model {r.model} {r.term}" for _, r in survive.iterrows())
            lines.append(
                f"**Conclusion.** {len(survive)} of the paper's {len(paper_sig)} significant CBO "
                f"effects stay significant under the wild cluster bootstrap ({kept}); "
                f"{len(lost)} lose significance."
            )
        lines.append("")
    return lines


def _verdict(r) -> str:
    paper = r.published_stars != ""
    robust = [s for s in (r.stars_cluster, r.stars_cr2, r.stars_wild) if s != ""]
    if paper and not robust:
        return "The paper's significance does not survive any few-cluster method."
    if paper and len(robust) < 3:
        return "Significance depends on the method: fragile."
    if paper:
        return "Significant under every method shown."
    if robust:
        return "Not significant in the paper; some cluster method flags it (see caveats)."
    return "Not significant in the paper nor here."


def table4_markdown(result: Table4Result, source: str = "") -> str:
    """Render Table 4 side by side (ours | published), fit, few-cluster section and PCA.

    Parameters
    ----------
    result
        The fitted table.
    source
        What the survey was (file and hash), printed in the header.

    """
    c, fit = result.coefficients, result.fit.set_index("model")
    compare = bool(np.isfinite(c["published_coef"].astype(float)).any())
    n_models = int(c["model"].max())
    lines = [
        f"# Table 4 reproduced: OLS Models 1-{n_models} (ours | published)"
        if compare
        else f"# PCA + OLS baseline (the models of Yang & Xu's Table 4): Models 1-{n_models}",
        "",
    ]
    if source:
        lines += [f"Survey: {source}", ""]
    lines += [
        "Cells: coefficient with stars (* p<0.1, ** p<0.05, *** p<0.01; classical SEs as in "
        "the paper) and standard error in parentheses. The outcome of each model is the "
        "first principal component of its dimension's indicators, standardized.",
        "",
    ]
    term_order = TERM_ORDER
    model_dims = {
        int(m): (d, bool(w))
        for m, d, w in c[["model", "dimension", "with_cbo_terms"]]
        .drop_duplicates()
        .itertuples(index=False)
    }
    for dim in dict.fromkeys(d for d, _ in model_dims.values()):
        models = [m for m, (d, _) in model_dims.items() if d == dim]
        lines.append(f"## {dim.replace('_', ' ').capitalize()} (Models {models[0]}-{models[-1]})")
        lines.append("")
        heads = [f"M{m} ours | M{m} paper" if compare else f"M{m}" for m in models]
        header = "| Variable | " + " | ".join(heads) + " |"
        lines += [header, "|---" * (1 + (2 if compare else 1) * len(models)) + "|"]
        for term in term_order:
            cells = []
            present = False
            for m in models:
                row = c[(c["model"] == m) & (c["term"] == term)]
                if row.empty:
                    cells += ["", ""] if compare else [""]
                    continue
                present = True
                r = row.iloc[0]
                ours = _cell(r.coef, r.se, r.stars)
                if term == DIRECT_EFFECT:
                    paper = (
                        f"{r.published_coef:.3f} (implied)" if np.isfinite(r.published_coef) else ""
                    )
                else:
                    paper = _cell(r.published_coef, r.published_se, r.published_stars)
                cells += [ours, paper] if compare else [ours]
            if present:
                lines.append(f"| {LABELS[term]} | " + " | ".join(cells) + " |")
        for label, col, pub, fmt in (
            ("Adj. R2", "adj_r2", "published_adj_r2", "{:.3f}"),
            ("AIC", "aic", "published_aic", "{:.0f}"),
            ("N", "n", "published_n", "{:.0f}"),
        ):
            cells = []
            for m in models:
                ours = fmt.format(fit.loc[m, col])
                paper = fmt.format(fit.loc[m, pub]) if np.isfinite(fit.loc[m, pub]) else ""
                cells += [ours, paper] if compare else [ours]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    printed = c[np.isfinite(c["diff_in_se"])]
    if len(printed):
        worst = printed.loc[printed["diff_in_se"].abs().idxmax()]
        within1 = int((printed["diff_in_se"].abs() <= 1).sum())
        stars_same = int((printed["stars"] == printed["published_stars"]).sum())
        lines += [
            "## Distance from the published table",
            "",
            f"- {within1} of {len(printed)} printed coefficients lie within 1 published SE; "
            f"the worst is Model {worst.model} {worst.term} "
            f"({worst.diff_in_se:+.2f} published SEs).",
            f"- Stars agree on {stars_same} of {len(printed)} coefficients.",
            f"- Largest adjusted-R2 miss: {result.fit['diff_adj_r2'].abs().max():.3f}.",
            "",
        ]
    lines += _few_cluster_section(result)
    if result.pca is not None and not compare:
        lines += ["## Measurement (PCA: first principal component per dimension)", ""]
        lines += [
            "| Dimension | Kaiser components | PC1 share % | KMO | Bartlett chi2 | p |",
            "|---|---|---|---|---|---|",
        ]
        for _, r in result.pca.summary().iterrows():
            lines.append(
                f"| {r.dimension} | {r.n_components_kaiser} | {r.variance_explained_pct:.2f} | "
                f"{r.kmo:.3f} | {r.bartlett_chi2:.1f} | {r.bartlett_p:.3g} |"
            )
        notes = [f"- {note}" for note in result.pca.notes]
        lines += ["", *notes, ""] if notes else [""]
    elif result.pca is not None:
        lines += ["## Measurement (PCA, section 3.3.1)", ""]
        lines += [
            "| Dimension | Kaiser components | PC1 share % | paper | KMO | paper | Bartlett chi2 "
            "| p | paper p |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        notes = [f"- {note}" for note in result.pca.notes]
        for _, r in result.pca.summary().iterrows():
            lines.append(
                f"| {r.dimension} | {r.n_components_kaiser} | {r.variance_explained_pct:.2f} | "
                f"{r.published_variance_explained_pct:.2f} | {r.kmo:.3f} | "
                f"{r.published_kmo:.3f} | {r.bartlett_chi2:.1f} | {r.bartlett_p:.3g} | "
                f"{r.published_bartlett_p:.3f} |"
            )
        lines += ["", *notes, ""] if notes else [""]
    return "\n".join(lines)


def write_ols(
    survey,
    directory: str | Path,
    seed: int = DEFAULT_SEED,
    n_boot: int = 999,
    identification: Any = None,
    published: bool | None = None,
) -> Table4Result:
    """Run the paper's pipeline (PCA -> OLS) and write its files into ``directory``.

    Writes ``ols_table4.csv``, ``ols_fit.csv``, ``pca.csv`` and ``table4.md``; with an
    ``identification`` result also ``ols_adjusted.csv`` (:func:`fit_adjusted_ols`: the
    same scores on the exposures and the DAG's adjustment set, CR2 inference).

    Parameters
    ----------
    survey
        A validated :class:`pari_bayes.survey.Survey`.
    directory
        An existing folder (the CLI passes a staging folder).
    seed, n_boot
        Wild cluster bootstrap seed and draws.
    identification
        The run's identification result (adjustment sets from its DAG).
    published
        Compare with Yang & Xu's published Table 4; ``None`` (default): only when the
        survey is the bundled one (any other survey is not the paper's sample).

    Returns
    -------
    Table4Result

    """
    directory = Path(directory)
    if published is None:
        published = Path(survey.source).resolve() == DEFAULT_SURVEY.resolve()
    pca = pca_scores(survey.data, survey.codebook)
    result = fit_table4(
        survey.data,
        scores=pca.scores,
        n_boot=n_boot,
        seed=seed,
        codebook=survey.codebook,
        published=published,
    )
    result.pca = pca
    write_csv(result.coefficients, directory / "ols_table4.csv")
    write_csv(result.fit, directory / "ols_fit.csv")
    write_csv(pca.diagnostics, directory / "pca.csv")
    source = f"{survey.source} ({survey.n_households} households, sha256 {survey.data_hash[:12]})"
    atomic_write_text(directory / "table4.md", table4_markdown(result, source=source) + "\n")
    if identification is not None:
        adjusted = fit_adjusted_ols(survey.data, pca.scores, identification)
        result.adjusted = adjusted
        write_csv(adjusted, directory / "ols_adjusted.csv")
    return result


def fit_adjusted_ols(
    data: pd.DataFrame,
    scores: pd.DataFrame,
    identification: Any,
    cluster: str = "community",
    estimand: str = "TE",
) -> pd.DataFrame:
    """OLS of each score on the exposures and the DAG's adjustment set, with CR2 inference.

    Table 4 keeps the paper's regressors; this companion regression takes its covariates
    from the identification result (the run's DAG), like every Bayesian estimator, so a
    different causal graph changes the baseline too.

    Parameters
    ----------
    data
        Validated survey rows with ``cbo_participation`` and ``cbo_existence``.
    scores
        Outcome scores, one column per dimension.
    identification
        The run's :class:`~pari_bayes.identification.identify.IdentificationResult`.
    cluster
        Cluster column for the CR2 standard errors (Bell-McCaffrey df).
    estimand
        Estimand whose adjustment set is used.

    Returns
    -------
    pandas.DataFrame
        One row per dimension and term (``cbo_participation`` = TE, ``cbo_existence`` = IE,
        ``direct_effect`` = their difference, DE) with ``coef``, ``se_cr2``, ``df_cr2``,
        ``p_cr2`` and the ``covariates`` used.
    """
    from pari_bayes.estimation.few_clusters import cr2_tests

    data = data.reset_index(drop=True)
    scores = scores.reset_index(drop=True)
    rows = []
    for dim in scores.columns:
        if dim not in identification.dimensions:
            continue
        covs = [c for c in identification.adjustment_set(estimand, dim) if c in data.columns]
        columns = ["cbo_participation", "cbo_existence", *covs]
        X = data[columns].astype(float)
        X.insert(0, "const", 1.0)
        y = scores[dim].to_numpy(dtype=float)
        Xv = X.to_numpy()
        beta, *_ = np.linalg.lstsq(Xv, y, rcond=None)
        resid = y - Xv @ beta
        contrasts = np.zeros((3, Xv.shape[1]))
        contrasts[0, 1] = 1.0
        contrasts[1, 2] = 1.0
        contrasts[2, 1], contrasts[2, 2] = 1.0, -1.0
        _, se, df = cr2_tests(Xv, resid, data[cluster].to_numpy(), contrasts)
        for k, term in enumerate(("cbo_participation", "cbo_existence", "direct_effect")):
            coef = float(contrasts[k] @ beta)
            p = float(2 * stats.t.sf(abs(coef / se[k]), df[k])) if se[k] > 0 else np.nan
            rows.append(
                {
                    "dimension": dim,
                    "term": term,
                    "coef": coef,
                    "se_cr2": float(se[k]),
                    "df_cr2": float(df[k]),
                    "p_cr2": p,
                    "covariates": " ".join(covs),
                }
            )
    return pd.DataFrame(rows)
