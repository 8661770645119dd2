"""The HTTP/1.1 protocol of the health-check server: a state machine, bytes in, bytes out.

No I/O here: :class:`HTTPProtocol` receives bytes and events from a transport and answers
through it (see ``.._engine.protocol``). Its connection states are :class:`HTTPState`, moved only
by the events of :data:`TRANSITIONS`; the routes are the data in :data:`ROUTES`.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Callable
from http import HTTPStatus

from .._engine.protocol import BaseProtocol, Services, StateEnum, StateMachine, Transport
from ..status import HealthStatus, Verdict
from .prometheus import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .prometheus import render_metrics
from .wire import (
    ALLOW,
    MAX_REQUEST_LINE,
    HTTPError,
    Request,
    build_response,
    connection_field,
    early_error,
    find_head_end,
    http_date,
    parse_request,
    reason_phrase,
)

__all__ = [
    "MAX_BUFFERED_INPUT",
    "ROUTES",
    "TRANSITIONS",
    "HTTPEvent",
    "HTTPProtocol",
    "HTTPResponses",
    "HTTPState",
    "Route",
]

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"

# Bytes read from a client ahead of its answers (pipelined requests not parsed yet). A
# prober sends one request of ~150 bytes. At this mark we stop reading that client until
# half of it is answered, and TCP flow control holds the rest on the client's side:
# bounded memory per connection, and nothing lost.
MAX_BUFFERED_INPUT = 64 * 1024

# Distinct request heads remembered parsed (a Request is never changed once made).
PARSED_CACHE = 256


class Route(enum.Enum):
    """What a path serves."""

    HEALTH = "health"  # the verdict as JSON: 200 alive, 503 otherwise
    METRICS = "metrics"  # the verdict in the Prometheus text format
    DEBUG = "debug"  # server.debug_text(name), only with debug=True


ROUTES = {"/healthz": Route.HEALTH, "/livez": Route.HEALTH, "/metrics": Route.METRICS}
# Paths served by prefix, the rest of the path being the name: only with debug=True.
DEBUG_PREFIX = "/debug/"


class HTTPState(StateEnum):
    """Where one connection is."""

    IDLE = "idle"  # reading a request head (or none yet)
    WAITING = "waiting"  # a request waits for its verdict or text
    HALF_CLOSED = "half-closed"  # waiting, and the client sent its last byte
    DRAINING = "draining"  # the client sent its last byte: answer what it sent, then close
    CLOSED = "closed"  # the last answer is written; nothing more is read


class HTTPEvent(StateEnum):
    """What moves a connection."""

    REQUEST = "request"  # a head that needs a verdict or text
    KEEP = "keep"  # an answer is written and the connection persists
    CLOSE = "close"  # an answer (or none) is written and the connection ends
    EOF = "eof"  # the client will send nothing more
    LOST = "lost"  # the transport closed


S, E = HTTPState, HTTPEvent
TRANSITIONS: dict[tuple[HTTPState, HTTPEvent], HTTPState] = {
    (S.IDLE, E.REQUEST): S.WAITING,
    (S.IDLE, E.KEEP): S.IDLE,  # 404, 405, OPTIONS: answered at once
    (S.IDLE, E.CLOSE): S.CLOSED,  # a bad request, a timeout, "Connection: close"
    # Every request a client sent before its end of input is answered, in order (RFC 9112
    # section 9.6): `printf 'GET ...GET ...' | nc -N` gets both answers.
    (S.IDLE, E.EOF): S.DRAINING,
    (S.IDLE, E.LOST): S.CLOSED,
    (S.WAITING, E.KEEP): S.IDLE,
    (S.WAITING, E.CLOSE): S.CLOSED,
    (S.WAITING, E.EOF): S.HALF_CLOSED,  # `printf ... | nc -N`: still owed an answer
    (S.WAITING, E.LOST): S.CLOSED,
    (S.HALF_CLOSED, E.KEEP): S.DRAINING,  # answered; a pipelined request may follow
    (S.HALF_CLOSED, E.CLOSE): S.CLOSED,
    (S.HALF_CLOSED, E.LOST): S.CLOSED,
    (S.DRAINING, E.REQUEST): S.HALF_CLOSED,
    (S.DRAINING, E.KEEP): S.DRAINING,
    (S.DRAINING, E.CLOSE): S.CLOSED,  # all answered
    (S.DRAINING, E.LOST): S.CLOSED,
    (S.CLOSED, E.LOST): S.CLOSED,
}
del S, E


class HTTPResponses:
    """Responses a server's connections share: options, the Date, the rendered verdicts.

    Args:
        client_timeout: Seconds a client has to send a complete request head.
        debug: Serve ``GET /debug/<name>``.
        probes: The probe counts by verdict, for ``/metrics``.
    """

    def __init__(
        self, client_timeout: float, debug: bool, probes: Callable[[], dict[Verdict, int]]
    ) -> None:
        self.client_timeout = client_timeout
        self.debug = debug
        self.probes = probes
        # Request heads already parsed: a prober sends the same bytes every time.
        self.parsed: dict[bytes, Request] = {}
        self._date: tuple[int, str] = (0, "")
        # /healthz responses of the current verdict and second (replaced whole, never mutated).
        self._rendered: tuple[HealthStatus | None, int, dict[tuple[bool, str | None], bytes]]
        self._rendered = (None, 0, {})

    def health(self, status: HealthStatus, head_only: bool, connection: str | None) -> bytes:
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
            response = cache[key] = self.build(code, body, JSON, head_only, connection)
        return response

    def build(
        self,
        status: HTTPStatus,
        body: bytes | None,
        content_type: str = TEXT,
        head_only: bool = False,
        connection: str | None = "close",
        extra: str = "",
    ) -> bytes:
        """A response; the body defaults to the status line's words."""
        if body is None:
            body = f"{status.value} {reason_phrase(status)}\n".encode("ascii")
        return build_response(
            status,
            body,
            content_type,
            date=self._http_date(),
            head_only=head_only,
            connection=connection,
            extra=extra,
        )

    def _http_date(self) -> str:
        now = int(time.time())
        second, text = self._date
        if second != now:
            text = http_date(now)
            self._date = (now, text)
        return text


class HTTPProtocol(BaseProtocol):
    """One HTTP/1.1 connection: parse heads, route, answer; keep-alive and pipelining."""

    def __init__(self, services: Services, responses: HTTPResponses) -> None:
        self._services = services
        self._responses = responses
        self._machine = StateMachine(TRANSITIONS, HTTPState.IDLE)
        self._buf = b""
        self._request: Request | None = None
        self._route: Route | None = None
        self._paused = False
        self._processing = False

    @property
    def state(self) -> HTTPState:
        return self._machine.state

    # -- events ----------------------------------------------------------------------------

    def connection_made(self, transport: Transport) -> None:
        super().connection_made(transport)
        self.transport.set_timeout(self._responses.client_timeout)

    def data_received(self, data: bytes) -> None:
        state = self._machine.state
        if state is HTTPState.CLOSED:
            return
        self._buf += data
        if len(self._buf) >= MAX_BUFFERED_INPUT and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        if state is HTTPState.IDLE:
            self._process()

    def eof_received(self) -> bool:
        state = self._machine.state
        if state is HTTPState.WAITING:
            self._machine.fire(HTTPEvent.EOF)
            return True  # answer (and what follows it), then close
        if state is HTTPState.IDLE:
            self._machine.fire(HTTPEvent.EOF)
            self._process()  # requests held back while the client did not read
        return self._machine.state is not HTTPState.CLOSED

    def timeout(self) -> None:
        if self.transport.get_write_buffer_size():
            self.transport.abort()  # the client has not read for client_timeout
        elif self._machine.state is HTTPState.IDLE and self._buf:
            # Part of a request arrived, not all of it in time (RFC 9110 section 15.5.9).
            self._fail(HTTPStatus.REQUEST_TIMEOUT)
        else:
            self._machine.fire(HTTPEvent.CLOSE)
            self.transport.close()

    def resume_writing(self) -> None:
        self._process()

    def shed_order(self) -> int | None:  # idle, a request arriving, or an answer owed
        return (1 if self._buf else 0) if self._machine.state is HTTPState.IDLE else None

    def connection_lost(self) -> None:
        self._machine.fire(HTTPEvent.LOST)

    def status_received(self, status: HealthStatus) -> None:
        request = self._request
        assert request is not None
        head_only, keep = request.method == "HEAD", self._keeps(request)
        connection = connection_field(request, keep)
        if self._route is Route.METRICS:
            body = render_metrics(status, self._responses.probes())
            response = self._responses.build(
                HTTPStatus.OK, body, METRICS_CONTENT_TYPE, head_only, connection
            )
        else:
            self._services.count_probe(status)
            response = self._responses.health(status, head_only, connection)
        self._answer(response, keep)

    def text_received(self, text: str | None, error: str | None) -> None:
        request = self._request
        assert request is not None
        keep = self._keeps(request)
        if error is not None:
            code, body = HTTPStatus.SERVICE_UNAVAILABLE, (error + "\n").encode("utf-8")
        elif text is None:
            code, body = HTTPStatus.NOT_FOUND, None
        else:
            code, body = HTTPStatus.OK, text.encode("utf-8", errors="replace")
        response = self._responses.build(
            code, body, TEXT, request.method == "HEAD", connection_field(request, keep)
        )
        self._answer(response, keep)

    # -- requests ----------------------------------------------------------------------------

    def _process(self) -> None:
        """Answer what is buffered, one request after another (a loop, never recursion)."""
        if self._processing:  # an answer given from inside this loop: the loop goes on
            return
        self._processing = True
        try:
            while (
                self._machine.state in (HTTPState.IDLE, HTTPState.DRAINING)
                and self._buf
                and not self.transport.get_write_buffer_size()
                and self._next_request()
            ):
                pass
        finally:
            self._processing = False
        if self._machine.state is HTTPState.DRAINING and not (
            self._buf and self.transport.get_write_buffer_size()
        ):  # all answered (what is left cannot become a request now), or being sent
            self._machine.fire(HTTPEvent.CLOSE)
            self.transport.close()
            return
        if self._paused and len(self._buf) <= MAX_BUFFERED_INPUT // 2:
            self._paused = False
            self.transport.resume_reading()

    def _next_request(self) -> bool:
        """Take one request head from the buffer; ``False`` while it is incomplete."""
        buf = self._buf
        if buf[:1] in (b"\r", b"\n"):
            buf = self._buf = buf.lstrip(b"\r\n")  # RFC 9112 section 2.2
            if not buf:
                return False
        end, following = find_head_end(buf)
        # A complete head needs no early look, unless it is long or the HTTP/2 preface.
        if end < 0 or end > MAX_REQUEST_LINE or buf[:4] == b"PRI ":
            error = early_error(buf)
            if error is not None:
                self._fail(error)
            if end < 0 or error is not None:
                return False
        self._buf = buf[following:]
        head = buf[:end]
        parsed = self._responses.parsed
        request = parsed.get(head)
        if request is None:
            try:
                request = parse_request(head)
            except HTTPError as exc:
                self._fail(exc.status)
                return False
            if len(parsed) >= PARSED_CACHE:
                parsed.clear()
            parsed[head] = request
        self._dispatch(request)
        return True

    def _dispatch(self, request: Request) -> None:
        method, path = request.method, request.path
        route = ROUTES.get(path)
        if route is None and self._responses.debug and path.startswith(DEBUG_PREFIX):
            route = Route.DEBUG if len(path) > len(DEBUG_PREFIX) else None
        if method == "GET" or method == "HEAD":
            if route is None:
                self._reply(request, HTTPStatus.NOT_FOUND)
                return
            self._request, self._route = request, route
            self._machine.fire(HTTPEvent.REQUEST)
            if route is Route.DEBUG:
                self._services.request_text(self, path[len(DEBUG_PREFIX) :])
            else:
                self._services.request_status(self)  # often answered at once, from here
            state = self._machine.state
            if state is HTTPState.WAITING or state is HTTPState.HALF_CLOSED:
                self.transport.set_timeout(None)  # the wait has its own deadline
        elif method == "OPTIONS":
            if route is not None or path == "*":
                self._reply(request, HTTPStatus.OK, body=b"", extra=f"Allow: {ALLOW}\r\n")
            else:
                self._reply(request, HTTPStatus.NOT_FOUND)
        else:
            # RFC 9110 section 15.5.6: a 405 must say what is allowed.
            self._reply(request, HTTPStatus.METHOD_NOT_ALLOWED, extra=f"Allow: {ALLOW}\r\n")

    # -- answers ------------------------------------------------------------------------------

    def _reply(
        self, request: Request, status: HTTPStatus, body: bytes | None = None, extra: str = ""
    ) -> None:
        """A response that needs no verdict (404, 405, OPTIONS); the connection lives on."""
        keep = self._keeps(request)
        response = self._responses.build(
            status, body, TEXT, request.method == "HEAD", connection_field(request, keep), extra
        )
        self._answer(response, keep)

    def _keeps(self, request: Request) -> bool:
        """The client asks to keep the connection and, after its end of input, sent more."""
        if not request.keep_alive:
            return False
        state = self._machine.state
        if state is not HTTPState.HALF_CLOSED and state is not HTTPState.DRAINING:
            return True
        return find_head_end(self._buf.lstrip(b"\r\n"))[0] >= 0

    def _answer(self, response: bytes, keep: bool) -> None:
        # The event first: a write that finds the client gone ends in connection_lost(),
        # which must find the connection answered already.
        self._machine.fire(HTTPEvent.KEEP if keep else HTTPEvent.CLOSE)
        self.transport.write(response)
        if keep:
            self.transport.set_timeout(self._responses.client_timeout)
            if not self._processing:  # else the loop in _process goes on by itself
                self._process()  # a pipelined request may be here already
        else:
            self.transport.close(linger=bool(self._buf))  # unread requests: close gracefully

    def _fail(self, status: HTTPStatus) -> None:
        """Answer a request we cannot parse, then close the connection."""
        self._buf = b""
        self._machine.fire(HTTPEvent.CLOSE)
        self.transport.write(self._responses.build(status, None))
        self.transport.close(linger=True)  # the rest of a bad request may be on its way
