"""Causal estimands under partial interference (Hudgens & Halloran 2008).

Households are clustered in communities; interference is allowed within a community, not
across. ``Y(a, s)`` is the integration a household would have with own CBO participation
``a`` and community CBO presence ``s``. Participation needs CBOs, so ``Y(1, 0)`` does not
exist and the direct effect is only defined where CBOs exist (positivity).

=====  =============================================  =======================================
name   definition                                     exposure groups compared
=====  =============================================  =======================================
DE     E[Y(1,1) - Y(0,1)]  (CBO communities only)     participant vs nonparticipant_cbo
IE     E[Y(0,1) - Y(0,0)]  (spillover)                nonparticipant_cbo vs no_cbo
TE     E[Y(1,1) - Y(0,0)] = DE + IE                   participant vs no_cbo
OE     a*Y(1,1) + (1-a)*Y(0,1) - Y(0,0)               CBO communities vs no_cbo
=====  =============================================  =======================================

Yang & Xu's Table 4 regresses each dimension on ``cbo_participation`` and
``cbo_existence`` (1 = non-participant in a CBO community) with households in CBO-free
communities as the reference group, so the participation coefficient is the total effect
TE, the existence coefficient is the spillover IE, and the direct effect is their
difference, DE = TE - IE.
"""

from __future__ import annotations

from dataclasses import dataclass

from pari_bayes.errors import IdentificationError

__all__ = [
    "ESTIMANDS",
    "Estimand",
    "estimand",
    "TABLE4_MAPPING",
    "direct_from_table4",
    "overall_effect",
    "exposure_coding",
]

#: Estimand names in report order.
ESTIMANDS = ("DE", "IE", "TE", "OE")

#: Table 4 term -> estimand it estimates (DE is the difference of the two).
TABLE4_MAPPING = {
    "cbo_participation": "TE",
    "cbo_existence": "IE",
    "cbo_participation - cbo_existence": "DE",
}


@dataclass(frozen=True)
class Estimand:
    """One causal contrast of potential outcomes Y(a, s).

    Attributes
    ----------
    name
        DE, IE, TE or OE.
    label
        Plain-language name.
    definition
        The contrast in potential-outcome notation.
    treated, control
        Exposure groups (``Survey.data['exposure']``) whose outcomes stand for the two
        potential outcomes being compared.
    treatment_column
        Survey column that separates treated from control within those groups.
    intervened
        DAG nodes set by the intervention (the identification query).
    population
        Where the estimand is defined.
    table4
        How Table 4's coefficients map onto it.

    """

    name: str
    label: str
    definition: str
    treated: tuple[str, ...]
    control: tuple[str, ...]
    treatment_column: str
    intervened: tuple[str, ...]
    population: str
    table4: str

    def exposure_coding(self) -> dict:
        """Return the comparison as a plain dict (for JSON and estimators)."""
        return {
            "estimand": self.name,
            "label": self.label,
            "definition": self.definition,
            "treated": list(self.treated),
            "control": list(self.control),
            "groups": list(self.treated) + list(self.control),
            "treatment_column": self.treatment_column,
            "restrict_to": (
                {"cbo_presence": 1} if self.population == "CBO communities only" else {}
            ),
            "population": self.population,
            "table4": self.table4,
        }


_ESTIMANDS = {
    "DE": Estimand(
        name="DE",
        label="direct effect of own participation",
        definition="E[Y(1,1) - Y(0,1)]",
        treated=("participant",),
        control=("nonparticipant_cbo",),
        treatment_column="cbo_participation",
        intervened=("cbo_participation",),
        population="CBO communities only",
        table4="participation coefficient minus existence coefficient",
    ),
    "IE": Estimand(
        name="IE",
        label="spillover (indirect) effect of CBO presence on non-participants",
        definition="E[Y(0,1) - Y(0,0)]",
        treated=("nonparticipant_cbo",),
        control=("no_cbo",),
        treatment_column="cbo_presence",
        intervened=("cbo_presence", "cbo_participation"),
        population="all households (participation held at 0)",
        table4="existence coefficient (cbo_existence)",
    ),
    "TE": Estimand(
        name="TE",
        label="total effect of participating where CBOs exist vs no CBOs",
        definition="E[Y(1,1) - Y(0,0)] = DE + IE",
        treated=("participant",),
        control=("no_cbo",),
        treatment_column="cbo_participation",
        intervened=("cbo_presence", "cbo_participation"),
        population="all households",
        table4="participation coefficient (cbo_participation)",
    ),
    "OE": Estimand(
        name="OE",
        label="overall effect of bringing CBOs to a community",
        definition="alpha*Y(1,1) + (1-alpha)*Y(0,1) - Y(0,0)",
        treated=("participant", "nonparticipant_cbo"),
        control=("no_cbo",),
        treatment_column="cbo_presence",
        intervened=("cbo_presence",),
        population="all households; alpha = participation rate where CBOs exist",
        table4="alpha*participation + (1-alpha)*existence coefficient",
    ),
}


def estimand(name: str) -> Estimand:
    """Look up an estimand by name (DE, IE, TE, OE).

    Raises
    ------
    IdentificationError
        If the name is not one of them.

    """
    key = str(name).upper()
    if key not in _ESTIMANDS:
        raise IdentificationError(f"unknown estimand {name!r}; allowed: {', '.join(ESTIMANDS)}")
    return _ESTIMANDS[key]


def exposure_coding(name: str) -> dict:
    """Which exposure groups an estimand compares (see :meth:`Estimand.exposure_coding`)."""
    return estimand(name).exposure_coding()


def direct_from_table4(participation: float, existence: float) -> float:
    """DE from Table 4's coefficients: TE (participation) minus IE (existence).

    Examples
    --------
    >>> round(direct_from_table4(0.726, 0.807), 3)  # behavior adaptation, Model 6
    -0.081

    """
    return float(participation) - float(existence)


def overall_effect(alpha: float, y11: float, y01: float, y00: float) -> float:
    """OE(alpha) = alpha*Y(1,1) + (1-alpha)*Y(0,1) - Y(0,0), i.e. alpha*DE + IE.

    Raises
    ------
    IdentificationError
        If alpha is outside [0, 1].

    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise IdentificationError(f"alpha must be in [0, 1]; got {alpha!r}")
    return float(alpha) * y11 + (1.0 - float(alpha)) * y01 - y00
