"""Property: any data frame either validates or raises our own error type, never another."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_fake_survey
from pari_bayes import PariBayesError, PariBayesWarning, Survey, validate_frame
from pari_bayes.codebook import load_codebook
from pari_bayes.registry import load_registry

CODEBOOK = load_codebook()
REGISTRY = load_registry()
BASE = make_fake_survey(n=12, seed=5)

cell = st.one_of(
    st.none(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(["", "NA", "1", "2", "0", "1.0", "XT", "HC", "inf", "-0", "1e3", " 3 "]),
    st.booleans(),
)


@st.composite
def frames(draw) -> pd.DataFrame:
    frame = BASE.copy().astype(object)
    n_edits = draw(st.integers(0, 15))
    for _ in range(n_edits):
        row = draw(st.integers(0, len(frame) - 1))
        col = draw(st.sampled_from(list(frame.columns)))
        frame.iat[row, frame.columns.get_loc(col)] = draw(cell)
    if draw(st.booleans()):
        drop = draw(st.lists(st.sampled_from(list(frame.columns)), max_size=3, unique=True))
        frame = frame.drop(columns=drop)
    if draw(st.booleans()):
        frame["extra_" + draw(st.text(min_size=1, max_size=4))] = draw(cell)
    n_rows = draw(st.integers(0, len(frame)))
    return frame.iloc[:n_rows]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames())
def test_loader_never_raises_foreign_errors(frame: pd.DataFrame) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PariBayesWarning)
        try:
            survey = validate_frame(frame, REGISTRY, CODEBOOK)
        except PariBayesError:
            return
    assert isinstance(survey, Survey)
    assert survey.data["household_id"].is_unique
    assert np.isfinite(survey.data["age"]).all()
    assert set(survey.data["exposure"]) <= {"participant", "nonparticipant_cbo", "no_cbo"}
