"""Measurement: integration scores from the survey's indicators.

:mod:`pari_bayes.measurement.pca` reproduces the paper's principal-component scores
(section 3.3.1) with KMO and Bartlett diagnostics.
"""

from __future__ import annotations

from pari_bayes.measurement.pca import DimensionPCA, PCAResult, fit_dimension_pca, pca_scores

__all__ = ["DimensionPCA", "PCAResult", "fit_dimension_pca", "pca_scores"]
