"""HTTP on the wire: an answer at the first wrong byte, 414 however split, half-closes answered."""

from __future__ import annotations

import functools
import socket
import time

import pytest

from elastic_healthcheck import HTTPHealthCheckServer, create_healthcheck_server

from .client import ResponseReader, read_until_closed
from .conftest import connect, wait_for

# The first bytes of a TLS 1.2/1.3 ClientHello (a handshake record, then its header).
CLIENT_HELLO = bytes.fromhex("16030100f5010000f10303") + bytes(32)
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(CLIENT_HELLO, id="TLS ClientHello"),
        pytest.param(H2_PREFACE, id="HTTP/2 preface"),
        pytest.param(b"G{T /healthz", id="non-token byte in the method"),
    ],
)
def test_what_cannot_be_http_gets_400_and_a_close_within_milliseconds(server, data):
    """A kubelet probe with ``scheme: HTTPS`` fails fast instead of timing out."""
    with connect(server.port) as sock:
        start = time.monotonic()
        sock.sendall(data)  # and nothing more: the client waits for the server
        response = read_until_closed(sock)
        elapsed = time.monotonic() - start
    assert response.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert elapsed < 0.5, elapsed  # milliseconds, not client_timeout (5 s)


LONG_TARGET = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("split", [None, 100, 4096, 8200, 9010])
def test_long_target_is_414_however_the_bytes_arrive(server, split):
    with connect(server.port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if split is None:
                sock.sendall(LONG_TARGET)
            else:
                sock.sendall(LONG_TARGET[:split])
                sent = time.monotonic()  # then a pause: two segments, two recv() calls
                wait_for(lambda: time.monotonic() - sent >= 0.02, interval=0.01)
                sock.sendall(LONG_TARGET[split:])
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before the rest was sent
        assert read_until_closed(sock).startswith(b"HTTP/1.1 414 URI Too Long\r\n")


def test_request_then_half_close_is_answered_by_a_slow_callback(server_factory):
    """`printf 'GET ...' | nc -N`: the end of input comes before the verdict."""

    def slow() -> int:
        time.sleep(0.005)  # the callback's own time: the end of input comes first
        return int(time.time())

    server = server_factory(slow)
    server.start()
    for _ in range(20):
        with connect(server.port) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.shutdown(socket.SHUT_WR)
            response = read_until_closed(sock)
        assert response.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\nConnection: close\r\n" in response
        past_reuse = time.monotonic() + 0.011  # every probe waits for a call of its own
        wait_for(functools.partial(_after, past_reuse), interval=0.005)


def _after(moment: float) -> bool:
    return time.monotonic() > moment


class Diagnosed(HTTPHealthCheckServer):
    """A server with one debug text."""

    def debug_text(self, name: str) -> str | None:
        return "rank 0: in allreduce\n" if name == "stacks" else None


@pytest.mark.parametrize(
    ("debug", "path", "status", "body"),
    [
        (True, "/debug/stacks", 200, b"rank 0: in allreduce\n"),
        (True, "/debug/nothing", 404, b"404 Not Found\n"),
        (False, "/debug/stacks", 404, b"404 Not Found\n"),
    ],
)
def test_debug_texts_only_when_switched_on(debug, path, status, body):
    server = Diagnosed(lambda: int(time.time()), 0, 60, host="127.0.0.1", debug=debug)
    with server, connect(server.port) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        response = ResponseReader(sock).read()
    assert (response.status, response.body) == (status, body)
    assert response.header("Content-Type") == "text/plain; charset=utf-8"


def test_debug_must_be_a_bool():
    with pytest.raises(TypeError, match="debug must be a bool, not str"):
        HTTPHealthCheckServer(lambda: 0, 0, 60, debug="yes")  # type: ignore[arg-type]


def test_debug_option_from_the_environment(monkeypatch):
    """ELASTIC_HEALTHCHECK_DEBUG goes through the one builder like every other option."""
    monkeypatch.setenv("ELASTIC_HEALTHCHECK_SERVER", f"{__name__}:Diagnosed")
    monkeypatch.setenv("ELASTIC_HEALTHCHECK_DEBUG", "1")
    monkeypatch.setenv("ELASTIC_HEALTHCHECK_HOST", "127.0.0.1")
    server = create_healthcheck_server(lambda: int(time.time()), 0, 60)
    assert isinstance(server, Diagnosed)
    with server, connect(server.port) as sock:
        sock.sendall(b"GET /debug/stacks HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ResponseReader(sock).read().body == b"rank 0: in allreduce\n"


def test_debug_text_set_on_the_instance_after_start_counts(server_factory):
    """As health_status(), debug_text() is looked up at each call (the torch integration
    sets both on the instance)."""
    server = server_factory(debug=True)
    server.start()
    server.debug_text = lambda name: f"late {name}\n"
    with connect(server.port) as sock:
        sock.sendall(b"GET /debug/stacks HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ResponseReader(sock).read().body == b"late stacks\n"
