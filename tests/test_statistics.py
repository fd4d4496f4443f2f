"""Agreement figures from confusion counts: every rate, Wilson bound, F1 and MCC of hand-worked tables, exactly; None
wherever a denominator is zero; 0 of n and n of n; summing tables."""
from __future__ import annotations

import ast
import json
import math

import pytest

from xrayvision.clinical import statistics
from xrayvision.clinical.statistics import Z95, Confusion, Rate, wilson

# The expected numbers below were computed once, apart from the module, with Python's `decimal` at 60 significant
# digits (Decimal.sqrt is correctly rounded) and z = Decimal("1.959963984540054"), and pasted as literals to 15
# decimals. The Wilson bounds there used the textbook arrangement
#     centre = (p + z²/(2n)) / (1 + z²/n),  half = z / (1 + z²/n) · √(p(1 − p)/n + z²/(4n²)),  bounds = centre ∓ half
# rather than the module's (x + z²/2 ∓ z√(x(n − x)/n + z²/4)) / (n + z²), so a slip in either would show.
# MCC there was (TP·TN − FP·FN) / Decimal(product of the four sums).sqrt().
TOL = 1e-9
RATES = ("sensitivity", "specificity", "ppv", "npv", "accuracy")

# (tp, tn, fp, fn) -> {rate: (value, low, high) | None, "f1": ..., "mcc": ...}
TABLES: dict[tuple[int, int, int, int], dict[str, object]] = {
    # The worked example of docs/statistics.md: 100 exams, 50 positive for the radiologist.
    (40, 45, 5, 10): {
        "sensitivity": (0.800000000000000, 0.669628940677746, 0.887562499842239),
        "specificity": (0.900000000000000, 0.786397685625203, 0.956524235068110),
        "ppv": (0.888888888888889, 0.765009030042314, 0.951595282054328),
        "npv": (0.818181818181818, 0.696695403633624, 0.898123295655503),
        "accuracy": (0.850000000000000, 0.767164404091676, 0.906940147163434),
        "f1": 0.842105263157895,
        "mcc": 0.703526470681448,
    },
    # No positive exam for the radiologist and no true positive: sensitivity is 0/0, PPV is 0/3 (defined, 0), F1 is
    # 0/3 (defined, 0), MCC has a zero sum (TP + FN).
    (0, 20, 3, 0): {
        "sensitivity": None,
        "specificity": (0.869565217391304, 0.678725177299040, 0.954623409063688),
        "ppv": (0.0, 0.0, 0.561497031755045),
        "npv": (1.0, 0.838874841947181, 1.0),
        "accuracy": (0.869565217391304, 0.678725177299040, 0.954623409063688),
        "f1": 0.0,
        "mcc": None,
    },
    # No exam with both verdicts: nothing is defined.
    (0, 0, 0, 0): {**dict.fromkeys(RATES), "f1": None, "mcc": None},
    # A single agreeing positive: the negatives' rates and MCC are undefined, the rest are 1 of 1.
    (1, 0, 0, 0): {
        "sensitivity": (1.0, 0.206549314377237, 1.0),
        "specificity": None,
        "ppv": (1.0, 0.206549314377237, 1.0),
        "npv": None,
        "accuracy": (1.0, 0.206549314377237, 1.0),
        "f1": 1.0,
        "mcc": None,
    },
    # An AI that mostly contradicts the radiologist: MCC is negative.
    (3, 2, 7, 8): {
        "sensitivity": (0.272727272727273, 0.097460592900249, 0.565645301176129),
        "specificity": (0.222222222222222, 0.063225107117847, 0.547411030893011),
        "ppv": (0.300000000000000, 0.107791267406301, 0.603221852538855),
        "npv": (0.200000000000000, 0.056682151454375, 0.509837528463358),
        "accuracy": (0.250000000000000, 0.111861701407666, 0.468700877618744),
        "f1": 0.285714285714286,
        "mcc": -0.502518907629606,
    },
    # A department-sized table (91,213 exams), where a float product of the four sums would be large.
    (9123, 80211, 1502, 377): {
        "sensitivity": (0.960315789473684, 0.956200550012458, 0.964058909059502),
        "specificity": (0.981618591900922, 0.980674686947987, 0.982517215661998),
        "ppv": (0.858635294117647, 0.851881023694720, 0.865130329755797),
        "npv": (0.995321884151487, 0.994826575817055, 0.995769972852107),
        "accuracy": (0.979399866247136, 0.978457679512258, 0.980301674586634),
        "f1": 0.906633540372671,
        "mcc": 0.896867674985190,
    },
}


def _close(actual: float | None, expected: float | None) -> bool:
    if expected is None:
        return actual is None
    return actual is not None and abs(actual - expected) <= TOL


@pytest.mark.parametrize("counts", list(TABLES), ids=lambda c: "tp{}-tn{}-fp{}-fn{}".format(*c))
def test_every_figure_of_a_hand_worked_table(counts: tuple[int, int, int, int]) -> None:
    table = Confusion(*counts)
    expected = TABLES[counts]
    assert table.total == sum(counts)
    for name in RATES:
        rate = getattr(table, name)
        want = expected[name]
        if want is None:
            assert rate is None, name
            continue
        assert isinstance(rate, Rate), name
        assert _close(rate.value, want[0]), (name, "value", rate.value)
        assert _close(rate.low, want[1]), (name, "low", rate.low)
        assert _close(rate.high, want[2]), (name, "high", rate.high)
        assert 0.0 <= rate.low <= rate.value <= rate.high <= 1.0, name
    assert _close(table.f1, expected["f1"]), ("f1", table.f1)
    assert _close(table.mcc, expected["mcc"]), ("mcc", table.mcc)


def test_the_rates_count_the_right_cells() -> None:
    # Distinct counts, so a numerator or denominator taken from the wrong cell cannot give the right pair.
    table = Confusion(tp=40, tn=45, fp=5, fn=10)
    pairs = {name: (getattr(table, name).successes, getattr(table, name).n) for name in RATES}
    assert pairs == {"sensitivity": (40, 50), "specificity": (45, 50), "ppv": (40, 45), "npv": (45, 55),
                     "accuracy": (85, 100)}
    assert (table.positives, table.negatives) == (50, 50)


def test_to_json_rounds_to_four_decimals_and_gives_null_where_undefined() -> None:
    shown = Confusion(40, 45, 5, 10).to_json()
    assert shown == {
        "tp": 40, "tn": 45, "fp": 5, "fn": 10, "total": 100,
        "sensitivity": {"value": 0.8, "low": 0.6696, "high": 0.8876},
        "specificity": {"value": 0.9, "low": 0.7864, "high": 0.9565},
        "ppv": {"value": 0.8889, "low": 0.765, "high": 0.9516},
        "npv": {"value": 0.8182, "low": 0.6967, "high": 0.8981},
        "accuracy": {"value": 0.85, "low": 0.7672, "high": 0.9069},
        "f1": 0.8421, "mcc": 0.7035,
    }
    empty = json.loads(json.dumps(Confusion().to_json()))
    assert empty == {"tp": 0, "tn": 0, "fp": 0, "fn": 0, "total": 0, **dict.fromkeys(RATES), "f1": None, "mcc": None}
    partial = Confusion(0, 20, 3, 0).to_json()
    assert partial["sensitivity"] is None and partial["mcc"] is None
    assert partial["ppv"] == {"value": 0.0, "low": 0.0, "high": 0.5615} and partial["f1"] == 0.0


def test_values_are_not_truncated() -> None:
    # 2 of 3 is 0.6667 when rounded; the reference's truncation would have shown 66 (%).
    table = Confusion(tp=2, fn=1)
    assert table.sensitivity.value == 2 / 3
    assert table.to_json()["sensitivity"]["value"] == 0.6667


@pytest.mark.parametrize(("successes", "n", "low", "high"), [
    (0, 1, 0.0, 0.793450685622763),
    (1, 1, 0.206549314377237, 1.0),
    (0, 10, 0.0, 0.277532799862889),
    (10, 10, 0.722467200137111, 1.0),
    (0, 1000, 0.0, 0.003826758485555),
    (1000, 1000, 0.996173241514445, 1.0),
    (1, 2, 0.094531205734231, 0.905468794265769),
    (7, 13, 0.291437957145060, 0.767939321904617),
])
def test_wilson_bounds(successes: int, n: int, low: float, high: float) -> None:
    bounds = wilson(successes, n)
    assert bounds is not None
    assert abs(bounds[0] - low) <= TOL and abs(bounds[1] - high) <= TOL


def test_wilson_edges_are_exact_and_symmetric() -> None:
    # 0 of n starts at exactly 0 and n of n ends at exactly 1, not a rounding speck away, and never outside 0..1.
    for n in (1, 2, 3, 10, 97, 1000, 123_457):
        assert wilson(0, n)[0] == 0.0 and wilson(n, n)[1] == 1.0
        low, high = wilson(0, n)
        other_low, other_high = wilson(n, n)
        assert abs(low - (1 - other_high)) <= TOL and abs(high - (1 - other_low)) <= TOL
        assert 0.0 < high < 1.0 and 0.0 < other_low < 1.0
    assert wilson(0, 0) is None


def test_wilson_takes_another_z() -> None:
    # z = 1 is a 68% interval: narrower than the 95% one around the same centre.
    wide, narrow = wilson(7, 13), wilson(7, 13, z=1.0)
    assert wide[0] < narrow[0] < 7 / 13 < narrow[1] < wide[1]
    assert Z95 == 1.959963984540054


@pytest.mark.parametrize(("successes", "n", "error"), [
    (-1, 5, ValueError), (6, 5, ValueError), (0, -1, ValueError), (1.0, 5, TypeError), (True, 5, TypeError),
])
def test_wilson_refuses_impossible_counts(successes: object, n: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        wilson(successes, n)  # type: ignore[arg-type]


def test_mcc_sign_and_extremes() -> None:
    assert Confusion(10, 10, 0, 0).mcc == 1.0
    assert Confusion(0, 0, 10, 10).mcc == -1.0
    assert Confusion(5, 5, 5, 5).mcc == 0.0  # an AI that answers at random
    assert Confusion(30, 20, 10, 5).mcc > 0 > Confusion(5, 10, 20, 30).mcc
    # Any zero sum leaves it undefined, even when the other cells are full.
    for counts in ((10, 10, 0, 0), (0, 10, 0, 10), (10, 0, 10, 0), (0, 10, 10, 0), (10, 0, 0, 10)):
        table = Confusion(*counts)
        sums = (table.tp + table.fp, table.tp + table.fn, table.tn + table.fp, table.tn + table.fn)
        assert (table.mcc is None) == (0 in sums), counts


def test_mcc_at_a_million_exams() -> None:
    # The product of the four sums is about 6e22 here; compared with the exact integer square root bounds.
    table = Confusion(tp=150_000, tn=780_000, fp=40_000, fn=30_000)
    product = 190_000 * 180_000 * 820_000 * 810_000
    numerator = 150_000 * 780_000 - 40_000 * 30_000
    root = math.isqrt(product)
    assert numerator / (root + 1) <= table.mcc <= numerator / root


def test_add_puts_each_pair_in_its_cell() -> None:
    table = Confusion()
    table = table.add(True, True).add(False, False).add(False, False).add(True, False).add(False, True)
    assert table == Confusion(tp=1, tn=2, fp=1, fn=1)
    assert Confusion().add(True, False) == Confusion(fp=1)  # the AI's positive that the radiologist did not confirm
    assert Confusion().add(False, True) == Confusion(fn=1)  # a finding the AI missed


def test_from_pairs_matches_add_and_the_worked_example() -> None:
    pairs = [(True, True)] * 40 + [(False, False)] * 45 + [(True, False)] * 5 + [(False, True)] * 10
    table = Confusion.from_pairs(pairs)
    assert table == Confusion(40, 45, 5, 10)
    one_by_one = Confusion()
    for ai_positive, truth in pairs:
        one_by_one = one_by_one.add(ai_positive, truth)
    assert one_by_one == table
    assert Confusion.from_pairs([]) == Confusion()


def test_tables_sum() -> None:
    chest, bone = Confusion(30, 20, 4, 6), Confusion(10, 25, 1, 4)
    assert chest + bone == Confusion(40, 45, 5, 10)
    assert sum([chest, bone]) == Confusion(40, 45, 5, 10)
    assert sum([], Confusion()) == Confusion()
    # Summing counts, not rates: the overall sensitivity is 40/50, not the mean of 30/36 and 10/14.
    assert (chest + bone).sensitivity.value == 0.8
    with pytest.raises(TypeError):
        chest + 1  # noqa: B018


def test_a_table_is_immutable() -> None:
    table = Confusion(1, 2, 3, 4)
    table.add(True, True)
    assert table == Confusion(1, 2, 3, 4)
    with pytest.raises(AttributeError):
        table.tp = 5  # type: ignore[misc]


@pytest.mark.parametrize(("counts", "error"), [
    ((-1, 0, 0, 0), ValueError), ((0, 0, 0, -3), ValueError), ((1.5, 0, 0, 0), TypeError), ((True, 0, 0, 0), TypeError),
    (("4", 0, 0, 0), TypeError),
])
def test_counts_must_be_whole_and_not_negative(counts: tuple[object, ...], error: type[Exception]) -> None:
    with pytest.raises(error):
        Confusion(*counts)  # type: ignore[arg-type]


@pytest.mark.parametrize("verdicts", [(1, True), (True, "yes"), (None, False), (True, 7)])
def test_a_verdict_must_be_a_bool(verdicts: tuple[object, object]) -> None:
    with pytest.raises(TypeError):
        Confusion().add(*verdicts)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Confusion.from_pairs([verdicts])  # type: ignore[list-item]


def test_same_as_statsmodels() -> None:
    from statsmodels.stats import proportion  # the test extra installs it
    for successes, n in ((0, 1), (1, 1), (40, 50), (45, 55), (7, 13), (9123, 9500), (0, 1000)):
        low, high = proportion.proportion_confint(successes, n, alpha=0.05, method="wilson")
        mine = wilson(successes, n)
        assert abs(mine[0] - low) <= TOL and abs(mine[1] - high) <= TOL, (successes, n)


def test_a_rounded_mcc_is_never_minus_zero() -> None:
    # MCC here is about -2.5e-5: rounded to 4 decimals it must read 0.0, not -0.0, in the JSON.
    table = Confusion(tp=10_000, tn=10_000, fp=10_001, fn=10_000)
    assert -1e-4 < table.mcc < 0
    assert json.dumps(table.to_json()["mcc"]) == "0.0"


def test_the_module_is_pure() -> None:
    # Rank 0 and no I/O: it imports only the standard library's math, dataclasses and typing helpers.
    tree = ast.parse(open(statistics.__file__, encoding="utf-8").read())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"__future__", "math", "collections.abc", "dataclasses"}


def test_same_as_scipy() -> None:
    # A second independent implementation (scipy's binomtest; statsmodels brings scipy). The product needs neither.
    from scipy import stats
    for successes, n in ((0, 1), (1, 1), (40, 50), (45, 55), (7, 13), (9123, 9500), (0, 1000), (1000, 1000)):
        interval = stats.binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
        mine = wilson(successes, n)
        assert abs(mine[0] - interval.low) <= TOL and abs(mine[1] - interval.high) <= TOL, (successes, n)
