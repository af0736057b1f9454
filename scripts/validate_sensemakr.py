"""Export PySensemakr's darfur example and its results as validation data.

PySensemakr is NOT a dependency of pari_bayes; run this script with a scratch virtual
environment that has it::

    python3.11 -m venv /tmp/sensvenv
    /tmp/sensvenv/bin/pip install PySensemakr==0.0.8 pandas==2.2.3
    /tmp/sensvenv/bin/python scripts/validate_sensemakr.py

(PySensemakr 0.0.8 indexes a Series positionally with ``[0]``, which pandas 3 rejects in
``ovb_bounds``; pandas 2.2.3 runs it, with a FutureWarning.)

It writes ``data/validation/darfur.csv`` (sensemakr's bundled data, unchanged) and
``data/validation/darfur_sensemakr.csv`` (one row per quantity: name, benchmark, kd,
value), which ``tests/test_sensitivity.py`` compares with ``pari_bayes.sensitivity.ovb``
to 1e-6. The model is Cinelli and Hazlett's (2020) section 2: ``peacefactor ~
directlyharmed + age + farmer_dar + herder_dar + pastvoted + hhsize_darfur + female +
village``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import sensemakr
import statsmodels.formula.api as smf

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "data" / "validation"
FORMULA = (
    "peacefactor ~ directlyharmed + age + farmer_dar + herder_dar + pastvoted + "
    "hhsize_darfur + female + village"
)
KD = [1, 2, 3]


def main() -> None:
    """Write darfur.csv and darfur_sensemakr.csv."""
    darfur = sensemakr.load_darfur()
    fitted = smf.ols(FORMULA, data=darfur).fit()
    stats = sensemakr.sensitivity_stats(model=fitted, treatment="directlyharmed", q=1, alpha=0.05)
    rows = [
        ("estimate", "", "", stats["estimate"]),
        ("se", "", "", stats["se"]),
        ("dof", "", "", stats["dof"]),
        ("partial_r2", "", "", stats["r2yd_x"]),
        ("rv_q1", "", "", stats["rv_q"]),
        ("rv_q1_alpha", "", "", stats["rv_qa"]),
    ]
    bounds = sensemakr.ovb_bounds(
        model=fitted, treatment="directlyharmed", benchmark_covariates="female", kd=KD
    )
    for kd, (_, b) in zip(KD, bounds.iterrows(), strict=True):
        for column in (
            "r2dz_x",
            "r2yz_dx",
            "adjusted_estimate",
            "adjusted_se",
            "adjusted_t",
            "adjusted_lower_CI",
            "adjusted_upper_CI",
        ):
            rows.append((column, "female", kd, float(b[column])))
    reference = pd.DataFrame(rows, columns=["quantity", "benchmark", "kd", "value"])
    OUT.mkdir(parents=True, exist_ok=True)
    darfur.to_csv(OUT / "darfur.csv", index=False)
    reference.to_csv(OUT / "darfur_sensemakr.csv", index=False, float_format="%.12g")
    print(f"PySensemakr {sensemakr.__version__ if hasattr(sensemakr, '__version__') else ''}")
    print(reference.to_string(index=False))


if __name__ == "__main__":
    main()
