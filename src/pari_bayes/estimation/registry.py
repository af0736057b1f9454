"""The estimator registry: one entry per spec ``kind``, like Bambi's ``BUILTIN_FAMILIES``.

Every estimator has one lifecycle, driven by :func:`pari_bayes.estimation.fitting.fit_spec_file`:

1. its spec section is parsed (:func:`pari_bayes.estimation.spec.load_spec`; ``kind`` must
   be a key of :data:`ESTIMATORS`);
2. ``fit(survey, spec, directory, seed=..., allow_unconverged=..., plots=...,
   identification=...)`` builds the design from the survey and the run's identification
   result (its adjustment sets), samples under the seed, computes the potential-outcome
   contrasts (DE/IE/TE/OE) and writes its files into ``directory``;
3. it returns a result with ``effects`` (the common effect columns), ``diagnostics``
   (per-parameter ``r_hat``/``ess_bulk``/``ess_tail``/``divergences``), ``converged``,
   ``failures`` (the gate's messages) and ``idata``;
4. the lifecycle applies the gate, escalates the sampler, and withholds the effect files
   of a spec that still fails.

A new estimator is one module with a ``fit`` function and one :func:`register_estimator`
call (see ``tests/test_lifecycle.py`` for a tiny one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pari_bayes.errors import SpecError

__all__ = ["Estimator", "ESTIMATORS", "register_estimator", "get_estimator"]


@dataclass(frozen=True)
class Estimator:
    """One kind of model spec and the function that fits it.

    Attributes
    ----------
    kind
        The spec's ``kind``.
    fit
        ``fit(survey, spec, directory, *, seed, allow_unconverged, plots, identification)``
        returning a result with ``effects``, ``diagnostics``, ``converged``, ``failures``
        and ``idata``.
    cost
        Relative wall time, for balancing the main job's worker processes.
    description
        One line for listings.
    own_sections
        The estimator validates its spec's sections itself (the common parser checks only
        ``kind``, ``name``, ``outcomes``, ``identification`` and ``[sampler]``; the rest is
        kept in ``spec.raw``), as ``latent`` does.
    """

    kind: str
    fit: Callable[..., Any]
    cost: float = 1.0
    description: str = ""
    own_sections: bool = False


def _fit_multilevel(survey, spec, directory, **kwargs: Any) -> Any:
    from pari_bayes.estimation.multilevel import write_fit

    return write_fit(survey, spec, directory, **kwargs)


def _fit_latent(survey, spec, directory, *, seed=None, plots=True, **kwargs: Any) -> Any:  # noqa: ARG001
    from pari_bayes.estimation.latent import fit_latent_spec

    seed = spec.sampler.seed if seed is None else seed
    return fit_latent_spec(survey, spec, directory, seed=seed, **kwargs)


def _fit_formula(survey, spec, directory, **kwargs: Any) -> Any:
    from pari_bayes.estimation.formula import fit_formula_spec

    return fit_formula_spec(survey, spec, directory, **kwargs)


def _fit_measurement(survey, spec, directory, *, seed=None, plots=True, **kwargs: Any) -> Any:
    from pari_bayes.estimation.cfa import fit_measurement_spec

    kwargs.pop("identification", None)  # a measurement model has no adjustment set
    seed = spec.sampler.seed if seed is None else seed
    return fit_measurement_spec(survey, spec, directory, seed=seed, plots=plots, **kwargs)


#: The registered estimators by kind (built-ins first; :func:`register_estimator` adds).
ESTIMATORS: dict[str, Estimator] = {
    "multilevel": Estimator(
        "multilevel", _fit_multilevel, 1.0, "one multilevel model per integration score"
    ),
    "multivariate": Estimator(
        "multivariate", _fit_multilevel, 1.5, "the scores jointly, correlated residuals"
    ),
    "latent": Estimator(
        "latent",
        _fit_latent,
        3.0,
        "joint measurement (items) and structural model",
        own_sections=True,
    ),
    "measurement": Estimator(
        "measurement",
        _fit_measurement,
        2.0,
        "the measurement model alone (a Bayesian CFA): loadings, residual and factor variances",
        own_sections=True,
    ),
    "formula": Estimator(
        "formula",
        _fit_formula,
        1.5,
        "any Bambi formula and family; effects by counterfactual prediction",
        own_sections=True,
    ),
}


def register_estimator(estimator: Estimator, replace: bool = False) -> Estimator:
    """Add an estimator to :data:`ESTIMATORS`.

    Raises
    ------
    SpecError
        If the kind is taken and ``replace`` is false.
    """
    if estimator.kind in ESTIMATORS and not replace:
        raise SpecError(f"an estimator of kind {estimator.kind!r} is already registered")
    ESTIMATORS[estimator.kind] = estimator
    return estimator


def get_estimator(kind: str, where: str = "<spec>") -> Estimator:
    """Return the estimator of ``kind``.

    Raises
    ------
    SpecError
        Naming the allowed kinds.
    """
    try:
        return ESTIMATORS[kind]
    except (KeyError, TypeError):
        raise SpecError(f"{where}: key kind: {kind!r}; allowed: {', '.join(ESTIMATORS)}") from None
