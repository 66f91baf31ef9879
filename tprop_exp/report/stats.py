"""Cell statistics: a cell's mean ± std over seeds as text, and comparisons
of two cells against the spread over seeds (used by the claims)."""

import math
from dataclasses import dataclass

import pandas as pd

Z = 2.0             # a difference counts when it exceeds Z standard errors of the difference
COMPARABLE = 0.05   # "comparable": within 5% of the reference mean
HOLDS, FAILS, UNSURE = "holds", "does not hold", "inconclusive"


@dataclass
class Cell:
    label: str
    mean: float
    std: float
    n: int

    def __str__(self):
        return f"{self.label} {fmt_stat(self.mean, self.std, self.n)}"


def fmt_num(x, mean):
    # One decimal for word-level perplexities, two for character-level ones.
    return f"{x:.1f}" if abs(mean) >= 10 else f"{x:.2f}"


def fmt_stat(mean, std, n):
    """`182.3 ± 1.2 (3)`; just the mean for one seed; `–` for none."""
    if not n or pd.isna(mean):
        return "–"
    if n == 1 or pd.isna(std):
        return fmt_num(mean, mean)
    return f"{fmt_num(mean, mean)} ± {fmt_num(std, mean)} ({int(n)})"


def exceeds(a, b, by=0.0):
    """Is mean(a) − mean(b) larger than `by` beyond the noise (by more than
    Z·SE)?  True or False, or None (inconclusive) when either cell has fewer
    than two seeds; and the comparison as text."""
    d = a.mean - b.mean
    shift = f" − {by:+.3g}" if by else ""
    if a.n < 2 or b.n < 2 or math.isnan(a.std) or math.isnan(b.std):
        return None, f"difference {d:+.3g}{shift}, single seed: inconclusive"
    se = math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n)
    return d - by > Z * se, f"difference {d:+.3g}{shift}, {Z:g}·SE {Z * se:.3g}"


def worse(a, b):
    """(is a worse than b: True, False or None for single seed, text)."""
    return exceeds(a, b)


def comparable(a, b):
    """(are a and b within COMPARABLE of b's mean: True, False or None, text)."""
    d, tol = a.mean - b.mean, COMPARABLE * b.mean
    if a.n < 2 or b.n < 2 or math.isnan(a.std) or math.isnan(b.std):
        return None, f"{d / b.mean:+.1%}, single seed: inconclusive"
    half = Z * math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n)
    lo, hi = (d - half) / b.mean, (d + half) / b.mean
    verdict = True if -COMPARABLE <= lo and hi <= COMPARABLE else (
        False if lo > COMPARABLE or hi < -COMPARABLE else None)
    return verdict, f"{d / b.mean:+.1%} (interval {lo:+.1%} to {hi:+.1%}, band ±{tol:.3g})"


def negate(x):
    return None if x is None else not x


def word(x, yes, no):
    return "inconclusive" if x is None else yes if x else no


def combine(conditions):
    """A claim's verdict from its comparisons (True: as the claim says)."""
    if False in conditions:
        return FAILS
    return UNSURE if None in conditions else HOLDS
