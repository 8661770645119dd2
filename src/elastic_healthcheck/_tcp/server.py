"""The TCP health-check server: one status line per connection, then close."""

from __future__ import annotations

from collections.abc import Callable

from .._engine.protocol import BaseProtocol, Services
from .._engine.server import (
    DEFAULT_CALLBACK_TIMEOUT,
    DEFAULT_CLIENT_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    SocketHealthCheckServer,
)
from ..status import HealthStatus, check_seconds
from .line import agent_check_line, status_line
from .protocol import TCPProtocol

__all__ = ["TCPHealthCheckServer"]

# Seconds between the server's own verdicts (refuse_while_dead): how late a death is
# refused and a recovered agent is reachable again, at one callback call each time.
# kubelet probes every 10 s by default (periodSeconds), Consul's TCP checks are configured
# in seconds too, so 1 s adds little to what a prober notices anyway.
DEFAULT_RECHECK_INTERVAL = 1.0


class TCPHealthCheckServer(SocketHealthCheckServer):
    """A TCP health-check server: each connection gets one status line, then a close.

    In the style of HAProxy's agent-check: the client connects, need not send anything,
    reads one ASCII line and sees the connection closed. The line is one of::

        alive age=<age> timeout=<timeout>\\n
        dead age=<age> timeout=<timeout>\\n
        unknown timeout=<timeout> reason=<reason>\\n

    where ``<age>`` is the seconds since the last progress with one decimal (``%.1f``),
    ``<timeout>`` the allowed age in seconds (``%g``: ``60``, ``2.5``), and ``<reason>``
    the rest of the line: printable ASCII, spaces included, never a line break (controls
    become spaces, other characters ``?``). A probe from a shell::

        $ nc 127.0.0.1 8081 </dev/null
        alive age=3.0 timeout=60

    With ``agent_check=True`` the line speaks HAProxy's agent-check words instead: ``up``
    or ``down``, then ours after a ``#`` (:func:`agent_check_line`)::

        up #alive age=3.0 timeout=60
        down #dead age=75.0 timeout=60

    Without it, HAProxy's agent-check cannot act on the line (it knows ``up``, ``down``,
    ``drain``, ``maint``, ...): use ``tcp-check expect`` there instead (docs/deploy.md).
    Bytes a client sends (HAProxy's ``agent-send``) are read and dropped; a client that
    sends something, or half-closes, still gets its line, and the close is graceful so
    that its unread input cannot turn into a reset that destroys the line.

    A hung callback gets ``unknown ... reason=callback did not return within <s>s``
    after ``callback_timeout``; the call keeps its one thread.

    **Refusing while dead.** A connect-only prober (kubelet ``tcpSocket``, Consul TCP
    checks) learns only whether the connection is accepted, so a listening port always
    passes. With ``refuse_while_dead=True`` the server refuses connections while the
    verdict is ``dead`` or ``unknown`` and accepts again once it is ``alive``.
    :meth:`start` still returns as soon as the port listens, without waiting for the
    callback: the loop then asks for a verdict at once and refuses within one callback
    call if the agent is not alive. From then on it calls the callback every
    ``recheck_interval`` seconds on its own, so no connection is accepted later than
    one interval (plus one callback call) after the verdict turned dead, the first one
    included; a connection that comes in between is answered ``dead`` and refusing
    starts right after. A callback that hangs counts as ``unknown`` once
    ``callback_timeout`` has passed. The cost: one callback call per
    ``recheck_interval``, whether refusing or not (without the option, an idle server
    never wakes).

    Where the port goes while refusing: on Linux the listening socket stays bound and
    stops listening (``shutdown(SHUT_RD)``; ``listen()`` resumes), so the port stays
    ours, even with ``port=0``, and nobody else can bind it. Elsewhere the socket is
    closed and bound again: meanwhile another process may take the port, in which case
    the error is logged once and the bind retried at every recheck (use a fixed port
    there).

    >>> import socket, time
    >>> with TCPHealthCheckServer(lambda: int(time.time()), 0, 60, host="127.0.0.1") as s:
    ...     with socket.create_connection((s.host, s.port)) as c:
    ...         c.recv(100).startswith(b"alive age=")
    True

    Args:
        alive_callback: Returns the last progress time in epoch seconds.
        port: TCP port; 0 binds an ephemeral one, readable as :attr:`port` after start
            and unchanged while the port is closed and opened again.
        timeout: Seconds of silence after which the agent is dead.
        host: Address to listen on; ``None`` listens on every interface (IPv6 and IPv4).
        callback_timeout: Seconds a connection waits for the callback before it gets
            ``unknown``.
        client_timeout: Seconds a client that does not read has to take the line.
        max_connections: Open client connections at most; the longest idle is closed to
            make room.
        refuse_while_dead: Refuse connections while the verdict is not ``alive``, so
            that a connect-only probe fails.
        recheck_interval: Seconds between the server's own callback calls with
            ``refuse_while_dead``: how late a death (or a recovery) is noticed when
            nobody connects.
        agent_check: Answer in HAProxy's agent-check words (``up``/``down``, our line
            after ``#``). Not with ``refuse_while_dead``: HAProxy keeps a server's last
            agent state while the agent's connection is refused, so it would never hear
            ``down``.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An argument is out of range, or ``agent_check`` and
            ``refuse_while_dead`` are both set.
    """

    __module__ = "elastic_healthcheck"  # where users import it from

    _kind = "tcp"
    _keep_port = True

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
        refuse_while_dead: bool = False,
        recheck_interval: float = DEFAULT_RECHECK_INTERVAL,
        agent_check: bool = False,
    ) -> None:
        for name, flag in (("refuse_while_dead", refuse_while_dead), ("agent_check", agent_check)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, not {type(flag).__name__}")
        check_seconds("recheck_interval", recheck_interval, allow_zero=False)
        if agent_check and refuse_while_dead:
            # HAProxy keeps a server's last agent state when the agent's connection is
            # refused: refusing would leave a dead agent's server up (docs/engine.md).
            raise ValueError(
                "agent_check=True and refuse_while_dead=True cannot be combined: HAProxy keeps "
                "the last agent state while the agent port refuses, so a dead agent stays up"
            )
        super().__init__(
            alive_callback,
            port,
            timeout,
            host=host,
            callback_timeout=callback_timeout,
            client_timeout=client_timeout,
            max_connections=max_connections,
        )
        self._refuse_while_dead = refuse_while_dead
        self._recheck_interval = float(recheck_interval)
        self._render = agent_check_line if agent_check else status_line
        self._line: tuple[HealthStatus | None, bytes] = (None, b"")

    @property
    def endpoints(self) -> list[str]:
        """Where it listens, as probe targets (``tcp://[::]:8080``)."""
        return [f"tcp://{where}" for where in super().endpoints]

    @property
    def refusing(self) -> bool:
        """``True`` while connections are refused because the agent is not alive."""
        return self.is_running and not self._listening

    # -- hooks ---------------------------------------------------------------------------

    def _make_protocol(self, services: Services) -> BaseProtocol:
        return TCPProtocol(services, self._status_line)

    def _status_line(self, status: HealthStatus) -> bytes:
        cached, line = self._line
        if cached is not status:
            line = self._render(status)
            self._line = (status, line)
        return line

    def _on_start(self) -> None:
        if self._refuse_while_dead:
            self._recheck_after(0.0)  # a server that starts dead refuses from the start

    def _observe(self, status: HealthStatus) -> None:
        super()._observe(status)
        if not self._refuse_while_dead:
            return
        if status.alive:
            self._resume_listening()  # if it fails (logged once), the next recheck retries
        else:
            self._pause_listening()
        # Rechecked while accepting too, so that a death is noticed within the interval
        # even if nobody connects.
        self._recheck_after(self._recheck_interval)
