"""Identification with DoWhy, positivity diagnostics and refutations.

For every estimand (DE, IE, TE, OE) and dimension the assumed DAG is handed to DoWhy's
``CausalModel`` (backdoor first; front-door and instrumental variables reported when they
exist). Each query is asked twice: on the DAG as drawn, and on the DAG without its
unobserved household-level confounder (``role="unobserved_confounder"``, prior
sociability), which is the assumption the paper's regressions make implicitly. Estimators
take their adjustment set from :meth:`IdentificationResult.adjustment_set`.

Outcomes are latent factors. DoWhy needs an observed outcome, so each factor is
identified through its measured score (the dimension's PCA score, or the standardized item
mean when the PCA step is unavailable): the factor node stays the outcome and is treated as
observed. This is valid under the measurement assumption, checked by the loader, that
exposures and covariates reach the indicators only through the factor.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd

from pari_bayes.errors import IdentificationError, PariBayesWarning
from pari_bayes.identification.dag import CausalDAG, load_dag
from pari_bayes.identification.estimands import ESTIMANDS, estimand
from pari_bayes.io import atomic_write_text, write_csv

__all__ = [
    "IdentificationResult",
    "identify",
    "identify_graph",
    "refute_identification",
    "write_identification",
    "analysis_frame",
    "outcome_scores",
    "DEFAULT_SEED",
]

DEFAULT_SEED = 20240611
_lookup = estimand

#: DoWhy query per estimand: the nodes intervened on (see estimands.Estimand.intervened).
_ASSUMPTION_LABELS = {
    "dag": "the DAG as drawn (with the unobserved confounder)",
    "no_unobserved_confounding": (
        "the DAG without its unobserved household confounder: participation ignorable "
        "given the adjustment set (the paper's implicit assumption)"
    ),
}

_COMMON_ASSUMPTIONS = (
    "Partial interference: a household's integration depends on its own participation "
    "and its community's CBO presence, not on other communities (Hudgens & Halloran 2008).",
    "Consistency and no hidden versions of participation or CBO presence.",
    "Measurement invariance: exposures and covariates reach the indicators only through "
    "the factor, so the dimension's score stands in for it.",
    "No community-level confounder besides the resettlement batch: a community's formation "
    "date affects integration only through residence months, and the social elites who "
    "founded CBOs affect integration only through the CBOs (dag.md, A2-A3). With 2 vs 2 "
    "communities this cannot be checked in the data.",
    "Off-farm employment and income are pre-exposure (not affected by CBOs), as in Table 4 "
    "(dag.md, A5).",
)


# ---------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _quiet_dowhy() -> Iterator[None]:
    """Silence DoWhy's logging and its own warnings (not ours)."""
    names = ["dowhy", "dowhy.causal_model", "dowhy.causal_identifier", "dowhy.causal_graph"]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"dowhy.*")
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def outcome_scores(survey) -> tuple[pd.DataFrame, str]:
    """One numeric score per dimension, used as the observed stand-in for each factor.

    Uses :func:`pari_bayes.measurement.pca.pca_scores` (the paper's first principal
    component) when available; otherwise the standardized mean of the standardized items.

    Returns
    -------
    scores, method
        A frame with one column per dimension (indexed like ``survey.data``) and the name
        of the method used.

    """
    data, dims = survey.data, survey.codebook.dimensions
    try:
        from pari_bayes.measurement.pca import pca_scores
    except ImportError:
        pca_scores = None
    if pca_scores is not None:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            result = pca_scores(data, survey.codebook)
        scores = result.scores
        if all(d in scores.columns for d in dims):
            return scores[list(dims)].reindex(data.index), "pca_first_component"
    out = {}
    for dim in dims:
        items = survey.codebook.indicators.get(dim, ())
        z = data[list(items)].astype(float)
        z = (z - z.mean()) / z.std(ddof=0).replace(0, 1)
        mean = z.mean(axis=1)
        out[dim] = (mean - mean.mean()) / (mean.std(ddof=0) or 1.0)
    return pd.DataFrame(out, index=data.index), "standardized_item_mean"


def analysis_frame(survey, dag: CausalDAG, scores: pd.DataFrame | None = None) -> pd.DataFrame:
    """Observed DAG nodes as columns (named by node), plus one score column per dimension.

    Derived columns (``community_age_months``) come from the survey's registry.
    """
    data = survey.data
    source = data.copy()
    registry = survey.registry
    ages = {c.name: c.max_residence_months for c in registry.communities}
    source["community_age_months"] = source["community"].map(ages)
    frame = pd.DataFrame(index=data.index)
    for node in dag.observed:
        col = dag.column(node)
        if dag.role(node) == "indicator" or col not in source.columns:
            continue
        frame[node] = source[col]
    if scores is None:
        scores, _ = outcome_scores(survey)
    for dim in survey.codebook.dimensions:
        if dim in dag.graph:
            frame[dim] = scores[dim].to_numpy(dtype=float)
    for extra in ("community", "exposure"):
        frame[f"_{extra}"] = data[extra].to_numpy()
    return frame


def identify_graph(
    graph: nx.DiGraph,
    treatments: str | list[str],
    outcome: str,
    observed: set[str] | list[str] | tuple[str, ...],
) -> dict:
    """Ask DoWhy whether the effect of ``treatments`` on ``outcome`` is identified.

    Parameters
    ----------
    graph
        Causal DAG (node names are variables).
    treatments
        Node(s) intervened on (jointly).
    outcome
        Outcome node.
    observed
        Nodes that are measured and may be adjusted for; every other node is treated as
        unobserved.

    Returns
    -------
    dict
        ``identified``, ``method`` (``"backdoor"``, ``"frontdoor"`` or ``None``),
        ``backdoor_maximal`` and ``backdoor_minimal`` (node lists, ``None`` if no valid
        backdoor set), ``frontdoor`` and ``instruments`` (observed nodes only).

    Examples
    --------
    >>> import networkx as nx
    >>> g = nx.DiGraph([("z", "x"), ("z", "y"), ("x", "y")])
    >>> identify_graph(g, "x", "y", {"x", "y", "z"})["backdoor_minimal"]
    ['z']

    """
    from dowhy import CausalModel

    treatments = [treatments] if isinstance(treatments, str) else list(treatments)
    plain = nx.DiGraph()
    plain.add_nodes_from(graph.nodes)
    plain.add_edges_from(graph.edges)
    observed = set(observed) | set(treatments) | {outcome}
    cols = [n for n in plain.nodes if n in observed]
    data = pd.DataFrame(np.zeros((2, len(cols))), columns=cols)
    with _quiet_dowhy():
        model = CausalModel(data=data, treatment=treatments, outcome=outcome, graph=plain)
        maximal = model.identify_effect(
            method_name="maximal-adjustment", proceed_when_unidentifiable=False
        )
    backdoor = maximal.estimands.get("backdoor") is not None
    order = {n: i for i, n in enumerate(plain.nodes)}
    max_set = (
        tuple(sorted(maximal.get_backdoor_variables() or (), key=order.get)) if backdoor else None
    )
    min_set = _minimal_backdoor(plain, treatments, outcome, cols) if backdoor else None
    frontdoor = tuple(maximal.frontdoor_variables or ())
    # DoWhy lists latent instruments too; only observed ones can be used.
    instruments = tuple(v for v in (maximal.instrumental_variables or ()) if v in observed)
    method = "backdoor" if backdoor else ("frontdoor" if frontdoor else None)
    return {
        "identified": method is not None,
        "method": method,
        "backdoor_maximal": list(max_set) if max_set is not None else None,
        "backdoor_minimal": list(min_set) if min_set is not None else None,
        "frontdoor": list(frontdoor),
        "instruments": list(instruments),
    }


def _minimal_backdoor(
    graph: nx.DiGraph, treatments: list[str], outcome: str, observed: list[str]
) -> tuple[str, ...] | None:
    """Smallest valid backdoor set, ties broken by graph order (deterministic)."""
    from itertools import combinations

    forbidden = set(treatments) | {outcome}
    for t in treatments:
        forbidden |= nx.descendants(graph, t)
    eligible = [n for n in observed if n not in forbidden]
    backdoor = graph.copy()
    backdoor.remove_edges_from([(t, c) for t in treatments for c in list(graph.successors(t))])
    for size in range(len(eligible) + 1):
        for subset in combinations(eligible, size):
            if nx.is_d_separator(backdoor, set(treatments), {outcome}, set(subset)):
                return subset
    return None


def _ordered(nodes, dag: CausalDAG) -> list[str]:
    order = {n: i for i, n in enumerate(dag.nodes)}
    return sorted(set(nodes), key=lambda n: order.get(n, len(order)))


def _blocking_confounders(dag: CausalDAG, graph: nx.DiGraph, treatments, outcome) -> list[str]:
    """Latent nodes that open a backdoor path no observed set can close."""
    out = []
    for node in dag.latent:
        if node not in graph:
            continue
        reaches_t = any(t in nx.descendants(graph, node) for t in treatments)
        reaches_y = outcome in nx.descendants(graph, node)
        direct = any(graph.has_edge(node, t) for t in treatments)
        if reaches_t and reaches_y and direct and graph.has_edge(node, outcome):
            out.append(node)
    return out


# ---------------------------------------------------------------------------- positivity


def _smd(a: pd.Series, b: pd.Series) -> float:
    a, b = a.astype(float), b.astype(float)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    pooled = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2.0)
    if pooled == 0 or not np.isfinite(pooled):
        return 0.0 if a.mean() == b.mean() else float("inf")
    return float((a.mean() - b.mean()) / pooled)


def _positivity(survey, covariates: list[str]) -> dict:
    data = survey.data
    registry = survey.registry
    present = [c for c in registry.names if c in set(data["community"])]
    treated = [c for c in present if registry[c].has_cbo]
    control = [c for c in present if not registry[c].has_cbo]
    n_comm = len(present)
    n_assign = math.comb(n_comm, len(treated)) if n_comm else 0
    clusters = {
        "communities_with_cbo": treated,
        "communities_without_cbo": control,
        "n_clusters_with_cbo": len(treated),
        "n_clusters_without_cbo": len(control),
        "participants_per_cbo_community": {
            c: int(((data["community"] == c) & (data["cbo_participation"] == 1)).sum())
            for c in treated
        },
        "households_per_community": {c: int((data["community"] == c).sum()) for c in present},
        "randomization_assignments": n_assign,
        "smallest_randomization_p": (1.0 / n_assign) if n_assign else None,
    }
    residence = []
    for c in present:
        months = data.loc[data["community"] == c, "residence_months"]
        residence.append(
            {
                "community": c,
                "has_cbo": bool(registry[c].has_cbo),
                "n": int(len(months)),
                "min": int(months.min()),
                "max": int(months.max()),
                "mean": round(float(months.mean()), 3),
                "community_age_months": int(registry[c].max_residence_months),
            }
        )
    groups = {
        g: data[data["exposure"] == g] for g in ("participant", "nonparticipant_cbo", "no_cbo")
    }
    contrasts = {
        "DE": ("participant", "nonparticipant_cbo"),
        "IE": ("nonparticipant_cbo", "no_cbo"),
        "TE": ("participant", "no_cbo"),
    }
    smd = []
    for name, (g1, g0) in contrasts.items():
        for cov in covariates:
            if cov not in data.columns:
                continue
            value = _smd(groups[g1][cov], groups[g0][cov])
            smd.append(
                {
                    "estimand": name,
                    "treated": g1,
                    "control": g0,
                    "covariate": cov,
                    "mean_treated": round(float(groups[g1][cov].mean()), 4)
                    if len(groups[g1])
                    else None,
                    "mean_control": round(float(groups[g0][cov].mean()), 4)
                    if len(groups[g0])
                    else None,
                    "smd": round(value, 4) if np.isfinite(value) else None,
                    "imbalanced": bool(np.isfinite(value) and abs(value) > 0.1),
                }
            )
    overlap = []
    for name, (g1, g0) in contrasts.items():
        m1, m0 = groups[g1]["residence_months"], groups[g0]["residence_months"]
        if len(m1) and len(m0):
            overlap.append(
                {
                    "estimand": name,
                    "treated_range": [int(m1.min()), int(m1.max())],
                    "control_range": [int(m0.min()), int(m0.max())],
                    "share_treated_outside_control_range": round(
                        float(((m1 < m0.min()) | (m1 > m0.max())).mean()), 4
                    ),
                    "share_control_outside_treated_range": round(
                        float(((m0 < m1.min()) | (m0 > m1.max())).mean()), 4
                    ),
                }
            )
    warn = []
    if len(treated) < 3 or len(control) < 3:
        p_min = clusters["smallest_randomization_p"]
        warn.append(
            f"Only {len(treated)} communit{'y has' if len(treated) == 1 else 'ies have'} CBOs "
            f"and {len(control)} {'has' if len(control) == 1 else 'have'} none. Every "
            "community-level contrast (IE, TE, OE) compares these few clusters: anything else "
            "that differs between them (location, leadership, batch, facilities) is "
            "indistinguishable from the effect of CBOs, cluster-robust standard errors with "
            f"{n_comm} clusters are unreliable, and even a perfect randomization test over the "
            f"{n_assign} possible assignments of CBOs could not give p below {p_min:.3g}. "
            "Household counts do not fix this; only more communities do. The DE (within CBO "
            "communities) rests on households, not clusters, but on only "
            f"{len(treated)} communit{'y' if len(treated) == 1 else 'ies'}."
        )
    de_missing = [c for c, k in clusters["participants_per_cbo_community"].items() if k == 0]
    if de_missing:
        warn.append(
            f"No participants in CBO communit{'y' if len(de_missing) == 1 else 'ies'} "
            f"{', '.join(de_missing)}: the DE there has no support."
        )
    warn.append(
        "Positivity by design: participation is impossible without CBOs, so Y(1,0) does not "
        "exist and the DE is defined only within CBO communities."
    )
    big = sorted({r["covariate"] for r in smd if r["imbalanced"]})
    if big:
        warn.append(
            "Standardized mean differences above 0.1 (imbalance the adjustment must absorb): "
            + ", ".join(big)
        )
    poor = [
        o["estimand"]
        for o in overlap
        if max(o["share_treated_outside_control_range"], o["share_control_outside_treated_range"])
        > 0.1
    ]
    if poor:
        warn.append(
            "Residence months overlap poorly for "
            + ", ".join(poor)
            + " (more than 10% of one group outside the other's range): the adjustment "
            "extrapolates the residence trend there."
        )
    return {
        "clusters": clusters,
        "residence_by_community": residence,
        "residence_overlap": overlap,
        "smd": smd,
        "warnings": warn,
    }


# ---------------------------------------------------------------------------- refutation


def _subset(frame: pd.DataFrame, name: str) -> tuple[pd.DataFrame, str]:
    est = estimand(name)
    keep = frame["_exposure"].isin(est.treated + est.control)
    sub = frame.loc[keep].copy()
    treated = sub["_exposure"].isin(est.treated).astype(int)
    sub["_treatment"] = treated
    return sub, "_treatment"


def _partial_r2(tvalue: float, df: float) -> float:
    return float(tvalue**2 / (tvalue**2 + df)) if df > 0 else float("nan")


def _robustness_value(t_value: float, df: float, alpha: float | None = None) -> float:
    """Cinelli & Hazlett (2020) robustness value of a regression coefficient.

    The partial R2 an unobserved confounder must have with both exposure and outcome to
    bring the estimate to zero (``alpha=None``) or to make it insignificant at ``alpha``.
    """
    from scipy import stats

    if df <= 1:
        return float("nan")
    f = abs(t_value) / math.sqrt(df)
    if alpha is not None:
        f -= stats.t.ppf(1 - alpha / 2, df - 1) / math.sqrt(df - 1)
        if f <= 0:
            return 0.0
    return float(0.5 * (math.sqrt(f**4 + 4 * f**2) - f**2))


def _refute_one(
    frame: pd.DataFrame,
    name: str,
    dimension: str,
    adjust_nodes: list[str],
    seed: int,
    n_sims: int,
    column_of: dict[str, str] | None = None,
) -> list[dict]:
    """Linear-regression estimate of one estimand and its four refutations."""
    import statsmodels.api as sm
    from dowhy import CausalModel

    sub, treat = _subset(frame, name)
    adjust = [a for a in adjust_nodes if a in sub.columns and sub[a].nunique() > 1]
    cols = [treat, dimension] + adjust
    data = sub[cols].astype(float).reset_index(drop=True)
    rows: list[dict] = []
    base = {"estimand": name, "dimension": dimension, "n": int(len(data))}
    if data[treat].nunique() < 2:
        return [dict(base, refuter="estimate", status="skipped: one exposure group is empty")]
    with _quiet_dowhy():
        model = CausalModel(data=data, treatment=treat, outcome=dimension, common_causes=adjust)
        ident = model.identify_effect(proceed_when_unidentifiable=True)
        est = model.estimate_effect(ident, method_name="backdoor.linear_regression")
        value = float(est.value)
        rows.append(dict(base, refuter="estimate", estimate=value, new_effect=value))
        specs = [
            (
                "placebo_treatment",
                "placebo_treatment_refuter",
                {"placebo_type": "permute", "num_simulations": n_sims},
            ),
            ("random_common_cause", "random_common_cause", {"num_simulations": n_sims}),
            (
                "data_subset",
                "data_subset_refuter",
                {"subset_fraction": 0.8, "num_simulations": n_sims},
            ),
        ]
        for i, (label, method, kwargs) in enumerate(specs):
            res = model.refute_estimate(
                ident, est, method_name=method, random_seed=seed + 101 * (i + 1), **kwargs
            )
            p = None
            if isinstance(res.refutation_result, dict):
                p = res.refutation_result.get("p_value")
            new = float(np.asarray(res.new_effect, dtype=float).ravel()[0])
            if label == "placebo_treatment":
                passed = abs(new) < max(0.1, 0.25 * abs(value))
            else:
                passed = abs(new - value) <= max(0.1, 0.25 * abs(value))
            rows.append(
                dict(
                    base,
                    refuter=label,
                    estimate=value,
                    new_effect=new,
                    p_value=None if p is None else float(np.asarray(p).ravel()[0]),
                    n_simulations=n_sims,
                    passed=bool(passed),
                )
            )
        # Strongest observed covariate as benchmark for the unobserved confounder.
        x = sm.add_constant(data[[treat] + adjust], has_constant="add")
        fit_y = sm.OLS(data[dimension], x).fit()
        benchmark, best = None, -1.0
        if adjust:
            xt = sm.add_constant(data[adjust], has_constant="add")
            fit_t = sm.OLS(data[treat], xt).fit()
            for cov in adjust:
                r2y = _partial_r2(fit_y.tvalues[cov], fit_y.df_resid)
                r2t = _partial_r2(fit_t.tvalues[cov], fit_t.df_resid)
                if min(r2y, r2t) > best:
                    best, benchmark = min(r2y, r2t), (cov, r2t, r2y)
        # A confounder k times as strong as the benchmark may be impossible (partial R2 >= 1)
        # when the benchmark is strongly tied to the exposure; fall back to weaker ones.
        # DoWhy's linear-partial-R2 analysis needs a benchmark; without one (or if every
        # strength fails) the robustness values come from Cinelli & Hazlett's formulas.
        sens, used = None, None
        for frac in ([1.0, 2.0, 3.0], [1.0]) if benchmark else ():
            try:
                sens = model.refute_estimate(
                    ident,
                    est,
                    method_name="add_unobserved_common_cause",
                    simulation_method="linear-partial-R2",
                    benchmark_common_causes=[benchmark[0]],
                    effect_fraction_on_treatment=frac,
                    plot_estimate=False,
                )
            except (ValueError, TypeError, ZeroDivisionError):
                continue
            used = frac
            break
    t_value = float(fit_y.tvalues[treat])
    df = float(fit_y.df_resid)
    row = dict(
        base,
        refuter="unobserved_common_cause",
        estimate=value,
        standard_error=float(fit_y.bse[treat]),
        t_statistic=t_value,
        partial_r2_treatment_outcome=_partial_r2(t_value, df),
        robustness_value=_robustness_value(t_value, df),
        robustness_value_alpha05=_robustness_value(t_value, df, alpha=0.05),
        sensitivity_method="dowhy linear-partial-R2" if sens is not None else "formula",
    )
    if sens is not None:
        stats = dict(sens.stats)
        row["robustness_value"] = float(stats["robustness_value"])
        row["robustness_value_alpha05"] = float(stats["robustness_value_alpha"])
    if benchmark is not None:
        row.update(
            benchmark_covariate=(column_of or {}).get(benchmark[0], benchmark[0]),
            benchmark_partial_r2_treatment=round(float(benchmark[1]), 6),
            benchmark_partial_r2_outcome=round(float(benchmark[2]), 6),
        )
    if benchmark is not None and used:
        bench = sens.benchmarking_results["bias_adjusted_estimate"].to_numpy(dtype=float)
        row["adjusted_estimate_1x"] = float(bench[0])
        if len(used) == 3:
            row["adjusted_estimate_3x"] = float(bench[-1])
    row["passed"] = bool(row["robustness_value"] > (benchmark[2] if benchmark else 0.0))
    rows.append(row)
    return rows


# ---------------------------------------------------------------------------- result


@dataclass
class IdentificationResult:
    """What the design identifies, with which adjustment set, and how robust it is.

    Attributes
    ----------
    entries
        ``{(estimand, dimension): dict}`` with, per assumption (``"dag"``,
        ``"no_unobserved_confounding"``), DoWhy's verdict and sets (node names), the
        adjustment set in survey columns, the assumptions and what blocks identification.
    exposure
        Exposure coding per estimand (groups compared, restriction, Table 4 mapping).
    positivity
        Clusters per arm, residence months by community, standardized mean differences,
        plain-language warnings.
    refutations
        One row per estimand, dimension and refuter.

    """

    dag_path: str
    dimensions: tuple[str, ...]
    entries: dict[tuple[str, str], dict]
    exposure: dict[str, dict]
    positivity: dict
    refutations: list[dict] = field(default_factory=list)
    score_method: str = ""
    seed: int = DEFAULT_SEED
    data_hash: str = ""
    n_households: int = 0
    dag_edges: list[tuple[str, str, str]] = field(default_factory=list)
    latent_nodes: tuple[str, ...] = ()

    def _entry(self, name: str, dimension: str) -> dict:
        key = (estimand(name).name, dimension)
        if key not in self.entries:
            raise IdentificationError(
                f"no identification for estimand {name!r} and dimension {dimension!r}; "
                f"dimensions: {', '.join(self.dimensions)}"
            )
        return self.entries[key]

    def adjustment_set(self, estimand: str, dimension: str) -> tuple[str, ...]:
        """Survey columns an estimator must adjust for (exposure columns excluded).

        The maximal valid backdoor set (all pre-exposure causes that keep the backdoor
        criterion; more precise than the minimal one). Where the DAG as drawn does not
        identify the estimand (unobserved confounding), this is the set that identifies it
        once that confounder is assumed away; check :meth:`is_identified` and report the
        sensitivity analysis with any estimate.
        """
        return tuple(self._entry(estimand, dimension)["adjustment_set"])

    def exposure_coding(self, estimand: str) -> dict:
        """Which exposure groups the estimand compares, and where it is defined."""
        return dict(self.exposure[_lookup(estimand).name])

    def is_identified(self, estimand: str, dimension: str, assumption: str = "dag") -> bool:
        """Whether the estimand is identified under ``assumption``.

        Parameters
        ----------
        estimand
            DE, IE, TE or OE.
        dimension
            An integration dimension.
        assumption
            ``"dag"`` (the graph as drawn) or ``"no_unobserved_confounding"``.

        """
        if assumption not in _ASSUMPTION_LABELS:
            raise IdentificationError(
                f"unknown assumption {assumption!r}; allowed: {', '.join(_ASSUMPTION_LABELS)}"
            )
        return bool(self._entry(estimand, dimension)[assumption]["identified"])

    def estimand_table(self) -> pd.DataFrame:
        """One row per estimand and dimension: verdicts and adjustment sets."""
        rows = []
        for (name, dim), e in self.entries.items():
            rows.append(
                {
                    "estimand": name,
                    "dimension": dim,
                    "identified_dag": e["dag"]["identified"],
                    "identified_no_unobserved_confounding": e["no_unobserved_confounding"][
                        "identified"
                    ],
                    "method": e["dag"]["method"] or "",
                    "blocked_by": " ".join(e["dag"].get("blocked_by") or []),
                    "adjustment_set": " ".join(e["adjustment_set"]),
                    "minimal_adjustment_set": " ".join(e["minimal_adjustment_set"]),
                    "frontdoor": " ".join(e["dag"]["frontdoor"]),
                    "instruments": " ".join(e["dag"]["instruments"]),
                }
            )
        return pd.DataFrame(rows)

    def refutation_table(self) -> pd.DataFrame:
        """Refutation rows as a data frame."""
        return pd.DataFrame(self.refutations)

    def to_dict(self) -> dict:
        """Everything as JSON-ready plain types."""
        return {
            "dag": self.dag_path,
            "n_households": self.n_households,
            "data_hash": self.data_hash,
            "seed": self.seed,
            "outcome_score": self.score_method,
            "dimensions": list(self.dimensions),
            "estimands": list(ESTIMANDS),
            "latent_nodes": list(self.latent_nodes),
            "assumptions": {"common": list(_COMMON_ASSUMPTIONS), **_ASSUMPTION_LABELS},
            "exposure_coding": self.exposure,
            "identification": [
                {"estimand": k[0], "dimension": k[1], **v} for k, v in self.entries.items()
            ],
            "positivity": self.positivity,
            "refutations": _json_clean(self.refutations),
        }

    def to_markdown(self) -> str:
        """Return a readable Markdown report of the identification."""
        return _markdown(self)


def _json_clean(obj):
    if isinstance(obj, dict):
        return {k: _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_clean(v) for v in obj]
    if isinstance(obj, float | np.floating):
        value = float(obj)
        return round(value, 6) if np.isfinite(value) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def identify(
    survey,
    dag: CausalDAG | str | os.PathLike | None = None,
    seed: int = DEFAULT_SEED,
    refute: bool = True,
    n_simulations: int = 20,
    dimensions: tuple[str, ...] | None = None,
) -> IdentificationResult:
    """Identify DE, IE, TE and OE for every dimension and check positivity and robustness.

    Parameters
    ----------
    survey
        A validated :class:`~pari_bayes.survey.Survey`.
    dag
        A :class:`CausalDAG`, a DOT path, or ``None`` for ``models/dag.dot``.
    seed
        Seed of the refutation simulations (same seed, same numbers).
    refute
        Run the refutations (placebo treatment, random common cause, data subset,
        unobserved-common-cause sensitivity) on a linear-regression estimate.
    n_simulations
        Simulations per refuter.
    dimensions
        Dimensions to analyse (all four by default).

    Returns
    -------
    IdentificationResult

    Raises
    ------
    DAGError
        If the DAG does not match the survey.
    IdentificationError
        If an exposure node is missing from the identification graph.

    Examples
    --------
    >>> import pari_bayes as pb
    >>> from pari_bayes.identification import identify
    >>> survey = pb.load_survey()  # doctest: +SKIP
    >>> result = identify(survey, refute=False)  # doctest: +SKIP
    >>> result.adjustment_set("IE", survey.codebook.dimensions[0])  # doctest: +SKIP

    """
    if not isinstance(dag, CausalDAG):
        dag = load_dag(dag, survey=survey)
    declared = survey.codebook.dimensions
    dims = tuple(d for d in (dimensions or declared) if d in dag.graph)
    if not dims:
        raise IdentificationError(
            f"{dag.path}: none of the survey's dimensions ({', '.join(declared)}) is a node; "
            "the graph must name the codebook's dimensions as latent nodes"
        )
    scores, score_method = outcome_scores(survey)
    frame = analysis_frame(survey, dag, scores)
    no_u = dag.without(n for n in dag.latent if dag.role(n) == "unobserved_confounder")
    exposure_cols = {"cbo_participation", "cbo_presence"}
    entries: dict[tuple[str, str], dict] = {}
    for dim in dims:
        for name in ESTIMANDS:
            est = estimand(name)
            treatments = list(est.intervened)
            entry: dict = {}
            for label, graph_dag in (("dag", dag), ("no_unobserved_confounding", no_u)):
                graph = graph_dag.outcome_graph(dim)
                missing = [t for t in treatments if t not in graph]
                if missing:
                    raise IdentificationError(
                        f"{dag.path}: exposure node(s) {missing} missing from the graph"
                    )
                observed = set(graph_dag.adjustable) | {dim}
                found = identify_graph(graph, treatments, dim, observed)
                if not found["identified"]:
                    found["blocked_by"] = _blocking_confounders(graph_dag, graph, treatments, dim)
                entry[label] = found
            chosen = "dag" if entry["dag"]["identified"] else "no_unobserved_confounding"
            nodes = entry[chosen]["backdoor_maximal"] or []
            cols = [dag.column(n) for n in _ordered(nodes, dag) if n not in exposure_cols]
            entry["adjustment_set"] = cols
            entry["adjustment_set_from"] = chosen if entry[chosen]["identified"] else None
            entry["minimal_adjustment_set"] = [
                dag.column(n)
                for n in _ordered(entry[chosen]["backdoor_minimal"] or [], dag)
                if n not in exposure_cols
            ]
            entry["assumptions"] = _assumptions(name, entry)
            entry["explanation"] = _explain(name, dim, entry)
            entries[(name, dim)] = entry
    exposure = {n: estimand(n).exposure_coding() for n in ESTIMANDS}
    data = survey.data
    in_cbo = data["cbo_presence"] == 1
    alpha = float(data.loc[in_cbo, "cbo_participation"].mean()) if in_cbo.any() else float("nan")
    exposure["OE"]["alpha_observed"] = round(alpha, 6) if np.isfinite(alpha) else None
    exposure["OE"]["note"] = (
        "With alpha = alpha_observed, OE is the effect of CBO presence under the natural "
        "participation it induces (identified on the DAG as drawn); any other alpha needs DE."
    )
    for n in ESTIMANDS:
        exposure[n]["counts"] = {
            g: int((data["exposure"] == g).sum()) for g in exposure[n]["groups"]
        }
    covariates = []
    for entry in entries.values():
        covariates += [c for c in entry["adjustment_set"] if c not in covariates]
    positivity = _positivity(survey, covariates)
    for message in positivity["warnings"][:1]:
        warnings.warn(message, PariBayesWarning, stacklevel=2)
    refutations = _refutations(frame, dag, entries, dims, seed, n_simulations) if refute else []
    return IdentificationResult(
        dag_path=str(dag.path),
        dimensions=dims,
        entries=entries,
        exposure=exposure,
        positivity=positivity,
        refutations=refutations,
        score_method=score_method,
        seed=seed,
        data_hash=survey.data_hash,
        n_households=survey.n_households,
        dag_edges=dag.edges_with_reasons(),
        latent_nodes=dag.latent,
    )


def _refutations(
    frame: pd.DataFrame,
    dag: CausalDAG,
    entries: dict[tuple[str, str], dict],
    dims: tuple[str, ...],
    seed: int,
    n_simulations: int,
) -> list[dict]:
    """Refute every (estimand, dimension) on its adjustment set; one row per refuter."""
    refutations: list[dict] = []
    node_of = {dag.column(n): n for n in dag.observed}
    for dim in dims:
        for name in ESTIMANDS:
            cols = entries[(name, dim)]["adjustment_set"]
            nodes = [node_of[c] for c in cols]
            rows = _refute_one(
                frame,
                name,
                dim,
                nodes,
                seed,
                n_simulations,
                column_of=dict(map(reversed, node_of.items())),
            )
            for r in rows:
                r["identified_on_dag"] = entries[(name, dim)]["dag"]["identified"]
            refutations += rows
    return refutations


def refute_identification(
    result: IdentificationResult,
    survey,
    dag: CausalDAG | str | os.PathLike | None = None,
    seed: int | None = None,
    n_simulations: int = 20,
) -> IdentificationResult:
    """Add the refutations to an identification computed with ``refute=False``.

    The graph work (DoWhy's identification, adjustment sets, positivity) is not redone:
    the main job identifies once, hands that result to every estimator, and refutes it
    here for the identification report.

    Parameters
    ----------
    result
        The result of :func:`identify` on the same survey and DAG.
    survey
        The survey ``result`` was computed on (checked by its data hash).
    dag
        The DAG ``result`` was computed on (``None`` for ``models/dag.dot``).
    seed
        Seed of the refutation simulations (default: the seed of ``result``).
    n_simulations
        Simulations per refuter.

    Returns
    -------
    IdentificationResult
        A copy of ``result`` with ``refutations`` filled.

    Raises
    ------
    IdentificationError
        If ``result`` was computed on other data.

    """
    if result.data_hash != survey.data_hash:
        raise IdentificationError(
            "refute: the identification result was computed on other data "
            f"(data hash {result.data_hash[:12]}, this survey {survey.data_hash[:12]})"
        )
    if not isinstance(dag, CausalDAG):
        dag = load_dag(dag, survey=survey)
    seed = result.seed if seed is None else seed
    scores, _ = outcome_scores(survey)
    frame = analysis_frame(survey, dag, scores)
    rows = _refutations(frame, dag, result.entries, result.dimensions, seed, n_simulations)
    return replace(result, refutations=rows, seed=seed)


def _assumptions(name: str, entry: dict) -> list[str]:
    out = []
    if entry["dag"]["identified"]:
        out.append(f"Backdoor adjustment on the DAG as drawn ({entry['dag']['method']}).")
    else:
        out.append(
            "NOT identified on the DAG as drawn; identified only if "
            + _ASSUMPTION_LABELS["no_unobserved_confounding"]
            + "."
        )
    if name == "DE":
        out.append("Positivity: defined only within CBO communities (no participation elsewhere).")
    if name in ("IE", "TE", "OE"):
        out.append(
            "Community-level exchangeability: CBO and CBO-free communities comparable given "
            "the adjustment set (2 vs 2 clusters; untestable here)."
        )
    if name == "OE":
        out.append("alpha fixed at the observed participation rate in CBO communities.")
    return out


def _explain(name: str, dim: str, entry: dict) -> str:
    if entry["dag"]["identified"]:
        return (
            f"{name} on {dim}: identified by the backdoor criterion given "
            f"{', '.join(entry['adjustment_set']) or 'nothing'}."
        )
    blockers = entry["dag"].get("blocked_by") or ["an unobserved node"]
    text = (
        f"{name} on {dim}: NOT IDENTIFIED on the DAG as drawn. {', '.join(blockers)} drives "
        "both own participation and integration and is unmeasured, so no observed adjustment "
        "set closes the backdoor path cbo_participation <- "
        f"{blockers[0]} -> {dim}; no front-door mediator or valid instrument exists."
    )
    if name == "IE":
        text += (
            " IE holds participation at 0: comparing non-participants in CBO communities (who "
            "selected themselves out of participation) with all households in CBO-free "
            "communities conditions on a collider of CBO presence and prior sociability. If "
            "sociability raises both participation and integration, the exposure-coded IE "
            "contrast (Table 4's existence term) is biased downward (a lower bound for the "
            "spillover on would-be non-participants)."
        )
    if name in ("DE", "TE"):
        text += (
            " If sociability raises both participation and integration, the exposure-coded "
            f"{name} contrast is biased upward (participants were more sociable to begin with)."
        )
    if entry["no_unobserved_confounding"]["identified"]:
        text += (
            " It is identified if participation is ignorable given the adjustment set; the "
            "unobserved-common-cause refutation says how strong a violation would have to be."
        )
    return text


# ---------------------------------------------------------------------------- output


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "NO"
    if isinstance(value, float | np.floating):
        return "" if not np.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def _markdown(result: IdentificationResult) -> str:
    lines = [
        "# Identification",
        "",
        f"DAG: `{result.dag_path}`. Households: {result.n_households}. Outcome score: "
        f"{result.score_method}. Seed: {result.seed}. Data hash: `{result.data_hash[:16]}`.",
        "",
        "Each latent integration factor is identified through its measured score (the factor "
        "node is the outcome; indicators are its children only).",
        "",
        "## Estimands (Hudgens & Halloran 2008, partial interference)",
        "",
        "| estimand | definition | compares | population | Table 4 |",
        "|---|---|---|---|---|",
    ]
    for name in ESTIMANDS:
        e = result.exposure[name]
        lines.append(
            f"| {name} | {e['definition']} | {' + '.join(e['treated'])} vs "
            f"{' + '.join(e['control'])} | {e['population']} | {e['table4']} |"
        )
    alpha = result.exposure["OE"].get("alpha_observed")
    lines += [
        "",
        f"Observed participation rate in CBO communities (OE's alpha): {_fmt(alpha)}.",
        "Table 4 mapping: participation = TE, existence = IE, DE = participation - existence.",
        "",
        "## What is identified",
        "",
        "| estimand | dimension | identified (DAG as drawn) | identified without the "
        "unobserved confounder | adjustment set | minimal set | front-door | IV |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (name, dim), entry in result.entries.items():
        lines.append(
            f"| {name} | {dim} | {_fmt(entry['dag']['identified'])} | "
            f"{_fmt(entry['no_unobserved_confounding']['identified'])} | "
            f"{', '.join(entry['adjustment_set']) or '(none)'} | "
            f"{', '.join(entry['minimal_adjustment_set']) or '(none)'} | "
            f"{', '.join(entry['dag']['frontdoor']) or 'none'} | "
            f"{', '.join(entry['dag']['instruments']) or 'none'} |"
        )
    not_ident = [e for e in result.entries.values() if not e["dag"]["identified"]]
    if not_ident:
        lines += [
            "",
            "### NOT identified on the DAG as drawn",
            "",
        ]
        seen = set()
        for (name, dim), entry in result.entries.items():
            if entry["dag"]["identified"] or name in seen:
                continue
            seen.add(name)
            lines.append(
                f"- **{name}** (all dimensions alike: {dim} shown): {entry['explanation']}"
            )
    lines += ["", "### Assumptions every estimate rests on", ""]
    lines += [f"- {a}" for a in _COMMON_ASSUMPTIONS]
    pos = result.positivity
    cl = pos["clusters"]
    lines += [
        "",
        "## Positivity and overlap",
        "",
        f"Clusters per arm: {cl['n_clusters_with_cbo']} with CBOs "
        f"({', '.join(cl['communities_with_cbo'])}), {cl['n_clusters_without_cbo']} without "
        f"({', '.join(cl['communities_without_cbo'])}). Participants per CBO community: "
        + ", ".join(f"{k} {v}" for k, v in cl["participants_per_cbo_community"].items())
        + ".",
        "",
    ]
    lines += [f"> **Warning.** {w}" + "\n" for w in pos["warnings"]]
    lines += [
        "Residence months by community:",
        "",
        "| community | CBOs | n | min | max | mean | community age (months) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in pos["residence_by_community"]:
        lines.append(
            f"| {r['community']} | {'yes' if r['has_cbo'] else 'no'} | {r['n']} | {r['min']} | "
            f"{r['max']} | {r['mean']:.1f} | {r['community_age_months']} |"
        )
    lines += [
        "",
        "Residence-month overlap between the compared groups:",
        "",
        "| estimand | treated range | control range | treated outside control range "
        "| control outside treated range |",
        "|---|---|---|---|---|",
    ]
    for o in pos.get("residence_overlap", []):
        lines.append(
            f"| {o['estimand']} | {o['treated_range'][0]}-{o['treated_range'][1]} | "
            f"{o['control_range'][0]}-{o['control_range'][1]} | "
            f"{o['share_treated_outside_control_range']:.1%} | "
            f"{o['share_control_outside_treated_range']:.1%} |"
        )
    lines += [
        "",
        "Standardized mean differences (|SMD| > 0.1 flagged):",
        "",
        "| covariate | DE: participant vs nonparticipant_cbo | IE: nonparticipant_cbo vs no_cbo "
        "| TE: participant vs no_cbo |",
        "|---|---|---|---|",
    ]
    smd = pd.DataFrame(pos["smd"])
    if not smd.empty:
        for cov in dict.fromkeys(smd["covariate"]):
            cells = []
            for name in ("DE", "IE", "TE"):
                r = smd[(smd["covariate"] == cov) & (smd["estimand"] == name)]
                v = r["smd"].iloc[0] if len(r) else None
                flag = " *" if len(r) and bool(r["imbalanced"].iloc[0]) else ""
                cells.append(_fmt(v) + flag)
            lines.append(f"| {cov} | " + " | ".join(cells) + " |")
    if result.refutations:
        lines += [
            "",
            "## Refutations (linear regression with the adjustment set)",
            "",
            "Estimates are naive OLS on the exposure-coded groups, for checking robustness "
            "only; they ignore clustering. Robustness value RV: partial R2 an unobserved "
            "confounder would need with both exposure and outcome to bring the estimate to 0 "
            "(RV_0.05: to make it insignificant); compare with the strongest observed "
            "covariate.",
            "",
            "| estimand | dimension | identified | estimate | placebo | random cause | subset "
            "| RV | RV_0.05 | benchmark (R2 exp, R2 out) | adj. est. if U = 1x / 3x benchmark |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        table = result.refutation_table()
        for (name, dim), group in table.groupby(["estimand", "dimension"], sort=False):
            by = {r["refuter"]: r for r in group.to_dict("records")}
            if "placebo_treatment" not in by:
                lines.append(f"| {name} | {dim} | | skipped | | | | | | | |")
                continue
            s = by["unobserved_common_cause"]
            bench = ""
            if isinstance(s.get("benchmark_covariate"), str):
                bench = (
                    f"{s['benchmark_covariate']} ({_fmt(s['benchmark_partial_r2_treatment'])}, "
                    f"{_fmt(s['benchmark_partial_r2_outcome'])})"
                )
            adj = ""
            if isinstance(s.get("benchmark_covariate"), str):
                adj = (
                    f"{_fmt(s.get('adjusted_estimate_1x'))} / {_fmt(s.get('adjusted_estimate_3x'))}"
                )
            lines.append(
                f"| {name} | {dim} | {_fmt(bool(by['estimate']['identified_on_dag']))} | "
                f"{_fmt(by['estimate']['estimate'])} | "
                f"{_fmt(by['placebo_treatment']['new_effect'])} | "
                f"{_fmt(by['random_common_cause']['new_effect'])} | "
                f"{_fmt(by['data_subset']['new_effect'])} | {_fmt(s['robustness_value'])} | "
                f"{_fmt(s['robustness_value_alpha05'])} | {bench} | {adj} |"
            )
    lines += ["", "## Edges and their justification", "", "| from | to | why |", "|---|---|---|"]
    for u, v, why in result.dag_edges:
        lines.append(f"| {u} | {v} | {why} |")
    return "\n".join(lines) + "\n"


def write_identification(
    survey,
    directory: str | os.PathLike,
    dag: CausalDAG | str | os.PathLike | None = None,
    seed: int = DEFAULT_SEED,
    refute: bool = True,
    n_simulations: int = 20,
    identification: IdentificationResult | None = None,
) -> IdentificationResult:
    """Identify and write the identification files into an existing folder.

    Writes ``identification.json``, ``identification.md``, ``estimands.csv``,
    ``positivity.csv`` (standardized mean differences), ``residence_by_community.csv``,
    ``refutations.csv`` (if refuted) and ``dag.png``.

    Parameters
    ----------
    survey
        A validated :class:`~pari_bayes.survey.Survey`.
    directory
        Existing output folder.
    dag
        A :class:`CausalDAG`, a DOT path, or ``None`` for ``models/dag.dot``.
    seed
        Seed of the refutation simulations.
    refute
        Run the refutations.
    n_simulations
        Simulations per refuter.
    identification
        An identification already computed on this survey and DAG (the main job's):
        it is written as is, refuted first if ``refute`` and it has no refutations.

    Returns
    -------
    IdentificationResult

    """
    directory = Path(directory)
    if identification is None:
        result = identify(survey, dag=dag, seed=seed, refute=refute, n_simulations=n_simulations)
    elif refute and not identification.refutations:
        result = refute_identification(
            identification, survey, dag=dag, seed=seed, n_simulations=n_simulations
        )
    else:
        result = identification
    payload = json.dumps(_json_clean(result.to_dict()), indent=2, sort_keys=False)
    atomic_write_text(directory / "identification.json", payload + "\n")
    atomic_write_text(directory / "identification.md", result.to_markdown())
    write_csv(result.estimand_table(), directory / "estimands.csv")
    write_csv(pd.DataFrame(result.positivity["smd"]), directory / "positivity.csv")
    write_csv(
        pd.DataFrame(result.positivity["residence_by_community"]),
        directory / "residence_by_community.csv",
    )
    if result.refutations:
        write_csv(result.refutation_table(), directory / "refutations.csv")
    _plot_dag(result, directory / "dag.png")
    return result


def _plot_dag(result: IdentificationResult, path: Path) -> None:
    """Draw the DAG readably (:func:`~pari_bayes.identification.dag_plot.draw_dag`)."""
    from pari_bayes.identification.dag_plot import draw_dag
    from pari_bayes.io import atomic_write_bytes

    graph = nx.DiGraph()
    # Nodes in file order, so the layout (and the PNG) is reproducible.
    graph.add_edges_from((u, v) for u, v, _ in result.dag_edges)
    atomic_write_bytes(path, draw_dag(graph, set(result.latent_nodes)))
