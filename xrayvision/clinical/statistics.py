"""Agreement between the AI's verdict and the radiologist's, computed from counts.

Each exam that has both verdicts falls in one cell of a two-by-two table, the radiologist's verdict being the truth:

- TP (true positive): the AI and the radiologist both call the exam positive.
- TN (true negative): both call it negative.
- FP (false positive): the AI calls it positive, the radiologist negative.
- FN (false negative): the AI calls it negative, the radiologist positive.

An exam without both verdicts is in no cell and counts in no figure. From the four counts, with
total = TP + TN + FP + FN:

- sensitivity = TP / (TP + FN): of the exams the radiologist found positive, the share the AI found positive too.
- specificity = TN / (TN + FP): of the exams the radiologist found negative, the share the AI found negative too.
- PPV (positive predictive value) = TP / (TP + FP): of the AI's positives, the share the radiologist confirmed.
- NPV (negative predictive value) = TN / (TN + FN): of the AI's negatives, the share the radiologist confirmed.
- accuracy = (TP + TN) / total: the share of exams on which the two agree.
- F1 = 2·TP / (2·TP + FP + FN): the harmonic mean of sensitivity and PPV.
- MCC (Matthews correlation coefficient) = (TP·TN − FP·FN) / √((TP+FP)(TP+FN)(TN+FP)(TN+FN)): from −1 (always the
  opposite of the radiologist) through 0 (no better than chance) to +1 (always the same).

Each of the five rates is a share of successes x out of n exams, given with its 95% Wilson score interval. With
z = 1.959963984540054 (the 0.975 quantile of the standard normal distribution) the interval is

    (x + z²/2 ± z·√(x·(n − x)/n + z²/4)) / (n + z²)

It stays inside 0..1, is not empty at 0 of n or n of n (where the plain normal interval collapses to a point), and is
defined for every n ≥ 1. F1 and MCC have no interval.

A figure whose denominator is zero is undefined and given as None (null in JSON), never as 0 and never as a division by
zero; MCC is undefined as soon as any of its four sums is zero. Values are fractions in 0..1 (MCC in −1..1), kept at
full precision; only `Confusion.to_json` rounds them, to 4 decimals, for presentation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

# The 0.975 quantile of the standard normal distribution (two-sided 95%), as scipy's norm.ppf(0.975) gives it.
Z95 = 1.959963984540054
DECIMALS = 4


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval (low, high) of `successes` out of `n`; None when n is 0."""
    if isinstance(successes, bool) or isinstance(n, bool) or not isinstance(successes, int) or not isinstance(n, int):
        raise TypeError("wilson() takes whole counts")
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson() needs 0 <= successes <= n, not {successes} of {n}")
    if not z > 0:
        raise ValueError("wilson() needs z > 0")
    if n == 0:
        return None
    z2 = z * z
    centre = successes + z2 / 2
    spread = z * math.sqrt(successes * (n - successes) / n + z2 / 4)
    denominator = n + z2
    # At 0 of n and n of n the bound is exactly 0 or 1; floating point would leave a speck either side of it.
    low = 0.0 if successes == 0 else max(0.0, (centre - spread) / denominator)
    high = 1.0 if successes == n else min(1.0, (centre + spread) / denominator)
    return low, high


@dataclass(frozen=True)
class Rate:
    """A share `successes / n` with its 95% Wilson interval; n is never 0 (an undefined rate is None instead)."""

    successes: int
    n: int
    value: float
    low: float
    high: float

    @classmethod
    def of(cls, successes: int, n: int) -> Rate | None:
        bounds = wilson(successes, n)
        if bounds is None:
            return None
        return cls(successes, n, successes / n, *bounds)

    def to_json(self) -> dict[str, float]:
        return {"value": round(self.value, DECIMALS), "low": round(self.low, DECIMALS),
                "high": round(self.high, DECIMALS)}


@dataclass(frozen=True)
class Confusion:
    """The two-by-two table of the AI's verdict against the radiologist's (the truth); immutable, so `add` and `+`
    return a new table."""

    tp: int = 0
    tn: int = 0
    fp: int = 0
    fn: int = 0

    def __post_init__(self) -> None:
        for name in ("tp", "tn", "fp", "fn"):
            count = getattr(self, name)
            # bool is an int subclass: a True slipped in for a count is a caller's mistake, not 1.
            if isinstance(count, bool) or not isinstance(count, int):
                raise TypeError(f"Confusion.{name} must be a whole count, not {type(count).__name__}")
            if count < 0:
                raise ValueError(f"Confusion.{name} must be >= 0, not {count}")

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[bool, bool]]) -> Confusion:
        """The table of (ai_positive, truth) pairs, one per exam that has both verdicts."""
        counts = {"tp": 0, "tn": 0, "fp": 0, "fn": 0}
        for ai_positive, truth in pairs:
            counts[_cell(ai_positive, truth)] += 1
        return cls(**counts)

    def add(self, ai_positive: bool, truth: bool) -> Confusion:
        """This table with one more exam."""
        cell = _cell(ai_positive, truth)
        counts = {"tp": self.tp, "tn": self.tn, "fp": self.fp, "fn": self.fn}
        counts[cell] += 1
        return Confusion(**counts)

    def __add__(self, other: object) -> Confusion:
        if not isinstance(other, Confusion):
            return NotImplemented
        return Confusion(self.tp + other.tp, self.tn + other.tn, self.fp + other.fp, self.fn + other.fn)

    def __radd__(self, other: object) -> Confusion:
        # Lets sum(tables) start from its default 0.
        if other == 0 and not isinstance(other, bool):
            return self
        return NotImplemented

    @property
    def total(self) -> int:
        return self.tp + self.tn + self.fp + self.fn

    @property
    def positives(self) -> int:
        """Exams the radiologist called positive."""
        return self.tp + self.fn

    @property
    def negatives(self) -> int:
        """Exams the radiologist called negative."""
        return self.tn + self.fp

    @property
    def sensitivity(self) -> Rate | None:
        return Rate.of(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> Rate | None:
        return Rate.of(self.tn, self.tn + self.fp)

    @property
    def ppv(self) -> Rate | None:
        return Rate.of(self.tp, self.tp + self.fp)

    @property
    def npv(self) -> Rate | None:
        return Rate.of(self.tn, self.tn + self.fn)

    @property
    def accuracy(self) -> Rate | None:
        return Rate.of(self.tp + self.tn, self.total)

    @property
    def f1(self) -> float | None:
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else None

    @property
    def mcc(self) -> float | None:
        product = (self.tp + self.fp) * (self.tp + self.fn) * (self.tn + self.fp) * (self.tn + self.fn)
        if product == 0:
            return None
        # The product is an exact int; one float square root of it keeps the full precision even at millions of exams.
        return (self.tp * self.tn - self.fp * self.fn) / math.sqrt(product)

    def to_json(self) -> dict[str, object]:
        """The counts and figures for the API, rounded to 4 decimals; undefined figures are None."""

        def rounded(value: float | None) -> float | None:
            # + 0.0 turns a rounded -0.0 (an MCC a hair below zero) into 0.0.
            return None if value is None else round(value, DECIMALS) + 0.0

        def rate(value: Rate | None) -> dict[str, float] | None:
            return None if value is None else value.to_json()

        return {
            "tp": self.tp, "tn": self.tn, "fp": self.fp, "fn": self.fn, "total": self.total,
            "sensitivity": rate(self.sensitivity), "specificity": rate(self.specificity),
            "ppv": rate(self.ppv), "npv": rate(self.npv), "accuracy": rate(self.accuracy),
            "f1": rounded(self.f1), "mcc": rounded(self.mcc),
        }


def _cell(ai_positive: bool, truth: bool) -> str:
    # Strict bools: a severity or a 'yes' string passed by mistake would otherwise count by its truthiness.
    if not isinstance(ai_positive, bool) or not isinstance(truth, bool):
        raise TypeError("a verdict must be True (positive) or False (negative)")
    if ai_positive:
        return "tp" if truth else "fp"
    return "fn" if truth else "tn"
