"""pari_bayes: Bayesian multilevel causal inference for community-based organizations.

The pipeline follows the data: survey -> measurement -> identification -> estimation ->
effects -> report. Light names (survey, registry, errors) import at once; the estimation
layer (PyMC, Bambi, DoWhy) loads on first use, so ``import pari_bayes`` stays fast.

Examples
--------
>>> import pari_bayes as pb
>>> survey = pb.load_survey()  # doctest: +SKIP
>>> table4 = pb.fit_table4(survey.data)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

from pari_bayes._version import __version__
from pari_bayes.codebook import Codebook, load_codebook
from pari_bayes.errors import (
    ConvergenceError,
    DAGError,
    EstimationError,
    IdentificationError,
    OutputError,
    PariBayesError,
    PariBayesWarning,
    ProvenanceError,
    RegistryError,
    SpecError,
    SurveyDataError,
)
from pari_bayes.registry import Registry, load_registry
from pari_bayes.survey import EXPOSURE_GROUPS, Survey, load_survey, validate_frame

#: Names loaded on first use: name -> module.
_LAZY = {
    "simulate_survey": "pari_bayes.simulate",
    "simulate_potential_outcomes": "pari_bayes.simulate",
    "write_calibration": "pari_bayes.calibration",
    "pca_scores": "pari_bayes.measurement.pca",
    "fit_table4": "pari_bayes.estimation.ols",
    "write_ols": "pari_bayes.estimation.ols",
    "load_dag": "pari_bayes.identification",
    "identify": "pari_bayes.identification",
    "write_identification": "pari_bayes.identification",
    "load_spec": "pari_bayes.estimation.fitting",
    "fit_model": "pari_bayes.estimation.fitting",
    "load_posterior": "pari_bayes.estimation.posterior",
    "ipw_effects": "pari_bayes.estimation.ipw",
    "write_ipw_survey": "pari_bayes.estimation.ipw",
    "hash_household_ids": "pari_bayes.privacy",
    "RunOptions": "pari_bayes.pipeline",
    "run_pipeline": "pari_bayes.pipeline",
    "build_report": "pari_bayes.report",
    "load_design": "pari_bayes.design",
    "run_design": "pari_bayes.design",
}

__all__ = [
    "__version__",
    "EXPOSURE_GROUPS",
    "Codebook",
    "Registry",
    "Survey",
    "load_codebook",
    "load_registry",
    "load_survey",
    "validate_frame",
    *_LAZY,
    "PariBayesError",
    "SurveyDataError",
    "RegistryError",
    "SpecError",
    "DAGError",
    "IdentificationError",
    "EstimationError",
    "ConvergenceError",
    "OutputError",
    "ProvenanceError",
    "PariBayesWarning",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pari_bayes' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
