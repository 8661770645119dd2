"""Probes under a slow-trickle attack: probe latency and server memory, trees side by side.

Usage: python benchmarks/bench_slowloris.py [--connections N] [--seconds S]
                                            [--tree NAME=SRC_DIR ...] [--json PATH]

An ``HTTPHealthCheckServer`` with its default options (one process per tree, pinned to
CPU 0) is held by ``--connections`` clients that each send one byte of a request head
per second and never finish it; a client the server closes (at ``client_timeout``, or
shed to make room) connects again at once. Meanwhile a prober opens a new connection
every 0.1 s, sends ``GET /healthz`` and reads the answer. The attackers and the prober
are processes of their own on CPU 1.

Printed, per tree: probes answered and failed (no answer within 5 s), probe latency
(p50, p99, max), the server's resident memory when the attack is in place and at the end
(VmRSS) and its peak (VmHWM), and its CPU use. ``--tree NAME=SRC_DIR`` (repeatable) names
a source tree to import ``elastic_healthcheck`` from, e.g. an older commit checked out
elsewhere; the default is this checkout's ``src``.

Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

HOST = "127.0.0.1"  # the only address this script ever targets
SERVER_CPU, CLIENT_CPU = 0, 1
PROBE_INTERVAL = 0.1
PROBE_TIMEOUT = 5.0
SLICES = 10  # the attackers' bytes go out in this many batches a second
HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Trickle: "
CLK_TCK = os.sysconf("SC_CLK_TCK")
HERE = os.path.dirname(os.path.abspath(__file__))


def _pin(cpu: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        if cpu in os.sched_getaffinity(0):
            os.sched_setaffinity(0, {cpu})


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve() -> None:
    """Server process: start the server, report port and pid, serve until stdin closes."""
    _pin(SERVER_CPU)
    _raise_fd_limit()
    import elastic_healthcheck
    from elastic_healthcheck import HTTPHealthCheckServer

    server = HTTPHealthCheckServer(lambda: int(time.time()), 0, 60, host=HOST)
    server.start()
    report = {"port": server.port, "pid": os.getpid(), "module": elastic_healthcheck.__file__}
    print(json.dumps(report), flush=True)
    sys.stdin.read()
    os._exit(0)


def attack(port: int, connections: int, seconds: float) -> None:
    """Attacker process: hold ``connections`` connections, one byte per second each."""
    _pin(CLIENT_CPU)
    _raise_fd_limit()
    selector = selectors.DefaultSelector()
    sent: dict[socket.socket, int] = {}
    reconnects = 0

    def connect() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect((HOST, port))
        sent[sock] = 0
        selector.register(sock, selectors.EVENT_READ)

    def drop(sock: socket.socket) -> None:
        selector.unregister(sock)
        sent.pop(sock, None)
        sock.close()

    for _ in range(connections):
        connect()
    print("ready", flush=True)
    end = time.monotonic() + seconds
    tick = time.monotonic()
    turn = 0
    while time.monotonic() < end:
        # Each tenth of a second a tenth of the clients send their byte: one per second each.
        for sock in [s for i, s in enumerate(sent) if i % SLICES == turn % SLICES]:
            count = sent[sock]
            try:
                sock.send(HEAD[count : count + 1] if count < len(HEAD) else b"a")
                sent[sock] = count + 1
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                drop(sock)
                connect()
                reconnects += 1
        for key, _events in selector.select(0):
            closed = key.fileobj
            assert isinstance(closed, socket.socket)
            try:
                data = closed.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:  # closed by the server: come back at once
                drop(closed)
                connect()
                reconnects += 1
        turn += 1
        tick += 1.0 / SLICES
        time.sleep(max(0.0, tick - time.monotonic()))
    print(json.dumps({"reconnects": reconnects}), flush=True)
    for sock in list(sent):
        drop(sock)


def probe_once(port: int) -> float | None:
    """Seconds from connect to the whole answer, or None when there is none in time."""
    start = time.perf_counter()
    try:
        with socket.create_connection((HOST, port), timeout=PROBE_TIMEOUT) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        return None
    if not data.startswith(b"HTTP/1.1 200 "):
        return None
    return time.perf_counter() - start


def status_kib(pid: int) -> dict[str, int]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run(name: str, src: str, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=src, LOGLEVEL="ERROR")
    me = os.path.abspath(__file__)
    server = subprocess.Popen(
        [sys.executable, me, "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert server.stdout is not None
        ready = json.loads(server.stdout.readline())
        port, pid = ready["port"], ready["pid"]
        attacker = subprocess.Popen(
            [
                sys.executable,
                me,
                "--attack",
                str(port),
                "--connections",
                str(args.connections),
                "--seconds",
                str(args.seconds + 30),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert attacker.stdout is not None
            attacker.stdout.readline()  # "ready": every connection is on its way
            time.sleep(2.0)  # every attacker has sent its first bytes
            rss_start = status_kib(pid)["VmRSS"]
            cpu_start, t0 = cpu_seconds(pid), time.monotonic()
            latencies: list[float] = []
            failed = 0
            next_probe = time.monotonic()
            while time.monotonic() - t0 < args.seconds:
                latency = probe_once(port)
                if latency is None:
                    failed += 1
                else:
                    latencies.append(latency)
                next_probe += PROBE_INTERVAL
                time.sleep(max(0.0, next_probe - time.monotonic()))
            elapsed = time.monotonic() - t0
            status = status_kib(pid)
            cpu = (cpu_seconds(pid) - cpu_start) / elapsed * 100
        finally:
            attacker.kill()
            attacker.wait(10)
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(10)
    latencies.sort()
    ms = [x * 1e3 for x in latencies]
    return {
        "name": name,
        "module": ready["module"],
        "probes": len(latencies),
        "failed": failed,
        "p50_ms": statistics.median(ms) if ms else None,
        "p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))] if ms else None,
        "max_ms": ms[-1] if ms else None,
        "rss_start_mib": rss_start / 1024,
        "rss_end_mib": status["VmRSS"] / 1024,
        "rss_peak_mib": status["VmHWM"] / 1024,
        "cpu_pct": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=60.0, help="probing time per tree")
    parser.add_argument(
        "--tree", action="append", metavar="NAME=SRC_DIR", help="a tree to import the server from"
    )
    parser.add_argument("--rounds", type=int, default=1, help="alternate the trees this often")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results here")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--attack", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve()
    if args.attack:
        return attack(args.attack, args.connections, args.seconds)
    _pin(CLIENT_CPU)
    _raise_fd_limit()
    trees = [
        t.partition("=")[::2] for t in args.tree or ["this=" + os.path.join(HERE, "..", "src")]
    ]
    results = []
    for _ in range(args.rounds):
        for name, src in trees:
            result = run(name, os.path.abspath(src), args)
            results.append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print(
        f"{args.connections} connections trickling 1 byte/s, a probe every {PROBE_INTERVAL:g} s "
        f"for {args.seconds:g} s per run; Python {sys.version.split()[0]}\n"
    )
    print("| tree | probes | failed | p50 | p99 | max | RSS at start -> end | peak RSS | CPU |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['name']} | {r['probes']} | {r['failed']} | {r['p50_ms']:.1f} ms "
            f"| {r['p99_ms']:.1f} ms | {r['max_ms']:.1f} ms "
            f"| {r['rss_start_mib']:.1f} -> {r['rss_end_mib']:.1f} MiB "
            f"| {r['rss_peak_mib']:.1f} MiB | {r['cpu_pct']:.0f}% |"
        )


if __name__ == "__main__":
    main()
