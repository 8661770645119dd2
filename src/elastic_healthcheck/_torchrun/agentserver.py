"""The agent's one health-check server, and the views of it that torch's agent gets.

torch's agent creates a server at every worker-group start and stops it before every
restart. Here the server is opened once, kept for the agent's whole life, and what the
agent creates is an :class:`AgentHandle`: its ``start()`` attaches the agent's callback
(and opens the listener if it is not open yet), its ``stop()`` detaches it. Neither closes
the socket; neither raises. The server's status source is the :class:`AgentState`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .._config.kinds import ConfigurationError, build_server
from .._config.settings import authority
from ..health_check_server import HealthCheckServer
from ..logging import get_logger
from .agentstate import AgentState

__all__ = ["DEFAULT_KIND", "ENV_PORT", "AgentHandle", "AgentServer"]

log = get_logger("elastic_healthcheck.torchelastic")  # the public name

ENV_PORT = "TORCHELASTIC_HEALTH_CHECK_PORT"  # torch's own variable
DEFAULT_KIND = "http"


class AgentServer:
    """Opens the one server (once), and attaches and detaches the agent's handles."""

    def __init__(
        self,
        state: AgentState,
        kind: str | None,
        port: int | None,
        options: Mapping[str, object],
        on_listening: Callable[[int], None],
    ) -> None:
        self._state = state
        self._kind = kind
        self._port = port
        self._options = dict(options)
        self._on_listening = on_listening
        self.server: HealthCheckServer | None = None
        self._handle: AgentHandle | None = None

    def open(self, port: int) -> None:
        """Start the one server on ``port``; on failure, log and carry on without it."""
        if self.server is not None:
            if self._port is not None and port != self._port:
                log.warning(
                    "The agent asked for health checks on port %s; serving on %s already",
                    port,
                    self._port,
                )
            return
        self._port = port
        kind = self._kind or DEFAULT_KIND  # install() resolved it from arguments and variables
        state = self._state
        try:
            # The state is the server's status source: its health_status() is the verdict.
            server = build_server(state, port, state.timeout, kind=kind, options=self._options)  # type: ignore[arg-type]
        except ConfigurationError as exc:
            log.error("Not serving health checks for the elastic agent: %s", exc)
            return
        try:
            server.start()
        except (OSError, OverflowError, ValueError) as exc:
            log.error(
                "Cannot serve health checks for the elastic agent on %s: %s; "
                "training goes on without a health server",
                authority(str(getattr(server, "host", "*")), port),
                exc,
            )
            return
        self.server = server
        self._port = getattr(server, "port", port)
        self._on_listening(self._port)

    def attach(self, handle: AgentHandle) -> None:
        self.open(handle._port)
        self._handle = handle
        self._state.torch_timeout = float(handle._timeout)
        self._state.callback = handle._alive_callback

    def detach(self, handle: AgentHandle) -> None:
        if self._handle is handle:
            self._handle = None
            self._state.callback = None

    def close(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.stop()


class AgentHandle(HealthCheckServer):
    """What torch's agent gets from ``create_healthcheck_server``: a view of the one server."""

    def __init__(
        self,
        alive_callback: Callable[[], int],
        port: int,
        timeout: int,
        owner: Callable[[], AgentServer | None],
    ) -> None:
        super().__init__(alive_callback, port, timeout)
        self._owner = owner

    def start(self) -> None:
        server = self._owner()
        if server is not None:
            server.attach(self)

    def stop(self) -> None:
        server = self._owner()
        if server is not None:
            server.detach(self)
