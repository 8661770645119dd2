"""Hostile, slow and numerous clients; callbacks that raise or hang; fuzzing."""

from __future__ import annotations

import gc
import json
import os
import random
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from elastic_healthcheck._http.wire import MAX_REQUEST_HEAD

from .client import ResponseReader, exchange, read_until_closed, request
from .conftest import answers_alive, connect, wait_for

PROBE = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def status_line(data: bytes) -> bytes:
    return data.split(b"\r\n", 1)[0]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"GARBAGE\r\n\r\n", b"HTTP/1.1 400 Bad Request", id="bad-request-line"),
        pytest.param(
            b"GET /healthz HTTP/2.0\r\n\r\n", b"HTTP/1.1 505 HTTP Version Not Supported", id="http2"
        ),
        pytest.param(
            b"GET /healthz FOO/1.1\r\nHost: x\r\n\r\n",
            b"HTTP/1.1 400 Bad Request",
            id="bad-version",
        ),
        pytest.param(
            b"GET /hea\0lthz HTTP/1.1\r\nHost: x\r\n\r\n",
            b"HTTP/1.1 400 Bad Request",
            id="nul-in-target",
        ),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: \0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request",
            id="nul-in-header",
        ),
        pytest.param(
            "GET /h\u00e9 HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
            b"HTTP/1.1 400 Bad Request",
            id="non-ascii-target",
        ),
        pytest.param(
            bytes(range(128, 256)) + b"\r\n\r\n", b"HTTP/1.1 400 Bad Request", id="binary-garbage"
        ),
        pytest.param(b"GET /healthz HTTP/1.1\r\n\r\n", b"HTTP/1.1 400 Bad Request", id="no-host"),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            b"HTTP/1.1 400 Bad Request",
            id="obs-fold",
        ),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 413 Content Too Large",
            id="body",
        ),
        pytest.param(
            b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 501 Not Implemented",
            id="chunked",
        ),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * MAX_REQUEST_HEAD + b"\r\n\r\n",
            b"HTTP/1.1 431 Request Header Fields Too Large",
            id="huge-header",
        ),
        pytest.param(
            b"GET /" + b"a" * (MAX_REQUEST_HEAD + 10),
            b"HTTP/1.1 414 URI Too Long",
            id="huge-target",
        ),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"Host: x\r\n\r\n",
            b"HTTP/1.1 431 Request Header Fields Too Large",
            id="too-many-headers",
        ),
    ],
)
def test_bad_requests_get_a_4xx_or_5xx_then_close_and_the_server_lives(server, data, expected):
    response = exchange(server.port, data)
    assert status_line(response) == expected
    assert b"\r\nConnection: close\r\n" in response
    assert request(server.port).status == 200


def test_endless_head_is_cut_at_the_cap(server):
    """A client streaming header bytes forever gets 431 once the cap is passed."""
    with connect(server.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        sent = 0
        try:
            while sent < 10 * MAX_REQUEST_HEAD:
                sock.sendall(b"X-Filler: " + b"f" * 100 + b"\r\n")
                sent += 112
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert (
            status_line(read_until_closed(sock)) == b"HTTP/1.1 431 Request Header Fields Too Large"
        )


def test_idle_connection_is_closed_after_client_timeout(server_factory):
    server = server_factory(client_timeout=0.2)
    server.start()
    with connect(server.port) as sock:
        start = time.monotonic()
        assert read_until_closed(sock) == b""  # closed without a word
        assert 0.15 < time.monotonic() - start < 3


def test_idle_keep_alive_connection_is_closed_after_client_timeout(server_factory):
    server = server_factory(client_timeout=0.2)
    server.start()
    with connect(server.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ResponseReader(sock).read().status == 200
        assert read_until_closed(sock) == b""


def test_partial_request_gets_408_at_the_deadline(server_factory):
    server = server_factory(client_timeout=0.2)
    server.start()
    with connect(server.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        assert status_line(read_until_closed(sock)) == b"HTTP/1.1 408 Request Timeout"


def test_trickling_client_is_cut_off_and_does_not_delay_probes(server_factory):
    """One byte every 20 ms cannot extend the deadline, nor slow anyone else down."""
    server = server_factory(client_timeout=0.5)
    server.start()
    stop = threading.Event()
    result: dict[str, object] = {}

    def trickle() -> None:
        with connect(server.port) as sock:
            start = time.monotonic()
            try:
                for byte in PROBE * 10:
                    if stop.is_set():
                        break
                    sock.sendall(bytes([byte]))
                    if stop.wait(0.02):
                        break
            except OSError:
                pass
            result["response"] = read_until_closed(sock)
            result["elapsed"] = time.monotonic() - start

    thread = threading.Thread(target=trickle)
    thread.start()
    try:
        latencies = []
        for _ in range(20):
            start = time.monotonic()
            assert request(server.port).status == 200
            latencies.append(time.monotonic() - start)
        thread.join(10)
    finally:
        stop.set()
        thread.join(10)
    response, elapsed = result["response"], result["elapsed"]
    assert isinstance(response, bytes) and isinstance(elapsed, float)
    assert status_line(response) == b"HTTP/1.1 408 Request Timeout"
    assert elapsed < 3
    assert sorted(latencies)[len(latencies) // 2] < 0.1


def test_thread_count_is_fixed_however_many_clients(server):
    baseline = threading.active_count()
    socks = [connect(server.port) for _ in range(100)]
    try:
        for sock in socks:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        readers = [ResponseReader(sock) for sock in socks]
        assert all(r.read().status == 200 for r in readers)
        assert threading.active_count() == baseline
    finally:
        for sock in socks:
            sock.close()


def test_a_thousand_idle_connections_do_not_delay_a_probe(server_factory):
    server = server_factory(max_connections=2048)
    server.start()
    socks = []
    try:
        for _ in range(1000):
            socks.append(connect(server.port))
        wait_for(lambda: len(server._engine.transports) >= 1000)
        best = min(_timed_probe(server.port) for _ in range(3))
        assert best < 0.1
    finally:
        for sock in socks:
            sock.close()


def _timed_probe(port: int) -> float:
    start = time.monotonic()
    assert request(port).status == 200
    return time.monotonic() - start


def test_connections_beyond_the_cap_shed_the_longest_idle(server_factory):
    server = server_factory(max_connections=8)
    server.start()
    socks = [connect(server.port) for _ in range(20)]
    try:
        assert request(server.port).status == 200
        wait_for(lambda: len(server._engine.transports) <= 8)
        oldest = socks[0]
        oldest.settimeout(5)
        assert read_until_closed(oldest) == b""  # shed first: it was idle the longest
    finally:
        for sock in socks:
            sock.close()


def test_callback_that_hangs_answers_unknown_within_the_deadline(server_factory):
    release = threading.Event()
    server = server_factory(lambda: release.wait(), callback_timeout=0.2)
    server.start()
    baseline = threading.active_count()
    try:
        for _ in range(10):
            start = time.monotonic()
            response = request(server.port)
            elapsed = time.monotonic() - start
            assert response.status == 503
            body = json.loads(response.body)
            assert body == {
                "status": "unknown",
                "last_progress": None,
                "age": None,
                "timeout": 60.0,
                "reason": "callback did not return within 0.2s",
            }
            assert 0.15 < elapsed < 1.0
        assert threading.active_count() == baseline  # no thread per hung call
    finally:
        release.set()


def test_callback_that_hangs_does_not_delay_other_routes(server_factory):
    release = threading.Event()
    server = server_factory(lambda: release.wait(), callback_timeout=0.5)
    server.start()
    try:
        start = time.monotonic()
        assert request(server.port, "/nope").status == 404
        assert request(server.port, "/healthz", method="OPTIONS").status == 200
        assert time.monotonic() - start < 0.4
    finally:
        release.set()


def test_callback_that_recovers_is_alive_again(server_factory):
    gate = threading.Event()
    calls = []

    def callback() -> int:
        calls.append(1)
        if len(calls) == 1:
            gate.wait()
        return int(time.time())

    server = server_factory(callback, callback_timeout=0.1)
    server.start()
    try:
        assert request(server.port).status == 503
    finally:
        gate.set()
    wait_for(lambda: request(server.port).status == 200)


def test_many_probes_share_one_slow_callback_call(server_factory):
    calls = []
    gate = threading.Event()

    def callback() -> int:
        calls.append(1)
        gate.wait(2)
        return int(time.time())

    server = server_factory(callback, callback_timeout=3)
    server.start()
    socks = [connect(server.port) for _ in range(20)]
    try:
        for sock in socks:
            sock.sendall(PROBE)
        wait_for(lambda: len(server._engine.verdicts._waiting) == 20)
        gate.set()
        assert all(ResponseReader(s).read().status == 200 for s in socks)
        assert len(calls) == 1
    finally:
        for sock in socks:
            sock.close()


def _thread_status(native_id: int) -> tuple[str, int]:
    """(scheduler state, voluntary context switches) of one thread of this process."""
    fields = dict(
        line.split(":", 1)
        for line in Path(f"/proc/self/task/{native_id}/status").read_text().splitlines()
    )
    return fields["State"].split()[0], int(fields["voluntary_ctxt_switches"])


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_idle_server_never_wakes_up(server):
    """No poll interval, no timer: an idle server's threads stay asleep."""
    request(server.port)
    threads = [server._engine.thread.native_id, server._engine.evaluator.thread.native_id]
    wait_for(lambda: not server._engine.transports)
    wait_for(lambda: all(_thread_status(t)[0] == "S" for t in threads))
    before = [_thread_status(t) for t in threads]
    time.sleep(0.5)  # what is measured is that nothing happens while time passes
    assert [_thread_status(t) for t in threads] == before


def test_a_long_pipeline_is_answered_in_full_with_bounded_buffers(server):
    """20,000 pipelined requests (~680 KB): no recursion, no loss, input read as answered."""
    one = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    count = 20_000
    with connect(server.port, timeout=30) as sock:
        sender = threading.Thread(target=sock.sendall, args=(one * count,))
        sender.start()
        reader = ResponseReader(sock)
        statuses = [reader.read().status for _ in range(count)]
        sender.join(30)
    assert statuses == [200] * count
    assert server.is_running and server._engine.thread.is_alive()
    assert request(server.port).status == 200


def test_client_that_never_reads_cannot_block_others(server_factory):
    """A pipelining client that never reads fills its buffers; others are still served."""
    server = server_factory(client_timeout=0.5)
    server.start()
    with connect(server.port) as greedy:
        greedy.setblocking(False)
        request_bytes = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 200
        try:
            for _ in range(200):
                greedy.send(request_bytes)
        except (BlockingIOError, OSError):
            pass
        assert _timed_probe(server.port) < 1.0


def _fuzz_case(rng: random.Random) -> bytes:
    valid = [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"HEAD /livez HTTP/1.0\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    base = bytearray(rng.choice(valid) * rng.randint(1, 3))
    for _ in range(rng.randint(0, 6)):
        op = rng.randrange(5)
        pos = rng.randrange(len(base) + 1)
        if op == 0 and base:  # flip a byte
            base[min(pos, len(base) - 1)] = rng.randrange(256)
        elif op == 1:  # insert junk
            base[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2:  # truncate
            del base[pos:]
        elif op == 3:  # duplicate a slice
            base[pos:pos] = base[: rng.randint(0, 40)]
        else:  # insert a token that parsers mishandle
            base[pos:pos] = rng.choice(
                [
                    b"\r",
                    b"\n",
                    b"\0",
                    b" ",
                    b":",
                    b"\r\n\r\n",
                    b"Content-Length: 9\r\n",
                    b"Transfer-Encoding: chunked\r\n",
                    b"HTTP/9.9",
                    b"\xff\xfe",
                ]
            )
    return bytes(base)


def _well_formed_responses(data: bytes) -> int:
    """Parse every response in ``data``; fail unless each is complete and well framed.

    An answer to HEAD carries Content-Length but no body: a head followed directly by
    the next response, or by the end, is taken as one.
    """
    count = 0
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"truncated response head: {data[:200]!r}"
        lines = head.split(b"\r\n")
        assert lines[0].startswith(b"HTTP/1.1 ") and lines[0][9:12].isdigit(), lines[0]
        fields = dict(line.split(b": ", 1) for line in lines[1:])
        length = int(fields[b"Content-Length"])
        if rest == b"" or rest.startswith(b"HTTP/1.1 "):
            data = rest  # HEAD
        else:
            assert len(rest) >= length, f"truncated body: {rest!r}"
            data = rest[length:]
        count += 1
    return count


def test_fuzzed_requests_get_well_formed_answers_or_a_clean_close(server_factory):
    """A seeded, bounded fuzz: 300 mutated requests, then a valid probe still works."""
    server = server_factory(client_timeout=0.3)
    server.start()
    rng = random.Random(int(os.environ.get("FUZZ_SEED", "20261124")))
    deadline = time.monotonic() + 60
    answered = 0
    for _ in range(300):
        data = _fuzz_case(rng)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            received = read_until_closed(sock)
        answered += _well_formed_responses(received)
        assert time.monotonic() < deadline
    # Most mutations still parse as a request (or a bad one, answered 400): a server that
    # closed every connection without a word would pass the checks above.
    assert answered >= 150, answered
    assert server.is_running
    assert request(server.port).status == 200


def test_answers_a_slow_reader_did_not_take_are_sent_when_it_reads(server):
    """Pipelined answers wait in the server's buffer while the client reads nothing."""
    count = 3000  # megabytes of answers: more than the socket buffers hold
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before the handshake
        sock.settimeout(10)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * count)
        engine = server._engine
        wait_for(lambda: any(t.get_write_buffer_size() for t in engine.transports))
        reader = ResponseReader(sock)
        statuses = [reader.read().status for _ in range(count)]
    assert statuses == [200] * count


def test_connections_leave_no_garbage_cycles_behind(kind, factory):
    """A closed connection is freed at once, not by the cycle collector: under thousands of
    slow clients, collecting such garbage stalled the loop for a tenth of a second."""
    server = factory(client_timeout=0.2)
    server.start()
    assert answers_alive(kind, server.port)  # warm: the first request fills caches
    engine = server._engine
    gc.collect()
    gc.disable()
    try:
        for _ in range(100):
            answers_alive(kind, server.port)
        with connect(server.port) as slow:
            slow.sendall(b"GET /heal")  # one cut off at its deadline (HTTP), too
            assert read_until_closed(slow).startswith((b"HTTP/1.1 408 ", b"alive "))
        wait_for(lambda: not engine.transports)
        collected = gc.collect()
    finally:
        gc.enable()
    assert collected < 100, f"{collected} objects were left for the cycle collector"
