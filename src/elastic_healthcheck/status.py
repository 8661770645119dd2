"""The liveness rule: one pure function that every server, the CLI and the metrics share.

``last = alive_callback()`` and ``age = now - last``, in seconds. The verdict is

* ``alive`` when ``age <= timeout``;
* ``dead`` when ``age > timeout``;
* ``unknown`` when no honest verdict exists: the callback raised, or returned something
  that is not a finite real number in epoch seconds (``None``, a string, ``True``, NaN,
  an infinity), or a time so far ahead of the clock that it is surely a unit error
  (milliseconds instead of seconds).

A time at most :data:`MAX_FUTURE_SKEW` seconds ahead of the clock is alive with age 0:
torch reports whole seconds (``int(time.time())``), clocks step, and a heartbeat file's
modification time comes from another machine's clock on a network file system.

Nothing here reads the clock or sleeps unless asked to: the current time is an argument.

>>> evaluate(1_700_000_000, timeout=60, now=1_700_000_030).verdict
<Verdict.ALIVE: 'alive'>
>>> evaluate(None, timeout=60, now=1_700_000_030).reason
'callback returned NoneType'
"""

from __future__ import annotations

import enum
import math
import numbers
import time
from collections.abc import Callable, Mapping

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Any, ClassVar

__all__ = ["MAX_FUTURE_SKEW", "HealthStatus", "Verdict", "check_liveness", "evaluate"]

# How far ahead of our clock a progress time may be and still count as "now". Five
# minutes is the clock skew Kerberos tolerates by default (MIT krb5 ``clockskew``): a
# bigger gap is no longer skew. A time in milliseconds is ~1.7e12 s ahead, far beyond it.
MAX_FUTURE_SKEW = 300.0


class Verdict(str, enum.Enum):
    """What the liveness rule concluded."""

    ALIVE = "alive"
    DEAD = "dead"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value


class _DataclassFields:
    """``HealthStatus.__dataclass_fields__``, built on first use.

    ``dataclasses.replace()``, ``fields()``, ``asdict()`` and ``is_dataclass()`` read this
    attribute: with it, a :class:`HealthStatus` is a frozen dataclass to them, while
    importing this module does not import :mod:`dataclasses` (and the :mod:`inspect` it
    pulls in, about 14 ms). The fields are those of a real frozen dataclass of the same
    shape, made once, so nothing here depends on how :mod:`dataclasses` works inside.
    """

    def __get__(self, instance: object, owner: type) -> dict[str, Any]:
        import dataclasses

        shape = dataclasses.make_dataclass(
            "HealthStatus",
            [
                ("verdict", "Verdict"),
                ("timeout", "float"),
                ("last_progress", "float | None", dataclasses.field(default=None)),
                ("age", "float | None", dataclasses.field(default=None)),
                ("reason", "str | None", dataclasses.field(default=None)),
                ("detail", "Mapping[str, object] | None", dataclasses.field(default=None)),
            ],
            frozen=True,
        )
        fields: dict[str, Any] = {field.name: field for field in dataclasses.fields(shape)}
        type.__setattr__(owner, "__dataclass_fields__", fields)  # once: a plain attribute now
        return fields


class HealthStatus:
    """The verdict of the liveness rule, with what it was based on. Immutable.

    A frozen value as a dataclass is: ``dataclasses.replace(status, reason=...)`` (and
    ``copy.replace`` on Python 3.13) make a changed copy, which is how a subclass's
    ``health_status()`` adjusts the verdict it serves:

    >>> import dataclasses
    >>> status = evaluate(1_700_000_000, timeout=60, now=1_700_000_030)
    >>> dataclasses.replace(status, detail={"phase": "running"}).detail
    {'phase': 'running'}

    Attributes:
        verdict: ``alive``, ``dead`` or ``unknown``.
        timeout: The allowed age, in seconds.
        last_progress: The last progress time, in epoch seconds, or ``None`` when unknown.
        age: Seconds since ``last_progress`` (0 when slightly in the future), or ``None``.
        reason: Why the verdict is ``unknown`` (a short phrase, never a traceback);
            ``None`` otherwise.
        detail: What a richer source adds (JSON-ready data, e.g. the agent's phase and
            each rank's age in the torch integration), or ``None``.
    """

    # A hand-written value class rather than a dataclass: importing dataclasses (and the
    # inspect module it pulls in) would add about 14 ms to every server's import, and the
    # worker bootstrap's; __dataclass_fields__ is made on first use instead.
    __slots__ = ("verdict", "timeout", "last_progress", "age", "reason", "detail")

    verdict: Verdict
    timeout: float
    last_progress: float | None
    age: float | None
    reason: str | None
    detail: Mapping[str, object] | None

    def __init__(
        self,
        verdict: Verdict,
        timeout: float,
        last_progress: float | None = None,
        age: float | None = None,
        reason: str | None = None,
        detail: Mapping[str, object] | None = None,
    ) -> None:
        values = (verdict, timeout, last_progress, age, reason, detail)
        for name, value in zip(self.__slots__, values, strict=True):
            object.__setattr__(self, name, value)

    if TYPE_CHECKING:
        __dataclass_fields__: ClassVar[dict[str, Any]]
    else:
        __dataclass_fields__ = _DataclassFields()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"HealthStatus is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"HealthStatus is immutable; cannot delete {name!r}")

    def _fields(self) -> tuple[object, ...]:
        return (self.verdict, self.timeout, self.last_progress, self.age, self.reason, self.detail)

    def __eq__(self, other: object) -> bool:
        if type(other) is not HealthStatus:
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields()[:5])  # detail may hold dicts; equal values share the rest

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{n}={v!r}" for n, v in zip(self.__slots__, self._fields(), strict=True)
        )
        return f"HealthStatus({fields})"

    def __replace__(self, **changes: Any) -> HealthStatus:
        """A copy with ``changes``: what ``copy.replace()`` (Python 3.13) calls.

        Raises:
            TypeError: A name in ``changes`` is not a field.
        """
        fields = dict(zip(self.__slots__, self._fields(), strict=True))
        unknown = sorted(set(changes) - set(fields))
        if unknown:
            raise TypeError(f"HealthStatus has no field {', '.join(map(repr, unknown))}")
        return HealthStatus(**{**fields, **changes})

    @property
    def alive(self) -> bool:
        """``True`` only for the ``alive`` verdict."""
        return self.verdict is Verdict.ALIVE

    @classmethod
    def unknown(cls, timeout: float, reason: str) -> HealthStatus:
        """An ``unknown`` verdict with the given reason."""
        return cls(Verdict.UNKNOWN, timeout, reason=reason)

    def with_detail(self, detail: Mapping[str, object] | None) -> HealthStatus:
        """The same verdict with ``detail`` attached."""
        return HealthStatus(
            self.verdict, self.timeout, self.last_progress, self.age, self.reason, detail
        )

    def to_dict(self) -> dict[str, object]:
        """JSON-ready data: status, last_progress, age, timeout, reason (and detail, if any)."""
        data: dict[str, object] = {
            "status": self.verdict.value,
            "last_progress": self.last_progress,
            "age": self.age,
            "timeout": self.timeout,
            "reason": self.reason,
        }
        if self.detail is not None:
            data["detail"] = dict(self.detail)
        return data


def evaluate(last_progress: object, timeout: float, now: float) -> HealthStatus:
    """Apply the liveness rule to a last progress time.

    Args:
        last_progress: What the alive callback returned: epoch seconds, int or float.
        timeout: Seconds of silence after which the agent is dead; finite and >= 0.
        now: The current time, in epoch seconds.

    Returns:
        The :class:`HealthStatus`.

    Raises:
        ValueError: ``timeout`` is negative or not finite.
        TypeError: ``timeout`` is not a real number.
    """
    limit = _check_timeout(timeout)
    if isinstance(last_progress, bool) or not isinstance(last_progress, numbers.Real):
        return HealthStatus.unknown(limit, f"callback returned {type(last_progress).__name__}")
    try:
        last = float(last_progress)
    except (OverflowError, ValueError):
        return HealthStatus.unknown(limit, "callback returned a number out of range")
    if not math.isfinite(last):
        return HealthStatus.unknown(limit, f"callback returned {last!r}")
    age = now - last
    if age < 0.0:
        if -age > MAX_FUTURE_SKEW:
            # A time in milliseconds (or finer) is 1000 times the clock or more; anything
            # less is more likely a clock that stepped back, or a wrong clock elsewhere.
            guess = "milliseconds, not seconds?" if last >= 100 * abs(now) else "a clock step?"
            return HealthStatus.unknown(
                limit, f"last progress is {-age:.3g}s ahead of the clock ({guess})"
            )
        age = 0.0
    verdict = Verdict.ALIVE if age <= limit else Verdict.DEAD
    return HealthStatus(verdict, limit, last_progress=last, age=age)


def check_liveness(
    alive_callback: Callable[[], object],
    timeout: float,
    clock: Callable[[], float] = time.time,
) -> HealthStatus:
    """Call ``alive_callback`` and apply the liveness rule to its answer.

    Args:
        alive_callback: Returns the last progress time in epoch seconds.
        timeout: Seconds of silence after which the agent is dead.
        clock: The current time in epoch seconds, read after the callback returns.

    Returns:
        The :class:`HealthStatus`; ``unknown`` naming the exception's type if the
        callback raised an ``Exception``. ``KeyboardInterrupt`` and ``SystemExit``
        propagate.
    """
    try:
        last_progress = alive_callback()
    except Exception as exc:
        return HealthStatus.unknown(_check_timeout(timeout), _raised(exc))
    return evaluate(last_progress, timeout, clock())


def _raised(exc: BaseException) -> str:
    """The reason for a callback that raised ``exc``: its type, and the file it names.

    Never the message, which may hold anything; but an ``OSError`` about a file names it,
    so that a heartbeat file's wrong path shows in every answer:

    >>> _raised(FileNotFoundError(2, "No such file or directory", "/run/helth/progress"))
    'callback raised FileNotFoundError for /run/helth/progress'
    >>> _raised(ValueError("secret"))
    'callback raised ValueError'
    """
    reason = f"callback raised {type(exc).__name__}"
    filename = exc.filename if isinstance(exc, OSError) else None
    if isinstance(filename, (str, bytes)) and filename:
        shown = filename if isinstance(filename, str) else filename.decode("utf-8", "replace")
        reason += f" for {shown}"
    return reason


def _check_timeout(timeout: object) -> float:
    return check_seconds("timeout", timeout)


def check_seconds(name: str, value: object, *, allow_zero: bool = True) -> float:
    """Validate a duration argument and return it as a float.

    Raises:
        TypeError: ``value`` is not a real number (``bool`` included).
        ValueError: ``value`` is negative, zero when not allowed, or not finite.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    seconds = float(value)
    if not (math.isfinite(seconds) and (seconds >= 0.0 if allow_zero else seconds > 0.0)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number of seconds {bound}, not {value!r}")
    return seconds
