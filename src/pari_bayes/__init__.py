"""pari_bayes: Bayesian multilevel causal inference for community-based organizations.

The pipeline follows the data: survey -> measurement -> identification -> estimation ->
effects -> report.
"""

from __future__ import annotations

__version__ = "0.1.0"

from pari_bayes.codebook import DIMENSIONS, Codebook, load_codebook
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

__all__ = [
    "__version__",
    "DIMENSIONS",
    "EXPOSURE_GROUPS",
    "Codebook",
    "Registry",
    "Survey",
    "load_codebook",
    "load_registry",
    "load_survey",
    "validate_frame",
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
