"""Closed-form power and minimum detectable effects (MDE) of the simulated designs.

Two formulas, each for the estimands it covers:

Two-arm cluster design (OE)
    Communities with CBOs against communities without, everyone's outcome compared:
    ``Var = DEFF * sigma_total^2 / (P (1 - P) J m)`` with the design effect
    ``DEFF = 1 + (m - 1) icc`` (Donner and Klar 2000). With participation ``pi`` and a
    direct effect ``DE`` inside CBO communities the outcome there has the extra variance
    ``DE^2 pi (1 - pi)`` at the household level, which this module adds to the CBO arm.
Randomized saturation design (DE, IE, TE)
    The random-effects model of Baird, Bohren, McIntosh and Ozler (2018, REStat, Sect. 3):
    ``y_ic = beta' exposure + u_c + e_ic`` with ``Var(u) = icc``, ``Var(e) = 1 - icc``;
    here with one saturation ``pi`` in a share ``P`` of the ``J`` communities and a pure
    control arm. The OLS estimates are contrasts of cell means, with variances (equal
    community sizes ``m``, expected cell sizes)::

        IE (non-participants in CBO communities - control):
            (icc + (1 - icc) / (m (1 - pi))) / (P J) + (icc + (1 - icc) / m) / ((1 - P) J)
        TE (participants - control):
            (icc + (1 - icc) / (m pi)) / (P J)       + (icc + (1 - icc) / m) / ((1 - P) J)
        DE (participants - non-participants, same communities; u_c cancels):
            (1 - icc) / (P J m pi (1 - pi))

Power is that of a two-sided t-test at level ``alpha`` on ``J - 2`` degrees of freedom
with non-centrality ``effect / sqrt(Var)`` (noncentral t), and
``MDE = (t_{1 - alpha/2} + t_{power}) sqrt(Var)``. These ignore the randomness of the cell
sizes (binomial participation) and the small-sample behaviour of CR2, which the
simulation has: the two are compared side by side in ``diagnosands.csv``.
"""

from __future__ import annotations

import math

from scipy import stats

from pari_bayes.errors import PariBayesError

__all__ = [
    "design_effect",
    "estimator_variance",
    "analytic_power",
    "minimum_detectable_effect",
]

COVERED = ("DE", "IE", "TE", "OE")


def design_effect(cluster_size: float, icc: float) -> float:
    """Design effect ``1 + (m - 1) icc`` of a cluster-randomized comparison."""
    return 1.0 + (cluster_size - 1.0) * icc


def estimator_variance(
    estimand: str,
    communities: int,
    cbo_share: float,
    households: float,
    participation: float,
    icc: float,
    total_sd: float = 1.0,
    direct_effect: float = 0.0,
) -> float:
    """Return the sampling variance of an estimand's OLS estimator (formulas above).

    Parameters
    ----------
    estimand
        ``DE``, ``IE``, ``TE`` or ``OE``.
    communities, cbo_share, households, participation
        The design: ``J``, ``P``, ``m``, ``pi``.
    icc, total_sd
        Intraclass correlation and sd of the outcome net of the exposures.
    direct_effect
        Only for OE: the participation effect that adds variance inside CBO communities.

    Raises
    ------
    PariBayesError
        For an estimand the formulas do not cover.
    """
    j, p, m, pi = communities, cbo_share, households, participation
    n_cbo = round(p * j)
    p = n_cbo / j  # the realized share of CBO communities
    tau2, sig2 = icc * total_sd**2, (1 - icc) * total_sd**2
    control = (tau2 + sig2 / m) / ((1 - p) * j)
    if estimand == "IE":
        return (tau2 + sig2 / (m * (1 - pi))) / (p * j) + control
    if estimand == "TE":
        return (tau2 + sig2 / (m * pi)) / (p * j) + control
    if estimand == "DE":
        return sig2 / (p * j * m * pi * (1 - pi))
    if estimand == "OE":
        extra = direct_effect**2 * pi * (1 - pi)
        return (tau2 + (sig2 + extra) / m) / (p * j) + control
    raise PariBayesError(f"no closed form for estimand {estimand!r}; allowed: {', '.join(COVERED)}")


def analytic_power(effect: float, variance: float, communities: int, alpha: float = 0.05) -> float:
    """Power of a two-sided t-test on ``J - 2`` df (noncentral t), effect / sqrt(variance)."""
    df = max(communities - 2, 1)
    crit = stats.t.ppf(1 - alpha / 2, df)
    ncp = effect / math.sqrt(variance)
    return float(stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp))


def minimum_detectable_effect(
    variance: float, communities: int, alpha: float = 0.05, power: float = 0.8
) -> float:
    """``MDE = (t_{1 - alpha/2} + t_{power}) sqrt(variance)`` on ``J - 2`` df."""
    df = max(communities - 2, 1)
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * math.sqrt(variance))
