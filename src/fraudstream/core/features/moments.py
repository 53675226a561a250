"""Amount moments that a replay can take back out exactly.

An entity keeps the sum and the sum of squares of its amounts as double-double numbers (an
unevaluated pair hi + lo, about 32 significant digits) built with error-free transformations.
Adding or removing an amount is then exact for any realistic amount, so "the statistics of
every other event" for a replayed transaction carry no rounding residue — the failure of
removing a value from a running Welford mean, where 20 000, 10, 10 minus the 20 000 left a
deviation of 1.7e-4 instead of 0. The variance is formed as (n·Σx² - (Σx)²) / (n(n-1)) in
double-double, where the subtraction cancels without losing the small difference.
"""

from __future__ import annotations

import numba
import numpy as np

_SPLITTER = 134217729.0  # 2**27 + 1, Dekker's split of a double into two 26-bit halves


@numba.njit(cache=True, nogil=True, inline="always")
def _two_sum(a: float, b: float) -> tuple[float, float]:
    s = a + b
    v = s - a
    return s, (a - (s - v)) + (b - v)


@numba.njit(cache=True, nogil=True, inline="always")
def _split(a: float) -> tuple[float, float]:
    c = _SPLITTER * a
    hi = c - (c - a)
    return hi, a - hi


@numba.njit(cache=True, nogil=True, inline="always")
def _two_prod(a: float, b: float) -> tuple[float, float]:
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


@numba.njit(cache=True, nogil=True, inline="always")
def _dd_add(hi: float, lo: float, b_hi: float, b_lo: float) -> tuple[float, float]:
    s, e = _two_sum(hi, b_hi)
    t, f = _two_sum(lo, b_lo)
    e += t
    s, e = _two_sum(s, e)
    e += f
    return _two_sum(s, e)


@numba.njit(cache=True, nogil=True, inline="always")
def _dd_mul(hi: float, lo: float, b_hi: float, b_lo: float) -> tuple[float, float]:
    p, e = _two_prod(hi, b_hi)
    e += hi * b_lo + lo * b_hi
    return _two_sum(p, e)


@numba.njit(cache=True, nogil=True, inline="always")
def with_amount(
    s1_hi: float, s1_lo: float, s2_hi: float, s2_lo: float, amount: float, sign: float
) -> tuple[float, float, float, float]:
    """The sums Σx (hi, lo) and Σx² (hi, lo) with an amount added (sign 1) or removed (-1)."""
    square_hi, square_lo = _two_prod(amount, amount)
    s1 = _dd_add(s1_hi, s1_lo, sign * amount, 0.0)
    s2 = _dd_add(s2_hi, s2_lo, sign * square_hi, sign * square_lo)
    return s1[0], s1[1], s2[0], s2[1]


@numba.njit(cache=True, nogil=True, inline="always")
def mean_and_variance(
    n: float, s1_hi: float, s1_lo: float, s2_hi: float, s2_lo: float
) -> tuple[float, float]:
    """Mean (n >= 1) and sample variance (n >= 2, else NaN) from the double-double sums."""
    mean = (s1_hi + s1_lo) / n
    if n < 2:
        return mean, np.nan
    scaled = _dd_mul(s2_hi, s2_lo, n, 0.0)
    square = _dd_mul(s1_hi, s1_lo, s1_hi, s1_lo)
    diff_hi, diff_lo = _dd_add(scaled[0], scaled[1], -square[0], -square[1])
    return mean, max(0.0, diff_hi + diff_lo) / (n * (n - 1.0))
