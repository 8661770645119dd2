"""Fixtures for servers on real loopback sockets: port 0, read back, no sleeps."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from elastic_healthcheck import HTTPHealthCheckServer, TCPHealthCheckServer
from elastic_healthcheck._engine.server import SocketHealthCheckServer

from .client import NOW_CALLBACK, read_until_closed, request

ServerFactory = Callable[..., HTTPHealthCheckServer]


def _factories(cls: type[SocketHealthCheckServer]) -> Iterator[Callable[..., object]]:
    """Build servers of ``cls`` on 127.0.0.1; every one is stopped and checked for leaks."""
    made: list[SocketHealthCheckServer] = []

    def make(
        alive_callback: Callable[[], object] = NOW_CALLBACK,
        port: int = 0,
        timeout: float = 60,
        **options: object,
    ) -> SocketHealthCheckServer:
        options.setdefault("host", "127.0.0.1")
        server = cls(alive_callback, port, timeout, **options)  # type: ignore[arg-type]
        made.append(server)
        return server

    yield make
    for server in made:
        engine = server._engine
        listeners = list(engine.listeners.sockets) if engine is not None else []
        server.stop()
        assert not server.is_running
        assert all(s.fileno() == -1 for s in listeners)
        assert server._engine is None
        if engine is not None:
            assert engine.listeners.sockets == []
            assert engine.thread is None or not engine.thread.is_alive()
            assert not engine.transports


@pytest.fixture
def server_factory() -> Iterator[Callable[..., object]]:
    """Build HTTP servers on 127.0.0.1; every one is stopped and checked for leaks."""
    yield from _factories(HTTPHealthCheckServer)


@pytest.fixture
def tcp_factory() -> Iterator[Callable[..., object]]:
    """Build TCP servers on 127.0.0.1; every one is stopped and checked for leaks."""
    yield from _factories(TCPHealthCheckServer)


@pytest.fixture(params=["http", "tcp"])
def kind(request: pytest.FixtureRequest) -> str:
    """Each server kind in turn: the promises every server keeps are tested on each."""
    return str(request.param)


@pytest.fixture
def factory(
    kind: str,
    server_factory: Callable[..., object],
    tcp_factory: Callable[..., object],
) -> Callable[..., object]:
    """The factory for ``kind``."""
    return server_factory if kind == "http" else tcp_factory


def answers_alive(kind: str, port: int, timeout: float = 5.0) -> bool:
    """Probe a server of ``kind`` once, on a new connection: is the verdict alive?"""
    if kind == "http":
        return request(port, timeout=timeout).status == 200
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        return read_until_closed(sock).startswith(b"alive ")


@pytest.fixture
def eh_caplog(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture every record of the package (its loggers carry LOGLEVEL's level, as torch's do)."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("elastic_healthcheck"):
            caplog.set_level(logging.DEBUG, logger=name)
    return caplog


@pytest.fixture
def server(server_factory: ServerFactory) -> Iterator[HTTPHealthCheckServer]:
    """A started HTTP server whose callback says "now": alive."""
    server = server_factory()
    server.start()
    yield server


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.005) -> None:
    """Poll ``predicate`` until it holds, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def connect(port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)
