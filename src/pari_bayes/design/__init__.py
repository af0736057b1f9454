"""Study design: how many communities does a study need.

Power and Bayesian assurance for DE/IE/TE/OE under partial interference, by simulation
(surveys with known truth, estimated as the toolkit estimates them) on Dask, beside the
closed-form answers where they exist. ``pari-bayes design SPEC.toml --out DIR`` and
:func:`run_design`; the spec format is :mod:`pari_bayes.design.spec`.

Modules: ``spec`` (TOML spec, validation), ``replicate`` (one simulated survey, estimated),
``engine`` (the one replicate engine, dask.distributed), ``diagnosands`` (bias, RMSE,
coverage, power, type-S, width, gate failures, with MC SEs), ``analytic`` (design effect,
randomized saturation formulas), ``prior`` (truth drawn from a fitted posterior),
``plots`` (power curves), ``run`` (the sweep).
"""

from __future__ import annotations

from pari_bayes.design.run import DesignResult, run_design
from pari_bayes.design.spec import DesignSpec, DesignSpecError, load_design

__all__ = ["DesignResult", "DesignSpec", "DesignSpecError", "load_design", "run_design"]
