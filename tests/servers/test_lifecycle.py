"""start() and stop() for every server kind: binding, errors, idempotence, restarts on one
port, signals, fork. Tests that take `factory` run once per kind (see conftest.py)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

import elastic_healthcheck
from elastic_healthcheck import HTTPHealthCheckServer
from elastic_healthcheck._engine.server import SocketHealthCheckServer
from elastic_healthcheck.status import Verdict

from .client import NOW_CALLBACK, read_until_closed, request
from .conftest import answers_alive, connect


def test_start_returns_once_listening(factory):
    server = factory()
    server.start()
    with connect(server.port):  # no retry loop: the port must already be listening
        pass


def test_port_in_use_raises_oserror_naming_host_and_port(factory):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = factory(port=port)
        with pytest.raises(OSError) as info:
            server.start()
    assert info.value.errno == errno.EADDRINUSE
    assert f"127.0.0.1:{port}" in str(info.value)
    assert not server.is_running
    server.stop()  # harmless after a failed start


def test_address_not_available_raises_oserror(factory):
    server = factory(host="192.0.2.1")  # TEST-NET-1: never assigned to this host
    with pytest.raises(OSError) as info:
        server.start()
    assert info.value.errno == errno.EADDRNOTAVAIL
    assert "192.0.2.1:0" in str(info.value)


@pytest.mark.parametrize("port", [65536, 70000, -1])
def test_port_out_of_range_raises_oserror(factory, port):
    server = factory(port=port)
    with pytest.raises(OSError) as info:
        server.start()
    assert info.value.errno == errno.EINVAL
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "0-65535" in str(info.value)


def test_unresolvable_host_raises_oserror_naming_it(factory):
    server = factory(host="no-such-host.invalid")
    with pytest.raises(OSError, match=r"no-such-host\.invalid:0"):
        server.start()


def _unprivileged_port_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except OSError:
        return 1024


@pytest.mark.skipif(sys.platform != "linux", reason="Linux privileged-port rules")
@pytest.mark.skipif(_unprivileged_port_start() <= 80, reason="port 80 is not privileged here")
def test_privileged_port_raises_oserror_for_an_unprivileged_user():
    code = (
        "import errno, os\n"
        "from elastic_healthcheck import HTTPHealthCheckServer\n"
        "if os.geteuid() == 0:  # become nobody, after the imports\n"
        "    os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "s = HTTPHealthCheckServer(lambda: 0, 80, 60, host='127.0.0.1')\n"
        "try:\n"
        "    s.start()\n"
        "except OSError as e:\n"
        "    print(errno.errorcode[e.errno], e)\n"
        "else:\n"
        "    s.stop(); print('bound')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("EACCES [Errno 13] cannot listen on 127.0.0.1:80:"), (
        result.stdout
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"alive_callback": 42}, TypeError, "alive_callback must be callable"),
        ({"port": "8080"}, TypeError, "port must be an int"),
        ({"port": True}, TypeError, "port must be an int"),
        ({"timeout": -1}, ValueError, "timeout"),
        ({"timeout": "60"}, TypeError, "timeout"),
        ({"callback_timeout": 0}, ValueError, "callback_timeout"),
        ({"client_timeout": float("inf")}, ValueError, "client_timeout"),
        ({"max_connections": 0}, ValueError, "max_connections"),
        ({"host": 127}, TypeError, "host"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, error, match):
    args = {"alive_callback": NOW_CALLBACK, "port": 0, "timeout": 60} | kwargs
    with pytest.raises(error, match=match):
        HTTPHealthCheckServer(**args)


def test_start_twice_is_harmless(server):
    port, thread = server.port, server._engine.thread
    server.start()
    assert (server.port, server._engine.thread) == (port, thread)
    assert request(port).status == 200


def test_stop_before_start_and_twice_is_harmless(factory):
    server = factory()
    server.stop()
    server.start()
    server.stop()
    server.stop()
    assert not server.is_running


def test_context_manager(kind, factory):
    with factory() as server:
        port = server.port
        assert answers_alive(kind, port)
    assert not server.is_running
    with pytest.raises(ConnectionRefusedError):
        answers_alive(kind, port, timeout=1)


def test_stop_frees_port_for_immediate_restart(kind, factory):
    """A stopped server's port can be bound again at once (torch restarts on the same port)."""
    first = factory()
    first.start()
    port = first.port
    assert answers_alive(kind, port)
    first.stop()
    second = factory(port=port)
    second.start()  # raises OSError naming 127.0.0.1:<port> if the port was not freed
    assert answers_alive(kind, port)


def test_two_hundred_start_probe_stop_cycles_on_one_port(kind, factory):
    server = factory()
    server.start()
    port = server.port
    server.stop()
    for _ in range(200):
        server = factory(port=port)
        server.start()
        assert answers_alive(kind, port)
        server.stop()


def test_stop_closes_client_connections(server):
    with connect(server.port) as idle, connect(server.port) as keep_alive:
        keep_alive.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert keep_alive.recv(65536).startswith(b"HTTP/1.1 200")
        server.stop()
        assert read_until_closed(idle) == b""
        assert read_until_closed(keep_alive) == b""


def test_stop_is_fast_with_clients_connected(factory):
    """stop() takes well under 50 ms (median of 20, with an idle client each time)."""
    durations = []
    server = factory()
    for _ in range(20):
        server.start()
        with connect(server.port):
            start = time.perf_counter()
            server.stop()
            durations.append(time.perf_counter() - start)
    assert statistics.median(durations) < 0.05, durations


def test_stop_is_prompt_while_the_callback_hangs(server_factory):
    release = threading.Event()
    server = server_factory(lambda: release.wait(), callback_timeout=0.1)
    server.start()
    assert request(server.port).status == 503
    start = time.perf_counter()
    server.stop()
    elapsed = time.perf_counter() - start
    release.set()  # let the stuck callback thread finish (the leak check waits for it)
    assert elapsed < 1.0


class Interrupt(Exception):
    """What a signal handler raises (torch's SignalException is an Exception too)."""


def _package_line_tracer(target_index: int, seen: list[tuple[str, int]]):
    """A tracer that raises Interrupt at the target_index-th line executed in the package."""
    package = str(Path(elastic_healthcheck.__file__).parent)

    def local(frame, event, arg):
        if event == "line":
            seen.append((frame.f_code.co_filename, frame.f_lineno))
            if len(seen) - 1 == target_index:
                raise Interrupt(f"at {frame.f_code.co_name}:{frame.f_lineno}")
        return local

    def global_(frame, event, arg):
        return local if package in frame.f_code.co_filename else None

    return global_


def test_stop_interrupted_at_any_line_propagates_and_a_second_stop_finishes(server_factory):
    """A signal handler's exception inside stop() is never swallowed; stop() again cleans up."""
    lines: list[tuple[str, int]] = []
    server = server_factory()
    server.start()
    previous = sys.gettrace()  # coverage's, when measured: put it back after
    sys.settrace(_package_line_tracer(-1, lines))
    try:
        server.stop()
    finally:
        sys.settrace(previous)
    assert len(lines) > 10
    port = None
    for index in range(len(lines)):
        server = server_factory(port=port or 0)
        server.start()
        port = server.port
        with connect(port) as client:
            sys.settrace(_package_line_tracer(index, []))
            try:
                with pytest.raises(Interrupt):
                    server.stop()
            finally:
                sys.settrace(previous)
            server.stop()
            assert not server.is_running
            assert server._engine is None
            assert read_until_closed(client) == b""


def test_forked_child_does_not_keep_the_listening_socket(kind, factory):
    server = factory()
    server.start()
    port = server.port
    read_end, write_end = os.pipe()
    ready_r, ready_w = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads: on purpose
        pid = os.fork()
    if pid == 0:  # the child: say it runs (its fork handlers are done), then hold on
        os.close(write_end)
        os.write(ready_w, b"!")
        os.read(read_end, 1)
        os._exit(0)
    os.close(read_end)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"!"
        server.stop()
        with pytest.raises(ConnectionRefusedError):
            answers_alive(kind, port, timeout=1)  # nobody, not even the child, is listening
        again = factory(port=port)
        again.start()  # the same port, while the child lives
        assert answers_alive(kind, port)
    finally:
        os.close(ready_r)
        os.close(write_end)
        os.waitpid(pid, 0)


def test_probe_counts_survive_a_restart(kind, factory):
    """The /metrics counters are counters: a stop() and start() does not reset them."""
    server = factory()
    server.start()
    assert answers_alive(kind, server.port)
    server.stop()
    server.start()
    assert answers_alive(kind, server.port)
    assert server._probes[Verdict.ALIVE] == 2


def test_stop_from_the_callback_frees_the_port_before_any_client_sees_it(kind, factory):
    """stop() called by the callback itself (the evaluator thread): by the time a client
    sees its connection closed, the port is free for a new server."""
    port = 0
    for _ in range(50):
        stopped, made = threading.Event(), list[SocketHealthCheckServer]()

        def stopping_callback(made=made, stopped=stopped) -> int:
            made[0].stop()
            stopped.set()
            return int(time.time())

        server = factory(stopping_callback, port=port, callback_timeout=5.0)
        made.append(server)
        server.start()
        port = server.port
        with connect(port) as sock:
            if kind == "http":
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_until_closed(sock) == b""  # closed by stop(), unanswered
        again = factory(port=port)
        again.start()  # raises OSError (EADDRINUSE) if the port was still held
        again.stop()
        assert stopped.wait(5)


def test_stop_from_a_hook_on_the_io_thread_frees_the_port(kind, factory, eh_caplog):
    returned = threading.Event()

    def observe(status: object) -> None:
        server.stop()  # on the I/O thread: no join of itself, and the port is freed
        returned.set()

    server = factory()
    server._observe = observe  # every verdict passes here, on the I/O thread
    server.start()
    port = server.port
    answers = []
    with contextlib.suppress(ConnectionError, OSError):
        answers.append(answers_alive(kind, port, timeout=2))
    assert returned.wait(5)
    assert not server.is_running
    again = factory(port=port)
    again.start()
    assert answers_alive(kind, port)
    assert not [r.getMessage() for r in eh_caplog.records if r.levelno >= logging.WARNING]
