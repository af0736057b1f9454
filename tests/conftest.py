"""Shared fixtures: seeded fake surveys and paths to bundled data."""

from __future__ import annotations

import os
from pathlib import Path

# Under pytest-xdist (make test), each worker compiles into its own PyTensor cache: the
# compile lock of one shared cache serialises the workers, and concurrent compilation into
# one cache is not safe (pymc issue 7819). Set before anything imports pytensor; the CLI
# subprocesses the tests start inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _cache = Path.home() / ".pytensor" / f"xdist-{os.environ['PYTEST_XDIST_WORKER']}"
    _flags = os.environ.get("PYTENSOR_FLAGS", "")
    if "base_compiledir" not in _flags:
        os.environ["PYTENSOR_FLAGS"] = ",".join(filter(None, [_flags, f"base_compiledir={_cache}"]))

import numpy as np
import pandas as pd
import pytest

from pari_bayes._paths import DEFAULT_REGISTRY, DEFAULT_SURVEY, PROJECT_ROOT
from pari_bayes.codebook import load_codebook
from pari_bayes.registry import load_registry

TESTS_DIR = PROJECT_ROOT / "tests"


def make_fake_survey(n: int = 40, seed: int = 1) -> pd.DataFrame:
    """A small valid survey (codebook columns only) for the bundled registry.

    Not calibrated to anything: it only has to satisfy the codebook and registry.
    """
    rng = np.random.default_rng(seed)
    registry = load_registry()
    codebook = load_codebook()
    names = list(registry.names)
    community = np.array([names[i % len(names)] for i in range(n)])
    presence = np.array([registry[c].has_cbo for c in community])
    limit = np.array([registry[c].max_residence_months for c in community])
    size = rng.integers(1, 7, n)
    employed = rng.binomial(size, 0.3)
    frame = pd.DataFrame(
        {
            "household_id": [f"H{i:04d}" for i in range(n)],
            "community": community,
            "cbo_participation": (presence & (rng.random(n) < 0.5)).astype(int),
            "residence_months": rng.integers(0, limit + 1),
            "age": rng.integers(20, 90, n),
            "gender": rng.integers(0, 2, n),
            "urban_hukou": rng.integers(0, 2, n),
            "offfarm_employed": rng.integers(0, 2, n),
            "education": rng.integers(1, 4, n),
            "household_size": size,
            "household_income": np.round(rng.gamma(2.0, 400.0, n), 2),
        }
    )
    for name in codebook.indicator_names:
        col = codebook[name]
        if col.type == "ordinal":
            frame[name] = rng.choice(col.values, n)
        elif col.type == "count":
            frame[name] = rng.integers(0, int(col.max) + 1, n)
    frame["human_capital"] = employed / size
    frame["per_capita_employment_income"] = np.where(
        employed > 0, np.round(rng.lognormal(6, 0.8, n), 2), 0.0
    )
    return frame[[c for c in codebook.columns if c in frame.columns]]


@pytest.fixture
def fake_frame() -> pd.DataFrame:
    return make_fake_survey()


@pytest.fixture
def registry():
    return load_registry()


@pytest.fixture
def codebook():
    return load_codebook()


@pytest.fixture
def registry_path():
    return DEFAULT_REGISTRY


#: The files whose tests take longest (each shares one quick run of the main job or of a
#: project): collected first, so that under pytest-xdist (``make test``, whole files per
#: worker) they start at once and overlap with the rest instead of running alone at the end.
HEAVY_FIRST = (
    "test_main_job.py",
    "test_main_job_cli.py",
    "test_project.py",
    "test_scripts_and_readme.py",
)


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ARG001
    """Move the tests of :data:`HEAVY_FIRST` to the front (stable: order otherwise kept)."""
    rank = {name: k for k, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


#: Identifying values planted in the bundled survey (tests/test_main_job*.py check that no
#: output carries them).
PLANTED_NAME = "Wang Xiaoming"
PLANTED_PHONE = "13912345678"


@pytest.fixture(scope="session")
def planted_survey(tmp_path_factory) -> Path:
    """The bundled survey with identifying columns planted (name, phone, free text)."""
    frame = pd.read_csv(DEFAULT_SURVEY, dtype=str, keep_default_na=False)
    frame.insert(1, "respondent_name", PLANTED_NAME)
    frame.insert(2, "phone", PLANTED_PHONE)
    frame["interviewer_notes"] = f"called {PLANTED_NAME} at {PLANTED_PHONE}"
    path = tmp_path_factory.mktemp("planted") / "survey_with_pii.csv"
    frame.to_csv(path, index=False)
    return path
