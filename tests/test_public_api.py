"""The public API is short and explicit; this test fails when it drifts."""

from __future__ import annotations

import pari_bayes as pb

EXPECTED = {
    "__version__",
    "EXPOSURE_GROUPS",
    "Codebook",
    "Registry",
    "Survey",
    "load_codebook",
    "load_registry",
    "load_survey",
    "validate_frame",
    "simulate_survey",
    "simulate_potential_outcomes",
    "write_calibration",
    "pca_scores",
    "fit_table4",
    "write_ols",
    "load_dag",
    "identify",
    "write_identification",
    "load_spec",
    "fit_model",
    "load_posterior",
    "ipw_effects",
    "write_ipw_survey",
    "hash_household_ids",
    "RunOptions",
    "run_pipeline",
    "build_report",
    "load_design",
    "run_design",
    "PariBayesError",
    "SurveyDataError",
    "RegistryError",
    "SpecError",
    "DAGError",
    "IdentificationError",
    "EstimationError",
    "ConvergenceError",
    "OutputError",
    "ProvenanceError",
    "PariBayesWarning",
}


def test_all_is_exactly_the_documented_api():
    assert set(pb.__all__) == EXPECTED
    assert len(pb.__all__) == len(set(pb.__all__))


def test_every_public_name_resolves():
    for name in pb.__all__:
        assert getattr(pb, name) is not None, name


def test_errors_share_one_base():
    for name in [
        "SurveyDataError",
        "RegistryError",
        "SpecError",
        "DAGError",
        "IdentificationError",
        "EstimationError",
        "ConvergenceError",
        "OutputError",
        "ProvenanceError",
    ]:
        assert issubclass(getattr(pb, name), pb.PariBayesError)
