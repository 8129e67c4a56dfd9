"""Fit a learning curve: how a validation metric moves with the number of training rows.

The model is the inverse power law of Figueroa et al. (2012, "Predicting sample size required
for classification performance", BMC Medical Informatics and Decision Making 12:8) and Hestness
et al. (2017, "Deep Learning Scaling is Predictable, Empirically", arXiv:1712.00409):

* a greater-is-better metric (accuracy, F1): ``metric(n) = a - b * n**(-c)``;
* a loss-like metric (lower is better): ``error(n) = a + b * n**(-c)``;

with ``b >= 0`` and ``0 < c <= 3``: ``a`` is the plateau the metric approaches with unlimited
data, ``c`` how fast it gets there. Fitted by ``scipy.optimize.curve_fit`` (bounded trust-region
least squares) on every (size, seed) point, sizes scaled by the largest so the fit is well
conditioned. Fewer than :data:`MIN_SIZES` distinct sizes: no fit (three parameters).

:func:`fit_curve` also reports the leave-last-out check (the curve fitted on the smaller sizes
only, predicting the largest, against what was measured there) and the change predicted from
doubling the data. numpy and scipy only: no torch.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

MIN_SIZES = 3  # distinct training sizes a three-parameter fit needs
C_BOUNDS = (1e-3, 3.0)


@dataclass
class PowerLaw:
    """A fitted ``a -/+ b * n**(-c)`` (``maximize``: minus)."""

    a: float
    b: float
    c: float
    maximize: bool

    def __call__(self, n: float) -> float:
        """The curve's value at ``n`` training rows."""
        term = self.b * float(n) ** (-self.c)
        return self.a - term if self.maximize else self.a + term

    @property
    def formula(self) -> str:
        """The fitted curve, written out (``metric(n) = 0.91 - 2.3 * n^(-0.52)``)."""
        sign = "-" if self.maximize else "+"
        return f"metric(n) = {self.a:.4g} {sign} {self.b:.4g} * n^(-{self.c:.3g})"


@dataclass
class CurveFit:
    """The result of :func:`fit_curve`.

    Attributes:
        ok: a curve was fitted; otherwise ``reason`` says why not.
        law: the curve fitted on every point (``None`` without a fit).
        rmse: root mean squared residual of that fit on the points.
        largest: the largest training size measured; ``measured_at_largest`` its mean metric.
        predicted_at_largest: the curve fitted on the smaller sizes only, at ``largest`` (the
            leave-last-out check; ``None`` with fewer than :data:`MIN_SIZES` smaller sizes, see ``check_reason``).
        predicted_at_double, change_from_doubling: the full fit at ``2 * largest`` and its
            difference from the fit at ``largest`` (positive: the metric goes up).
    """

    ok: bool
    maximize: bool
    reason: str = ""
    law: Optional[PowerLaw] = None
    rmse: Optional[float] = None
    largest: Optional[int] = None
    measured_at_largest: Optional[float] = None
    predicted_at_largest: Optional[float] = None
    check_law: Optional[PowerLaw] = None
    check_reason: str = ""
    predicted_at_double: Optional[float] = None
    change_from_doubling: Optional[float] = None
    sizes: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The fit as plain JSON values (curve.json's ``fit``)."""
        d = asdict(self)
        for key in ("law", "check_law"):
            law = getattr(self, key)
            d[key] = None if law is None else {"a": law.a, "b": law.b, "c": law.c, "formula": law.formula}
        d["form"] = "a - b * n^(-c)" if self.maximize else "a + b * n^(-c)"
        d["references"] = [
            "Figueroa et al. 2012, Predicting sample size required for classification performance, BMC Med Inform Decis Mak 12:8",
            "Hestness et al. 2017, Deep Learning Scaling is Predictable, Empirically, arXiv:1712.00409",
        ]
        return d


def fit_power_law(sizes: Sequence[float], values: Sequence[float], maximize: bool) -> PowerLaw:
    """Least-squares fit of ``a -/+ b * n**(-c)`` to ``(sizes[i], values[i])``; the asymptote ``a`` is
    bounded by the metric's range (at most 1 for values in [0, 1], 100 for values in [0, 100] when
    greater is better; at least 0 for non-negative losses).

    Raises:
        ValueError: fewer than :data:`MIN_SIZES` distinct sizes, a size below 1 or a non-finite value.
        RuntimeError: the optimizer did not converge.
    """
    import numpy as np
    from scipy.optimize import OptimizeWarning, curve_fit

    n = np.asarray(sizes, dtype=float)
    y = np.asarray(values, dtype=float)
    if len(set(n.tolist())) < MIN_SIZES:
        raise ValueError(f"a curve needs at least {MIN_SIZES} distinct training sizes, got {len(set(n.tolist()))}")
    if (n < 1).any() or not np.isfinite(y).all():
        raise ValueError("sizes must be >= 1 and values finite")
    scale = float(n.max())
    x = n / scale  # in (0, 1]: b is fitted as b' = b * scale**(-c), better conditioned
    sign = -1.0 if maximize else 1.0

    def model(x, a, b, c):
        return a + sign * b * np.power(x, -c)

    spread = float(y.max() - y.min()) or 1e-3
    plateau = float(y.max() if maximize else y.min())
    # the asymptote stays within the metric's range: a share (accuracy, f1 in [0, 1]) or a percentage
    # (ROUGE, BLEU in [0, 100]) cannot exceed its maximum, a loss or error cannot go below 0
    low_a, high_a = -np.inf, np.inf
    if maximize and y.min() >= 0 and y.max() <= 100:
        high_a = 1.0 if y.max() <= 1 else 100.0
    if not maximize and y.min() >= 0:
        low_a = 0.0
    start = (min(max(plateau, low_a), high_a), spread, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        params, _ = curve_fit(
            model, x, y, p0=start, bounds=([low_a, 0.0, C_BOUNDS[0]], [high_a, np.inf, C_BOUNDS[1]]), maxfev=20000,
        )
    a, b_scaled, c = (float(p) for p in params)
    return PowerLaw(a=a, b=b_scaled * scale**c, c=c, maximize=maximize)


def fit_curve(sizes: Sequence[int], values: Sequence[float], maximize: bool) -> CurveFit:
    """Fit the learning curve to measured points (one per size and seed) and check it.

    Args:
        sizes: training rows of each point.
        values: the validation metric of each point (``None``/NaN points are left out).
        maximize: the metric is greater-is-better (else loss-like).

    Returns:
        :class:`CurveFit`; ``ok`` false (with ``reason``) for fewer than :data:`MIN_SIZES` distinct
        sizes or a fit that does not converge. Never raises for bad points.
    """
    pts = [(int(n), float(v)) for n, v in zip(sizes, values) if v is not None and math.isfinite(float(v))]
    distinct = sorted({n for n, _ in pts})
    result = CurveFit(ok=False, maximize=maximize, sizes=distinct)
    if not distinct:
        result.reason = "no finished point to fit"
        return result
    largest = distinct[-1]
    at_largest = [v for n, v in pts if n == largest]
    result.largest = largest
    result.measured_at_largest = sum(at_largest) / len(at_largest)
    if len(distinct) < MIN_SIZES:
        result.reason = f"no fit: {len(distinct)} distinct training size(s), a curve needs at least {MIN_SIZES}"
        return result
    try:
        law = fit_power_law([n for n, _ in pts], [v for _, v in pts], maximize)
    except (RuntimeError, ValueError) as e:
        result.reason = f"no fit: the optimizer failed ({e})"
        return result
    result.ok, result.law = True, law
    result.rmse = math.sqrt(sum((law(n) - v) ** 2 for n, v in pts) / len(pts))
    result.predicted_at_double = law(2 * largest)
    result.change_from_doubling = result.predicted_at_double - law(largest)
    smaller = [(n, v) for n, v in pts if n < largest]
    if len({n for n, _ in smaller}) < MIN_SIZES:
        result.check_reason = (
            f"no leave-last-out check: {len({n for n, _ in smaller})} smaller size(s), it needs {MIN_SIZES} "
            f"(use {MIN_SIZES + 1} or more fractions)"
        )
        return result
    try:
        check = fit_power_law([n for n, _ in smaller], [v for _, v in smaller], maximize)
    except (RuntimeError, ValueError) as e:
        result.check_reason = f"no leave-last-out check: the optimizer failed ({e})"
        return result
    result.check_law = check
    result.predicted_at_largest = check(largest)
    return result
