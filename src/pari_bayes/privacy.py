"""Privacy: keep respondents' identities out of every output.

Columns not in the codebook (names, phone numbers, ID numbers, free text) are dropped when
a survey is loaded (:func:`pari_bayes.survey.validate_frame`). This module adds salted
hashing of household ids for ``--hash-ids``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import replace

from pari_bayes.survey import Survey

__all__ = ["hash_household_ids", "new_salt"]


def new_salt() -> str:
    """Return a random 128-bit salt (hex)."""
    return secrets.token_hex(16)


def hash_household_ids(survey: Survey, salt: str) -> Survey:
    """Replace household ids by salted SHA-256 hashes (16 hex characters).

    Parameters
    ----------
    survey
        A validated survey.
    salt
        Secret salt; without it the hashes cannot be linked back to the ids. Keep it
        private (it is never written to an output).

    Returns
    -------
    Survey
        A copy whose ``household_id`` column holds ``h_<hash>`` values.
    """
    data = survey.data.copy()
    data["household_id"] = [
        "h_" + hashlib.sha256(f"{salt}:{hid}".encode()).hexdigest()[:16]
        for hid in data["household_id"]
    ]
    return replace(
        survey, data=data, notices=[*survey.notices, "household ids replaced by salted hashes"]
    )
