"""Your survey, your project: codebook-declared dimensions, `init`, `--project` (issue 15)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pari_bayes._paths import DEFAULT_CODEBOOK, PROJECT_ROOT
from pari_bayes.codebook import infer_codebook, load_codebook
from pari_bayes.errors import SpecError, SurveyDataError
from pari_bayes.estimation.spec import load_spec
from pari_bayes.registry import load_registry, registry_from_survey, registry_toml
from pari_bayes.scenarios import Scenario, simulate_scenario

PAPER_NAMES = (*load_codebook().dimensions, *load_codebook().indicator_names)
#: The bundled survey's own generator and its audit against the paper may name its items.
BUNDLED_ONLY = {"simulate.py", "scenarios.py", "calibration.py", "income.py"}


def _codebook(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "codebook.toml"
    path.write_text(text)
    return path


BASE = (PROJECT_ROOT / "data" / "codebook.toml").read_text()


def test_dimensions_follow_the_declared_list_then_first_use(tmp_path: Path) -> None:
    book = load_codebook()
    assert book.dimensions[:2] == ("economic_integration", "neighborly_interaction")
    undeclared = re.sub(r"(?s)\ndimensions = \[.*?\]\n", "\n", BASE, count=1)
    first_use = load_codebook(_codebook(tmp_path, undeclared))
    assert set(first_use.dimensions) == set(book.dimensions)
    assert first_use.dimensions[0] == "economic_integration"  # its items come first
    assert first_use.dimensions[1] == "behavior_adaptation"  # then the next one named


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('"identity_recognition",\n]', "]", 1), "does not declare"),
        (
            lambda t: t.replace(
                '  "economic_integration",\n', '  "economic_integration",\n  "trust",\n', 1
            ),
            "'trust' are declared but no indicator",
        ),
        (
            lambda t: t.replace(
                'dimension = "economic_integration"\nvalues = [1, 2, 3]', "values = [1, 2, 3]", 1
            ),
            "has no dimension",
        ),
        (
            lambda t: t.replace("dimensions = [", 'dimensions = ["economic_integration", ', 1),
            "twice",
        ),
    ],
)
def test_bad_dimension_declarations_are_named(tmp_path: Path, edit, message) -> None:
    text = edit(BASE)
    assert text != BASE
    with pytest.raises(SurveyDataError, match=message) as info:
        load_codebook(_codebook(tmp_path, text))
    assert "codebook.toml" in str(info.value)


def test_a_spec_without_outcomes_takes_the_survey_dimensions() -> None:
    from dataclasses import replace

    spec = load_spec(PROJECT_ROOT / "models" / "table4.toml")
    assert spec.outcomes == ()
    assert spec.for_dimensions(("a", "b")).outcomes == ("a", "b")
    named = replace(spec, outcomes=("b",))
    assert named.for_dimensions(("a", "b")).outcomes == ("b",)
    with pytest.raises(SpecError, match="unknown dimension.*'c'.*allowed.*a, b"):
        replace(spec, outcomes=("c",)).for_dimensions(("a", "b"))
    multi = load_spec(PROJECT_ROOT / "models" / "multivariate.toml")
    with pytest.raises(SpecError, match="needs 2\\+ dimensions"):
        multi.for_dimensions(("only",))


def _own_survey(n: int = 240, seed: int = 5) -> pd.DataFrame:
    """A survey of the bundled shape but other content: 3 dimensions, 2 continuous + 5
    ordinal items, 8 communities (4 with CBOs)."""
    sc = Scenario("own", n_households=n, n_communities=8, n_cbo_communities=4, seed=seed)
    data, registry, _ = simulate_scenario(sc)
    data = data.drop(columns=list(load_codebook().indicator_names))
    rng = np.random.default_rng(seed)
    presence = data["community"].map({c.name: int(c.has_cbo) for c in registry.communities})
    a, s = data["cbo_participation"].to_numpy(), presence.to_numpy()
    comm = pd.factorize(data["community"])[0]
    ceff = rng.normal(0, 0.3, (8, 3))
    eta = np.column_stack(
        [0.4 * a + 0.3 * s + ceff[comm, k] + rng.normal(0, 1, len(data)) for k in range(3)]
    )

    def ordinal(x: np.ndarray, k: int) -> np.ndarray:
        return np.searchsorted(np.quantile(x, np.linspace(0, 1, k + 1)[1:-1]), x) + 1

    def noise(sd: float) -> np.ndarray:
        return rng.normal(0, sd, len(data))

    data["trust_neighbors"] = ordinal(0.9 * eta[:, 0] + noise(0.6), 5)
    data["trust_officials"] = ordinal(0.7 * eta[:, 0] + noise(0.7), 4)
    data["trust_score"] = np.round(50 + 8 * eta[:, 0] + noise(5), 2)
    data["voice_meetings"] = ordinal(0.8 * eta[:, 1] + noise(0.6), 3)
    data["voice_petitions"] = ordinal(0.8 * eta[:, 1] + noise(0.6), 4)
    data["wellbeing_index"] = np.round(0.6 * eta[:, 2] + noise(0.5), 3)
    data["wellbeing_mood"] = ordinal(0.8 * eta[:, 2] + noise(0.6), 5)
    data["interviewer_note"] = "ok"
    return data


def test_inferred_codebook_types_dimensions_and_review_lines(tmp_path: Path) -> None:
    frame = _own_survey()
    frame["trust_count"] = np.arange(len(frame)) % 25  # many integers: a count
    book = infer_codebook(frame)
    assert book.dimensions == {
        "trust": ("trust_neighbors", "trust_officials", "trust_score", "trust_count"),
        "voice": ("voice_meetings", "voice_petitions"),
        "wellbeing": ("wellbeing_index", "wellbeing_mood"),
    }
    codebook = load_codebook(_codebook(tmp_path, book.text))
    assert codebook.dimensions == ("trust", "voice", "wellbeing")
    assert codebook["trust_neighbors"].type == "ordinal"
    assert codebook["trust_neighbors"].values == (1, 2, 3, 4, 5)
    assert codebook["trust_score"].type == "real" and codebook["wellbeing_index"].type == "real"
    assert codebook["trust_count"].type == "count" and codebook["trust_count"].max == 24
    assert codebook["cbo_participation"].role == "treatment"  # reference entries kept
    assert codebook["interviewer_note"].role == "optional"  # dropped at load
    reviewed = {line.split(":")[0] for line in book.review}
    assert {"trust_count", "interviewer_note"} <= reviewed
    assert "trust_neighbors" not in reviewed  # balanced categories: nothing to check


def test_explicit_dimensions_and_their_errors() -> None:
    frame = _own_survey()
    book = infer_codebook(frame, dimensions={"b": ["voice_meetings"], "a": ["trust_score"]})
    assert list(book.dimensions) == ["b", "a"]
    with pytest.raises(SurveyDataError, match="'nope' is not in the survey"):
        infer_codebook(frame, dimensions={"a": ["nope"]})
    with pytest.raises(SurveyDataError, match="not numeric"):
        infer_codebook(frame, dimensions={"a": ["interviewer_note"]})


def test_sparse_categories_and_zero_shares_are_flagged() -> None:
    frame = _own_survey()
    frame.loc[:3, "voice_meetings"] = 4  # 4 households in category 4
    frame["wellbeing_index"] = np.where(np.arange(len(frame)) % 3 == 0, 0.0, 1.5)
    frame.loc[1, "wellbeing_index"] = 2.25
    review = "\n".join(infer_codebook(frame).review)
    assert "voice_meetings: ordinal with sparse categories: 4 (4 households)" in review
    assert "wellbeing_index: 33% zeros" in review


def test_registry_draft_infers_cbos_from_participation(tmp_path: Path) -> None:
    frame = _own_survey()
    registry, review = registry_from_survey(frame, "2024-05")
    joined = frame.groupby("community")["cbo_participation"].sum()
    assert [c.name for c in registry.communities] == sorted(joined.index)
    for c in registry.communities:
        assert c.has_cbo == bool(joined[c.name])
        longest = frame.loc[frame["community"] == c.name, "residence_months"].max()
        assert c.max_residence_months == int(np.ceil(longest))
    path = tmp_path / "communities.toml"
    path.write_text(registry_toml(registry))
    assert load_registry(path).names == registry.names
    assert len(review) == len(registry.communities)
    assert any("WITHOUT CBOs" in line for line in review)


def test_dag_template_on_the_bundled_codebook_identifies_as_the_bundled_dag(
    tmp_path: Path,
) -> None:
    import pari_bayes as pb
    from pari_bayes.identification.dag import dag_template

    bundled_survey = pb.load_survey()
    path = tmp_path / "dag.dot"
    path.write_text(dag_template(load_codebook()))
    ours = pb.identify(bundled_survey, dag=path, refute=False)
    shipped = pb.identify(bundled_survey, refute=False)
    for estimand in ("DE", "IE", "TE", "OE"):
        for dim in bundled_survey.codebook.dimensions:
            assert ours.is_identified(estimand, dim) == shipped.is_identified(estimand, dim)
            assert ours.adjustment_set(estimand, dim) == shipped.adjustment_set(estimand, dim)


def test_no_module_outside_the_bundled_generator_names_the_papers_items() -> None:
    package = PROJECT_ROOT / "src" / "pari_bayes"
    hits = []
    for path in package.rglob("*.py"):
        if path.name in BUNDLED_ONLY:
            continue
        text = path.read_text(encoding="utf-8")
        hits += [f"{path.relative_to(package)}: {name}" for name in PAPER_NAMES if name in text]
    assert not hits, hits


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pari_bayes.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=1500,
        env={"MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )


def _readme_own_survey_commands() -> list[list[str]]:
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme.split("## Your own survey", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.S).group(1)
    return [line.split() for line in block.strip().splitlines()]


def test_readme_own_survey_commands_run_end_to_end(tmp_path: Path) -> None:
    """The README's commands, as written: init -> edit nothing -> validate -> run -> report.

    On the bundled example of other content (3 dimensions, 2 continuous and 5 ordinal
    items, 8 communities, the DAG init drafts); ``run`` gets ``--quick`` here (tiny draws:
    wiring, so its exit status is 3, the gate's). No paper name may reach any output.
    """
    commands = _readme_own_survey_commands()
    assert [c[1] for c in commands] == ["init", "validate", "run"]
    frame = pd.read_csv(PROJECT_ROOT / "tests" / "data" / "own_survey.csv")
    assert infer_codebook(frame).dimensions.keys() == {"trust", "voice", "wellbeing"}
    project, results = tmp_path / "own", tmp_path / "own-run"
    procs = {}
    for command in commands:
        assert command[0] == ".venv/bin/pari-bayes"
        args = [
            a.replace("/tmp/own-run", str(results)).replace("/tmp/own", str(project))
            for a in command[1:]
        ]
        if args[0] == "run":
            args.append("--quick")
        procs[args[0]] = _cli(*args, cwd=PROJECT_ROOT)
    init, validate, run = procs["init"], procs["validate"], procs["run"]
    assert init.returncode == 0, init.stdout + init.stderr
    assert "dimension trust: trust_neighbors, trust_officials, trust_score" in init.stdout
    assert "REVIEW.md" in init.stdout and (project / "REVIEW.md").exists()
    for name in ("survey.csv", "codebook.toml", "communities.toml", "dag.dot"):
        assert (project / name).exists(), name
    assert sorted(p.name for p in (project / "models").glob("*.toml")) == [
        "multivariate.toml",
        "table4.toml",
    ]
    # the item-level specs are drafted beside them, not fitted by run until moved
    from pari_bayes.estimation.latent import load_latent_spec

    for kind in ("measurement", "latent"):
        drafted = load_latent_spec(project / "models" / "drafts" / f"{kind}.toml")
        assert drafted.kind == kind and drafted.factors == ("trust", "voice", "wellbeing")
        types = {it.name: it.kind for it in drafted.items}
        assert types["trust_score"] == "normal" and len(types) == 7
        assert sorted(types.values()).count("ordinal") == 5
    assert validate.returncode == 0, validate.stderr
    assert "8 communities" in validate.stdout
    # quick draws cannot pass the gate, and the exit status says so (3); everything is written
    assert run.returncode == 3, run.stdout[-2000:] + run.stderr[-3000:]
    effects = pd.read_csv(results / "effects_all.csv")
    assert set(effects["dimension"].dropna()) == {"trust", "voice", "wellbeing"}
    assert {"ols_cr2", "bayes:table4", "bayes:multivariate"} <= set(effects["method"])
    assert not (results / "calibration").exists()  # the paper's survey only
    report = (results / "report.html").read_text()
    assert 'id="calibration"' not in report and "ours vs published" not in report
    leaked = []
    for path in results.rglob("*"):
        if path.is_file() and path.suffix in {".csv", ".md", ".json", ".html", ".txt", ".dot"}:
            text = path.read_text(encoding="utf-8", errors="replace")
            leaked += [f"{path.name}: {n}" for n in PAPER_NAMES if n in text]
    assert not leaked, leaked


def test_project_flag_errors_name_the_missing_file(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = _cli("validate", "--project", str(tmp_path / "empty"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "no survey.csv" in proc.stderr and "pari-bayes init" in proc.stderr
    proc = _cli("validate", "--project", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert proc.returncode == 2 and "not a folder" in proc.stderr


def test_codebook_flag_reaches_every_data_command() -> None:
    from pari_bayes.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, cmd in sub.choices.items():
        # init drafts a project, report reads a run folder, simulate and design simulate
        # their own surveys (design: scores of a randomized saturation design): no data
        if name in ("init", "report", "simulate", "design"):
            continue
        dests = {a.dest for a in cmd._actions}
        assert {"codebook", "project", "communities"} <= dests, name
    assert DEFAULT_CODEBOOK.exists()
