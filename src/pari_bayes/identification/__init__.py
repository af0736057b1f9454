"""Identification: the assumed causal graph, the estimands and what the design identifies.

``load_dag`` reads and checks ``models/dag.dot``; ``estimands`` defines DE, IE, TE and OE
under partial interference and maps Table 4's terms onto them; ``identify`` runs DoWhy on
the graph for every estimand and dimension, checks positivity and refutes a simple
estimator. Later estimators take their adjustment sets and exposure coding from the
:class:`IdentificationResult`, never from a hand-copied covariate list.
"""

from pari_bayes.identification.dag import DERIVED_COLUMNS, CausalDAG, load_dag
from pari_bayes.identification.estimands import (
    ESTIMANDS,
    TABLE4_MAPPING,
    Estimand,
    direct_from_table4,
    estimand,
    exposure_coding,
    overall_effect,
)
from pari_bayes.identification.identify import (
    IdentificationResult,
    analysis_frame,
    identify,
    identify_graph,
    outcome_scores,
    refute_identification,
    write_identification,
)

__all__ = [
    "CausalDAG",
    "DERIVED_COLUMNS",
    "ESTIMANDS",
    "Estimand",
    "IdentificationResult",
    "TABLE4_MAPPING",
    "analysis_frame",
    "direct_from_table4",
    "estimand",
    "exposure_coding",
    "identify",
    "identify_graph",
    "load_dag",
    "outcome_scores",
    "overall_effect",
    "refute_identification",
    "write_identification",
]
