"""One call into each sampler for every estimator (multilevel, formula, latent, measurement).

Each estimator compiles its PyMC model once (``nutpie.compile_pymc_model``) and samples it,
possibly several times with new data (``compiled.with_data``: other outcomes, replicates);
:func:`nutpie_sample` is that sampling call, with the project's fixed choices (no warm-up
draws stored, no progress bar, nutpie's fork warning silenced).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["nutpie_sample", "pymc_sample"]


def nutpie_sample(
    compiled: Any,
    *,
    draws: int,
    tune: int,
    chains: int,
    cores: int,
    seed: int,
    target_accept: float,
    low_rank: bool = False,
    data: Mapping[str, np.ndarray] | None = None,
) -> Any:
    """Sample a compiled nutpie model, optionally with its shared data replaced.

    Parameters
    ----------
    compiled
        From ``nutpie.compile_pymc_model``.
    draws, tune, chains, cores, seed, target_accept
        Sampler settings (``cores`` chains run in parallel).
    low_rank
        nutpie's low-rank modified mass matrix adaptation.
    data
        New values of the model's ``pm.Data`` containers (names it does not have are
        ignored).

    Returns
    -------
    arviz.InferenceData
    """
    import nutpie

    if data:
        known = getattr(compiled, "shared_data", data)
        compiled = compiled.with_data(**{k: v for k, v in data.items() if k in known})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fork.*")
        return nutpie.sample(
            compiled,
            draws=int(draws),
            tune=int(tune),
            chains=int(chains),
            cores=int(cores),
            seed=int(seed),
            target_accept=float(target_accept),
            low_rank_modified_mass_matrix=bool(low_rank),
            save_warmup=False,
            progress_bar=False,
        )


def pymc_sample(
    model: Any,
    *,
    draws: int,
    tune: int,
    chains: int,
    cores: int,
    seed: int,
    target_accept: float,
    var_names: list[str] | None = None,
) -> Any:
    """Sample a PyMC model with PyMC's own NUTS (the ``sampler = "pymc"`` alternative).

    No progress bar and no convergence checks here: every estimator applies the project's
    gate to the result itself.
    """
    import pymc as pm

    with model:
        return pm.sample(
            draws=int(draws),
            tune=int(tune),
            chains=int(chains),
            cores=int(cores),
            random_seed=int(seed),
            target_accept=float(target_accept),
            var_names=var_names,
            progressbar=False,
            compute_convergence_checks=False,
        )
