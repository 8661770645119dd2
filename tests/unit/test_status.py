"""The liveness rule, table-driven: numbers in, verdict out, no clock and no sleep."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from fractions import Fraction

import pytest

from elastic_healthcheck import MAX_FUTURE_SKEW, HealthStatus, Verdict, check_liveness, evaluate

NOW = 1_700_000_000.0

ALIVE, DEAD, UNKNOWN = Verdict.ALIVE, Verdict.DEAD, Verdict.UNKNOWN

# (last_progress, timeout, expected verdict, expected age)
VERDICTS = [
    pytest.param(int(NOW) - 10, 60, ALIVE, 10.0, id="int-seconds"),
    pytest.param(NOW - 10.5, 60, ALIVE, 10.5, id="float-seconds"),
    pytest.param(NOW - 60, 60, ALIVE, 60.0, id="age-equals-timeout-is-alive"),
    pytest.param(NOW - 60.001, 60, DEAD, pytest.approx(60.001), id="just-past-timeout"),
    pytest.param(NOW - 3600, 60, DEAD, 3600.0, id="an-hour-old"),
    pytest.param(NOW, 0, ALIVE, 0.0, id="zero-timeout-now"),
    pytest.param(NOW - 1, 0, DEAD, 1.0, id="zero-timeout-past"),
    pytest.param(NOW + 0.7, 60, ALIVE, 0.0, id="rounding-skew-is-age-zero"),
    pytest.param(NOW + MAX_FUTURE_SKEW, 60, ALIVE, 0.0, id="skew-at-the-limit"),
    pytest.param(0, 60, DEAD, NOW, id="epoch-zero-is-dead"),
    pytest.param(-5, 60, DEAD, NOW + 5, id="negative-is-dead"),
    pytest.param(Fraction(int(NOW) - 1), 60, ALIVE, 1.0, id="other-real-number"),
]


@pytest.mark.parametrize(("last", "timeout", "verdict", "age"), VERDICTS)
def test_verdict_for_real_numbers(last, timeout, verdict, age):
    status = evaluate(last, timeout, NOW)
    assert status.verdict is verdict
    assert status.age == age
    assert status.reason is None
    assert status.timeout == float(timeout)
    assert status.last_progress == float(last)
    assert status.alive is (verdict is ALIVE)


# (what the callback returned, the expected reason)
UNKNOWNS = [
    pytest.param(None, "callback returned NoneType", id="none"),
    pytest.param("1700000000", "callback returned str", id="string"),
    pytest.param(True, "callback returned bool", id="true"),
    pytest.param(False, "callback returned bool", id="false"),
    pytest.param(math.nan, "callback returned nan", id="nan"),
    pytest.param(math.inf, "callback returned inf", id="inf"),
    pytest.param(-math.inf, "callback returned -inf", id="minus-inf"),
    pytest.param(10**400, "callback returned a number out of range", id="huge-int"),
    pytest.param(complex(NOW, 0), "callback returned complex", id="complex"),
    pytest.param([NOW], "callback returned list", id="list"),
]


@pytest.mark.parametrize(("value", "reason"), UNKNOWNS)
def test_not_a_finite_real_number_is_unknown(value, reason):
    status = evaluate(value, 60, NOW)
    assert status == HealthStatus(UNKNOWN, 60.0, reason=reason)
    assert not status.alive


def test_milliseconds_are_unknown_not_alive():
    """A time in milliseconds is ~1.7e12 s ahead: a unit error, not skew."""
    status = evaluate(int(NOW * 1000), 60, NOW)
    assert status.verdict is UNKNOWN
    assert status.last_progress is None and status.age is None
    assert status.reason is not None
    assert "ahead of the clock" in status.reason
    assert "milliseconds" in status.reason


def test_just_beyond_the_skew_limit_is_unknown():
    status = evaluate(NOW + MAX_FUTURE_SKEW + 1, 60, NOW)
    assert status.verdict is UNKNOWN


@pytest.mark.parametrize("ahead", [MAX_FUTURE_SKEW + 1, 3600.0, 86400.0 * 365])
def test_a_time_ahead_but_not_a_unit_error_blames_the_clock(ahead):
    """A clock that stepped back is likelier than milliseconds when the time is not ~1000x."""
    status = evaluate(NOW + ahead, 60, NOW)
    assert status.verdict is UNKNOWN
    assert status.reason == f"last progress is {ahead:.3g}s ahead of the clock (a clock step?)"


@pytest.mark.parametrize(
    ("timeout", "error"),
    [
        (-1, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        ("60", TypeError),
        (None, TypeError),
        (True, TypeError),
    ],
)
def test_bad_timeout_is_a_programming_error(timeout, error):
    with pytest.raises(error, match="timeout"):
        evaluate(NOW, timeout, NOW)


def test_callback_that_raises_is_unknown_with_the_type_name_only():
    def callback() -> int:
        raise ConnectionResetError("secret detail that must not leak")

    status = check_liveness(callback, 60, clock=lambda: NOW)
    assert status == HealthStatus(UNKNOWN, 60.0, reason="callback raised ConnectionResetError")


def test_keyboard_interrupt_in_callback_propagates():
    def callback() -> int:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        check_liveness(callback, 60, clock=lambda: NOW)


def test_clock_is_read_after_the_callback_returns():
    ticks = iter([NOW + 100.0])
    calls = []

    def callback() -> float:
        calls.append("callback")
        return NOW

    def clock() -> float:
        calls.append("clock")
        return next(ticks)

    status = check_liveness(callback, 60, clock=clock)
    assert calls == ["callback", "clock"]
    assert status.verdict is DEAD and status.age == 100.0


def test_to_dict_carries_every_field_by_name():
    assert evaluate(NOW - 2, 60, NOW).to_dict() == {
        "status": "alive",
        "last_progress": NOW - 2,
        "age": 2.0,
        "timeout": 60.0,
        "reason": None,
    }
    assert evaluate(None, 5, NOW).to_dict() == {
        "status": "unknown",
        "last_progress": None,
        "age": None,
        "timeout": 5.0,
        "reason": "callback returned NoneType",
    }


def test_status_is_immutable():
    status = evaluate(NOW, 60, NOW)
    with pytest.raises(AttributeError):
        status.verdict = DEAD


def test_verdict_prints_as_its_value():
    assert str(Verdict.DEAD) == "dead"
    assert f"{Verdict.UNKNOWN}" == "unknown"


def test_an_os_error_about_a_file_names_the_file_but_not_its_message():
    def callback() -> int:
        raise PermissionError(13, "secret detail that must not leak", "/run/health/progress")

    status = check_liveness(callback, 60, clock=lambda: NOW)
    assert status.reason == "callback raised PermissionError for /run/health/progress"


def test_dataclasses_replace_makes_a_changed_copy():
    """A subclass's health_status() may adjust the verdict with dataclasses.replace()."""
    status = evaluate(NOW - 10, 60, NOW)
    changed = dataclasses.replace(status, detail={"phase": "running"}, reason=None)
    assert changed == HealthStatus(ALIVE, 60.0, NOW - 10, 10.0, None, {"phase": "running"})
    assert status.detail is None  # the original is unchanged
    assert dataclasses.is_dataclass(status)
    assert [f.name for f in dataclasses.fields(status)] == list(HealthStatus.__slots__)
    assert dataclasses.asdict(status)["age"] == 10.0
    with pytest.raises(TypeError):
        dataclasses.replace(status, nope=1)


def test_replace_protocol_of_python_3_13():
    """copy.replace() calls __replace__; older Pythons can call it the same way."""
    status = evaluate(NOW - 10, 60, NOW)
    assert status.__replace__(age=1.0) == HealthStatus(ALIVE, 60.0, NOW - 10, 1.0)
    with pytest.raises(TypeError, match="no field 'nope'"):
        status.__replace__(nope=1)
    if sys.version_info >= (3, 13):
        import copy

        assert copy.replace(status, reason="x").reason == "x"  # type: ignore[attr-defined]


def test_importing_status_imports_no_dataclasses():
    """The dataclass fields are made on first use: importing stays cheap."""
    code = "import sys, elastic_healthcheck.status; print('dataclasses' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
