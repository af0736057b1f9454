"""``pari-bayes simulate``: draw a synthetic survey with a known ground truth."""

from __future__ import annotations

import argparse
from pathlib import Path

from pari_bayes._paths import DEFAULT_REGISTRY
from pari_bayes.errors import OutputError
from pari_bayes.io import atomic_write_text, write_csv
from pari_bayes.simulate import DEFAULT_PARAMS_FILE, load_params, simulate_survey

NAME = "simulate"
HELP = "draw a synthetic survey (and its ground truth) from the calibrated generator"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this command's arguments."""
    parser.add_argument("--out", required=True, metavar="FILE.csv", help="survey CSV to write")
    parser.add_argument(
        "--households", type=int, default=287, metavar="N", help="number of households (287)"
    )
    parser.add_argument(
        "--communities",
        default=str(DEFAULT_REGISTRY),
        metavar="FILE",
        help="community registry TOML (default: data/communities.toml)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed (default: the seed recorded in data/generator_params.json)",
    )
    parser.add_argument(
        "--params",
        default=str(DEFAULT_PARAMS_FILE),
        metavar="FILE.json",
        help="generator parameters (default: the calibrated data/generator_params.json)",
    )
    parser.add_argument(
        "--truth", default=None, metavar="FILE.json", help="write the ground truth here"
    )
    parser.add_argument("--force", action="store_true", help="replace existing output files")


def _check_target(path: Path, force: bool, flag: str) -> None:
    if path.exists() and path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; give a file path.")
    if path.exists() and not force:
        raise OutputError(f"{flag} {path} exists; choose a new file or pass --force to replace it.")


def run(args: argparse.Namespace) -> int:
    """Simulate and write the survey (and truth) atomically."""
    out = Path(args.out)
    _check_target(out, args.force, "--out")
    truth = Path(args.truth) if args.truth else None
    if truth is not None:
        _check_target(truth, args.force, "--truth")
        if truth.resolve() == out.resolve():
            raise OutputError("--truth and --out must be different files.")
    params, seed = load_params(args.params)
    if args.seed is not None:
        seed = args.seed
    sim = simulate_survey(args.households, registry=args.communities, params=params, seed=seed)
    write_csv(sim.data, out)
    if truth is not None:
        atomic_write_text(truth, sim.truth_json())
    counts = sim.truth["exposure_counts"]
    print(
        f"wrote {out}: {len(sim.data)} households in {sim.data['community'].nunique()} "
        f"communities (seed {seed}); exposure groups: participant={counts['participant']}, "
        f"nonparticipant_cbo={counts['nonparticipant_cbo']}, no_cbo={counts['no_cbo']}"
        + (f"; truth in {truth}" if truth else "")
    )
    return 0
