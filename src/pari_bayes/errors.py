"""Exception and warning types of pari_bayes.

Every error the toolkit raises on purpose is a :class:`PariBayesError`, so callers (and the
CLI) can tell a problem with the user's input or run apart from a bug. Messages name the
file, row, column, the value received and what is allowed, and say what to do.
"""

from __future__ import annotations

__all__ = [
    "PariBayesError",
    "SurveyDataError",
    "RegistryError",
    "SpecError",
    "DAGError",
    "IdentificationError",
    "ConvergenceError",
    "EstimationError",
    "OutputError",
    "ProvenanceError",
    "PariBayesWarning",
]


class PariBayesError(Exception):
    """Base class of every error pari_bayes raises on purpose."""


class SurveyDataError(PariBayesError):
    """The survey file is unreadable or breaks the codebook or registry.

    ``problems`` holds every problem found in one pass (one line each).
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        if self.problems:
            shown = "\n  - ".join(self.problems[:200])
            more = len(self.problems) - 200
            tail = f"\n  ... and {more} more" if more > 0 else ""
            message = f"{message}\n  - {shown}{tail}"
        super().__init__(message)


class RegistryError(PariBayesError):
    """The community registry (communities.toml) is malformed."""


class SpecError(PariBayesError):
    """A model specification (TOML in models/) is malformed or names unknown terms."""


class DAGError(PariBayesError):
    """The causal graph file is malformed, cyclic, or does not match the data."""


class IdentificationError(PariBayesError):
    """A requested causal estimand is not identified under the stated graph."""


class EstimationError(PariBayesError):
    """An estimator could not produce trustworthy numbers (e.g. no convergence)."""


class ConvergenceError(EstimationError):
    """MCMC diagnostics failed the convergence gate (divergences, R-hat, ESS)."""


class OutputError(PariBayesError):
    """An output folder cannot be written safely (exists and is not empty, ...)."""


class ProvenanceError(PariBayesError):
    """A saved result does not match the spec, data or seed it claims to come from."""


class PariBayesWarning(UserWarning):
    """Warnings about the data or design that do not stop a run."""
