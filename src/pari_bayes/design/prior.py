"""Assurance from what a survey taught us: true effects drawn from a fitted posterior.

``pari-bayes design SPEC --prior-from RUN_DIR`` reads the multilevel posterior of a
finished run (``RUN_DIR/fit/<spec>/posterior.nc``, by default the ``table4`` spec) and,
for every replicate, draws one posterior draw (chain, draw) at random: its direct effect,
spillover effect, community sd and residual sd of each design dimension become that
replicate's truth. The multilevel model works on the standardized outcome, so these are
in sd units of the score -- the units of the design spec's ``[truth]``. Power averaged over
the posterior is the Bayesian *assurance* (O'Hagan, Stevens and Campbell 2005): the
probability of detecting the effect given what the survey says about its size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pari_bayes.design.spec import DesignSpecError, Truth

__all__ = ["PosteriorTruth"]

VARIABLES = ("direct_effect", "spillover_effect", "community_sd", "residual_sd")


@dataclass(frozen=True)
class PosteriorTruth:
    """Posterior draws (flattened over chains) of the design's truth, per dimension."""

    source: str
    dimensions: tuple[str, ...]
    de: np.ndarray  # (draws, K)
    ie: np.ndarray
    community_sd: np.ndarray
    residual_sd: np.ndarray

    @property
    def n_draws(self) -> int:
        """Number of posterior draws."""
        return self.de.shape[0]

    def draw(self, rng: np.random.Generator, dimensions: tuple[str, ...]) -> dict[str, Truth]:
        """One posterior draw as the truth of every dimension (jointly: the same draw)."""
        i = int(rng.integers(self.n_draws))
        out = {}
        for dim in dimensions:
            k = self.dimensions.index(dim)
            out[dim] = Truth(
                de=float(self.de[i, k]),
                ie=float(self.ie[i, k]),
                community_sd=float(self.community_sd[i, k]),
                residual_sd=float(self.residual_sd[i, k]),
            )
        return out

    def summary(self) -> dict[str, dict[str, float]]:
        """Posterior mean of each quantity per dimension (for the report)."""
        return {
            dim: {
                "de": float(self.de[:, k].mean()),
                "ie": float(self.ie[:, k].mean()),
                "community_sd": float(self.community_sd[:, k].mean()),
                "residual_sd": float(self.residual_sd[:, k].mean()),
                "prob_ie_positive": float((self.ie[:, k] > 0).mean()),
            }
            for k, dim in enumerate(self.dimensions)
        }

    @classmethod
    def from_run(
        cls, run_dir: str | os.PathLike, dimensions: tuple[str, ...], spec: str = "table4"
    ) -> PosteriorTruth:
        """Read ``run_dir/fit/<spec>/posterior.nc``.

        Raises
        ------
        DesignSpecError
            If the folder or posterior is missing, did not pass the convergence gate, or
            lacks a variable or dimension the design needs.
        """
        import xarray as xr

        run = Path(run_dir)
        path = run / "fit" / spec / "posterior.nc"
        if not path.is_file():
            found = sorted(str(p.relative_to(run)) for p in run.glob("fit/*/posterior.nc"))
            raise DesignSpecError(
                f"--prior-from {run}: no {path.relative_to(run) if run.is_dir() else path}; "
                f"allowed: a finished `pari-bayes run` folder with a multilevel fit "
                f"(found: {', '.join(found) or 'none'})"
            )
        with xr.open_dataset(path, group="posterior") as ds:
            ds = ds.load()
        with xr.open_dataset(path) as root:
            status = str(root.attrs.get("status", ""))
        if status and status != "converged":
            raise DesignSpecError(
                f"--prior-from {path}: the posterior is marked {status!r} (it failed the "
                "convergence gate); refit it before drawing designs from it"
            )
        missing = [v for v in VARIABLES if v not in ds]
        if missing:
            raise DesignSpecError(
                f"--prior-from {path}: lacks {', '.join(missing)}; allowed: a multilevel "
                "posterior (kind multilevel or multivariate)"
            )
        have = [str(d) for d in ds["direct_effect"].coords["dimension"].values]
        absent = [d for d in dimensions if d not in have]
        if absent:
            raise DesignSpecError(
                f"--prior-from {path}: no dimension {', '.join(absent)}; allowed: {', '.join(have)}"
            )

        def flat(name: str) -> np.ndarray:
            da = ds[name].sel(dimension=list(dimensions)).transpose("chain", "draw", "dimension")
            return da.to_numpy().reshape(-1, len(dimensions)).astype(float)

        return cls(
            source=str(path),
            dimensions=tuple(dimensions),
            de=flat("direct_effect"),
            ie=flat("spillover_effect"),
            community_sd=flat("community_sd"),
            residual_sd=flat("residual_sd"),
        )
