"""One running server's parts, put together: listeners, loop, evaluator, connections, threads.

An :class:`Engine` is made by ``start()`` and closed by ``stop()``; every part is recorded
on it the moment it exists, so :meth:`Engine.close` (idempotent) releases whatever a
start interrupted half-way had made. Its threads (and the loop's waker) are made by a
launcher thread of their own, which no signal handler can interrupt half-way. On the I/O
thread it accepts connections, gives each a transport and a protocol, sheds the longest
idle when full, and rides out running out of file descriptors: the longest idle
connection (else the slowest to send its request) is closed to make room; when none can
be, accepting pauses until a descriptor is free. The episode is logged once.
"""

from __future__ import annotations

import _thread
import functools
import logging
import selectors
import socket
import sys
import threading
from collections.abc import Callable

from ..logging import get_logger
from .accepting import (
    ACCEPT_RETRY,
    ACCEPTS_PER_TURN,
    CONNECTION_ERRNOS,
    RESOURCE_ERRNOS,
    Shortage,
    shed,
)
from .evaluator import JOIN_TIMEOUT, Evaluator
from .listeners import Listeners, display, record
from .loop import Loop, Repeats, safe_log
from .protocol import BaseProtocol, Services
from .transport import SocketTransport
from .verdicts import Verdicts

log = get_logger("elastic_healthcheck.server")  # the public name operators filter on

__all__ = ["Engine"]

_ACCEPT = "accept"


class Engine:
    """The parts of one running server and the I/O thread's connection handling.

    Args:
        kind: The server's kind, for log lines (``http``, ``tcp``).
        make_protocol: Builds the protocol of a new connection.
        client_timeout: Seconds a client has to take what is written (and the idle
            deadline that shedding looks at).
        max_connections: Open client connections at most.
        keep_port: Listeners keep the port while refusing (see ``Listeners``).
    """

    def __init__(
        self,
        kind: str,
        make_protocol: Callable[[Services], BaseProtocol],
        client_timeout: float,
        max_connections: int,
        keep_port: bool,
    ) -> None:
        self.kind = kind
        self.loop = Loop()
        self.listeners = Listeners(keep_port)
        self.evaluator = Evaluator(self.loop.call_soon)
        self.verdicts: Verdicts | None = None
        self.transports: dict[SocketTransport, None] = {}
        self.thread: threading.Thread | None = None
        self._make_protocol = make_protocol
        self._client_timeout = client_timeout
        self._max_connections = max_connections
        self._accept_paused = False
        self._shortage = Shortage(kind)
        self._rebind_failing = False
        # Whoever takes the gate first, for good: the launcher (it starts the threads) or
        # close() (none will be started). No `with`: its exit can be interrupted.
        self._gate = threading.Lock()
        self._launched = _thread.allocate_lock()
        self._launched.acquire()  # released by the launcher when it is done
        self._launch_done = False
        self._launch_error: BaseException | None = None

    @property
    def failed(self) -> bool:
        """The loop gave up: the listeners are closed and nothing is served."""
        return self.loop.failed

    def start(self, port: int, on_start: Callable[[], None]) -> None:
        """Open the loop, watch the listeners, start the evaluator and the I/O threads.

        A launcher thread does it while this one waits: a signal handler's exception
        (Ctrl-C) can interrupt the wait, but not ``Thread.start()`` or
        ``socket.socketpair()`` half-way, where a thread could be left registered and
        never run, or a descriptor owned by nobody; :meth:`close` waits for a launch
        under way, and one that has not begun never will.
        """
        _thread.start_new_thread(self._launch, (port, on_start))
        self._launched.acquire()  # the launcher is done (released by it, never again)
        if self._launch_error is not None:
            raise self._launch_error

    def _launch(self, port: int, on_start: Callable[[], None]) -> None:
        hooks = threading.gettrace(), threading.getprofile()  # as threading's threads do
        sys.settrace(hooks[0])
        sys.setprofile(hooks[1])
        if not self._gate.acquire(blocking=False):
            self._launched.release()
            return  # close() came first: nothing is started
        try:
            self.loop.open(record)
            self._watch_listeners()
            self.evaluator.start(f"elastic-healthcheck-callback:{port}")
            name = f"elastic-healthcheck-{self.kind}:{port}"
            thread = threading.Thread(target=self._serve, args=(on_start,), name=name, daemon=True)
            self.thread = thread
            thread.start()
        except BaseException as exc:  # handed to start(), in the caller's thread
            self._launch_error = exc
        finally:
            self._launch_done = True
            self._launched.release()

    def close(self) -> None:
        """Stop the threads and close every socket. Idempotent; safe at any point of start.

        The listeners are closed first, as soon as the loop is done with them: whoever
        sees their connection closed, or stop() return, can bind the port again.
        """
        if not self._gate.acquire(blocking=False) and not self._launch_done:
            self._launched.acquire(timeout=JOIN_TIMEOUT)  # a launch under way: let it finish
        self.loop.stop()
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(JOIN_TIMEOUT)
            if thread.is_alive():  # pragma: no cover - the loop exits within a turn
                safe_log(
                    logging.ERROR, "Health check server thread did not stop in time", logger=log
                )
        self.listeners.close()
        self.evaluator.close()
        for transport in list(self.transports):
            transport.forget()  # the loop is over: close the socket, run no protocol code
        self.transports.clear()
        self.loop.close()

    def forget_in_child(self) -> None:
        """In a forked child: close our copies of the connections; the parent serves them."""
        self.loop.repeats = Repeats()  # the parent's errors: the parent logs them
        for transport in list(self.transports):
            transport.forget()
        self.transports.clear()
        self.listeners.close()
        self.loop.close()

    # -- the I/O thread -----------------------------------------------------------------

    def _serve(self, on_start: Callable[[], None]) -> None:
        try:
            try:
                on_start()
            except Exception as exc:
                self.loop.report(exc, "_on_start")
            self.loop.run()
        except BaseException as exc:  # a hook raised SystemExit, say: refuse, never hang
            self.loop.failed = True
            safe_log(
                logging.CRITICAL,
                "Health check server stopped: %s raised in its loop; connections are "
                "refused until start() is called again",
                type(exc).__name__,
                exc_info=exc,
                logger=log,
            )
        if self.loop.failed:
            # Probes are refused at once from now on, instead of hanging until timeout.
            self.listeners.close()
            for transport in list(self.transports):
                transport.abort()

    def _watch_listeners(self) -> None:
        for sock in self.listeners.sockets:
            self.loop.register(sock, selectors.EVENT_READ, functools.partial(self._accept, sock))

    def _unwatch_listeners(self) -> None:
        for sock in self.listeners.sockets:
            self.loop.unregister(sock)

    def _accept(self, listener: socket.socket, events: int) -> None:
        if self._accept_paused or self.listeners.refusing or self.loop.stopping:
            return  # paused earlier in this turn (another listener ran out of descriptors)
        made_room = False  # a connection was just closed for want of descriptors
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in CONNECTION_ERRNOS:
                    continue  # that one connection is gone; the next may be fine
                if exc.errno not in RESOURCE_ERRNOS:
                    raise
                self._shortage.failed(exc)
                # Out of descriptors: close an idle connection (else a slow one) to make
                # room, so that idle clients can never lock a prober out. Those being
                # answered are served on; if nothing else is open, the new connections
                # wait in the backlog until a descriptor is free.
                made_room = shed(self.transports, self.loop.timers, self._client_timeout, True)
                if made_room:
                    self._shortage.closed += 1
                    continue
                self._pause_accepting()
                return
            self._shortage.accepted(made_room)
            made_room = False
            if len(self.transports) >= self._max_connections and not shed(
                self.transports, self.loop.timers, self._client_timeout, False
            ):
                next(iter(self.transports)).abort()  # nothing idle or slow: the oldest
            self._open(sock)

    def _open(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (tests may use other families); Nagle only costs latency
        assert self.verdicts is not None
        try:
            protocol = self._make_protocol(self.verdicts)
        except Exception as exc:
            sock.close()  # this client is not served; the next one may be
            self.loop.report(exc, "_make_protocol")
            return
        transport = SocketTransport(self.loop, sock, protocol, self._client_timeout, self._closed)
        self.transports[transport] = None
        transport.start()

    def _closed(self, transport: SocketTransport) -> None:
        self.transports.pop(transport, None)
        if self.verdicts is not None:
            self.verdicts.forget(transport.protocol)
        if self._accept_paused:
            self._resume_accepting()  # a descriptor was just freed

    def _pause_accepting(self) -> None:
        self._accept_paused = True
        self._unwatch_listeners()
        self.loop.timers.arm(_ACCEPT, ACCEPT_RETRY, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._shortage.resumed = self._accept_paused
        self._accept_paused = False
        self.loop.timers.cancel(_ACCEPT)
        if not self.listeners.refusing:
            self._watch_listeners()

    # -- refusing, for probers that only connect ----------------------------------------------

    def refuse(self) -> None:
        """Refuse new connections (the port is kept where the platform allows)."""
        if self.listeners.refusing:
            return
        described = self.describe()
        if not self._accept_paused:
            self._unwatch_listeners()
        self.listeners.refuse()
        safe_log(
            logging.INFO,
            "Stopped listening for %s health checks on %s",
            self.kind,
            described,
            logger=log,
        )

    def resume(self) -> bool:
        """Accept again after :meth:`refuse`; ``False`` if the port cannot be had (logged once)."""
        if not self.listeners.refusing:
            return True
        try:
            self.listeners.resume()
        except OSError as exc:
            if not self._rebind_failing:
                self._rebind_failing = True
                safe_log(
                    logging.ERROR,
                    "Cannot listen again for %s health checks: %s",
                    self.kind,
                    exc.strerror or exc,
                    logger=log,
                )
            return False
        self._rebind_failing = False
        if not self._accept_paused:
            self._watch_listeners()
        described = self.describe()
        safe_log(
            logging.INFO,
            "Listening again for %s health checks on %s",
            self.kind,
            described,
            logger=log,
        )
        return True

    def describe(self) -> str:
        """``host:port`` of every listener, comma-separated."""
        return ", ".join(display(host, port) for host, port in self.listeners.addresses())
