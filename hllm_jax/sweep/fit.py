"""Power-law fits ``y = a * x**b`` by least squares in log-log space, with the exponent's error."""

from __future__ import annotations

import numpy as np


def power_law(x, y) -> dict:
    """Fit ``log y = log a + b log x``. Returns exponent ``b``, its standard error, prefactor ``a``,
    R^2 and the RMS residual (in natural-log units), over the points with x, y > 0."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    n = int(ok.sum())
    if n < 2:
        raise ValueError(f"a power-law fit needs >= 2 points with positive values, got {n}")
    lx, ly = np.log(x[ok]), np.log(y[ok])
    A = np.stack([np.ones_like(lx), lx], axis=1)
    coef, *_ = np.linalg.lstsq(A, ly, rcond=None)
    resid = ly - A @ coef
    ss_res, ss_tot = float(resid @ resid), float(((ly - ly.mean()) ** 2).sum())
    dof = n - 2
    stderr = float("nan")
    if dof > 0:
        sigma2 = ss_res / dof
        stderr = float(np.sqrt(sigma2 / ((lx - lx.mean()) ** 2).sum()))
    return dict(exponent=float(coef[1]), exponent_stderr=stderr, prefactor=float(np.exp(coef[0])),
                r2=1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0, rms_log_residual=float(np.sqrt(ss_res / n)), n=n)


def predict(fit: dict, x) -> np.ndarray:
    return fit["prefactor"] * np.asarray(x, np.float64) ** fit["exponent"]
