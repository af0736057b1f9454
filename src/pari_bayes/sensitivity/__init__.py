"""Sensitivity of the direct and spillover effects to an unobserved household confounder.

- :mod:`pari_bayes.sensitivity.ovb`: omitted-variable-bias bounds for the OLS baseline
  (Cinelli and Hazlett 2020), with few-cluster (CR2, Bell-McCaffrey) inference;
- :mod:`pari_bayes.sensitivity.bayes`: the multilevel model with an explicit unobserved
  confounder U ~ N(0, 1) whose strength is fixed on a grid (a sensitivity curve of DE, IE).

See docs/sensitivity.md.
"""

from __future__ import annotations

__all__ = ["ovb", "bayes"]
