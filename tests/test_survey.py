"""Survey validation: one bad-input case per rule, and all problems reported in one pass."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

from pari_bayes import PariBayesWarning, SurveyDataError, load_survey, validate_frame
from pari_bayes.registry import load_registry


def _validate(frame, registry, codebook):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PariBayesWarning)
        return validate_frame(frame, registry, codebook, source="s.csv")


def test_valid_frame_derives_exposure(fake_frame, registry, codebook):
    survey = _validate(fake_frame, registry, codebook)
    data = survey.data
    assert len(data) == len(fake_frame)
    part = data["exposure"] == "participant"
    assert (data.loc[part, "cbo_participation"] == 1).all()
    assert (data.loc[data["exposure"] == "no_cbo", "cbo_presence"] == 0).all()
    assert set(data["income_level"]) <= {1, 2, 3, 4, 5}
    assert "households in 4 communities" in survey.summary()
    assert len(survey.data_hash) == 64


def test_unknown_community(fake_frame, registry, codebook):
    fake_frame.loc[3, "community"] = "ZZ"
    with pytest.raises(
        SurveyDataError,
        match=r"row 5 \(household_id H0003\), column community: 'ZZ'.*allowed: XT, HC, TF, LT",
    ):
        _validate(fake_frame, registry, codebook)


def test_duplicate_household_id(fake_frame, registry, codebook):
    fake_frame.loc[5, "household_id"] = "H0001"
    with pytest.raises(
        SurveyDataError, match=r"rows 3, 7, column household_id: 'H0001' appears 2 times"
    ):
        _validate(fake_frame, registry, codebook)


def test_missing_value(fake_frame, registry, codebook):
    fake_frame["age"] = fake_frame["age"].astype(object)
    fake_frame.loc[2, "age"] = ""
    with pytest.raises(SurveyDataError, match=r"household_id H0002\), column age: missing value"):
        _validate(fake_frame, registry, codebook)


@pytest.mark.parametrize(
    ("column", "value", "allowed"),
    [
        ("education", 4, "one of 1, 2, 3"),
        ("economic_pressure", 4, "one of 1, 2, 3"),
        ("activities_with_new_friends", 1.3, "an integer of at least 0 and at most 9"),
        ("residence_months", -2, "an integer of at least 0"),
        ("gender", 2, "0 or 1"),
        ("human_capital", 1.5, "a number of at least 0 and at most 1"),
        ("age", "old", "an integer"),
    ],
)
def test_out_of_coding(fake_frame, registry, codebook, column, value, allowed):
    fake_frame[column] = fake_frame[column].astype(object)
    fake_frame.loc[7, column] = value
    with pytest.raises(
        SurveyDataError, match=rf"H0007\), column {column}: '{value}'.*allowed: {allowed}"
    ):
        _validate(fake_frame, registry, codebook)


def test_participation_without_cbo(fake_frame, registry, codebook):
    row = fake_frame.index[fake_frame["community"] == "XT"][0]
    fake_frame.loc[row, "cbo_participation"] = 1
    with pytest.raises(
        SurveyDataError, match=r"column cbo_participation: 1 in community 'XT', which has no CBOs"
    ):
        _validate(fake_frame, registry, codebook)


def test_residence_longer_than_community(fake_frame, registry, codebook):
    row = fake_frame.index[fake_frame["community"] == "LT"][0]
    fake_frame.loc[row, "residence_months"] = 12  # LT formed 2019-12, surveyed 2020-08: 8 months
    with pytest.raises(
        SurveyDataError, match=r"residence_months: 12 is longer than community LT.*allowed: 0 to 8"
    ):
        _validate(fake_frame, registry, codebook)


def test_cbo_existence_must_agree(fake_frame, registry, codebook):
    presence = fake_frame["community"].map(registry.cbo_presence)
    fake_frame["cbo_existence"] = ((presence == 1) & (fake_frame["cbo_participation"] == 0)).astype(
        int
    )
    _validate(fake_frame, registry, codebook)  # agrees: fine
    row = fake_frame.index[fake_frame["community"] == "XT"][0]
    fake_frame.loc[row, "cbo_existence"] = 1
    with pytest.raises(
        SurveyDataError, match=r"cbo_existence: 1 disagrees with the registry.*allowed: 0"
    ):
        _validate(fake_frame, registry, codebook)


def test_missing_column(fake_frame, registry, codebook):
    with pytest.raises(SurveyDataError, match=r"missing required column\(s\) age"):
        _validate(fake_frame.drop(columns="age"), registry, codebook)


def test_all_problems_in_one_pass(fake_frame, registry, codebook):
    fake_frame = fake_frame.astype(object)
    fake_frame.loc[1, "education"] = 9
    fake_frame.loc[2, "community"] = "QQ"
    fake_frame.loc[3, "age"] = "x"
    with pytest.raises(SurveyDataError) as info:
        _validate(fake_frame, registry, codebook)
    assert len(info.value.problems) == 3
    assert "3 problem(s) found" in str(info.value)


def test_small_community_warns(fake_frame, registry, codebook):
    lt = fake_frame.index[fake_frame["community"] == "LT"]
    frame = fake_frame.drop(index=lt[1:])
    with pytest.warns(PariBayesWarning, match="community LT has 1 household"):
        validate_frame(frame, registry, codebook)


@pytest.mark.parametrize("keep", [("XT", "LT"), ("HC", "TF")])
def test_spillover_not_identified_warns(fake_frame, registry, codebook, keep):
    frame = fake_frame[fake_frame["community"].isin(keep)]
    with pytest.warns(PariBayesWarning, match="SPILLOVER NOT IDENTIFIED"):
        validate_frame(frame, registry, codebook)


def test_extra_columns_dropped_with_notice(fake_frame, registry, codebook):
    fake_frame["respondent_name"] = "Zhang San"
    survey = _validate(fake_frame, registry, codebook)
    assert "respondent_name" not in survey.data.columns
    assert any("respondent_name" in n for n in survey.notices)


def test_csv_reading_errors(tmp_path, fake_frame):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(SurveyDataError, match="empty.csv: the file is empty"):
        load_survey(empty)
    semi = tmp_path / "semi.csv"
    fake_frame.to_csv(semi, sep=";", index=False)
    with pytest.raises(SurveyDataError, match="separated by semicolons"):
        load_survey(semi)
    latin = tmp_path / "latin.csv"
    latin.write_bytes(fake_frame.to_csv(index=False).encode() + "x,\xe9\n".encode("latin-1"))
    with pytest.raises(SurveyDataError, match="not UTF-8"):
        load_survey(latin)
    header_only = tmp_path / "header.csv"
    header_only.write_text(",".join(fake_frame.columns) + "\n")
    with pytest.raises(SurveyDataError, match="no households"):
        load_survey(header_only)
    with pytest.raises(SurveyDataError, match="not found"):
        load_survey(tmp_path / "nope.csv")


def test_bom_is_accepted(tmp_path, fake_frame):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + fake_frame.to_csv(index=False).encode())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PariBayesWarning)
        survey = load_survey(path)
    assert survey.n_households == len(fake_frame)


def test_new_community_via_registry(tmp_path, fake_frame):
    text = load_registry().path.read_text()
    text += '\n[[community]]\nname = "NW"\nformed = "2020-01"\nsurveyed = "2020-08"\ncbos = [{ name = "Choir", kind = "recreational" }]\n'
    reg = tmp_path / "communities.toml"
    reg.write_text(text)
    extra = fake_frame.iloc[:3].copy()
    extra["household_id"] = ["N1", "N2", "N3"]
    extra["community"] = "NW"
    extra["residence_months"] = 3
    frame = pd.concat([fake_frame, extra], ignore_index=True)
    path = tmp_path / "s.csv"
    frame.to_csv(path, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PariBayesWarning)
        survey = load_survey(path, communities=reg)
    assert "NW" in survey.communities
    assert (survey.data.loc[survey.data["community"] == "NW", "cbo_presence"] == 1).all()


def test_registry_community_without_households(tmp_path, fake_frame):
    path = tmp_path / "s.csv"
    fake_frame[fake_frame["community"] != "TF"].to_csv(path, index=False)
    with pytest.raises(
        SurveyDataError, match="community 'TF' is in the registry .* but has no households"
    ):
        load_survey(path)
