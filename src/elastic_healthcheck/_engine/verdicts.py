"""The verdict service on the I/O thread: one callback call shared by every probe that waits.

A protocol asks for a verdict (:meth:`Verdicts.request_status`); it gets a recent one at
once, or waits for the evaluator's next answer, at most ``callback_timeout``, after which
it gets ``unknown``. Probes that arrive while the callback runs, or within
``VERDICT_REUSE`` of its answer, share that answer. Debug texts travel the same way.

Whatever a user's code returns is checked on the evaluator thread (:func:`checked`): the
loop only ever sees a well-formed :class:`HealthStatus` that renders as JSON.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable

from ..logging import get_logger
from ..status import HealthStatus, Verdict
from .evaluator import Evaluator
from .loop import Loop, safe_log
from .protocol import BaseProtocol
from .transport import SocketTransport

log = get_logger("elastic_healthcheck.server")  # the public name operators filter on

__all__ = ["VERDICT_REUSE", "Verdicts", "checked"]

# Seconds a verdict from the callback may be served again without calling it anew, so
# that probes arriving together share one call and skip two thread switches each. The
# callback's answer has whole-second resolution in torch (int(time.time())); 10 ms of
# staleness changes no verdict that matters, while a hung callback is still noticed on
# the first probe after the window.
VERDICT_REUSE = 0.01

_RECHECK = "recheck"
_TEXT = "text"
_warned: set[str] = set()


def checked(status: object, timeout: float) -> HealthStatus:
    """``status`` if it is a well-formed verdict, else ``unknown`` saying what was wrong.

    A ``detail`` that does not render as JSON is dropped; the verdict stands.
    """
    problem = _problem(status)
    if problem is None:
        assert isinstance(status, HealthStatus)
        try:
            json.dumps(status.to_dict(), allow_nan=False)
            return status
        except (TypeError, ValueError, RecursionError):
            if status.detail is None:
                problem = "health_status() returned a verdict that is not JSON-ready"
            else:
                _warn_once("Health check detail is not JSON-ready; it is left out")
                return checked(status.with_detail(None), timeout)
    _warn_once(f"Health check verdict is invalid: {problem}")
    return HealthStatus.unknown(float(timeout), problem)


def _problem(status: object) -> str | None:
    if not isinstance(status, HealthStatus):
        return f"health_status() returned {type(status).__name__}, not HealthStatus"
    verdict: object = status.verdict  # typed, but user code may put anything there
    if not isinstance(verdict, Verdict):
        return f"health_status() returned a verdict of type {type(verdict).__name__}"
    for name in ("timeout", "last_progress", "age"):
        value = getattr(status, name)
        if name != "timeout" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"health_status() returned a {name} of type {type(value).__name__}"
        if not math.isfinite(value):
            return f"health_status() returned a {name} that is not finite"
    reason: object = status.reason
    if reason is not None and not isinstance(reason, str):
        return f"health_status() returned a reason of type {type(reason).__name__}"
    return None


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        safe_log(logging.WARNING, "%s", message, logger=log)


class Verdicts:
    """Verdicts and debug texts for protocols: requested, shared, delivered, timed out.

    Args:
        loop: The I/O loop (deadlines; every method runs on its thread).
        evaluator: Runs the user's code.
        evaluate: The verdict, on the evaluator thread; never raises (see :func:`checked`).
        text: ``debug_text(name)``, on the evaluator thread.
        observe: Sees every verdict from the callback once (logs transitions).
        timeout: The server's timeout in seconds (for ``unknown`` verdicts).
        callback_timeout: Seconds a request waits for the evaluator.
        probes: Probes answered by verdict, counted here (the server's, kept across
            restarts, as Prometheus counters must).
    """

    def __init__(
        self,
        loop: Loop,
        evaluator: Evaluator,
        evaluate: Callable[[], HealthStatus],
        text: Callable[[str], object],
        observe: Callable[[HealthStatus], None],
        timeout: float,
        callback_timeout: float,
        probes: dict[Verdict, int],
    ) -> None:
        self._loop = loop
        self._evaluator = evaluator
        self._evaluate = evaluate
        self._text = text
        self._observe = observe
        self._callback_timeout = callback_timeout
        self._late = HealthStatus.unknown(
            float(timeout), f"callback did not return within {callback_timeout:g}s"
        )
        self._waiting: dict[BaseProtocol, None] = {}
        self._texts: dict[BaseProtocol, None] = {}
        self._evaluating = False
        self._asked_at = 0.0  # when the call under way was asked for
        self._recent: HealthStatus | None = None  # the callback's last verdict...
        self._recent_at = 0.0  # ...and when it arrived (time.monotonic())
        self.probes = probes

    # -- Services, for protocols ------------------------------------------------------------

    def request_status(self, protocol: BaseProtocol) -> None:
        recent = self._recent
        if recent is not None and time.monotonic() - self._recent_at < VERDICT_REUSE:
            protocol.status_received(recent)
            return
        self._waiting[protocol] = None
        self._loop.timers.arm(protocol, self._callback_timeout, lambda: self._late_for(protocol))
        self.request_evaluation()

    def request_text(self, protocol: BaseProtocol, name: str) -> None:
        self._texts[protocol] = None
        key = (_TEXT, protocol)
        self._loop.timers.arm(key, self._callback_timeout, lambda: self._text_late(protocol))
        self._evaluator.submit(lambda: self._text(name), lambda r: self._text_done(protocol, r))

    def count_probe(self, status: HealthStatus) -> None:
        self.probes[status.verdict] += 1

    # -- for the server ------------------------------------------------------------------

    def request_evaluation(self) -> None:
        """Have the callback called, unless a call is under way (its answer will do)."""
        if not self._evaluating:
            self._evaluating = True
            self._asked_at = time.monotonic()
            self._evaluator.submit(self._evaluate, self._done)

    def recheck_after(self, delay: float | None) -> None:
        """Ask for a verdict in ``delay`` seconds though nobody asks; ``None`` cancels.

        One recheck is pending at a time. One that comes due while the callback still
        runs waits for that call's answer, so a hung callback is called no more often.
        """
        if delay is None:
            self._loop.timers.cancel(_RECHECK)
        else:
            self._loop.timers.arm(_RECHECK, delay, self._recheck)

    def _recheck(self) -> None:
        if self._evaluating and time.monotonic() - self._asked_at > self._callback_timeout:
            self._observe_safely(self._late)  # a hung callback: unknown, as a probe would hear
        else:
            self.request_evaluation()

    def _observe_safely(self, status: HealthStatus) -> None:
        try:
            self._observe(status)
        except Exception as exc:
            self._loop.report(exc, "_observe")

    def forget(self, protocol: BaseProtocol) -> None:
        """``protocol``'s connection is closed: it waits for nothing any more."""
        if self._waiting.pop(protocol, 0) is None:
            self._loop.timers.cancel(protocol)
        if self._texts.pop(protocol, 0) is None:
            self._loop.timers.cancel((_TEXT, protocol))

    # -- results ---------------------------------------------------------------------------

    def _done(self, result: object) -> None:
        self._evaluating = False
        status = result if isinstance(result, HealthStatus) else self._late
        self._recent, self._recent_at = status, time.monotonic()
        self._observe_safely(status)
        waiting, self._waiting = self._waiting, {}
        for protocol in waiting:
            self._loop.timers.cancel(protocol)
            self._deliver(protocol, protocol.status_received, status)

    def _late_for(self, protocol: BaseProtocol) -> None:
        if self._waiting.pop(protocol, 0) is None:
            self._observe_safely(self._late)
            self._deliver(protocol, protocol.status_received, self._late)

    def _text_done(self, protocol: BaseProtocol, result: object) -> None:
        if self._texts.pop(protocol, 0) is not None:
            return  # answered already (late), or closed
        self._loop.timers.cancel((_TEXT, protocol))
        if result is None or isinstance(result, str):
            self._deliver(protocol, protocol.text_received, result, None)
        elif isinstance(result, BaseException):
            error = f"debug_text() raised {type(result).__name__}"
            self._deliver(protocol, protocol.text_received, None, error)
        else:
            error = f"debug_text() returned {type(result).__name__}, not str"
            self._deliver(protocol, protocol.text_received, None, error)

    def _text_late(self, protocol: BaseProtocol) -> None:
        if self._texts.pop(protocol, 0) is None:
            error = f"debug_text() did not return within {self._callback_timeout:g}s"
            self._deliver(protocol, protocol.text_received, None, error)

    @staticmethod
    def _deliver(protocol: BaseProtocol, method: Callable[..., None], *args: object) -> None:
        transport = protocol.transport
        assert isinstance(transport, SocketTransport)
        if not transport.closed:
            transport.step(method, *args)
