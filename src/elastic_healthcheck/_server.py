"""The engine under every real server: one I/O thread, one callback thread, no policy.

A server built on :class:`SocketHealthCheckServer` binds in the caller's thread, then runs
a ``selectors`` loop in one named daemon thread. The loop owns every socket; nothing else
touches them while it runs. The alive callback runs on a second thread, the evaluator, so
a callback that hangs never stalls I/O: a connection that waits for a verdict longer than
``callback_timeout`` gets ``unknown``, and the hung call keeps its one thread (no pile-up).

Probes that arrive while the callback runs, or within ``VERDICT_REUSE`` (10 ms) of its
answer, share that answer. The loop sleeps in
``select()`` with no timeout unless a deadline is pending, so an idle server never wakes.

Subclasses speak a protocol through four hooks: :meth:`_on_connect`, :meth:`_on_input`,
:meth:`_on_status` and (optionally) :meth:`_observe`; :meth:`_on_start` runs once on the
I/O thread before the first turn of the loop.

A protocol may also close its port while the verdict is bad, for probers that only look
at whether a connection is accepted: :meth:`_pause_listening` closes the listening
sockets (the port is remembered), :meth:`_resume_listening` binds the same addresses
again. While the port is closed no client can ask for a verdict, so the protocol asks
for one itself with :meth:`_recheck_after`: the only deadline not tied to a connection,
armed only while the protocol needs it, so an idle server that listens still never wakes.
"""

from __future__ import annotations

import errno
import math
import os
import queue
import selectors
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable

from .health_check_server import HealthCheckServer
from .logging import get_logger
from .status import HealthStatus, Verdict, check_seconds

__all__ = ["SocketHealthCheckServer"]

log = get_logger(__name__)

# Limits, each with its reason.

# Seconds a client has to send a complete request, from connect or from the previous
# response. Not extended by partial data, so a client trickling a byte a second cannot
# hold a connection longer (nginx client_header_timeout defaults to 60 s; a prober sends
# its request in one packet, so a few seconds is plenty).
DEFAULT_CLIENT_TIMEOUT = 5.0

# Seconds a probe waits for the alive callback: well under kubelet's default 1 s probe
# timeout (timeoutSeconds), so the prober hears "unknown" instead of timing out.
DEFAULT_CALLBACK_TIMEOUT = 0.5

# Seconds a verdict from the callback may be served again without calling it anew, so
# that probes arriving together share one call and skip two thread switches each. The
# callback's answer has whole-second resolution in torch (int(time.time())); 10 ms of
# staleness changes no verdict that matters, while a hung callback is still noticed on
# the first probe after the window.
VERDICT_REUSE = 0.01

# Open client connections at most. Beyond it the connection idle the longest is closed to
# make room, so a burst of idle clients can never lock a prober out.
DEFAULT_MAX_CONNECTIONS = 1024

# listen() backlog: deep enough for a burst of new connections per probe; the kernel
# clamps it to net.core.somaxconn.
LISTEN_BACKLOG = 1024

# Seconds to keep reading (and discarding) after an error response before closing, so
# that unread input does not turn our close into a RST that destroys the response
# (RFC 9112 section 9.6, "tear-down").
LINGER_TIMEOUT = 2.0

# Seconds stop() waits for the I/O thread; it exits within a loop turn (microseconds).
JOIN_TIMEOUT = 5.0

# Accepts per wake-up, so a flood of connections cannot starve the ones already open.
ACCEPTS_PER_TURN = 64

# Bytes read from a client ahead of its answers (pipelined requests not parsed yet). A
# prober sends one request of ~150 bytes. At this mark we stop reading that client until
# half of it is answered, and TCP flow control holds the rest on the client's side:
# bounded memory per connection, and nothing lost.
MAX_BUFFERED_INPUT = 64 * 1024

# Pipelined requests parsed per turn of the loop, over all connections, so that one
# client's backlog cannot starve the others.
PIPELINED_PER_TURN = 64

# Seconds to stop accepting after accept() fails for want of resources (EMFILE, ...).
ACCEPT_PAUSE = 0.1

RECV_SIZE = 65536

# Connection states.
READING, WAITING, WRITING, LINGERING = "reading", "waiting", "writing", "lingering"

_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

_running: weakref.WeakSet[SocketHealthCheckServer] = weakref.WeakSet()


def _close_in_forked_child() -> None:
    """A forked child must not keep our sockets: a restart in the parent needs the port."""
    for server in list(_running):
        server._forget_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_forked_child)


class Connection:
    """One client connection and what the loop knows about it."""

    __slots__ = (
        "sock",
        "inbuf",
        "outbuf",
        "state",
        "deadline",
        "timer",
        "request",
        "keep_alive",
        "linger",
        "discard_input",
        "throttled",
    )

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = b""
        self.outbuf = b""
        self.state = READING
        self.deadline = 0.0
        self.timer: dict[Connection, float] | None = None
        # What the protocol asked for while WAITING; opaque to the engine.
        self.request: object = None
        self.keep_alive = False
        # Close gracefully (half-close, drain, then close) rather than at once: set when
        # the client may have sent bytes we will not read.
        self.linger = False
        # The protocol reads nothing: bytes are dropped as they arrive (and set `linger`),
        # so nothing a client sends is buffered; and an end of input while WAITING is a
        # half-close, not a hang-up: the client still gets its answer.
        self.discard_input = False
        # Not read from (unregistered) until its buffered input is answered.
        self.throttled = False


class SocketHealthCheckServer(HealthCheckServer):
    """A :class:`HealthCheckServer` that listens on a real socket.

    Args:
        alive_callback: Returns the last progress time in epoch seconds.
        port: TCP port; 0 binds an ephemeral port, readable as :attr:`port` after
            :meth:`start`.
        timeout: Seconds of silence after which the agent is dead.
        host: Address to listen on. ``None`` (the default) listens on every interface,
            IPv6 and IPv4 together where the system allows. A name such as ``localhost``
            listens on every address it resolves to.
        callback_timeout: Seconds a probe waits for the alive callback before it
            answers ``unknown``.
        client_timeout: Seconds a client has to send a complete request.
        max_connections: Open client connections at most; the longest idle is closed
            to make room for a new one.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An argument is out of range.
    """

    _kind = "socket"

    def __init__(
        self,
        alive_callback: Callable[[], int],
        port: int,
        timeout: int,
        *,
        host: str | None = None,
        callback_timeout: float = DEFAULT_CALLBACK_TIMEOUT,
        client_timeout: float = DEFAULT_CLIENT_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        if not callable(alive_callback):
            raise TypeError(f"alive_callback must be callable, not {type(alive_callback).__name__}")
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"port must be an int, not {type(port).__name__}")
        check_seconds("timeout", timeout)
        check_seconds("callback_timeout", callback_timeout, allow_zero=False)
        check_seconds("client_timeout", client_timeout, allow_zero=False)
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise TypeError(f"max_connections must be an int, not {type(max_connections).__name__}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        if host is not None and not isinstance(host, str):
            raise TypeError(f"host must be a str or None, not {type(host).__name__}")
        super().__init__(alive_callback, port, timeout)
        self._host = host
        self._callback_timeout = float(callback_timeout)
        self._client_timeout = float(client_timeout)
        self._max_connections = max_connections

        # Guards start() and stop() against each other; re-entrant so that a signal
        # handler calling stop() inside start() on the same thread cannot deadlock.
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._evaluator: _Evaluator | None = None
        self._listeners: list[socket.socket] = []
        self._waker_r: socket.socket | None = None
        self._waker_w: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._stopping = False
        self._selecting = False  # the I/O thread sleeps in select()
        self._address: tuple[str, int] | None = None
        self._announced: str | None = None

        # Loop state, owned by the I/O thread while it runs.
        self._connections: dict[int, Connection] = {}
        self._timers: dict[float, dict[Connection, float]] = {}
        self._waiting: list[Connection] = []
        self._pipelined: deque[Connection] = deque()  # READING, with input left to parse
        self._evaluating = False
        self._recent: HealthStatus | None = None  # the callback's last verdict...
        self._recent_at = 0.0  # ...and when it arrived (time.monotonic())
        self._accepting_at: float | None = None  # set while accepting is paused
        # While listening is paused: what to bind again, as (family, address, dualstack).
        self._unbound: list[tuple[int, tuple[object, ...], bool]] | None = None
        self._rebind_failing = False  # a re-bind failed; logged once per streak
        self._recheck_at: float | None = None  # when to ask for a verdict unprompted
        self._last_verdict: Verdict | None = None
        self._probes: dict[Verdict, int] = dict.fromkeys(Verdict, 0)

    # -- public surface ------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address listened on (the first one, if several): e.g. ``::``, ``127.0.0.1``."""
        if self._address is not None:
            return self._address[0]
        return self._host if self._host is not None else "::"

    @property
    def port(self) -> int:
        """The bound port after :meth:`start` (useful with ``port=0``), else the one asked for."""
        return self._address[1] if self._address is not None else self._port

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Every (host, port) listened on; empty when not started or not listening."""
        addresses = []
        for sock in self._listeners:
            try:
                addresses.append(_host_port(sock.getsockname()))
            except OSError:
                pass  # closed by the I/O thread a moment ago (listening paused)
        return addresses

    @property
    def is_running(self) -> bool:
        """``True`` between a successful :meth:`start` and :meth:`stop`."""
        return self._thread is not None

    def start(self) -> None:
        """Listen on the port and serve from a background thread.

        Returns once the socket is listening. Calling it again while running does nothing.

        Raises:
            OSError: The address cannot be bound; the message names host and port and
                the errno is kept (``EADDRINUSE``, ``EACCES``, ``EADDRNOTAVAIL``, or
                ``EINVAL`` for a port outside 0-65535).
        """
        with self._lock:
            if self._thread is not None:
                return
            listeners = _bind(self._host, self._port)
            try:
                self._start_loop(listeners)
            except BaseException:
                self._close_sockets(listeners)
                raise
            _running.add(self)
            announced = self._announced
        log.info("Serving %s health checks on %s", self._kind, announced)

    def stop(self) -> None:
        """Stop serving and free the port. Idempotent, and safe before :meth:`start`.

        Closes the listener and every client connection and joins the I/O thread. If an
        exception (a signal handler's, say) interrupts it, calling it again finishes the
        job.
        """
        with self._lock:
            thread = self._thread
            if thread is not None:
                self._stopping = True
                self._wake()
                thread.join(JOIN_TIMEOUT)
                if thread.is_alive():  # pragma: no cover - the loop exits within a turn
                    log.error("Health check server thread did not stop within %ss", JOIN_TIMEOUT)
                self._thread = None
            evaluator = self._evaluator
            if evaluator is not None:
                evaluator.close()
                self._evaluator = None
            self._close_sockets(self._listeners)
            self._close_sockets([self._waker_r, self._waker_w])
            self._listeners, self._waker_r, self._waker_w = [], None, None
            _running.discard(self)
            announced, self._announced = self._announced, None
        if announced is not None:
            log.info("Stopped %s health check server on %s", self._kind, announced)

    def __enter__(self) -> SocketHealthCheckServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"serving on {self._describe()}" if self.is_running else "stopped"
        return f"<{type(self).__name__} {state}>"

    # -- hooks for protocols ---------------------------------------------------------

    def _on_start(self) -> None:
        """The loop is about to run, on the I/O thread. Default: nothing."""

    def _on_connect(self, conn: Connection) -> None:
        """A client connected. Default: wait for a request within client_timeout."""
        self._arm(conn, self._client_timeout)

    def _on_input(self, conn: Connection) -> None:
        """New bytes are in ``conn.inbuf`` while the connection is READING."""
        raise NotImplementedError

    def _on_status(self, conn: Connection, status: HealthStatus) -> None:
        """The verdict a WAITING connection asked for is here: respond."""
        raise NotImplementedError

    def _on_timeout(self, conn: Connection) -> None:
        """A deadline passed: the client was silent, slow to read, or done lingering."""
        self._close(conn)

    def _observe(self, status: HealthStatus) -> None:
        """Every verdict served passes here once: log each change of verdict once."""
        verdict, previous = status.verdict, self._last_verdict
        if verdict is previous:
            return
        self._last_verdict = verdict
        if verdict is Verdict.ALIVE:
            if previous is not None:
                log.info("Health check: alive again, last progress %.1fs ago", status.age)
        elif verdict is Verdict.DEAD:
            log.warning(
                "Health check: dead, last progress %.1fs ago (timeout %gs)",
                status.age,
                status.timeout,
            )
        else:
            log.warning("Health check: unknown, %s", status.reason)

    # -- services for protocols -------------------------------------------------------

    def _await_status(self, conn: Connection, request: object) -> None:
        """Answer ``conn`` with a fresh verdict: a recent one, or the next from the callback.

        A connection parked for the callback waits at most callback_timeout.
        """
        recent = self._recent
        if recent is not None and time.monotonic() - self._recent_at < VERDICT_REUSE:
            conn.request = request
            self._on_status(conn, recent)
            return
        conn.state = WAITING
        conn.request = request
        self._arm(conn, self._callback_timeout)
        self._waiting.append(conn)
        self._request_evaluation()

    def _request_evaluation(self) -> None:
        """Have the callback called, unless a call is already under way (its answer will do)."""
        if not self._evaluating:
            self._evaluating = True
            assert self._evaluator is not None
            self._evaluator.request()

    def _recheck_after(self, delay: float | None) -> None:
        """Ask for a verdict in ``delay`` seconds though no client asks; ``None`` cancels.

        The verdict reaches :meth:`_observe` like any other. One recheck is pending at a
        time; a new call replaces it. A recheck that comes due while the callback is
        still running waits for that call's answer instead of queueing another, so a hung
        callback is called no more often and the loop sleeps until it returns.
        """
        self._recheck_at = None if delay is None else time.monotonic() + delay

    @property
    def _listening(self) -> bool:
        """``False`` while :meth:`_pause_listening` has the port closed."""
        return self._unbound is None

    def _pause_listening(self) -> None:
        """Close the listening sockets, so that new connections are refused.

        Open connections are served as usual. The bound addresses are remembered:
        :attr:`port` keeps its value and :meth:`_resume_listening` binds them again.
        Not the EMFILE back-off (:meth:`_pause_accepting`), which keeps the sockets open.
        Call it on the I/O thread; it does nothing if listening is paused already.
        """
        if self._unbound is not None:
            return
        unbound: list[tuple[int, tuple[object, ...], bool]] = []
        for listener in self._listeners:
            dualstack = False
            if listener.family == socket.AF_INET6:
                v6only = listener.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
                dualstack = v6only == 0
            unbound.append((listener.family, tuple(listener.getsockname()), dualstack))
        described = self._describe()
        if self._accepting_at is None and self._selector is not None:
            for listener in self._listeners:
                self._selector.unregister(listener)
        self._accepting_at = None
        # Paused before closed, so that whoever sees a refusal also sees the pause.
        self._unbound = unbound
        listeners, self._listeners = self._listeners, []
        self._close_sockets(listeners)
        log.info("Stopped listening for %s health checks on %s", self._kind, described)

    def _resume_listening(self) -> bool:
        """Bind again what :meth:`_pause_listening` closed, on the same port(s).

        Returns:
            ``True`` if listening (again, or still); ``False`` if an address cannot be
            bound (another socket took the port, say). A failure is logged once as an
            error naming host and port, until a later call succeeds; the caller retries.
        """
        unbound = self._unbound
        if unbound is None:
            return True
        listeners: list[socket.socket] = []
        try:
            for family, address, dualstack in unbound:
                try:
                    listeners.append(_listen(address, family, dualstack))
                except OSError as exc:
                    raise _bind_error(exc, str(address[0]), _as_int(address[1])) from None
            assert self._selector is not None
            for listener in listeners:
                self._selector.register(listener, selectors.EVENT_READ, None)
        except Exception as exc:  # never let a failed re-bind end the loop
            if self._selector is not None:
                for listener in listeners:
                    try:
                        self._selector.unregister(listener)
                    except (KeyError, ValueError):
                        pass
            self._close_sockets(listeners)
            if not self._rebind_failing:
                self._rebind_failing = True
                log.error(
                    "Cannot listen again for %s health checks: %s",
                    self._kind,
                    exc.strerror if isinstance(exc, OSError) and exc.strerror else exc,
                    exc_info=not isinstance(exc, OSError),
                )
            return False
        self._listeners = listeners
        self._unbound = None
        self._rebind_failing = False
        log.info("Listening again for %s health checks on %s", self._kind, self._describe())
        return True

    def _count_probe(self, verdict: Verdict) -> None:
        self._probes[verdict] += 1

    def _send(self, conn: Connection, data: bytes, keep_alive: bool) -> None:
        """Send ``data``; then read the next request, or close."""
        conn.keep_alive = keep_alive
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close(conn)
            return
        if sent < len(data):
            conn.outbuf = data[sent:]
            conn.state = WRITING
            self._arm(conn, self._client_timeout)
            self._modify(conn, selectors.EVENT_WRITE)
            return
        self._sent(conn)

    def _finish(self, conn: Connection) -> None:
        """Close after a response, without losing it to a RST from unread input."""
        if conn.inbuf or conn.linger:
            self._linger(conn)
        else:
            self._close(conn)

    def _linger(self, conn: Connection) -> None:
        conn.state = LINGERING
        conn.inbuf = b""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        self._arm(conn, LINGER_TIMEOUT)

    # -- the loop ----------------------------------------------------------------------

    def _start_loop(self, listeners: list[socket.socket]) -> None:
        self._stopping = False
        self._connections.clear()
        self._timers.clear()
        self._waiting.clear()
        self._pipelined.clear()
        self._evaluating = False
        self._recent = None
        self._accepting_at = None
        self._unbound = None
        self._rebind_failing = False
        self._recheck_at = None
        self._listeners = listeners
        self._address = _host_port(listeners[0].getsockname())
        self._waker_r, self._waker_w = socket.socketpair()
        self._waker_r.setblocking(False)
        self._waker_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        for listener in listeners:
            self._selector.register(listener, selectors.EVENT_READ, None)
        self._selector.register(self._waker_r, selectors.EVENT_READ, None)
        self._evaluator = _Evaluator(self._evaluate, self._wake_if_selecting)
        self._evaluator.start(f"elastic-healthcheck-callback:{self.port}")
        # Described before the loop runs: from then on it owns the listeners.
        self._announced = self._describe()
        self._thread = threading.Thread(
            target=self._run, name=f"elastic-healthcheck-{self._kind}:{self.port}", daemon=True
        )
        self._thread.start()

    def _describe(self) -> str:
        return ", ".join(_display(host, port) for host, port in self.addresses) or _display(
            self.host, self.port
        )

    def _wake_if_selecting(self) -> None:
        if self._selecting:
            self._wake()

    def _wake(self) -> None:
        waker = self._waker_w
        if waker is None:
            return
        try:
            waker.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a full pipe already guarantees a wake-up; a closed one means stopped

    def _evaluate(self) -> HealthStatus:
        """Run on the evaluator thread: the verdict, whatever the callback does."""
        try:
            return self.health_status()
        except BaseException as exc:  # the loop must get an answer, whatever happens
            log.debug("health_status() raised", exc_info=True)
            return HealthStatus.unknown(
                float(self._timeout), f"callback raised {type(exc).__name__}"
            )

    def _run(self) -> None:
        selector = self._selector
        assert selector is not None
        waker = self._waker_r
        try:
            self._on_start()
            while not self._stopping:
                timeout = self._next_timeout()
                # The evaluator writes to the waker only while we sleep in select(): set
                # the flag, then look for a result, so one of the two always sees the other.
                self._selecting = True
                if self._evaluator is not None and self._evaluator.has_result:
                    timeout = 0
                events_ready = selector.select(timeout)
                self._selecting = False
                for key, events in events_ready:
                    sock = key.fileobj
                    if sock is waker:
                        self._drain_waker()
                    elif key.data is None:  # a listener (the only other key without one)
                        if sock in self._listeners:  # not closed earlier in this turn
                            self._accept(sock)
                    else:
                        self._dispatch(key.data, events)
                self._take_result()
                self._parse_pipelined()
                self._expire(time.monotonic())
        except BaseException:  # pragma: no cover - a bug; keep the evidence
            log.exception("Health check server loop crashed")
            raise
        finally:
            for conn in list(self._connections.values()):
                self._close(conn)
            selector.close()
            self._selector = None

    def _dispatch(self, conn: Connection, events: int) -> None:
        if events & selectors.EVENT_WRITE and conn.state == WRITING:
            self._guarded(self._flush, conn)
        elif events & selectors.EVENT_READ:
            self._guarded(self._read, conn)

    def _guarded(self, step: Callable[[Connection], None], conn: Connection) -> None:
        """Run one step for one client; whatever goes wrong, only that client pays."""
        try:
            step(conn)
        except Exception:
            # Nothing a client sends may kill the loop: drop that client, keep serving.
            log.exception("Error serving a health check client; closing its connection")
            self._close(conn)

    def _parse_pipelined(self) -> None:
        for _ in range(min(len(self._pipelined), PIPELINED_PER_TURN)):
            conn = self._pipelined.popleft()
            if conn.state == READING and conn.inbuf:
                self._guarded(self._on_input, conn)

    def _drain_waker(self) -> None:
        assert self._waker_r is not None
        try:
            self._waker_r.recv(4096)  # anything left makes select() return again
        except BlockingIOError:
            pass

    def _take_result(self) -> None:
        evaluator = self._evaluator
        if evaluator is not None:
            status = evaluator.take()
            if status is not None:
                self._evaluating = False
                self._recent, self._recent_at = status, time.monotonic()
                self._deliver(status, lambda conn: True)

    def _deliver(self, status: HealthStatus, wanted: Callable[[Connection], bool]) -> None:
        self._observe(status)
        keep: list[Connection] = []
        for conn in self._waiting:
            if conn.state != WAITING:
                continue
            if wanted(conn):
                self._guarded(lambda c: self._on_status(c, status), conn)
            else:
                keep.append(conn)
        self._waiting = keep

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS and self._shed():
                    continue
                # Out of descriptors with nobody to shed, or worse: stop accepting for a
                # moment instead of spinning on a listener that stays readable.
                log.warning("Cannot accept health check connections for %ss: %s", ACCEPT_PAUSE, exc)
                self._pause_accepting()
                return
            if len(self._connections) >= self._max_connections:
                self._shed()
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # not TCP (tests may use other families); Nagle only costs latency
            conn = Connection(sock)
            self._connections[sock.fileno()] = conn
            assert self._selector is not None
            self._selector.register(sock, selectors.EVENT_READ, conn)
            self._guarded(self._on_connect, conn)
            if conn.state == READING:
                # Probers send the request with the handshake's ACK: read it now and
                # save a trip through select().
                self._guarded(self._read, conn)

    def _pause_accepting(self) -> None:
        assert self._selector is not None
        for listener in self._listeners:
            self._selector.unregister(listener)
        self._accepting_at = time.monotonic() + ACCEPT_PAUSE

    def _resume_accepting(self) -> None:
        assert self._selector is not None
        for listener in self._listeners:
            self._selector.register(listener, selectors.EVENT_READ, None)
        self._accepting_at = None

    def _shed(self) -> bool:
        """Close the connection idle the longest (waiting on a client's request)."""
        timer = self._timers.get(self._client_timeout)
        if timer:
            for conn in timer:
                if conn.state == READING:
                    self._close(conn)
                    return True
        for timer in self._timers.values():
            for conn in timer:
                self._close(conn)
                return True
        return False

    def _read(self, conn: Connection) -> None:
        room = MAX_BUFFERED_INPUT - len(conn.inbuf)
        if room <= 0 and not conn.discard_input and conn.state != LINGERING:
            assert self._selector is not None
            self._selector.unregister(conn.sock)  # _sent() resumes it
            conn.throttled = True
            return
        try:
            data = conn.sock.recv(RECV_SIZE if room <= 0 else min(RECV_SIZE, room))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            if conn.discard_input and conn.state == WAITING:
                # A half-close (ncat does one at the end of its input): the client still
                # wants the answer. Everything it sent is read, so no RST can follow.
                conn.linger = False
                assert self._selector is not None
                self._selector.unregister(conn.sock)
                return
            self._close(conn)
            return
        if conn.state == LINGERING:
            return
        if conn.discard_input:
            conn.linger = True  # unread input would turn our close into a RST
            return
        conn.inbuf += data
        if conn.state == READING:
            self._on_input(conn)

    def _flush(self, conn: Connection) -> None:
        try:
            sent = conn.sock.send(conn.outbuf)
        except BlockingIOError:
            return
        except OSError:
            self._close(conn)
            return
        conn.outbuf = conn.outbuf[sent:]
        if not conn.outbuf:
            self._modify(conn, selectors.EVENT_READ)
            self._sent(conn)

    def _sent(self, conn: Connection) -> None:
        if not conn.keep_alive:
            self._finish(conn)
            return
        conn.state = READING
        conn.request = None
        self._arm(conn, self._client_timeout)
        if conn.throttled and len(conn.inbuf) <= MAX_BUFFERED_INPUT // 2:
            conn.throttled = False
            self._modify(conn, selectors.EVENT_READ)
        if conn.inbuf:
            # A pipelined request is already here. Parse it from the loop, not from
            # here: answering it may end up here again, and a long pipeline must not
            # become deep recursion.
            self._pipelined.append(conn)

    def _modify(self, conn: Connection, events: int) -> None:
        assert self._selector is not None
        try:
            self._selector.modify(conn.sock, events, conn)
        except KeyError:  # unregistered at a half-close (see _read)
            self._selector.register(conn.sock, events, conn)

    def _close(self, conn: Connection) -> None:
        if conn.timer is not None:
            conn.timer.pop(conn, None)
            conn.timer = None
        conn.state = "closed"
        sock = conn.sock
        if sock.fileno() == -1:
            return
        self._connections.pop(sock.fileno(), None)
        if self._selector is not None:
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError):
                pass
        sock.close()

    # -- deadlines: one insertion-ordered dict per duration, so the first entry of each
    # is the earliest; arming is O(1) and an idle server has no deadline at all.

    def _arm(self, conn: Connection, duration: float) -> None:
        if conn.timer is not None:
            conn.timer.pop(conn, None)
        timer = self._timers.get(duration)
        if timer is None:
            timer = self._timers[duration] = {}
        conn.deadline = time.monotonic() + duration
        timer[conn] = conn.deadline
        conn.timer = timer

    def _next_timeout(self) -> float | None:
        if self._pipelined:
            return 0.0  # more pipelined requests to parse: just look for I/O, then go on
        earliest = math.inf if self._accepting_at is None else self._accepting_at
        if self._recheck_at is not None:
            earliest = min(earliest, self._recheck_at)
        for timer in self._timers.values():
            for deadline in timer.values():
                earliest = min(earliest, deadline)
                break
        if earliest == math.inf:
            return None
        return max(0.0, earliest - time.monotonic())

    def _expire(self, now: float) -> None:
        if self._accepting_at is not None and now >= self._accepting_at:
            self._resume_accepting()
        if self._recheck_at is not None and now >= self._recheck_at:
            self._recheck_at = None
            self._request_evaluation()
        late: list[Connection] = []
        for timer in self._timers.values():
            for conn, deadline in timer.items():
                if deadline > now:
                    break
                late.append(conn)
        for conn in late:
            if conn.state != WAITING:
                self._on_timeout(conn)
        waiting = [conn for conn in late if conn.state == WAITING]
        if waiting:
            status = HealthStatus.unknown(
                float(self._timeout),
                f"callback did not return within {self._callback_timeout:g}s",
            )
            ids = {id(conn) for conn in waiting}
            self._deliver(status, lambda conn: id(conn) in ids)

    # -- sockets -----------------------------------------------------------------------

    @staticmethod
    def _close_sockets(socks: list[socket.socket] | list[socket.socket | None]) -> None:
        for sock in socks:
            if sock is not None:
                sock.close()

    def _forget_in_child(self) -> None:
        """In a forked child: close our copies of the sockets; the parent keeps serving."""
        for conn in list(self._connections.values()):
            conn.sock.close()
        self._connections.clear()
        self._close_sockets(self._listeners)
        self._close_sockets([self._waker_r, self._waker_w])
        if self._selector is not None:
            self._selector.close()
        self._listeners, self._waker_r, self._waker_w, self._selector = [], None, None, None
        self._thread = None
        self._evaluator = None
        self._announced = None


class _Evaluator:
    """The thread that calls the alive callback, one call at a time, on request.

    No Python-level lock is taken on the way in or out: requests travel through a
    ``SimpleQueue`` (implemented in C) and the result through a one-slot ``deque``, so an
    exception raised by a signal handler in the middle of stop() cannot leave a lock
    held that the next stop() or this thread would wait on forever.
    """

    def __init__(self, evaluate: Callable[[], HealthStatus], notify: Callable[[], None]) -> None:
        self._evaluate = evaluate
        self._notify = notify
        self._requests: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._closed = False
        self._busy = False  # set before `_closed` is read, so close() knows whether to wait
        self._results: deque[HealthStatus] = deque(maxlen=1)
        self._thread: threading.Thread | None = None

    def start(self, name: str) -> None:
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def request(self) -> None:
        self._requests.put(True)

    def take(self) -> HealthStatus | None:
        try:
            return self._results.popleft()
        except IndexError:
            return None

    @property
    def has_result(self) -> bool:
        return bool(self._results)

    def close(self) -> None:
        self._closed = True
        self._requests.put(False)
        thread = self._thread
        # An idle evaluator exits at once. One inside a callback that never returns keeps
        # its daemon thread, and stop() must not wait for it.
        if thread is not None and not self._busy and thread is not threading.current_thread():
            thread.join(JOIN_TIMEOUT)

    def _run(self) -> None:
        while True:
            self._requests.get()
            self._busy = True
            if self._closed:
                self._busy = False
                return
            status = self._evaluate()
            self._busy = False
            self._results.append(status)
            self._notify()


def _host_port(sockname: object) -> tuple[str, int]:
    assert isinstance(sockname, tuple)
    return str(sockname[0]), int(sockname[1])


def _display(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind(host: str | None, port: int) -> list[socket.socket]:
    """Listen on every address ``host`` means, all on one port.

    ``None`` means every interface: one IPv6 socket that also accepts IPv4 where the
    system allows (IPV6_V6ONLY off, as CPython's ``http.server`` does), else 0.0.0.0.
    An explicit IPv6 address listens on IPv6 only; a name listens on each of its
    addresses (``localhost``: 127.0.0.1 and ::1), the first choosing the port.
    """
    shown = "*" if host is None else host
    if not 0 <= port <= 65535:
        raise OSError(
            errno.EINVAL, f"cannot listen on {_display(shown, port)}: port must be 0-65535"
        )
    if host is None:
        if socket.has_dualstack_ipv6():
            try:
                return [_listen(("::", port), socket.AF_INET6, dualstack=True)]
            except OSError as exc:
                if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                    raise _bind_error(exc, "::", port) from None
        try:
            return [_listen(("0.0.0.0", port), socket.AF_INET)]
        except OSError as exc:
            raise _bind_error(exc, "0.0.0.0", port) from None
    family = _numeric_family(host)
    if family is not None:  # an address: no resolver, no DNS, no codec import
        try:
            return [_listen((host, port), family, dualstack=host == "::")]
        except OSError as exc:
            raise _bind_error(exc, host, port) from None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise _bind_error(exc, shown, port) from None
    unique: dict[tuple[int, str], tuple[int, tuple[object, ...]]] = {}
    for info in infos:
        sockaddr = tuple(info[4])
        unique.setdefault((int(info[0]), str(sockaddr[0])), (int(info[0]), sockaddr))
    listeners: list[socket.socket] = []
    try:
        for family, address in unique.values():
            if listeners:  # every address on the port the first one got
                address = (address[0], listeners[0].getsockname()[1], *address[2:])
            try:
                dualstack = family == socket.AF_INET6 and host == "::"
                listeners.append(_listen(address, family, dualstack))
            except OSError as exc:
                raise _bind_error(exc, str(address[0]), _as_int(address[1])) from None
    except BaseException:
        for sock in listeners:
            sock.close()
        raise
    return listeners


def _numeric_family(host: str) -> int | None:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return family
    return None


def _as_int(value: object) -> int:
    assert isinstance(value, int)
    return value


def _listen(address: object, family: int, dualstack: bool = False) -> socket.socket:
    sock = socket.create_server(
        address,  # type: ignore[arg-type]
        family=family,
        backlog=LISTEN_BACKLOG,
        dualstack_ipv6=dualstack,
    )
    sock.setblocking(False)
    return sock


def _bind_error(exc: OSError, host: str, port: int) -> OSError:
    reason = exc.strerror or str(exc)
    # create_server appends "(while attempting to bind on address ...)": say it our way.
    reason = reason.split(" (while attempting", 1)[0]
    error = OSError(exc.errno, f"cannot listen on {_display(host, port)}: {reason}")
    return error
