"""The HTTP health-check server: ``/healthz``, ``/livez``, ``/metrics`` (and ``/debug/<name>``)."""

from __future__ import annotations

from collections.abc import Callable

from .._engine.protocol import BaseProtocol, Services
from .._engine.server import (
    DEFAULT_CALLBACK_TIMEOUT,
    DEFAULT_CLIENT_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    SocketHealthCheckServer,
)
from .protocol import HTTPProtocol, HTTPResponses

__all__ = ["HTTPHealthCheckServer"]


class HTTPHealthCheckServer(SocketHealthCheckServer):
    """A real HTTP/1.1 health-check server in one background thread.

    ``GET /healthz`` and ``GET /livez`` answer 200 when the agent is alive and 503 when
    it is dead or unknown, with a JSON body::

        {"status": "alive", "last_progress": 1700000000.0, "age": 3.0,
         "timeout": 60.0, "reason": null}

    ``GET /metrics`` serves the same verdict in the Prometheus text format 0.0.4.
    ``HEAD`` answers as ``GET`` without the body, ``OPTIONS`` with ``Allow``; any other
    method gets 405, any other path 404. Requests are never logged. What cannot be HTTP
    (a TLS handshake, the HTTP/2 preface, a method with a byte outside a token) gets
    400 and a close at the first byte that proves it.

    With ``debug=True``, ``GET /debug/<name>`` answers 200 with the text that
    :meth:`debug_text` returns for ``name`` (``text/plain; charset=utf-8``), computed on
    the callback thread behind ``callback_timeout`` (503 when it raises or is late), or
    404 when it returns ``None``. Without it, those paths are 404.

    >>> import time
    >>> with HTTPHealthCheckServer(lambda: int(time.time()), 0, 60, host="127.0.0.1") as s:
    ...     s.url.startswith("http://127.0.0.1:")
    True

    Args:
        alive_callback: Returns the last progress time in epoch seconds.
        port: TCP port; 0 binds an ephemeral one, readable as :attr:`port` after start.
        timeout: Seconds of silence after which the agent is dead.
        host: Address to listen on; ``None`` listens on every interface (IPv6 and IPv4).
        callback_timeout: Seconds a probe waits for the callback before answering
            ``unknown`` (503).
        client_timeout: Seconds a client has to send a complete request head, from
            connect or from the previous response on a kept-alive connection.
        max_connections: Open client connections at most; the longest idle is closed to
            make room.
        debug: Serve ``GET /debug/<name>`` from :meth:`debug_text`.

    Raises:
        TypeError: An argument has the wrong type.
        ValueError: An argument is out of range.
    """

    __module__ = "elastic_healthcheck"  # where users import it from

    _kind = "http"

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
        debug: bool = False,
    ) -> None:
        if not isinstance(debug, bool):
            raise TypeError(f"debug must be a bool, not {type(debug).__name__}")
        super().__init__(
            alive_callback,
            port,
            timeout,
            host=host,
            callback_timeout=callback_timeout,
            client_timeout=client_timeout,
            max_connections=max_connections,
        )
        self._debug = debug
        self._responses = HTTPResponses(self._client_timeout, debug, lambda: self._probes)

    @property
    def url(self) -> str:
        """The liveness URL, e.g. ``http://127.0.0.1:8080/healthz``.

        A wildcard address (every interface) is shown as 127.0.0.1, which it includes.
        """
        host = self.host
        if host in ("", "::", "0.0.0.0"):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/healthz"

    @property
    def endpoints(self) -> list[str]:
        """Where it listens, as liveness URLs (``http://[::]:8080/healthz``)."""
        return [f"http://{where}/healthz" for where in super().endpoints]

    def _describe(self) -> str:
        return f"{super()._describe()} ({self.url})"

    def _make_protocol(self, services: Services) -> BaseProtocol:
        return HTTPProtocol(services, self._responses)
