"""Income variables derived from the survey's monthly household income.

Two derived scales, both documented in the codebook and the audit (``calibration.csv``,
``audit.csv``; see ``docs/calibration.md``):

- ``income_level``: the ordinal 1-5 band of Table 3 (<68, 68-201, 201-551, 551-1001,
  >1001 yuan/month), applied to *equivalised* monthly income: household income divided by
  the square root of the household size (the OECD square-root equivalence scale). The
  paper does not say what the bands apply to; the text's range of household incomes
  (166.67-950 yuan) covers bands 2-4 only and cannot give the printed sd 1.306 (audit), and
  per-member income is incompatible with the income scale Table 4 implies (next item)
  at household sizes that leave ``human_capital`` its printed spread.
- ``income_scale``: the scale Table 4's regressions used. Table 4's standard errors and
  intercepts imply a regressor with sd ~13.8 and mean ~32.8 (audit), not the 1-5 band of
  Table 3; the square root of monthly household income in yuan has that scale when the
  mean household income is ~1260 yuan (so the text's 766.23 is not met; audit).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["INCOME_BANDS", "income_level", "income_scale", "equivalised_income"]

#: Upper edges (yuan/month) of Table 3's income bands 1-4; band 5 is above.
INCOME_BANDS = (68.0, 201.0, 551.0, 1001.0)


def equivalised_income(household_income: pd.Series, household_size: pd.Series) -> np.ndarray:
    """Monthly household income divided by sqrt(household size) (square-root scale)."""
    return np.asarray(household_income, dtype=float) / np.sqrt(
        np.asarray(household_size, dtype=float)
    )


def income_level(household_income: pd.Series, household_size: pd.Series) -> pd.Series:
    """Table 3's income band (1-5) of equivalised monthly income."""
    equivalised = equivalised_income(household_income, household_size)
    level = np.searchsorted(np.asarray(INCOME_BANDS), equivalised, side="left") + 1
    index = household_income.index if isinstance(household_income, pd.Series) else None
    return pd.Series(level.astype(int), index=index, name="income_level")


def income_scale(household_income: pd.Series) -> pd.Series:
    """Return the income regressor on Table 4's scale: sqrt of monthly household yuan."""
    index = household_income.index if isinstance(household_income, pd.Series) else None
    return pd.Series(
        np.sqrt(np.asarray(household_income, dtype=float)), index=index, name="income_scale"
    )
