"""The HTTP health-check server: ``/healthz``, ``/livez`` and ``/metrics``."""

from __future__ import annotations

import json
import time
from http import HTTPStatus

from ._httpwire import (
    ALLOW,
    MAX_REQUEST_HEAD,
    HTTPError,
    Request,
    build_response,
    find_head_end,
    http_date,
    parse_request,
    reason_phrase,
)
from ._prometheus import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ._prometheus import render_metrics
from ._server import (
    READING,
    Connection,
    SocketHealthCheckServer,
)
from .status import HealthStatus

__all__ = ["HTTPHealthCheckServer"]

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"

HEALTH, METRICS = "health", "metrics"
ROUTES = {"/healthz": HEALTH, "/livez": HEALTH, "/metrics": METRICS}


class HTTPHealthCheckServer(SocketHealthCheckServer):
    """A real HTTP/1.1 health-check server in one background thread.

    ``GET /healthz`` and ``GET /livez`` answer 200 when the agent is alive and 503 when
    it is dead or unknown, with a JSON body::

        {"status": "alive", "last_progress": 1700000000.0, "age": 3.0,
         "timeout": 60.0, "reason": null}

    ``GET /metrics`` serves the same verdict in the Prometheus text format 0.0.4.
    ``HEAD`` answers as ``GET`` without the body, ``OPTIONS`` with ``Allow``; any other
    method gets 405, any other path 404. Requests are never logged.

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
    """

    _kind = "http"

    # The Date value of the current second, and the /healthz responses rendered for the
    # current verdict in the current second (replaced whole, never mutated in place).
    _date: tuple[int, str] = (0, "")
    _rendered: tuple[HealthStatus | None, int, dict[tuple[bool, str | None], bytes]] = (
        None,
        0,
        {},
    )

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

    def _describe(self) -> str:
        return f"{super()._describe()} ({self.url})"

    # -- protocol hooks ------------------------------------------------------------------

    def _on_input(self, conn: Connection) -> None:
        buf = conn.inbuf
        if buf[:1] in (b"\r", b"\n"):
            buf = conn.inbuf = buf.lstrip(b"\r\n")  # RFC 9112 section 2.2
        end, following = find_head_end(buf)
        if end < 0:
            if len(buf) > MAX_REQUEST_HEAD:
                too_long = b"\n" not in buf  # still in the request line
                self._fail(
                    conn,
                    HTTPStatus.REQUEST_URI_TOO_LONG
                    if too_long
                    else HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                )
            return
        if end > MAX_REQUEST_HEAD:
            self._fail(conn, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
            return
        conn.inbuf = buf[following:]
        try:
            request = parse_request(buf[:end])
        except HTTPError as exc:
            self._fail(conn, exc.status)
            return
        self._route(conn, request)

    def _route(self, conn: Connection, request: Request) -> None:
        method = request.method
        route = ROUTES.get(request.path)
        if method == "GET" or method == "HEAD":
            if route is not None:
                self._await_status(conn, request)
                return
            self._reply(conn, request, HTTPStatus.NOT_FOUND)
        elif method == "OPTIONS":
            if route is not None or request.path == "*":
                self._reply(conn, request, HTTPStatus.OK, body=b"", extra=f"Allow: {ALLOW}\r\n")
            else:
                self._reply(conn, request, HTTPStatus.NOT_FOUND)
        else:
            # RFC 9110 section 15.5.6: a 405 must say what is allowed.
            self._reply(conn, request, HTTPStatus.METHOD_NOT_ALLOWED, extra=f"Allow: {ALLOW}\r\n")

    def _on_timeout(self, conn: Connection) -> None:
        if conn.state == READING and conn.inbuf:
            # Part of a request arrived, not all of it in time (RFC 9110 section 15.5.9).
            self._fail(conn, HTTPStatus.REQUEST_TIMEOUT)
        else:
            super()._on_timeout(conn)

    def _on_status(self, conn: Connection, status: HealthStatus) -> None:
        request = conn.request
        assert isinstance(request, Request)
        head_only = request.method == "HEAD"
        connection = _connection_field(request)
        if ROUTES[request.path] == METRICS:
            body = render_metrics(status, self._probes)
            response = build_response(
                HTTPStatus.OK,
                body,
                METRICS_CONTENT_TYPE,
                date=self._http_date(),
                head_only=head_only,
                connection=connection,
            )
        else:
            self._count_probe(status.verdict)
            response = self._health_response(status, head_only, connection)
        self._send(conn, response, request.keep_alive)

    # -- responses ---------------------------------------------------------------------

    def _health_response(
        self, status: HealthStatus, head_only: bool, connection: str | None
    ) -> bytes:
        """The /healthz response, rendered once per verdict, per second and per shape."""
        now = int(time.time())
        cached_status, cached_second, cache = self._rendered
        if cached_status is not status or cached_second != now:
            cache = {}
            self._rendered = (status, now, cache)
        key = (head_only, connection)
        response = cache.get(key)
        if response is None:
            body = (json.dumps(status.to_dict(), separators=(",", ":")) + "\n").encode("ascii")
            code = HTTPStatus.OK if status.alive else HTTPStatus.SERVICE_UNAVAILABLE
            response = cache[key] = build_response(
                code,
                body,
                JSON,
                date=self._http_date(),
                head_only=head_only,
                connection=connection,
            )
        return response

    def _reply(
        self,
        conn: Connection,
        request: Request,
        status: HTTPStatus,
        body: bytes | None = None,
        extra: str = "",
    ) -> None:
        """A response that needs no verdict (404, 405, OPTIONS); the connection lives on."""
        if body is None:
            body = f"{status.value} {reason_phrase(status)}\n".encode("ascii")
        response = build_response(
            status,
            body,
            TEXT,
            date=self._http_date(),
            head_only=request.method == "HEAD",
            connection=_connection_field(request),
            extra=extra,
        )
        self._send(conn, response, request.keep_alive)

    def _fail(self, conn: Connection, status: HTTPStatus) -> None:
        """Answer a request we cannot parse, then close the connection."""
        body = f"{status.value} {reason_phrase(status)}\n".encode("ascii")
        response = build_response(status, body, TEXT, date=self._http_date(), connection="close")
        conn.inbuf = b""
        conn.linger = True  # the rest of a bad request may still be on its way
        self._send(conn, response, keep_alive=False)

    def _http_date(self) -> str:
        now = int(time.time())
        second, text = self._date
        if second != now:
            text = http_date(now)
            self._date = (now, text)
        return text


def _connection_field(request: Request) -> str | None:
    if not request.keep_alive:
        return "close"
    return "keep-alive" if request.minor == 0 else None
