"""The convergence gate, on fake posteriors (no sampling)."""

from __future__ import annotations

import arviz as az
import numpy as np
import pandas as pd
import pytest

from pari_bayes.diagnostics import (
    check_convergence,
    diagnostics_table,
    gate_failures,
    mark_unconverged,
)
from pari_bayes.errors import ConvergenceError


def _idata(shift: float = 0.0, divergences: int = 0, draws: int = 1000, seed: int = 0):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(4, draws, 2))
    theta[0] += shift  # one chain stuck elsewhere -> R-hat > 1.01
    diverging = np.zeros((4, draws), dtype=bool)
    diverging[0, :divergences] = True
    return az.from_dict(
        posterior={"direct_effect": theta, "community_sd": np.abs(rng.normal(size=(4, draws)))},
        sample_stats={"diverging": diverging, "energy": rng.normal(size=(4, draws))},
        coords={"dimension": ["economic_integration", "identity_recognition"]},
        dims={"direct_effect": ["dimension"]},
    )


def test_good_chains_pass_and_table_has_run_columns():
    table = diagnostics_table(_idata(), sampling_time=1.5)
    assert set(table["parameter"]) == {
        "direct_effect[economic_integration]",
        "direct_effect[identity_recognition]",
        "community_sd",
    }
    assert (table["r_hat"] < 1.01).all() and (table["ess_bulk"] > 400).all()
    assert (table["divergences"] == 0).all() and (table["sampling_time_s"] == 1.5).all()
    assert np.isfinite(table["bfmi_min"]).all()
    assert check_convergence(table) == []


def test_rhat_failure_names_the_parameter():
    table = diagnostics_table(_idata(shift=1.0))
    with pytest.raises(ConvergenceError, match=r"R-hat > 1.01 for direct_effect\[economic"):
        check_convergence(table)


def test_divergences_fail_the_gate():
    table = diagnostics_table(_idata(divergences=3))
    with pytest.raises(ConvergenceError, match="3 divergent transition"):
        check_convergence(table)


def test_low_ess_fails_the_gate():
    table = diagnostics_table(_idata(draws=60))
    failures = gate_failures(table)
    assert any("bulk ESS < 400" in f and "community_sd" in f for f in failures)


def test_effects_rows_are_gated_too():
    table = diagnostics_table(_idata())
    effects = pd.DataFrame(
        [
            {
                "dimension": "economic_integration",
                "estimand": "OE",
                "alpha": 0.25,
                "scope": "new",
                "r_hat": 1.05,
                "ess_bulk": 900.0,
            }
        ]
    )
    with pytest.raises(ConvergenceError, match=r"OE\(alpha=0.25\)\[economic_integration, new\]"):
        check_convergence(table, effects)


def test_allow_unconverged_returns_failures_and_marks_tables():
    table = diagnostics_table(_idata(shift=1.0, divergences=1))
    failures = check_convergence(table, allow_unconverged=True)
    assert len(failures) >= 2
    marked = mark_unconverged(table, "UNCONVERGED")
    assert (marked["status"] == "UNCONVERGED").all()
    assert "status" not in mark_unconverged(table, "ok")
    assert list(mark_unconverged(pd.DataFrame(), "UNCONVERGED")["status"]) == ["UNCONVERGED"]
