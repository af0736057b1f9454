"""A corpus of malformed inputs: each must fail cleanly and leave --out alone.

The corpus is generated from a small valid survey (a generated equivalent of a
``tests/bad_inputs/`` folder): every case is a file plus the command that reads it and a
pattern its message must match (naming file, row, column, value and what is allowed).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from conftest import make_fake_survey
from pari_bayes._paths import PROJECT_ROOT
from pari_bayes.cli import main
from pari_bayes.registry import load_registry


@dataclass
class Case:
    name: str
    make: Callable[
        [Path], list[str]
    ]  # writes files into the folder, returns CLI args (without --out)
    pattern: str


def _survey_case(
    name: str, edit: Callable[[pd.DataFrame], pd.DataFrame], pattern: str, n: int = 40
) -> Case:
    def make(folder: Path) -> list[str]:
        frame = edit(make_fake_survey(n=n, seed=3).astype(object))
        path = folder / "bad.csv"
        frame.to_csv(path, index=False)
        return ["run", "--data", str(path), "--quiet"]

    return Case(name, make, pattern)


def _raw_case(name: str, payload: Callable[[str], bytes], pattern: str) -> Case:
    def make(folder: Path) -> list[str]:
        text = make_fake_survey(n=40, seed=3).to_csv(index=False)
        path = folder / "bad.csv"
        path.write_bytes(payload(text))
        return ["run", "--data", str(path), "--quiet"]

    return Case(name, make, pattern)


def _set_field(text: str, hid: str, field: int, value: str) -> str:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(hid + ","):
            parts = line.split(",")
            parts[field] = value
            lines[i] = ",".join(parts)
    return "\n".join(lines) + "\n"


def _set(row: int, column: str, value) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[row, column] = value
        return frame

    return edit


def _first(community: str, column: str, value) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        row = frame.index[frame["community"] == community][0]
        frame.loc[row, column] = value
        return frame

    return edit


def _cell(column: str, value: str, allowed: str, hid: str = "H0005") -> str:
    return rf"bad\.csv, row \d+ \(household_id {hid}\), column {column}: '{re.escape(value)}'.*allowed: {allowed}"


SURVEY_CASES = [
    _survey_case("age_not_number", _set(5, "age", "abc"), _cell("age", "abc", "an integer")),
    _survey_case(
        "age_too_old",
        _set(5, "age", 150),
        _cell("age", "150", "an integer of at least 16 and at most 100"),
    ),
    _survey_case("education_4", _set(5, "education", 4), _cell("education", "4", "one of 1, 2, 3")),
    _survey_case(
        "count_fraction",
        _set(5, "lifestyle_changes", 1.3),
        _cell("lifestyle_changes", "1.3", "an integer of at least 0 and at most 5"),
    ),
    _survey_case(
        "count_too_many",
        _set(5, "activities_with_new_friends", 10),
        _cell("activities_with_new_friends", "10", "an integer of at least 0 and at most 9"),
    ),
    _survey_case(
        "negative_months",
        _set(5, "residence_months", -3),
        _cell("residence_months", "-3", "an integer of at least 0"),
    ),
    _survey_case("gender_2", _set(5, "gender", 2), _cell("gender", "2", "0 or 1")),
    _survey_case("hukou_yes", _set(5, "urban_hukou", "yes"), _cell("urban_hukou", "yes", "0 or 1")),
    _survey_case(
        "share_above_1",
        _set(5, "human_capital", 1.5),
        _cell("human_capital", "1.5", "a number of at least 0 and at most 1"),
    ),
    _survey_case(
        "negative_income",
        _set(5, "per_capita_employment_income", -10),
        _cell("per_capita_employment_income", "-10", "a number of at least 0"),
    ),
    _survey_case(
        "income_inf",
        _set(5, "household_income", "inf"),
        _cell("household_income", "inf", "a number of at least 0"),
    ),
    _survey_case(
        "satisfaction_6",
        _set(5, "life_satisfaction", 6),
        _cell("life_satisfaction", "6", "one of 1, 2, 3, 4, 5"),
    ),
    _survey_case(
        "binary_item_0", _set(5, "new_friends", 0), _cell("new_friends", "0", "one of 1, 2")
    ),
    _survey_case(
        "household_size_0",
        _set(5, "household_size", 0),
        _cell("household_size", "0", "an integer of at least 1 and at most 15"),
    ),
    _survey_case(
        "participation_2",
        _set(5, "cbo_participation", 2),
        _cell("cbo_participation", "2", "0 or 1"),
    ),
    _survey_case(
        "missing_value",
        _set(5, "age", ""),
        r"bad\.csv, row 7 \(household_id H0005\), column age: missing value; allowed: an integer",
    ),
    _survey_case(
        "missing_column",
        lambda f: f.drop(columns="education"),
        r"bad\.csv: missing required column\(s\) education",
    ),
    _survey_case(
        "missing_indicator",
        lambda f: f.drop(columns="sense_of_belonging"),
        r"bad\.csv: missing required column\(s\) sense_of_belonging",
    ),
    _survey_case(
        "duplicate_id",
        _set(5, "household_id", "H0001"),
        r"bad\.csv, rows 3, 7, column household_id: 'H0001' appears 2 times",
    ),
    _survey_case(
        "unknown_community", _set(5, "community", "ZZ"), _cell("community", "ZZ", "XT, HC, TF, LT")
    ),
    _survey_case(
        "participation_no_cbo",
        _first("XT", "cbo_participation", 1),
        r"column cbo_participation: 1 in community 'XT', which has no CBOs.*allowed: 0",
    ),
    _survey_case(
        "residence_too_long",
        _first("LT", "residence_months", 20),
        r"column residence_months: 20 is longer than community LT has existed.*allowed: 0 to 8",
    ),
    _survey_case(
        "existence_disagrees",
        lambda f: f.assign(cbo_existence=0),
        r"column cbo_existence: 0 disagrees with the registry.*allowed: 1",
    ),
    _survey_case(
        "large_file_bad_last_row",
        lambda f: (f.__setitem__("education", f["education"].where(f.index < len(f) - 1, 7)), f)[1],
        _cell("education", "7", "one of 1, 2, 3", hid="H0399"),
        n=400,
    ),
    _raw_case("empty_file", lambda t: b"", r"bad\.csv: the file is empty"),
    _raw_case(
        "header_only",
        lambda t: t.splitlines()[0].encode() + b"\n",
        r"bad\.csv: the survey has a header but no households",
    ),
    _raw_case(
        "semicolons",
        lambda t: t.replace(",", ";").encode(),
        r"bad\.csv: the header is separated by semicolons",
    ),
    _raw_case(
        "tabs",
        lambda t: t.replace(",", "\t").encode(),
        r"bad\.csv: the header is separated by tabs",
    ),
    _raw_case(
        "latin1",
        lambda t: t.replace("H0005", "H\xe9005").encode("latin-1"),
        r"bad\.csv: not UTF-8 text",
    ),
    _raw_case("utf16", lambda t: t.encode("utf-16"), r"bad\.csv: not UTF-8 text"),
    _raw_case(
        "bom_plus_bad_value",
        lambda t: b"\xef\xbb\xbf" + _set_field(t, "H0005", 2, "7").encode(),
        _cell("cbo_participation", "7", "0 or 1"),
    ),
    _raw_case(
        "ragged_row",
        lambda t: (
            t + "H9999,XT,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26\n"
        ).encode(),
        r"bad\.csv: not a well-formed CSV",
    ),
    _raw_case(
        "binary_nul",
        lambda t: b"\x00\x01\x02" * 50,
        r"bad\.csv: (not UTF-8 text|contains NUL bytes)",
    ),
    _raw_case(
        "duplicate_header",
        lambda t: t.replace("gender", "age", 1).encode(),
        r"bad\.csv: (column\(s\) \['age'\] appear more than once|missing required column\(s\) gender)",
    ),
]


def _registry_case(
    name: str, edit: Callable[[str], str], pattern: str, drop: str | None = None
) -> Case:
    def make(folder: Path) -> list[str]:
        text = edit(load_registry().path.read_text())
        reg = folder / "bad_registry.toml"
        reg.write_text(text)
        frame = make_fake_survey(n=40, seed=3)
        if drop:
            frame = frame[frame["community"] != drop]
        data = folder / "survey.csv"
        frame.to_csv(data, index=False)
        return ["run", "--data", str(data), "--communities", str(reg), "--quiet"]

    return Case(name, make, pattern)


_NEW = '\n[[community]]\nname = "NW"\nformed = "2020-01"\nsurveyed = "2020-08"\n'

REGISTRY_CASES = [
    _registry_case(
        "unknown_key",
        lambda t: t.replace('name = "TF"', 'name = "TF"\nmayor = "Li"'),
        r"bad_registry\.toml: community #3: unknown key\(s\) \['mayor'\]; allowed",
    ),
    _registry_case(
        "bad_month",
        lambda t: t.replace('formed = "2019-04"', 'formed = "2019-14"'),
        r"bad_registry\.toml: community 'TF', key 'formed': '2019-14' is not a month",
    ),
    _registry_case(
        "bad_date_format",
        lambda t: t.replace('formed = "2019-04"', 'formed = "April 2019"'),
        r"bad_registry\.toml: community 'TF', key 'formed': 'April 2019' is not a month; write it as \"YYYY-MM\"",
    ),
    _registry_case(
        "no_households",
        lambda t: t + _NEW,
        r"community 'NW' is in the registry .*bad_registry\.toml but has no households",
    ),
    _registry_case(
        "duplicate_name",
        lambda t: t + _NEW.replace("NW", "XT"),
        r"bad_registry\.toml: community 'XT': two communities share this name",
    ),
    _registry_case(
        "bad_cbo_kind",
        lambda t: t.replace('kind = "recreational"', 'kind = "sports"'),
        r"bad_registry\.toml: community 'TF': CBO 'Folk Song and Dance Troupe' has kind 'sports'; allowed: voluntary_service",
    ),
    _registry_case(
        "invalid_toml",
        lambda t: t + "\n[[community]\n",
        r"bad_registry\.toml: not a valid TOML registry",
    ),
    _registry_case(
        "formed_after_survey",
        lambda t: t.replace('formed = "2019-12"', 'formed = "2021-01"'),
        r"bad_registry\.toml: community 'LT': formed 2021-01 is after surveyed 2020-08",
    ),
    _registry_case(
        "missing_key",
        lambda t: t.replace(
            'surveyed = "2020-08"\ncbos = []\n\n[[community]]\nname = "HC"',
            'cbos = []\n\n[[community]]\nname = "HC"',
        ),
        r"bad_registry\.toml: community #1: missing required key 'surveyed'",
    ),
]

MODELS = PROJECT_ROOT / "models"


def _spec_case(name: str, base: str, edit: Callable[[str], str], pattern: str) -> Case:
    def make(folder: Path) -> list[str]:
        path = folder / f"{name}.toml"
        path.write_text(edit((MODELS / base).read_text()))
        return ["fit", "--model", str(path)]

    return Case(name, make, pattern)


def _dag_case(name: str, text: Callable[[], str], pattern: str) -> Case:
    def make(folder: Path) -> list[str]:
        path = folder / f"{name}.dot"
        path.write_text(text())
        return ["identify", "--dag", str(path), "--no-refute"]

    return Case(name, make, pattern)


def _replace_nth_factor(text: str) -> str:
    i = text.index('factor = "identity_recognition"')
    return text[:i] + 'factor = "civic_pride"' + text[i + len('factor = "identity_recognition"') :]


SPEC_CASES = [
    _spec_case(
        "spec_prior_family",
        "multivariate.toml",
        lambda t: t.replace(
            'family = "halfnormal", sigma = 0.25', 'family = "halfcauchy", sigma = 0.25'
        ),
        r"spec_prior_family\.toml: key priors\.community_sd\.family: unknown prior family 'halfcauchy'; allowed: normal",
    ),
    _spec_case(
        "spec_unknown_term",
        "multivariate.toml",
        lambda t: t.replace(
            "cbo_presence + (1 | community)", "cbo_presence + hobby + (1 | community)"
        ),
        r"spec_unknown_term\.toml: key formula: term 'hobby' is not a column of the survey; allowed: ",
    ),
    _spec_case(
        "spec_unknown_factor",
        "latent.toml",
        _replace_nth_factor,
        r"spec_unknown_factor\.toml: \[\[items\]\] #\d+ \(sense_of_belonging\): factor 'civic_pride' is not declared; declared factors: ",
    ),
    _spec_case(
        "spec_unknown_key",
        "multivariate.toml",
        lambda t: t.replace("[sampler]", "[sampler]\nwarmup_magic = 3"),
        r"spec_unknown_key\.toml: unknown key\(s\) \[sampler\] 'warmup_magic'; allowed: ",
    ),
    _spec_case(
        "spec_bad_toml",
        "multivariate.toml",
        lambda t: t + "\n[priors\n",
        r"spec_bad_toml\.toml: not valid TOML",
    ),
    _spec_case(
        "spec_unknown_kind",
        "multivariate.toml",
        lambda t: t.replace('kind = "multivariate"', 'kind = "gaussian_process"'),
        r"spec_unknown_kind\.toml: key kind: 'gaussian_process'; allowed: multilevel, multivariate, latent",
    ),
]

DAG_CASES = [
    _dag_case(
        "dag_cycle",
        lambda: (TESTS_DATA / "dag_cycle.dot").read_text(),
        r"dag_cycle\.dot: the graph has a cycle: .* a causal DAG must be acyclic",
    ),
    _dag_case(
        "dag_unknown_node",
        lambda: (TESTS_DATA / "dag_unknown_node.dot").read_text(),
        r"dag_unknown_node\.dot: edge age -> cbo_particpation uses unknown node 'cbo_particpation'",
    ),
    _dag_case(
        "dag_undeclared_latent",
        lambda: (TESTS_DATA / "dag_undeclared_latent.dot").read_text(),
        r"dag_undeclared_latent\.dot: node 'prior_sociability' has no survey column .* is not declared latent",
    ),
    _dag_case(
        "dag_syntax", lambda: "digraph {\n a -> \n", r"dag_syntax\.dot: not a valid DOT file"
    ),
]

CASES = SURVEY_CASES + REGISTRY_CASES + SPEC_CASES + DAG_CASES


def _run(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_fails_cleanly(case: Case, tmp_path: Path, capsys) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    args = case.make(inputs)
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    code, err = _run([*args, "--out", str(out)], capsys)
    assert code != 0
    assert re.search(case.pattern, err, flags=re.S), err
    assert not out.exists()
    assert list(work.iterdir()) == []  # no staging folder left behind
    out.mkdir()
    (out / "keep.txt").write_text("previous results")
    code, err = _run([*args, "--out", str(out), "--force"], capsys)
    assert code != 0
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "previous results"
    assert sorted(p.name for p in work.iterdir()) == ["out"]


TESTS_DATA = PROJECT_ROOT / "tests" / "data"


def test_corpus_size() -> None:
    assert len(CASES) >= 40
    assert SPEC_CASES and DAG_CASES
