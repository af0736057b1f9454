"""The report: findings first, readable figures and tables, numbers that agree with the CSVs.

Most tests build a small synthetic run folder (CSV files only, no MCMC) in which the gate,
identification and measurement status are known, so the preferred-estimate rule can be
checked row by row. The report of the main job's shared quick run is checked with the same
helpers from tests/test_main_job.py (``check_report``), so that expensive run is made once.
"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pari_bayes._paths import MODELS_DIR, PROJECT_ROOT
from pari_bayes.effects import EFFECT_COLUMNS
from pari_bayes.findings import (
    FINDINGS_COLUMNS,
    build_findings,
    findings_sentences,
    fmt_number,
    fmt_p,
)
from pari_bayes.report import MAX_COLUMNS, MAX_ROWS, SECTIONS, build_report

DIMS = ("economic_integration", "neighborly_interaction", "behavior_adaptation")
#: Width of the report's text column at 1280 px (CSS max-width), and a generous average
#: glyph width of its 13 px table font: a table whose unbreakable words need more than
#: this would force horizontal scrolling or break words mid-way.
PAGE_PX = 1100
CHAR_PX = 7.5
CELL_PAD_PX = 12

# ---- the HTML checks (also used on the quick run by tests/test_main_job.py) -------------


class ReportParser(HTMLParser):
    """Sections, images, links and tables (cells with their attributes) of a report."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.tables: list[dict] = []
        self.sentences: list[str] = []
        self._stack: list[dict] = []
        self._row = None
        self._cell = None
        self._in_sentences = False
        self._li = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id"))
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        elif tag == "table":
            self._stack.append(
                {
                    "source": attrs.get("data-source"),
                    "class": attrs.get("class", ""),
                    "section": self.sections[-1] if self.sections else None,
                    "rows": [],
                }
            )
        elif tag == "tr" and self._stack:
            self._row = {"attrs": attrs, "cells": []}
        elif tag in ("td", "th") and self._row is not None:
            self._cell = {"tag": tag, "attrs": attrs, "text": ""}
        elif tag == "br" and self._cell is not None:
            self._cell["text"] += " "
        elif tag == "ul" and "sentences" in attrs.get("class", ""):
            self._in_sentences = True
        elif tag == "li" and self._in_sentences:
            self._li = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
        if self._li is not None:
            self._li += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row["cells"].append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._stack[-1]["rows"].append(self._row)
            self._row = None
        elif tag == "table" and self._stack:
            self.tables.append(self._stack.pop())
        elif tag == "li" and self._li is not None:
            self.sentences.append(self._li)
            self._li = None
        elif tag == "ul" and self._in_sentences:
            self._in_sentences = False


def parse_report(path: Path) -> ReportParser:
    parser = ReportParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def _numbers(text: str) -> list[str]:
    return _NUMBER.findall(text.replace("< 0.001", ""))


def _close(shown: str, value: str) -> bool:
    """Whether a rounded number on the page is the CSV's value rounded."""
    x, v = float(shown), float(value)
    decimals = len(shown.split(".")[1].split("e")[0]) if "." in shown else 0
    if "e" in shown:
        return np.isclose(x, v, rtol=0.06)
    return abs(x - v) <= 0.5 * 10.0**-decimals + 1e-12 or np.isclose(x, v, rtol=5e-3)


def _check_numbers(run_dir: Path, table: dict) -> int:
    """Every number of a sourced table equals its CSV cell rounded; returns cells checked."""
    csv = pd.read_csv(run_dir / table["source"], dtype=str, keep_default_na=False)
    header = table["rows"][0]["cells"]
    cols = [c["attrs"].get("data-col") for c in header]
    checked = 0
    for row in table["rows"][1:]:
        idx = row["attrs"].get("data-row")
        for k, cell in enumerate(row["cells"]):
            ref = cell["attrs"].get("data-ref")
            if ref:
                r, names = ref.split(":")
                values = [csv.iloc[int(r)][n] for n in names.split(",")]
            elif idx is not None and cols[k]:
                values = [csv.iloc[int(idx)][cols[k]]]
            else:
                continue
            text = cell["text"].strip()
            if text in ("< 0.001",):
                assert float(values[0]) < 0.001, (table["source"], idx, cols[k])
                checked += 1
                continue
            numeric = [v for v in values if _is_number(v)]
            if not numeric:
                if ref:  # a text cell that names CSV cells holds no number of its own
                    assert not _numbers(text), (table["source"], ref, text)
                else:
                    assert text in ("", *values, *(v.lower() for v in values)), (text, values)
                continue
            shown = _numbers(text)
            assert len(shown) >= len(numeric), (table["source"], idx, text, values)
            for s, v in zip(shown, numeric, strict=False):
                assert _close(s, v), (table["source"], idx, cols[k] if cols else ref, s, v)
                checked += 1
    return checked


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip() != ""


def _table_width_px(table: dict) -> float:
    """Minimum width of a table: the longest unbreakable word of each column."""
    widths: dict[int, int] = {}
    for row in table["rows"]:
        for k, cell in enumerate(row["cells"]):
            longest = max((len(w) for w in cell["text"].split()), default=0)
            widths[k] = max(widths.get(k, 0), longest)
    return sum(w * CHAR_PX + CELL_PAD_PX for w in widths.values())


def check_report(run_dir: Path, expect_sections: list[str] | None = None) -> ReportParser:
    """The report's structural checks, shared by the synthetic and the quick run."""
    from PIL import Image

    path = run_dir / "report.html"
    html_text = path.read_text(encoding="utf-8")
    parser = parse_report(path)
    assert parser.sections[0] == "findings"  # the answer first
    assert parser.sections == [s for s in SECTIONS if s in parser.sections]
    if expect_sections is not None:
        assert parser.sections == expect_sections
    # sensitivity right after the findings (issue 18's section, or "not run")
    assert parser.sections[1] == "sensitivity"
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    for href in parser.links:
        assert href.startswith(("data:", "#")), href
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", html_text)  # self-contained
    assert "overflow:auto" not in html_text and 'class="scroll"' not in html_text
    findings_tables = [t for t in parser.tables if t["source"] == "findings.csv"]
    assert len(findings_tables) == 1 and findings_tables[0]["section"] == "findings"
    checked = 0
    for table in parser.tables:
        body = (
            table["rows"][1:]
            if table["rows"] and table["rows"][0]["cells"][0]["tag"] == "th"
            else table["rows"]
        )
        assert len(body) <= MAX_ROWS, (table["source"], len(body))
        n_cols = max(len(r["cells"]) for r in table["rows"])
        assert n_cols <= MAX_COLUMNS, (table["source"], n_cols)
        assert _table_width_px(table) <= PAGE_PX, (table["source"], _table_width_px(table))
        if table["source"]:
            checked += _check_numbers(run_dir, table)
    assert checked > 0
    # every number in the findings sentences is a cell (or header) of the findings table
    table_text = " ".join(c["text"] for r in findings_tables[0]["rows"] for c in r["cells"])
    table_numbers = set(_numbers(table_text))
    findings = pd.read_csv(run_dir / "findings.csv", keep_default_na=False)
    # three to five sentences; one ("no estimate is reported") when nothing converged
    some = (findings["estimate"] != "").any()
    assert (3 if some else 1) <= len(parser.sentences) <= 5, parser.sentences
    for sentence in parser.sentences:
        for number in _numbers(sentence):
            assert number in table_numbers, (number, sentence)
    # the findings table has every estimand of every dimension, each with a status
    assert list(findings.columns) == list(FINDINGS_COLUMNS)
    for _, grp in findings.groupby("dimension"):
        assert sorted(grp["estimand"]) == ["DE", "IE", "OE", "TE"]
    assert (findings["status"] != "").all()
    assert (findings["identification"] != "").all()
    return parser


# ---- a synthetic run folder ---------------------------------------------------------------


def _effect_rows(method: str, rng, note: str = "", posterior: bool = True) -> list[dict]:
    rows = []
    for d, dim in enumerate(DIMS):
        for estimand, alpha in (
            ("DE", None),
            ("IE", None),
            ("TE", None),
            ("OE", 0.3),
            ("OE", 0.46),
        ):
            mean = 0.1 * (d + 1) * (1 if estimand != "DE" else -1) + rng.normal(0, 0.02)
            sd = 0.05 + 0.05 * d
            rows.append(
                {
                    "dimension": dim,
                    "estimand": estimand,
                    "alpha": alpha,
                    "scope": "observed",
                    "mean": mean,
                    "sd": sd,
                    "q05": mean - 1.645 * sd,
                    "q50": mean,
                    "q95": mean + 1.645 * sd,
                    "prob_positive": float(rng.uniform()) if posterior else np.nan,
                    "ess_bulk": 900.0 if posterior else np.nan,
                    "r_hat": 1.001 if posterior else np.nan,
                    "ess_tail": 800.0 if posterior else np.nan,
                    "method": method,
                    "interval": "posterior" if posterior else "normal",
                    "df": np.nan,
                    "note": note,
                }
            )
    return rows


def make_run(directory: Path, *, table4_passed: bool = True, sensitivity: bool = False) -> Path:
    """A run folder with the files the report reads; gate and measurement as given."""
    rng = np.random.default_rng(3)
    (directory / "identification").mkdir(parents=True)
    (directory / "fit" / "latent").mkdir(parents=True)
    (directory / "fit" / "table4").mkdir(parents=True)
    (directory / "ols").mkdir()
    pd.DataFrame(
        {
            "community": ["XT", "HC", "TF", "LT"],
            "cbo_presence": [0, 1, 1, 0],
            "households": [72, 55, 45, 115],
        }
    ).to_csv(directory / "data_summary.csv", index=False)
    rows = []
    for dim in DIMS:
        for estimand in ("DE", "IE", "TE", "OE"):
            rows.append(
                {
                    "estimand": estimand,
                    "dimension": dim,
                    "identified_dag": estimand == "OE",
                    "identified_no_unobserved_confounding": True,
                    "blocked_by": "" if estimand == "OE" else "prior_sociability",
                    "minimal_adjustment_set": "residence_months age",
                }
            )
    pd.DataFrame(rows).to_csv(directory / "identification" / "estimands.csv", index=False)
    ident = {
        "dag": str(MODELS_DIR / "dag.dot"),
        "exposure_coding": {"OE": {"alpha_observed": 0.46}},
    }
    (directory / "identification" / "identification.json").write_text(json.dumps(ident))
    warn = "latent model 'latent': 2 other parameter check(s) miss the thresholds"
    gate = pd.DataFrame(
        {
            "model": ["table4", "multivariate", "latent"],
            "passed": [table4_passed, False, True],
            "reason": ["", "r_hat 1.05 > 1.01", ""],
            "warnings": [
                "",
                "the same warning | " + warn.replace("'latent'", "'multivariate'"),
                warn,
            ],
            "effects_published": [True, True, True],
        }
    )
    gate.to_csv(directory / "gate.csv", index=False)
    effects = pd.DataFrame(
        _effect_rows("ols", rng, posterior=False)
        + _effect_rows("bayes:table4", rng, note="" if table4_passed else "UNCONVERGED")
        + _effect_rows("bayes:multivariate", rng, note="UNCONVERGED")
        + _effect_rows("bayes:latent", rng)
        + _effect_rows("ipw", rng, posterior=False)
    )[list(EFFECT_COLUMNS)]
    # OLS has no OE rows
    effects = effects[~((effects["method"] == "ols") & (effects["estimand"] == "OE"))]
    effects.to_csv(directory / "effects_all.csv", index=False)
    pd.DataFrame(
        {
            "parameter": ["direct_effect[economic_integration]"]
            + [f"measurement_information.{d}" for d in DIMS],
            "r_hat": [1.002, np.nan, np.nan, np.nan],
            "ess_bulk": [900, np.nan, np.nan, np.nan],
            "ess_tail": [800, np.nan, np.nan, np.nan],
            "divergences": [0, np.nan, np.nan, np.nan],
            "value": [np.nan, 0.03, 0.61, 0.55],
        }
    ).to_csv(directory / "fit" / "latent" / "diagnostics.csv", index=False)
    pd.DataFrame(
        {
            "parameter": ["standardized_loading"] * 3 + ["loading"] * 3,
            "lhs": ["economic_integration"] * 6,
            "op": ["=~"] * 6,
            "rhs": ["economic_pressure", "human_capital", "per_capita_employment_income"] * 2,
            "mean": [0.4, 0.2, 0.1, 0.8, 0.3, 0.2],
            "sd": [0.1] * 6,
            "q05": [0.25, 0.05, 0.01, 0.6, 0.1, 0.05],
            "q95": [0.55, 0.35, 0.25, 1.0, 0.5, 0.4],
            "r_hat": [1.001] * 5 + [1.03],  # one loading misses the thresholds
            "ess_bulk": [1500.0] * 5 + [210.0],
            "ess_tail": [1400.0] * 6,
        }
    ).to_csv(directory / "fit" / "latent" / "loadings.csv", index=False)
    ols = []
    for m, dim in enumerate(DIMS):
        for term, p in (
            ("cbo_participation", 0.0004),
            ("cbo_existence", 0.042),
            ("direct_effect", 0.51),
            ("age", 0.2),
        ):
            ols.append(
                {
                    "model": 2 * m + 2,
                    "dimension": dim,
                    "with_cbo_terms": 1,
                    "term": term,
                    "coef": 0.123456,
                    "se": 0.0567,
                    "p": p,
                    "stars": "***" if p < 0.01 else "",
                    "p_cr2": 2.35889e-35,
                    "p_wild": 0.3003,
                    "published_coef": 0.12,
                    "published_stars": "*",
                }
            )
    pd.DataFrame(ols).to_csv(directory / "ols" / "ols_table4.csv", index=False)
    (directory / "run.json").write_text(
        json.dumps({"data": "synthetic", "seed": 1, "summary": "287 households", "quick": False})
    )
    if sensitivity:
        (directory / "sensitivity").mkdir()
        pd.DataFrame(
            {
                "dimension": list(DIMS),
                "estimand": ["DE"] * 3,
                "estimate": [0.1, 0.2, 0.3],
                "se": [0.05, 0.05, 0.05],
                "se_type": ["cr2"] * 3,
                "df": [2.5] * 3,
                "partial_r2": [0.01, 0.02, 0.03],
                "rv_q1": [0.1, 0.2, 0.3],
                "rv_q1_alpha": [0.0, 0.05, 0.1],
                "benchmark": ["age"] * 3,
                "k_vanish": [2.0, 3.0, 4.0],
                "k_cover_zero": [1.0, 1.5, 2.0],
                "sentence": [f"An unobserved confounder would need {k}x age." for k in (2, 3, 4)],
            }
        ).to_csv(directory / "sensitivity" / "ovb.csv", index=False)
        _tiny_png(directory / "sensitivity" / "contour_economic_integration.png")
    return directory


def _tiny_png(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (4, 4), "white").save(path)


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory) -> Path:
    run = make_run(tmp_path_factory.mktemp("report") / "run")
    build_report(run)
    return run


# ---- the preferred-estimate rule ----------------------------------------------------------


def test_preferred_rule_row_by_row(synthetic_run: Path) -> None:
    table = build_findings(synthetic_run).table.set_index(["dimension", "estimand"])
    effects = pd.read_csv(synthetic_run / "effects_all.csv")
    # economic integration: the latent factor is weakly measured (0.03 < 0.2) -> table4
    econ = table.loc["economic_integration"]
    assert set(econ["method"]) == {"bayes:table4"}
    assert econ["status"].str.contains("weakly measured").all()
    # the measured factors use the latent model, on its scale
    for dim in DIMS[1:]:
        assert set(table.loc[dim, "method"]) == {"bayes:latent"}
        assert table.loc[dim, "scale"].str.startswith("latent factor").all()
    # never the unconverged multivariate fit, never OLS/CR2/IPW
    assert not table["method"].isin(["bayes:multivariate", "ols", "ols_cr2", "ipw"]).any()
    # OE at the observed participation share, and only OE is identified
    oe = table.xs("OE", level="estimand")
    assert (oe["alpha"] == 0.46).all()
    assert oe["identification"].str.startswith("identified").all()
    rest = table.drop(index="OE", level="estimand")
    assert rest["identification"].str.contains("prior sociability").all()
    # the estimate is the chosen method's row
    row = table.loc[("neighborly_interaction", "OE")]
    src = effects[
        (effects["method"] == "bayes:latent")
        & (effects["dimension"] == "neighborly_interaction")
        & (effects["estimand"] == "OE")
        & np.isclose(effects["alpha"], 0.46)
    ].iloc[0]
    assert row["estimate"] == pytest.approx(src["mean"])
    assert row["prob_benefit"] == pytest.approx(src["prob_positive"])


def test_no_converged_fit_means_no_estimate(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", table4_passed=False)
    gate = pd.read_csv(run / "gate.csv")
    gate["passed"] = False
    gate.to_csv(run / "gate.csv", index=False)
    findings = build_findings(run)
    assert findings.table["estimate"].isna().all()
    assert findings.table["status"].str.startswith("no estimate").all()
    assert any("No estimate is reported" in s for s in findings_sentences(findings))


def test_findings_csv_and_report(synthetic_run: Path) -> None:
    written = pd.read_csv(synthetic_run / "findings.csv")
    built = build_findings(synthetic_run).table
    assert list(written.columns) == list(FINDINGS_COLUMNS)
    assert np.allclose(written["estimate"], built["estimate"], rtol=1e-5, equal_nan=True)
    parser = check_report(synthetic_run)
    assert parser.sections[:3] == ["findings", "sensitivity", "gate"]
    html_text = (synthetic_run / "report.html").read_text()
    assert "Sensitivity analysis: not run" in html_text
    # warnings once each (the two models' identical warning is merged), below the findings
    assert html_text.count("other parameter check(s) miss the thresholds") == 1
    assert html_text.index('id="findings"') < html_text.index("Warnings from the fits")
    # every method name used is explained in the glossary on the findings screen
    findings_html = html_text[: html_text.index('id="sensitivity"')]
    for method in ("bayes:latent", "bayes:table4", "ols", "ipw", "wild bootstrap"):
        assert f"<code>{method}</code>" in findings_html, method
    # p-values as 0.042 and < 0.001; no long exponents printed
    assert "0.042" in html_text and "&lt; 0.001" in html_text
    assert "2.35889e-35" not in html_text
    # the design caveat once
    assert html_text.count("Design caveat") == 1


def test_sensitivity_section_when_present(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", sensitivity=True)
    build_report(run)
    parser = check_report(run)
    html_text = (run / "report.html").read_text()
    assert "How strong would an unobserved confounder have to be?" in html_text
    assert "would need 3x age" in html_text
    assert "Sensitivity analysis: not run" not in html_text
    assert len(parser.images) >= 1
    assert any(t["source"] == "sensitivity/ovb.csv" for t in parser.tables)
    # the run's plain-language summary (run.json) says it too, after the findings sentences
    from pari_bayes.findings import plain_summary

    summary = plain_summary(run)
    de = [s for s in summary if "would need 3x age" in s]
    assert de and summary.index(de[0]) >= len(findings_sentences(build_findings(run)))


def test_loadings_that_miss_the_thresholds_are_named(synthetic_run: Path) -> None:
    html_text = (synthetic_run / "report.html").read_text()
    assert "Loadings that miss the thresholds" in html_text
    assert "per_capita_employment_income (R-hat 1.030, bulk/tail ESS 210/1400)" in html_text
    assert "human_capital (R-hat" not in html_text  # within the thresholds: not named


def test_number_formats() -> None:
    assert fmt_number(0.0523417) == "0.0523"
    assert fmt_number(12.3456) == "12.3"
    assert fmt_number(2.35889e-35) == "2.4e-35"
    assert fmt_number(287) == "287"
    assert fmt_number("") == ""
    assert fmt_p(0.0421) == "0.042"
    assert fmt_p(2.3e-9) == "< 0.001"
    assert fmt_p(0.0042) == "0.004"
    assert fmt_p(0.6706) == "0.67"


def test_dag_figure_without_graphviz(monkeypatch) -> None:
    """A fresh CI machine has no `dot`: the pure-Python layout still draws the graph."""
    from PIL import Image

    import pari_bayes.identification.dag_plot as dp
    from pari_bayes.identification.dag import load_dag

    monkeypatch.setattr(dp.shutil, "which", lambda name: None)
    png = dp.dag_png(load_dag(MODELS_DIR / "dag.dot"))
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size[0] == 1100  # 11 in at 100 dpi


def test_screenshot_script_names_missing_chromium(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "scripts/screenshot_report.py",
            str(tmp_path / "report.html"),
            "--browser",
            "no-such-chromium",
        ],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "no-such-chromium" in proc.stderr and "apt-get install" in proc.stderr
