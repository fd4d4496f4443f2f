import datetime

import pytest

from xrayvision.clinical.cnp import CNP, age_on, parse_cnp

TODAY = datetime.date(2024, 6, 1)
WEIGHTS = "279146358279"


def control(first12: str) -> str:
    rest = sum(int(d) * int(w) for d, w in zip(first12, WEIGHTS)) % 11
    return "1" if rest == 10 else str(rest)


def make(s: int, yy: int, mm: int, dd: int, county: int = 40, serial: int = 123) -> str:
    first12 = f"{s}{yy:02d}{mm:02d}{dd:02d}{county:02d}{serial:03d}"
    return first12 + control(first12)


def test_valid_cnp_decodes_fields():
    value = make(1, 85, 3, 17, county=12)
    assert parse_cnp(value, TODAY) == CNP(value, datetime.date(1985, 3, 17), "M", 12)


def test_whitespace_is_stripped():
    value = make(2, 70, 1, 2)
    result = parse_cnp(f"  {value}\n", TODAY)
    assert result is not None and result.value == value


@pytest.mark.parametrize(
    ("s", "yy", "mm", "expected_year", "sex"),
    [
        (1, 85, 3, 1985, "M"),
        (2, 85, 3, 1985, "F"),
        (3, 95, 3, 1895, "M"),
        (4, 95, 3, 1895, "F"),
        (5, 10, 3, 2010, "M"),
        (6, 10, 3, 2010, "F"),
        (7, 10, 3, 2010, "M"),  # 2000s date not in the future
        (8, 85, 3, 1985, "F"),  # 2085 would be in the future
        (9, 24, 12, 1924, "O"),  # 2024-12 is after TODAY
        (9, 24, 5, 2024, "O"),
    ],
)
def test_century_and_sex_digits(s, yy, mm, expected_year, sex):
    result = parse_cnp(make(s, yy, mm, 15), TODAY)
    assert result is not None
    assert result.birthdate == datetime.date(expected_year, mm, 15)
    assert result.sex == sex


def test_century_digit_zero_is_invalid():
    assert parse_cnp(make(0, 85, 3, 17), TODAY) is None


def test_wrong_checksum():
    value = make(1, 85, 3, 17)
    bad = value[:12] + str((int(value[12]) + 1) % 10)
    assert parse_cnp(bad, TODAY) is None


def test_checksum_remainder_ten_maps_to_one():
    def rest(first12: str) -> int:
        return sum(int(d) * int(w) for d, w in zip(first12, WEIGHTS)) % 11

    first12 = next(f"185031740{n:03d}" for n in range(1000) if rest(f"185031740{n:03d}") == 10)
    assert parse_cnp(first12 + "1", TODAY) is not None
    assert parse_cnp(first12 + "0", TODAY) is None


@pytest.mark.parametrize(("mm", "dd"), [(0, 10), (13, 10), (4, 31), (6, 0), (1, 32)])
def test_invalid_month_or_day(mm, dd):
    assert parse_cnp(make(1, 85, mm, dd), TODAY) is None


def test_feb_29():
    assert parse_cnp(make(1, 4, 2, 29), TODAY) is not None  # 1904 leap
    assert parse_cnp(make(1, 3, 2, 29), TODAY) is None  # 1903
    assert parse_cnp(make(1, 0, 2, 29), TODAY) is None  # 1900 not leap
    assert parse_cnp(make(5, 0, 2, 29), TODAY).birthdate == datetime.date(2000, 2, 29)


def test_future_birthdate():
    assert parse_cnp(make(5, 30, 1, 1), TODAY) is None
    assert parse_cnp(make(5, 24, 6, 2), TODAY) is None
    assert parse_cnp(make(5, 24, 6, 1), TODAY).birthdate == TODAY


def test_today_defaults_to_current_date():
    assert parse_cnp(make(1, 85, 3, 17)) is not None
    assert parse_cnp(make(5, 99, 1, 1)) is None  # 2099


@pytest.mark.parametrize("county", [1, 48, 51, 52, 70, 79, 90, 99])
def test_valid_counties(county):
    result = parse_cnp(make(1, 85, 3, 17, county=county), TODAY)
    assert result is not None and result.county == county


@pytest.mark.parametrize("county", [0, 49, 50, 53, 60, 69, 80, 89])
def test_bad_county(county):
    assert parse_cnp(make(1, 85, 3, 17, county=county), TODAY) is None


@pytest.mark.parametrize(
    "value",
    [None, "", "   ", "185031740123a", "12345678901", "18503174012345", "１８５０３１７４０１２３４", 1850317401234,
     "1850317-01234"],
)
def test_malformed_input_returns_none(value):
    assert parse_cnp(value, TODAY) is None


def test_age_around_birthday():
    born = datetime.date(2000, 6, 15)
    assert age_on(born, datetime.date(2010, 6, 14)) == 9
    assert age_on(born, datetime.date(2010, 6, 15)) == 10
    assert age_on(born, born) == 0
    assert age_on(born, datetime.date(1999, 1, 1)) == 0


def test_age_leap_day_birth():
    born = datetime.date(2000, 2, 29)
    assert age_on(born, datetime.date(2001, 2, 28)) == 0
    assert age_on(born, datetime.date(2001, 3, 1)) == 1
    assert age_on(born, datetime.date(2004, 2, 28)) == 3
    assert age_on(born, datetime.date(2004, 2, 29)) == 4
