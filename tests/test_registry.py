"""Registry parsing errors name the file, community and key."""

from __future__ import annotations

import pytest

from pari_bayes import RegistryError, load_registry
from pari_bayes.registry import months_between


def test_bundled_registry():
    reg = load_registry()
    assert reg.names == ("XT", "HC", "TF", "LT")
    assert reg.cbo_presence == {"XT": 0, "HC": 1, "TF": 1, "LT": 0}
    assert reg["XT"].max_residence_months == 26
    assert months_between("2019-12", "2020-08") == 8


BASE = '[[community]]\nname = "A"\nformed = "2019-01"\nsurveyed = "2020-08"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BASE + 'colour = "red"\n', r"community 'A'|community #1: unknown key\(s\) \['colour'\]"),
        (BASE.replace("2019-01", "2019-13"), r"'formed': '2019-13' is not a month"),
        (BASE.replace("2019-01", "Jan 2019"), r"is not a month; write it as \"YYYY-MM\""),
        (BASE + BASE, r"community 'A': two communities share this name"),
        (BASE.replace("2019-01", "2021-01"), r"formed 2021-01 is after surveyed 2020-08"),
        (
            BASE + 'cbos = [{ name = "X", kind = "sports" }]\n',
            r"kind 'sports'; allowed: voluntary_service",
        ),
        ('[[community]]\nname = "A"\nformed = "2019-01"\n', r"missing required key 'surveyed'"),
        ("kinds = []\n", r"no \[\[community\]\] entries"),
        ("[[community]\n", r"not a valid TOML registry"),
        ("town = 1\n" + BASE, r"unknown top-level key\(s\) \['town'\]"),
    ],
)
def test_registry_errors(tmp_path, text, message):
    path = tmp_path / "reg.toml"
    path.write_text(text)
    with pytest.raises(RegistryError, match=message):
        load_registry(path)
    assert "reg.toml" in str(pytest.raises(RegistryError, load_registry, path).value)


def test_missing_registry(tmp_path):
    with pytest.raises(RegistryError, match="registry file not found"):
        load_registry(tmp_path / "none.toml")
