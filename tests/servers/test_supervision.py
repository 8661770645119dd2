"""The loop supervises itself: whatever user or subclass code raises, probes never hang.

After each fault, a control probe is answered or refused within 1 s.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from elastic_healthcheck import HTTPHealthCheckServer, TCPHealthCheckServer
from elastic_healthcheck._engine import loop
from elastic_healthcheck._engine.protocol import BaseProtocol, Services
from elastic_healthcheck._http.protocol import HTTPProtocol
from elastic_healthcheck.status import HealthStatus, Verdict

from .client import read_response, read_until_closed
from .conftest import wait_for

CONTROL_TIMEOUT = 1.0


def control_probe(kind: str, port: int) -> str:
    """``answered <first line>`` or ``refused``; a probe left hanging fails the test."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=CONTROL_TIMEOUT) as sock:
            if kind == "http":
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = read_until_closed(sock)
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        pytest.fail(f"a probe was left hanging for {CONTROL_TIMEOUT}s")
    return "answered " + data.split(b"\n", 1)[0].decode("ascii", "replace").strip()


class Boom(Exception):
    """Raised by the code under test on purpose."""


@pytest.fixture
def raising_handler() -> Iterator[None]:
    """A logging handler that raises on every record (its handle(), not emit(): uncaught)."""

    class Raising(logging.Handler):
        def handle(self, record: logging.LogRecord) -> bool:
            raise Boom(record.getMessage())

    logger = logging.getLogger("elastic_healthcheck")
    handler, level = Raising(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield
    logger.removeHandler(handler)
    logger.setLevel(level)


def _junk_returning(value: object) -> Callable[[], object]:
    return lambda: value


JUNK = [
    pytest.param({"status": "alive"}, "health_status() returned dict", id="a dict"),
    pytest.param(None, "health_status() returned NoneType", id="None"),
    pytest.param(
        HealthStatus("alive", 60.0, last_progress=0.0, age=0.0),  # type: ignore[arg-type]
        "a verdict of type str",
        id="a str verdict",
    ),
    pytest.param(
        HealthStatus(Verdict.ALIVE, float("nan"), last_progress=0.0, age=0.0),
        "timeout that is not finite",
        id="a NaN timeout",
    ),
    pytest.param(
        HealthStatus(Verdict.DEAD, 60.0, last_progress=0.0, age=1.0, reason=42),  # type: ignore[arg-type]
        "a reason of type int",
        id="an int reason",
    ),
]


@pytest.mark.parametrize(("value", "reason"), JUNK)
def test_health_status_override_returning_junk_answers_unknown(kind, factory, value, reason):
    server = factory()
    server.health_status = _junk_returning(value)  # as the torch integration overrides it
    server.start()
    answer = control_probe(kind, server.port)
    if kind == "http":
        assert answer == "answered HTTP/1.1 503 Service Unavailable"
    else:
        assert answer.startswith("answered unknown ") and reason in answer, answer
    assert server.is_running


def test_detail_that_is_not_json_is_left_out_and_the_verdict_stands(server_factory):
    server = server_factory()
    alive = HealthStatus(Verdict.ALIVE, 60.0, last_progress=time.time(), age=0.0)
    server.health_status = lambda: alive.with_detail({"when": object()})
    server.start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=CONTROL_TIMEOUT) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        response = read_response(sock)
    assert response.status == 200
    assert "detail" not in json.loads(response.body)


@pytest.mark.parametrize("exc", [Boom("no"), SystemExit(3), KeyboardInterrupt()])
def test_health_status_override_raising_answers_unknown(kind, factory, exc):
    def raising() -> HealthStatus:
        raise exc

    server = factory()
    server.health_status = raising
    server.start()
    answer = control_probe(kind, server.port)
    assert answer in (
        "answered HTTP/1.1 503 Service Unavailable",
        f"answered unknown timeout=60 reason=callback raised {type(exc).__name__}",
    )


@pytest.mark.usefixtures("raising_handler")
def test_logging_handler_that_raises_stops_nothing(kind, factory):
    """The verdict turning dead logs a WARNING on the I/O thread: its handler raises."""
    last = [int(time.time())]
    server = factory(lambda: last[0], timeout=60)
    server.start()  # "Serving ..." goes to the raising handler too
    assert control_probe(kind, server.port).startswith(("answered HTTP/1.1 200", "answered alive"))
    last[0] = 0
    dead = ("answered HTTP/1.1 503", "answered dead")
    wait_for(lambda: control_probe(kind, server.port).startswith(dead), timeout=1)
    for _ in range(3):
        answer = control_probe(kind, server.port)
        assert answer.startswith(dead), answer
    assert server.is_running
    server.stop()


class FaultyHTTP(HTTPHealthCheckServer):
    """Raises from the hook named by ``fault``."""

    fault = ""

    def _on_start(self) -> None:
        if self.fault == "_on_start":
            raise Boom(self.fault)

    def _observe(self, status: HealthStatus) -> None:
        if self.fault == "_observe":
            raise Boom(self.fault)
        super()._observe(status)

    def _make_protocol(self, services: Services) -> BaseProtocol:
        if self.fault == "_make_protocol" and not getattr(self, "made_one", False):
            self.made_one = True
            raise Boom(self.fault)
        protocol = super()._make_protocol(services)
        assert isinstance(protocol, HTTPProtocol)
        if self.fault in ("status_received", "data_received", "connection_lost", "timeout"):
            fault = self.fault

            def boom(*args: object) -> None:
                raise Boom(fault)

            if not getattr(self, "made_one", False):
                self.made_one = True
                setattr(protocol, fault, boom)
        return protocol

    def debug_text(self, name: str) -> str | None:
        raise Boom("debug_text")


@pytest.mark.parametrize(
    "fault",
    [
        "_on_start",
        "_observe",
        "_make_protocol",
        "status_received",
        "data_received",
        "connection_lost",
    ],
)
def test_subclass_hook_that_raises_is_logged_once_and_serving_goes_on(fault, eh_caplog):
    server = FaultyHTTP(lambda: int(time.time()), 0, 60, host="127.0.0.1")
    server.fault = fault
    server.start()
    try:
        first = control_probe("http", server.port)  # may meet the fault
        assert first in ("answered ", "answered HTTP/1.1 200 OK"), first  # closed, or served
        for _ in range(3):
            assert control_probe("http", server.port) == "answered HTTP/1.1 200 OK"
        assert server.is_running
        tracebacks = [r for r in eh_caplog.records if r.exc_info and fault in str(r.exc_info[1])]
        assert len(tracebacks) == 1, [r.getMessage() for r in tracebacks]
    finally:
        server.stop()


def test_debug_text_that_raises_is_503(eh_caplog):
    server = FaultyHTTP(lambda: int(time.time()), 0, 60, host="127.0.0.1", debug=True)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=1) as sock:
            sock.sendall(b"GET /debug/x HTTP/1.1\r\nHost: x\r\n\r\n")
            response = read_response(sock)
        assert response.status == 503
        assert response.body == b"debug_text() raised Boom\n"
    finally:
        server.stop()


def test_a_loop_that_cannot_go_on_refuses_and_says_it_is_not_running(kind, factory, eh_caplog):
    """select() itself failing on every turn: listeners close, is_running turns False."""
    server = factory()
    server.start()
    port = server.port
    selector = server._engine.loop.selector
    broken = threading.Event()

    def select(timeout: float | None = None) -> list[object]:
        broken.set()
        raise OSError(9, "Bad file descriptor")

    selector.select = select
    server._engine.loop.wake()
    wait_for(lambda: not server.is_running, timeout=CONTROL_TIMEOUT)
    assert control_probe(kind, port) == "refused"
    assert any(r.levelno == logging.CRITICAL for r in eh_caplog.records)
    server.stop()
    again = factory(port=port)
    again.start()  # the port is free
    assert control_probe(kind, port).startswith("answered")


def test_a_tcp_server_whose_loop_gave_up_can_be_started_again(tcp_factory):
    server: TCPHealthCheckServer = tcp_factory()
    server.start()

    def select(timeout: float | None = None) -> list[object]:
        raise OSError(9, "Bad file descriptor")

    engine = server._engine
    assert engine is not None and engine.loop.selector is not None
    engine.loop.selector.select = select  # type: ignore[method-assign,assignment]
    engine.loop.wake()
    wait_for(lambda: not server.is_running, timeout=CONTROL_TIMEOUT)
    server.start()  # what a supervisor does when is_running is False
    assert control_probe("tcp", server.port).startswith("answered alive")


def test_protocol_timeout_hook_that_raises_closes_that_client_only(eh_caplog):
    """The deadline hook (the old ``_on_timeout``) raising: that idle client is dropped."""
    server = FaultyHTTP(lambda: int(time.time()), 0, 60, host="127.0.0.1", client_timeout=0.1)
    server.fault = "timeout"
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=CONTROL_TIMEOUT) as idle:
            assert read_until_closed(idle) == b""  # dropped at its deadline, not left open
        for _ in range(3):
            assert control_probe("http", server.port) == "answered HTTP/1.1 200 OK"
        tracebacks = [
            r for r in eh_caplog.records if r.exc_info and "timeout" in str(r.exc_info[1])
        ]
        assert len(tracebacks) == 1
    finally:
        server.stop()


@pytest.mark.parametrize("hook", ["_observe", "data_received"])
def test_a_hook_raising_system_exit_stops_the_server_and_says_so(hook, eh_caplog):
    """SystemExit is not an error to serve on: the server stops, refuses, and the log says
    it stopped and why (not that serving goes on)."""

    class Exiting(HTTPHealthCheckServer):
        def _observe(self, status: HealthStatus) -> None:
            if hook == "_observe":
                raise SystemExit(3)
            super()._observe(status)

        def _make_protocol(self, services: Services) -> BaseProtocol:
            protocol = super()._make_protocol(services)
            if hook == "data_received":

                def exiting(data: bytes) -> None:
                    raise SystemExit(3)

                protocol.data_received = exiting  # type: ignore[method-assign]
            return protocol

    server = Exiting(lambda: int(time.time()), 0, 60, host="127.0.0.1")
    server.start()
    try:
        port = server.port
        assert control_probe("http", port) in ("answered ", "refused")
        wait_for(lambda: not server.is_running, timeout=CONTROL_TIMEOUT)
        assert control_probe("http", port) == "refused"
        messages = [r.getMessage() for r in eh_caplog.records if r.levelno >= logging.ERROR]
        assert not [m for m in messages if "serving goes on" in m], messages
        stopped = [m for m in messages if "stopped" in m and "SystemExit" in m]
        assert len(stopped) == 1, messages
    finally:
        server.stop()


def test_a_repeating_hook_error_is_logged_once_with_its_traceback_then_counted(
    eh_caplog, monkeypatch
):
    """A protocol hook that raises on every request: one traceback, then a count at
    intervals (REPEAT_INTERVAL, shortened here), never a traceback per request."""
    monkeypatch.setattr(loop, "REPEAT_INTERVAL", 0.3)

    class Raising(HTTPHealthCheckServer):
        def _make_protocol(self, services: Services) -> BaseProtocol:
            protocol = super()._make_protocol(services)

            def boom(data: bytes) -> None:
                raise Boom("every request")

            protocol.data_received = boom  # type: ignore[method-assign]
            return protocol

    server = Raising(lambda: int(time.time()), 0, 60, host="127.0.0.1")
    server.start()
    try:
        for _ in range(50):
            assert control_probe("http", server.port) == "answered "  # closed, unanswered
        start = time.monotonic()
        wait_for(lambda: time.monotonic() > start + 0.3)  # the interval passes
        assert control_probe("http", server.port) == "answered "  # after the interval
    finally:
        server.stop()
    ours = [r for r in eh_caplog.records if "every request" in str(r.exc_info and r.exc_info[1])]
    assert len(ours) == 1  # the traceback, once
    counts = [r.getMessage() for r in eh_caplog.records if "more times" in r.getMessage()]
    assert counts and "Boom" in counts[0], [r.getMessage() for r in eh_caplog.records]
    assert sum(int(m.split(" more times")[0].rsplit(" ", 1)[1]) for m in counts) == 50
