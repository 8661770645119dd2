"""Out of file descriptors: idle connections make room for probes; else new ones wait."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from .client import ResponseReader, read_until_closed
from .conftest import wait_for

resource = pytest.importorskip("resource")

PROBE = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
PROBE_CLOSE = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


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
def test_out_of_descriptors_with_nothing_to_shed_waits_and_recovers(
    server_factory, two_loopbacks, eh_caplog, listeners
):
    """Every open connection is being answered (the callback is slow): none is closed to
    make room; new connections wait in the backlog and are taken once a descriptor is free."""
    entered, release = threading.Event(), threading.Event()

    def slow_callback() -> int:
        entered.set()
        release.wait(10)
        return int(time.time())

    host = two_loopbacks if listeners == 2 else "127.0.0.1"
    server = server_factory(slow_callback, host=host, callback_timeout=10.0)
    server.start()
    port = server.port
    assert len(server.addresses) == listeners
    families = [socket.AF_INET, socket.AF_INET6][:listeners]
    try:
        with contextlib.ExitStack() as stack:
            kept = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
            waiting = [stack.enter_context(socket.socket(f, socket.SOCK_STREAM)) for f in families]
            kept.sendall(PROBE)
            assert entered.wait(5)  # kept waits for its answer: it is not idle
            with out_of_descriptors():
                for sock, address in zip(waiting, ["127.0.0.1", "::1"][:listeners], strict=True):
                    sock.settimeout(5)
                    sock.connect((address, port))  # into the backlog: no descriptor to accept
                    sock.sendall(PROBE)
                wait_for(lambda: any("Cannot accept" in r.getMessage() for r in eh_caplog.records))
                start = time.monotonic()
                wait_for(lambda: time.monotonic() - start > 0.3)  # several retries go by
                assert server.is_running
                assert len(server._engine.transports) == 1  # kept, and nothing accepted
            # Descriptors are free: the waiting connections are taken at once.
            wait_for(lambda: len(server._engine.transports) == 1 + listeners, timeout=1.0)
            release.set()
            assert ResponseReader(kept).read().status == 200  # served throughout
            for sock in waiting:
                assert ResponseReader(sock).read().status == 200
    finally:
        release.set()
    messages = [r.getMessage() for r in eh_caplog.records if r.levelno >= logging.INFO]
    assert sum("Cannot accept" in m for m in messages) == 1, messages  # once per episode
    again = "Accepting http health check connections again (0 closed to make room)"
    assert sum(again in m for m in messages) == 1, messages
    assert not [r for r in eh_caplog.records if r.levelno >= logging.ERROR]


# A server in a process of its own, limited to 64 descriptors: it prints its port, serves
# until its standard input closes, then prints the log lines it wrote.
LIMITED_SERVER = """
import io, logging, resource, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from elastic_healthcheck import HTTPHealthCheckServer
logs = io.StringIO()
handler = logging.StreamHandler(logs)
logging.getLogger("elastic_healthcheck").addHandler(handler)
logging.getLogger("elastic_healthcheck").setLevel(logging.INFO)
server = HTTPHealthCheckServer(lambda: int(time.time()), 0, 60, host="127.0.0.1",
                               client_timeout=60)
server.start()
print(server.port, flush=True)
sys.stdin.read()
server.stop()
print(logs.getvalue(), flush=True)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_NOFILE semantics")
@pytest.mark.parametrize("idle_clients", [100, 300])
def test_idle_clients_at_the_descriptor_limit_never_lock_a_prober_out(idle_clients):
    """With 64 descriptors and hundreds of idle clients, the longest idle are closed to
    make room: every probe is answered, at once (not when an idle client times out)."""
    child = subprocess.Popen(
        [sys.executable, "-c", LIMITED_SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        with contextlib.ExitStack() as stack:
            for _ in range(idle_clients):  # connected, silent, and never closed by us
                stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
            answered = 0
            for _ in range(20):
                with socket.create_connection(("127.0.0.1", port), timeout=5) as probe:
                    probe.settimeout(2.0)  # client_timeout is 60 s: no waiting that out
                    probe.sendall(PROBE_CLOSE)
                    with contextlib.suppress(TimeoutError):
                        answered += read_until_closed(probe).startswith(b"HTTP/1.1 200 ")
        assert answered == 20
    finally:
        output, errors = child.communicate(timeout=30)
    assert child.returncode == 0, errors
    assert output.count("Cannot accept http health check connections") == 1, output
    assert "Traceback" not in output + errors
