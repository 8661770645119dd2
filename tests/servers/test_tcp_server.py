"""What a TCP prober sees: one status line per connection, and a port closed while dead."""

from __future__ import annotations

import errno
import logging
import re
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from elastic_healthcheck._engine import listeners as _listeners
from elastic_healthcheck._tcp.protocol import TCPState
from elastic_healthcheck._tcp.server import TCPHealthCheckServer
from elastic_healthcheck.status import HealthStatus, Verdict

from .client import NOW_CALLBACK, read_until_closed
from .conftest import connect, wait_for

LINE = re.compile(rb"(alive|dead) age=(\d+\.\d) timeout=(\S+)\n")


class Progress:
    """A callback driven by the test: the last progress time, read on every call."""

    def __init__(self, last: object = None) -> None:
        self.last = int(time.time()) if last is None else last
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        return self.last

    def alive(self) -> None:
        self.last = int(time.time())

    def dead(self) -> None:
        self.last = 0


def probe(port: int, send: bytes = b"", timeout: float = 5.0) -> bytes:
    """Connect, optionally send, and read everything until the server closes."""
    with connect(port, timeout=timeout) as sock:
        if send:
            sock.sendall(send)
        return read_until_closed(sock)


def refused(port: int) -> bool:
    """True if a connection is refused; False if accepted, or reset mid-handshake.

    A connection still in the handshake when the server closes its listener is reset,
    neither accepted nor refused: poll again.
    """
    try:
        with connect(port, timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False


def answers(port: int) -> bytes | None:
    """The line; None while the port refuses connections; b"" if reset as it closed."""
    try:
        return probe(port)
    except ConnectionRefusedError:
        return None
    except ConnectionResetError:
        return b""


def parse(line: bytes) -> tuple[str, float, str]:
    match = LINE.fullmatch(line)
    assert match is not None, line
    return match[1].decode(), float(match[2]), match[3].decode()


def server_threads(port: int) -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.endswith(f":{port}"))


def voluntary_switches(thread: threading.Thread) -> tuple[str, int]:
    """The thread's state letter and voluntary context switches, from /proc."""
    fields = dict(
        line.split(":", 1)
        for line in Path(f"/proc/self/task/{thread.native_id}/status").read_text().splitlines()
    )
    return fields["State"].split()[0], int(fields["voluntary_ctxt_switches"])


# -- the line -----------------------------------------------------------------------------


def test_alive_line(tcp_factory):
    server = tcp_factory()
    server.start()
    verdict, age, timeout = parse(probe(server.port))
    assert (verdict, timeout) == ("alive", "60")
    assert 0 <= age < 5


def test_dead_line(tcp_factory):
    server = tcp_factory(lambda: time.time() - 120)
    server.start()
    verdict, age, timeout = parse(probe(server.port))
    assert (verdict, timeout) == ("dead", "60")
    assert 120 <= age < 125


@pytest.mark.parametrize(("timeout", "shown"), [(60, b"60"), (2.5, b"2.5"), (3600, b"3600")])
def test_timeout_is_shown_without_needless_digits(tcp_factory, timeout, shown):
    server = tcp_factory(lambda: time.time(), timeout=timeout)
    server.start()
    assert probe(server.port).endswith(b" timeout=" + shown + b"\n")


@pytest.mark.parametrize(
    ("callback", "line"),
    [
        pytest.param(
            lambda: 1 / 0,
            b"unknown timeout=60 reason=callback raised ZeroDivisionError\n",
            id="raises",
        ),
        pytest.param(
            lambda: None, b"unknown timeout=60 reason=callback returned NoneType\n", id="none"
        ),
        pytest.param(
            lambda: "soon", b"unknown timeout=60 reason=callback returned str\n", id="string"
        ),
    ],
)
def test_unknown_line_names_the_reason(tcp_factory, callback, line):
    server = tcp_factory(callback)
    server.start()
    assert probe(server.port) == line


class ReasonServer(TCPHealthCheckServer):
    """A subclass that reports its own verdict (health_status is the extension point)."""

    reason = ""

    def health_status(self) -> HealthStatus:
        return HealthStatus.unknown(60.0, self.reason)


def test_reason_cannot_break_the_line_or_leave_ascii():
    """Control characters become spaces, anything beyond ASCII a question mark."""
    server = ReasonServer(NOW_CALLBACK, 0, 60, host="127.0.0.1")
    server.reason = "one\ntwo\r\t\x00\x7f caf\u00e9 \u2028end"
    with server:
        line = probe(server.port)
    assert line == b"unknown timeout=60 reason=one two     caf? ?end\n"


def test_long_reason_is_cut():
    server = ReasonServer(NOW_CALLBACK, 0, 60, host="127.0.0.1")
    server.reason = "x" * 10_000
    with server:
        line = probe(server.port)
    assert line.startswith(b"unknown timeout=60 reason=xxx")
    assert line.endswith(b"...\n")
    assert len(line) < 256


# -- clients ------------------------------------------------------------------------------


def test_idle_client_gets_the_line_at_once(tcp_factory):
    """Nothing needs to be sent: the line comes without waiting for client_timeout."""
    server = tcp_factory(client_timeout=30)
    server.start()
    start = time.monotonic()
    with connect(server.port) as sock:
        line = sock.recv(100)
    assert parse(line)[0] == "alive"
    assert time.monotonic() - start < 1.0


def test_client_that_sends_something_still_gets_the_line(tcp_factory):
    """HAProxy's agent-send: a few bytes at connect are read and dropped."""
    server = tcp_factory()
    server.start()
    for _ in range(20):
        assert parse(probe(server.port, send=b"be_web/srv1\n"))[0] == "alive"


def test_input_sent_while_waiting_is_dropped_not_buffered(tcp_factory):
    """Megabytes sent while the callback runs costs no memory, and the line arrives whole."""
    release = threading.Event()
    server = tcp_factory(lambda: (release.wait(), time.time())[1], callback_timeout=5)
    server.start()
    try:
        with connect(server.port) as sock:
            wait_for(lambda: len(server._engine.transports) == 1)
            # More than the socket buffers hold: returns once the server has read most of it.
            sock.sendall(b"x" * 16_000_000)
            (transport,) = server._engine.transports
            assert transport.protocol.state is TCPState.WAITING  # it keeps no input at all
            assert transport.protocol._got_input  # so the close will be graceful
            release.set()
            assert parse(read_until_closed(sock))[0] == "alive"
    finally:
        release.set()


def test_client_that_half_closes_while_waiting_still_gets_the_line(tcp_factory):
    """ncat shuts down its sending side at the end of its input, then reads."""
    release = threading.Event()
    server = tcp_factory(lambda: (release.wait(), time.time())[1], callback_timeout=5)
    server.start()
    with connect(server.port) as sock:
        sock.sendall(b"hello\n")
        sock.shutdown(socket.SHUT_WR)
        wait_for(lambda: len(server._engine.transports) == 1)
        # The end of input is seen: the connection is no longer watched for reading.
        wait_for(lambda: len(server._engine.loop.selector.get_map()) == 2)  # listener and waker
        release.set()
        assert parse(read_until_closed(sock))[0] == "alive"


def test_client_that_connects_and_leaves_costs_nothing(tcp_factory):
    """kubelet's tcpSocket probe: connect, close. The server drops the connection."""
    server = tcp_factory()
    server.start()
    for _ in range(50):
        with connect(server.port):
            pass
    wait_for(lambda: not server._engine.transports)
    assert parse(probe(server.port))[0] == "alive"


def test_hung_callback_answers_unknown_within_its_deadline_without_more_threads(tcp_factory):
    release = threading.Event()
    server = tcp_factory(lambda: release.wait(), callback_timeout=0.1)
    server.start()
    threads = threading.active_count()
    try:
        for _ in range(5):
            start = time.monotonic()
            line = probe(server.port)
            assert time.monotonic() - start < 0.1 + 0.5
            assert line == b"unknown timeout=60 reason=callback did not return within 0.1s\n"
        assert threading.active_count() == threads
    finally:
        release.set()


def test_concurrent_connections_share_one_call_and_two_threads(tcp_factory):
    release = threading.Event()
    progress = Progress()

    def callback() -> object:
        release.wait()
        return progress()

    server = tcp_factory(callback, callback_timeout=5)
    server.start()
    port = server.port
    assert server_threads(port) == [
        f"elastic-healthcheck-callback:{port}",
        f"elastic-healthcheck-tcp:{port}",
    ]
    socks = [connect(port) for _ in range(200)]
    try:
        wait_for(lambda: len(server._engine.transports) == 200)
        release.set()
        lines = [read_until_closed(sock) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    assert {parse(line)[0] for line in lines} == {"alive"}
    assert progress.calls == 1
    assert len(server_threads(port)) == 2


def test_probes_are_counted_by_verdict(tcp_factory):
    progress = Progress()
    server = tcp_factory(progress)
    server.start()
    for _ in range(3):
        probe(server.port)
    progress.dead()
    wait_for(lambda: parse(probe(server.port))[0] == "dead")
    counts = server._probes
    assert counts[Verdict.ALIVE] >= 3
    assert counts[Verdict.DEAD] == 1
    assert counts[Verdict.UNKNOWN] == 0


def test_probes_are_not_logged(tcp_factory, eh_caplog):
    server = tcp_factory()
    server.start()
    for send in [b"", b"hello\n", b"\xff" * 100]:
        probe(server.port, send=send)
    assert [r for r in eh_caplog.records if r.levelno > logging.INFO] == []
    assert [r.getMessage().split(" on ")[0] for r in eh_caplog.records] == [
        "Serving tcp health checks"
    ]


# -- lifecycle ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"refuse_while_dead": 1}, TypeError, "refuse_while_dead must be a bool"),
        ({"recheck_interval": 0}, ValueError, "recheck_interval"),
        ({"recheck_interval": float("nan")}, ValueError, "recheck_interval"),
        ({"recheck_interval": "1"}, TypeError, "recheck_interval"),
        ({"callback_timeout": -1}, ValueError, "callback_timeout"),
        (
            {"agent_check": True, "refuse_while_dead": True},
            ValueError,
            r"^agent_check=True and refuse_while_dead=True cannot be combined: [^\n]*HAProxy",
        ),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        TCPHealthCheckServer(NOW_CALLBACK, 0, 60, **kwargs)


# -- refuse_while_dead --------------------------------------------------------------------


@pytest.mark.parametrize("last", [0, "not a time"], ids=["dead", "unknown"])
def test_server_that_starts_dead_refuses_connections(tcp_factory, last):
    server = tcp_factory(Progress(last), refuse_while_dead=True, recheck_interval=0.05)
    server.start()
    port = server.port
    wait_for(lambda: refused(port))
    assert server.refusing
    assert server.port == port


def test_port_opens_again_once_alive_on_the_same_port(tcp_factory):
    progress = Progress(0)
    server = tcp_factory(progress, refuse_while_dead=True, recheck_interval=0.05)
    server.start()
    port = server.port
    wait_for(lambda: refused(port))
    progress.alive()
    wait_for(lambda: answers(port) is not None)
    assert parse(probe(port))[0] == "alive"
    assert not server.refusing
    assert (server.port, server.addresses) == (port, [("127.0.0.1", port)])


def test_probe_that_finds_the_agent_dead_gets_the_line_then_the_port_closes(tcp_factory):
    progress = Progress()
    server = tcp_factory(progress, refuse_while_dead=True, recheck_interval=0.05)
    server.start()
    port = server.port
    assert parse(probe(port))[0] == "alive"
    progress.dead()
    seen: list[bytes | None] = []

    def refused_now() -> bool:
        seen.append(answers(port))
        return seen[-1] is None

    wait_for(refused_now)
    # Nothing but a probe asks while the port is open: one was answered "dead".
    assert any(line and parse(line)[0] == "dead" for line in seen), seen
    assert refused(port)
    assert server.port == port


def test_hung_callback_closes_the_port_until_it_returns(tcp_factory):
    release = threading.Event()
    server = tcp_factory(
        lambda: (release.wait(), time.time())[1],
        callback_timeout=0.1,
        refuse_while_dead=True,
        recheck_interval=0.05,
    )
    server.start()
    port = server.port
    try:
        # The start-up check is still running: this probe waits for it, in vain.
        assert probe(port).startswith(b"unknown timeout=60 reason=callback did not return")
        wait_for(lambda: refused(port))
    finally:
        release.set()
    wait_for(lambda: answers(port) is not None)
    assert parse(probe(port))[0] == "alive"


def test_refusing_server_calls_the_callback_once_per_recheck_interval(tcp_factory):
    progress = Progress(0)
    server = tcp_factory(progress, refuse_while_dead=True, recheck_interval=0.05)
    server.start()
    wait_for(lambda: server.refusing)
    before, start = progress.calls, time.monotonic()
    wait_for(lambda: time.monotonic() - start >= 0.5, interval=0.05)
    calls = progress.calls - before
    assert 3 <= calls <= 12, calls  # about 10


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/task")
def test_alive_idle_server_never_wakes(tcp_factory):
    """No timer runs: both threads sleep through half a second (refuse_while_dead rechecks)."""
    progress = Progress()
    server = tcp_factory(progress)
    server.start()
    assert parse(probe(server.port))[0] == "alive"
    threads = [server._engine.thread, server._engine.evaluator.thread]
    wait_for(lambda: all(voluntary_switches(t)[0] == "S" for t in threads))
    before = [voluntary_switches(t) for t in threads]
    start = time.monotonic()
    wait_for(lambda: time.monotonic() - start >= 0.5, interval=0.1)
    assert [voluntary_switches(t) for t in threads] == before
    assert progress.calls == 1  # the probe


@pytest.fixture
def port_given_up(monkeypatch):
    """Refuse as platforms other than Linux do: close the listener and bind it again later."""
    monkeypatch.setattr(_listeners, "REFUSE_IN_PLACE", False)


@pytest.mark.usefixtures("port_given_up")
def test_failed_rebind_is_logged_once_and_retried_until_the_port_is_free(tcp_factory, eh_caplog):
    progress = Progress(0)
    server = tcp_factory(progress, refuse_while_dead=True, recheck_interval=0.02)
    server.start()
    port = server.port
    wait_for(lambda: refused(port))
    with socket.create_server(("127.0.0.1", port)) as thief:
        progress.alive()
        wait_for(lambda: any(r.levelno == logging.ERROR for r in eh_caplog.records))
        calls = progress.calls
        wait_for(lambda: progress.calls >= calls + 5)  # five more failed attempts
        assert server.refusing and server.is_running
        errors = [r.getMessage() for r in eh_caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, errors
        assert f"127.0.0.1:{port}" in errors[0]
        assert "Traceback" not in eh_caplog.text
        thief.close()
        wait_for(lambda: answers(port) is not None)
    assert parse(probe(port))[0] == "alive"
    assert server.port == port


def test_closing_and_opening_the_port_is_logged_once_each(tcp_factory, eh_caplog):
    progress = Progress(0)
    server = tcp_factory(progress, refuse_while_dead=True, recheck_interval=0.02)
    server.start()
    port = server.port
    wait_for(lambda: refused(port))
    wait_for(lambda: progress.calls >= 5)
    progress.alive()
    wait_for(lambda: answers(port) is not None)
    server.stop()
    messages = [r.getMessage() for r in eh_caplog.records]
    address = f"127.0.0.1:{port}"
    assert messages.count(f"Stopped listening for tcp health checks on {address}") == 1
    assert messages.count(f"Listening again for tcp health checks on {address}") == 1


@pytest.mark.parametrize("state", ["listening", "refusing", "rebind failing"])
def test_stop_works_in_every_state(tcp_factory, state, monkeypatch):
    if state == "rebind failing":
        monkeypatch.setattr(_listeners, "REFUSE_IN_PLACE", False)
    progress = Progress(0 if state != "listening" else None)
    server = tcp_factory(progress, refuse_while_dead=True, recheck_interval=0.02)
    server.start()
    port = server.port
    thief = None
    if state != "listening":
        wait_for(lambda: refused(port))
    if state == "rebind failing":
        thief = socket.create_server(("127.0.0.1", port))
        progress.alive()
        calls = progress.calls
        wait_for(lambda: progress.calls >= calls + 2)
    start = time.monotonic()
    server.stop()
    assert time.monotonic() - start < 0.5
    assert not server.is_running
    if thief is not None:
        thief.close()
    again = tcp_factory(port=port)
    again.start()  # the port is free at once
    assert parse(probe(port))[0] == "alive"


@pytest.mark.skipif(not _listeners.REFUSE_IN_PLACE, reason="the port is given up elsewhere")
@pytest.mark.parametrize("reuse", [False, True])
def test_refusing_keeps_the_port_from_others(tcp_factory, reuse):
    """While refusing, nobody else can bind the port, not even with SO_REUSEADDR."""
    progress = Progress(0)
    server = tcp_factory(progress, refuse_while_dead=True, recheck_interval=0.02)
    server.start()
    port = server.port
    wait_for(lambda: refused(port))
    with socket.socket() as thief:
        if reuse:
            thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with pytest.raises(OSError) as caught:
            thief.bind(("127.0.0.1", port))
        assert caught.value.errno == errno.EADDRINUSE
    progress.alive()
    wait_for(lambda: answers(port) is not None)
    assert parse(probe(port))[0] == "alive"
    assert server.port == port


@pytest.mark.parametrize("interval", [0.05, 0.2])
def test_no_connection_is_accepted_later_than_one_interval_after_death(tcp_factory, interval):
    """The first connection after the verdict turned dead is refused within recheck_interval."""
    progress = Progress()
    server = tcp_factory(progress, timeout=60, refuse_while_dead=True, recheck_interval=interval)
    server.start()
    port = server.port
    assert parse(probe(port))[0] == "alive"
    wait_for(lambda: progress.calls >= 2)  # the start-up check and the probe: now idle
    calls = progress.calls
    progress.dead()  # from now on the callback says dead
    died = time.monotonic()
    # Nobody connects meanwhile: only the server's own recheck can notice.
    wait_for(lambda: progress.calls > calls, interval=0.002)
    wait_for(lambda: server.refusing, interval=0.002)
    lag = time.monotonic() - died
    assert refused(port)  # the first connection after the death
    assert lag <= interval + 0.25, lag  # one interval, plus a loaded machine's scheduling
