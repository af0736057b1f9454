"""Where the bundled data and specs live."""

from __future__ import annotations

from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_ROOT.parent.parent
DATA_DIR = PROJECT_ROOT / "data"
MODELS_DIR = PROJECT_ROOT / "models"
PUBLISHED_DIR = DATA_DIR / "published"

DEFAULT_SURVEY = DATA_DIR / "survey.csv"
DEFAULT_REGISTRY = DATA_DIR / "communities.toml"
DEFAULT_CODEBOOK = DATA_DIR / "codebook.toml"
DEFAULT_DAG = MODELS_DIR / "dag.dot"
