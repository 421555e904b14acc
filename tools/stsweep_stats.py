"""Statistics shared by tools/plot-risks and tools/findings-report: the
two-sided 95% quantile of Student's t, as `stsweep summary` computes it
(host/cli_results.cpp), so that every interval the project prints or draws is
the same interval."""
import math

# By degrees of freedom 1..30; beyond, the Cornish-Fisher expansion.
_T975 = [math.nan, 12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def t975(df):
    """Two-sided 95% quantile of Student's t with df degrees of freedom (NaN for df < 1)."""
    if df <= 0:
        return math.nan
    if df <= 30:
        return _T975[int(df)]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df * df)
