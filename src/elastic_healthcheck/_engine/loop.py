"""The selector loop: I/O readiness, deadlines, a waker, and a supervisor around every step.

One thread runs :meth:`Loop.run`. Each turn (as CPython's
``Lib/asyncio/base_events.py::_run_once``): sleep in ``select()`` until a socket is ready,
a deadline passes or another thread wakes the loop; run the handlers of the ready
sockets, then the callbacks queued with :meth:`Loop.call_soon`, then the deadlines that
passed. No deadline, no timeout: an idle loop never wakes.

The loop supervises itself. A step that raises is logged with its traceback (once per
kind of failure; later ones are counted, and the count logged every
``REPEAT_INTERVAL``) and the loop goes on. Only when turns keep failing
(``MAX_FAILED_TURNS`` in a row: ``select()`` itself broken, say) does it give up:
:attr:`Loop.failed` turns True and :meth:`Loop.run` returns, so that the server can close
its listeners (probes are refused at once) instead of hanging.
"""

from __future__ import annotations

import logging
import math
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator

from ..logging import get_logger

__all__ = ["MAX_FAILED_TURNS", "REPEAT_INTERVAL", "Loop", "Timers", "safe_log"]

log = get_logger("elastic_healthcheck.server")  # the public name operators filter on

# Turns in a row that may fail before the loop gives up. A failing step is logged and
# skipped; a loop whose every turn fails (select() raising, a listener whose handler
# raises while it stays readable) would spin: 100 such turns take milliseconds.
MAX_FAILED_TURNS = 100

# Seconds between the log lines that count a repeating error. Its first occurrence is
# logged with its traceback; the next ones are only counted, so that a hook failing on
# every request cannot flood the log.
REPEAT_INTERVAL = 60.0

SERVER_ERROR = "Error in the health check server (%s); serving goes on"

Handler = Callable[[int], None]


def safe_log(
    level: int,
    msg: str,
    *args: object,
    exc_info: BaseException | None = None,
    logger: logging.Logger = log,
) -> None:
    """Log, and survive a logging handler that raises: the loop must not die of it."""
    try:
        logger.log(level, msg, *args, exc_info=exc_info)
    except Exception:  # nowhere left to report it
        pass


class _Seen:
    """One error's first step, and its repeats since its last log line."""

    __slots__ = ("what", "count", "since")

    def __init__(self, what: str, since: float) -> None:
        self.what, self.count, self.since = what, 0, since  # count: repeats not logged yet


class Repeats:
    """Errors seen, by message, type and where raised: the first is logged with its
    traceback, the next ones counted, and each count logged (without a traceback) at the
    first repeat ``REPEAT_INTERVAL`` after the last line, or by :meth:`flush`."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str, str, int], _Seen] = {}

    def report(self, exc: BaseException, what: str, message: str = SERVER_ERROR) -> None:
        """Log ``exc``, raised by ``what``; ``message`` has one ``%s``, for ``what``."""
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = (tb.tb_frame.f_code.co_filename, tb.tb_lineno) if tb is not None else ("", 0)
        key = (message, type(exc).__name__, *where)
        now = time.monotonic()
        seen = self._seen.get(key)
        if seen is None:
            self._seen[key] = _Seen(what, now)
            safe_log(logging.ERROR, message, what, exc_info=exc)
            return
        seen.count += 1
        if now - seen.since >= REPEAT_INTERVAL:
            self._log(key, seen, now)

    def flush(self) -> None:
        """Log the counts not logged yet."""
        now = time.monotonic()
        for key, seen in self._seen.items():
            if seen.count:
                self._log(key, seen, now)

    @staticmethod
    def _log(key: tuple[str, str, str, int], seen: _Seen, now: float) -> None:
        message, name, filename, line = key
        safe_log(
            logging.ERROR,
            message + "; %s at %s:%d again, %d more times in %.1fs",
            seen.what,
            name,
            filename,
            line,
            seen.count,
            now - seen.since,
        )
        seen.count, seen.since = 0, now


class Timers:
    """Deadlines by key, one insertion-ordered dict per duration.

    Entries of one duration are armed in time order, so the first entry of each dict is
    its earliest: arming and cancelling are O(1), finding the next deadline is O(number
    of distinct durations), a handful.
    """

    def __init__(self) -> None:
        self._by_duration: dict[float, dict[Hashable, tuple[float, Callable[[], None]]]] = {}
        self._where: dict[Hashable, dict[Hashable, tuple[float, Callable[[], None]]]] = {}

    def arm(self, key: Hashable, duration: float, callback: Callable[[], None]) -> None:
        """Call ``callback`` in ``duration`` seconds; replaces ``key``'s earlier deadline."""
        entries = self._where.pop(key, None)
        if entries is not None:
            del entries[key]
        entries = self._by_duration.get(duration)
        if entries is None:
            entries = self._by_duration[duration] = {}
        entries[key] = (time.monotonic() + duration, callback)
        self._where[key] = entries

    def cancel(self, key: Hashable) -> None:
        """Forget ``key``'s deadline, if any."""
        entries = self._where.pop(key, None)
        if entries is not None:
            del entries[key]

    def __contains__(self, key: Hashable) -> bool:
        return key in self._where

    def keys(self, duration: float) -> Iterator[Hashable]:
        """Keys armed for ``duration``, earliest first (do not arm or cancel meanwhile)."""
        return iter(self._by_duration.get(duration, ()))

    def next_deadline(self) -> float:
        """The earliest deadline (``time.monotonic()``), or infinity."""
        earliest = math.inf
        for entries in self._by_duration.values():
            for deadline, _callback in entries.values():
                earliest = min(earliest, deadline)
                break
        return earliest

    def pop_expired(self, now: float) -> list[Callable[[], None]]:
        """Remove the deadlines at or before ``now``; return their callbacks."""
        due: list[Callable[[], None]] = []
        for entries in self._by_duration.values():
            late = []
            for key, (deadline, callback) in entries.items():
                if deadline > now:
                    break
                late.append(key)
                due.append(callback)
            for key in late:
                del entries[key]
                del self._where[key]
        return due

    def clear(self) -> None:
        self._by_duration.clear()
        self._where.clear()


class Loop:
    """One thread's ``selectors`` loop, with a waker for other threads and deadlines."""

    def __init__(self) -> None:
        self.selector: selectors.BaseSelector | None = None
        self.timers = Timers()
        self.stopping = False
        self.failed = False
        self.repeats = Repeats()
        self.report = self.repeats.report
        self._ready: deque[Callable[[], None]] = deque()
        self._selecting = False  # asleep in select(): other threads must wake it
        self._waker_r: socket.socket | None = None
        self._waker_w: socket.socket | None = None

    def open(self, record: Callable[[socket.socket], socket.socket]) -> None:
        """Create the selector and the waker (a socketpair, as asyncio's self-pipe)."""
        self.selector = selectors.DefaultSelector()
        self._waker_r, self._waker_w = socket.socketpair()
        record(self._waker_r)
        record(self._waker_w)
        self._waker_r.setblocking(False)
        self._waker_w.setblocking(False)
        self.selector.register(self._waker_r, selectors.EVENT_READ, None)

    def close(self) -> None:
        """Close the selector and the waker, and log the error counts left. Idempotent."""
        self.repeats.flush()
        selector, self.selector = self.selector, None
        if selector is not None:
            selector.close()
        for sock in (self._waker_r, self._waker_w):
            if sock is not None:
                sock.close()

    # -- for the loop's own thread ------------------------------------------------------

    def register(self, sock: socket.socket, events: int, handler: Handler) -> None:
        assert self.selector is not None
        self.selector.register(sock, events, handler)

    def modify(self, sock: socket.socket, events: int, handler: Handler) -> None:
        assert self.selector is not None
        self.selector.modify(sock, events, handler)

    def unregister(self, sock: socket.socket) -> None:
        if self.selector is not None:
            try:
                self.selector.unregister(sock)
            except (KeyError, ValueError):
                pass  # not registered, or closed already

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the next turn. Safe from any thread."""
        self._ready.append(callback)
        if self._selecting:
            self.wake()

    def stop(self) -> None:
        """Have :meth:`run` return at the end of this turn. Safe from any thread."""
        self.stopping = True
        self.wake()

    def wake(self) -> None:
        waker = self._waker_w
        if waker is not None:
            try:
                waker.send(b"\0")
            except OSError:
                pass  # a full pipe already guarantees a wake-up; a closed one means stopped

    def run(self) -> None:
        """Serve until :meth:`stop`, or until turns keep failing (then :attr:`failed`)."""
        failed_turns = 0
        while not self.stopping:
            try:
                ok = self._run_once()
            except Exception as exc:
                self.report(exc, "loop turn")
                ok = False
            failed_turns = 0 if ok else failed_turns + 1
            if failed_turns >= MAX_FAILED_TURNS:
                self.failed = True
                safe_log(logging.CRITICAL, "Health check server loop keeps failing; giving up")
                return

    def _run_once(self) -> bool:
        selector = self.selector
        assert selector is not None
        ok = True
        deadline = self.timers.next_deadline()
        timeout = None if deadline == math.inf else max(0.0, deadline - time.monotonic())
        # Another thread queues, then wakes us only while we select: set the flag, then
        # look at the queue, so that one of the two always sees the other.
        self._selecting = True
        if self._ready:
            timeout = 0
        try:
            ready = selector.select(timeout)
        finally:
            self._selecting = False
        for key, events in ready:
            if self.stopping:
                return ok  # stop() from a step of this turn: the rest is for nobody
            handler = key.data
            if handler is None:
                self._drain_waker()
                continue
            try:
                handler(events)
            except Exception as exc:
                self.report(exc, "I/O handler")
                ok = False
        for _ in range(len(self._ready)):
            if self.stopping:
                return ok
            callback = self._ready.popleft()
            try:
                callback()
            except Exception as exc:
                self.report(exc, "callback")
                ok = False
        for callback in self.timers.pop_expired(time.monotonic()):
            try:
                callback()
            except Exception as exc:
                self.report(exc, "deadline")
                ok = False
        return ok

    def _drain_waker(self) -> None:
        assert self._waker_r is not None
        try:
            self._waker_r.recv(4096)  # anything left makes select() return again
        except BlockingIOError:
            pass
