"""Out of file descriptors: open connections are served, new ones as soon as one is free."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator

import pytest

from .client import ResponseReader
from .conftest import wait_for

resource = pytest.importorskip("resource")

PROBE = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@contextlib.contextmanager
def out_of_descriptors() -> Iterator[list[int]]:
    """Lower this process's descriptor limit and use up what is left (restored after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 32, hard))
    filler: list[int] = []
    try:
        while True:
            try:
                filler.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        yield filler
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def two_loopbacks(monkeypatch: pytest.MonkeyPatch) -> str:
    """A name that resolves to 127.0.0.1 and ::1, as ``localhost`` does on many systems."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    real = socket.getaddrinfo

    def getaddrinfo(host: object, port: object, *args: object, **kwargs: object) -> object:
        if host != "two-loopbacks":
            return real(host, port, *args, **kwargs)  # type: ignore[arg-type]
        both = real("127.0.0.1", port, *args, **kwargs)  # type: ignore[arg-type]
        return both + real("::1", port, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return "two-loopbacks"


@pytest.mark.skipif(sys.platform != "linux", reason="counts descriptors in /proc/self/fd")
@pytest.mark.parametrize("listeners", [1, 2])
def test_out_of_descriptors_serves_open_connections_and_recovers(
    server_factory, two_loopbacks, eh_caplog, listeners
):
    host = two_loopbacks if listeners == 2 else "127.0.0.1"
    server = server_factory(host=host)
    server.start()
    port = server.port
    assert len(server.addresses) == listeners
    families = [socket.AF_INET, socket.AF_INET6][:listeners]
    with contextlib.ExitStack() as stack:
        kept = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
        waiting = [stack.enter_context(socket.socket(f, socket.SOCK_STREAM)) for f in families]
        kept.sendall(PROBE)
        reader = ResponseReader(kept)
        assert reader.read().status == 200
        with out_of_descriptors():
            for sock, address in zip(waiting, ["127.0.0.1", "::1"][:listeners], strict=True):
                sock.settimeout(5)
                sock.connect((address, port))  # into the backlog: accept() has no descriptor
                sock.sendall(PROBE)
            wait_for(lambda: any("Cannot accept" in r.getMessage() for r in eh_caplog.records))
            start = time.monotonic()
            for _ in range(5):  # the open connection is served all along
                kept.sendall(PROBE)
                assert reader.read().status == 200
            wait_for(lambda: time.monotonic() - start > 0.3)  # several retries go by
            assert server.is_running
        freed = time.monotonic()
        for sock in waiting:  # answered as soon as descriptors are free
            assert ResponseReader(sock).read().status == 200
        assert time.monotonic() - freed < 1.0
    messages = [r.getMessage() for r in eh_caplog.records if r.levelno >= logging.INFO]
    assert sum("Cannot accept" in m for m in messages) == 1, messages  # once per episode
    assert sum("Accepting http health check connections again" in m for m in messages) == 1
    assert not [r for r in eh_caplog.records if r.levelno >= logging.ERROR]
