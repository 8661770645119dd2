"""The base of every real server: configuration, start and stop, and the verdict policy.

A server built on :class:`SocketHealthCheckServer` binds in the caller's thread, then
serves from one I/O thread (a selectors loop) while the alive callback runs on a second
thread, behind a deadline. The parts live in their own modules (``docs/engine.md``):

- ``.listeners``: binding, refusing and resuming the listening sockets;
- ``.loop``: the selector loop, its waker and deadlines, and its supervisor;
- ``.evaluator``: the thread that runs the user's code;
- ``.transport``: one client connection's socket;
- ``.verdicts``: verdicts and debug texts shared among the probes that wait;
- ``.engine``: one running server's parts, and accepting connections;
- ``.protocol``: what a protocol (``.._http.protocol``, ``.._tcp.protocol``) may ask of all that.

A subclass names its protocol with :meth:`_make_protocol` and may watch verdicts with
:meth:`_observe` and the start of the loop with :meth:`_on_start`.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable

from ..health_check_server import HealthCheckServer
from ..logging import get_logger
from ..status import HealthStatus, Verdict, check_seconds
from .engine import Engine
from .listeners import close_all_in_child, display
from .loop import safe_log
from .protocol import BaseProtocol, Services
from .transport import RECV_SIZE
from .verdicts import Verdicts, checked

__all__ = [
    "DEFAULT_CALLBACK_TIMEOUT",
    "DEFAULT_CLIENT_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "RECV_SIZE",
    "SocketHealthCheckServer",
]

log = get_logger("elastic_healthcheck.server")  # the public name operators filter on

# Seconds a client has to send a complete request, from connect or from the previous
# response. Not extended by partial data, so a client trickling a byte a second cannot
# hold a connection longer (nginx client_header_timeout defaults to 60 s; a prober sends
# its request in one packet, so a few seconds is plenty).
DEFAULT_CLIENT_TIMEOUT = 5.0

# Seconds a probe waits for the alive callback: well under kubelet's default 1 s probe
# timeout (timeoutSeconds), so the prober hears "unknown" instead of timing out.
DEFAULT_CALLBACK_TIMEOUT = 0.5

# Open client connections at most. Beyond it the connection idle the longest is closed to
# make room, so a burst of idle clients can never lock a prober out.
DEFAULT_MAX_CONNECTIONS = 1024

_servers: weakref.WeakSet[SocketHealthCheckServer] = weakref.WeakSet()


def _forget_in_forked_child() -> None:
    """A forked child must not keep our sockets (a restart in the parent needs the port),
    nor wait on a lock or a thread that only existed in the parent."""
    try:
        close_all_in_child()
        for server in list(_servers):
            server._forget_in_child()
    except Exception:  # pragma: no cover - nothing may break a child's start
        pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_forked_child)


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

    __module__ = "elastic_healthcheck"  # where users import it from

    _kind = "socket"
    # Keep the port while refusing connections, even one the system chose (see Listeners).
    _keep_port = False

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
        self._engine: Engine | None = None  # everything start() made; None once stopped
        self._started = False  # start() completed
        self._address: tuple[str, int] | None = None
        self._announced: str | None = None
        self._last_verdict: Verdict | None = None
        self._probes = dict.fromkeys(Verdict, 0)  # probes answered, by verdict, ever
        _servers.add(self)

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
        """Every (host, port) listened on; empty when not started."""
        engine = self._engine
        return engine.listeners.addresses() if engine is not None and self._started else []

    @property
    def endpoints(self) -> list[str]:
        """Where it listens, as ``elastic-healthcheck probe`` targets; empty when stopped.

        ``[::]:8080`` for every interface (IPv6 and IPv4), ``127.0.0.1:8080`` for one.
        """
        return [display(host, port) for host, port in self.addresses]

    @property
    def is_running(self) -> bool:
        """``True`` between a successful :meth:`start` and :meth:`stop`, while it serves.

        ``False`` also when the loop gave up (it logged why and refuses connections).
        """
        engine = self._engine
        return self._started and engine is not None and not engine.failed

    def start(self) -> None:
        """Listen on the port and serve from a background thread.

        Returns once the socket is listening. Calling it again while running does
        nothing; after the loop gave up (:attr:`is_running` turned False) it starts
        anew. All or nothing: if it raises (a bind error, or a signal handler's
        exception), no thread, socket or half state is left and :meth:`stop` works.

        Raises:
            OSError: The address cannot be bound; the message names host and port and
                the errno is kept (``EADDRINUSE``, ``EACCES``, ``EADDRNOTAVAIL``, or
                ``EINVAL`` for a port outside 0-65535).
        """
        with self._lock:
            if self.is_running:
                return
            try:
                self._teardown()  # whatever an interrupted start() or stop() left
                engine = self._engine = Engine(
                    self._kind,
                    self._make_protocol,
                    self._client_timeout,
                    self._max_connections,
                    self._keep_port,
                )
                engine.listeners.bind(self._host, self._port)
                engine.verdicts = Verdicts(
                    engine.loop,
                    engine.evaluator,
                    self._evaluate,
                    self._debug_text,
                    self._observe,
                    float(self._timeout),
                    self._callback_timeout,
                    self._probes,
                )
                self._address = engine.listeners.addresses()[0]
                self._announced = self._describe()
                engine.start(self.port, self._on_start)
                log.info("Serving %s health checks on %s", self._kind, self._announced)
                self._started = True  # the commit: nothing before it survives an exception
            except BaseException:
                for _ in range(3):  # a second signal inside the clean-up: finish it anyway
                    try:
                        self._teardown()
                        break
                    except BaseException:
                        continue
                raise

    def stop(self) -> None:
        """Stop serving and free the port. Idempotent, and safe before :meth:`start`.

        Closes the listener and every client connection and joins the I/O thread. If an
        exception (a signal handler's, say) interrupts it, calling it again finishes the
        job.
        """
        with self._lock:
            announced = self._announced if self._started else None
            self._teardown()
        if announced is not None:
            log.info("Stopped %s health check server on %s", self._kind, announced)

    def debug_text(self, name: str) -> str | None:
        """A text for ``GET /debug/<name>`` (HTTP with ``debug=True``); ``None``: no such text.

        Runs on the callback thread, behind ``callback_timeout``. Override it to expose
        diagnostics. By default a status source's own ``debug_text(name)`` answers (the
        torch integration's shows its workers' stacks).
        """
        source = getattr(self._alive_callback, "debug_text", None)
        if callable(source):
            text: str | None = source(name)
            return text
        return None

    def __enter__(self) -> SocketHealthCheckServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"serving on {self._describe()}" if self.is_running else "stopped"
        return f"<{type(self).__name__} {state}>"

    # -- hooks for subclasses --------------------------------------------------------

    def _make_protocol(self, services: Services) -> BaseProtocol:
        """The protocol of a new connection."""
        raise NotImplementedError

    def _on_start(self) -> None:
        """The loop is about to run, on the I/O thread. Default: nothing."""

    def _observe(self, status: HealthStatus) -> None:
        """Every verdict from the callback passes here once: log each change once."""
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

    # -- services for subclasses, on the I/O thread ---------------------------------------

    def _recheck_after(self, delay: float | None) -> None:
        """Ask for a verdict in ``delay`` seconds though no client asks; ``None`` cancels."""
        engine = self._engine
        if engine is not None and engine.verdicts is not None:
            engine.verdicts.recheck_after(delay)

    @property
    def _listening(self) -> bool:
        """``False`` while :meth:`_pause_listening` refuses connections."""
        engine = self._engine
        return engine is None or not engine.listeners.refusing

    def _pause_listening(self) -> None:
        """Refuse new connections; open ones are served. The port is kept where possible."""
        if self._engine is not None:
            self._engine.refuse()

    def _resume_listening(self) -> bool:
        """Accept again; ``False`` if the port cannot be bound again (logged once)."""
        return self._engine.resume() if self._engine is not None else False

    # -- internals -----------------------------------------------------------------------

    def _evaluate(self) -> HealthStatus:
        """Run on the evaluator thread: the verdict, whatever the callback does."""
        try:
            status: object = self.health_status()
        except BaseException as exc:  # the loop must get an answer, whatever happens
            safe_log(logging.DEBUG, "health_status() raised", exc_info=exc, logger=log)
            return HealthStatus.unknown(
                float(self._timeout), f"callback raised {type(exc).__name__}"
            )
        return checked(status, float(self._timeout))

    def _debug_text(self, name: str) -> object:
        """Run on the evaluator thread; looked up at each call, as health_status() is, so
        that an instance attribute set after start() counts too."""
        return self.debug_text(name)

    def _describe(self) -> str:
        engine = self._engine
        described = engine.describe() if engine is not None else ""
        return described or display(self.host, self.port)

    def _teardown(self) -> None:
        """Release everything start() made. Idempotent: an interrupted call is finished
        by the next one, because the engine is forgotten only once it is closed."""
        self._started = False
        engine = self._engine
        if engine is not None:
            engine.close()
            self._engine = None
        self._announced = None

    def _forget_in_child(self) -> None:
        """In a forked child: drop the parent's threads, sockets and lock; serve nothing."""
        self._lock = threading.RLock()
        engine, self._engine = self._engine, None
        self._started = False
        self._announced = None
        if engine is not None:
            engine.forget_in_child()
