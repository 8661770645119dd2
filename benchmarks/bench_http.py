"""HTTP health-check servers under load, side by side in one run, on loopback.

Usage: python benchmarks/bench_http.py [--duration SECONDS] [--only NAME ...] [--quick]
                                       [--json PATH]

Needs wrk (``apt-get install wrk``) and taskset; uvicorn and httptools for the uvicorn
contender (``pip install uvicorn httptools``; benchmark-only, never a runtime dependency).
A contender whose package is missing is skipped.

Contenders, each a separate server process pinned to CPU 0, serving a small JSON body:

- ``elastic_healthcheck``: HTTPHealthCheckServer, callback ``lambda: int(time.time())``;
- ``ThreadingHTTPServer``: http.server with a minimal /healthz handler, written the way a
  user would (HTTP/1.1 with Content-Length so keep-alive works, log_message silenced);
- ``prometheus_client``: start_http_server, load on /metrics;
- ``uvicorn``: uvicorn + httptools serving a one-route ASGI app, ``Server.run()`` in a
  background thread, as an application embedding it would.

The load generator is ``wrk -t1`` pinned to CPU 1 (this script too), so server and client
never share a core. Each contender gets a short warm-up, then keep-alive runs at 1, 16 and
256 connections and a new connection per request (``Connection: close``) at 16.

Printed, as markdown: requests/s, p50/p99 latency, socket errors (connect, read, write,
timeout) and non-2xx responses per load; then per contender the time from calling start()
to the first answer (a raw-socket GET inside the server process), stop() latency (median
of start/stop cycles on one port), idle CPU and wake-ups of the server process after the
load (from /proc/<pid>/stat and /proc/<pid>/task/*/status), RSS after the load and at peak,
and thread count idle and at peak; finally our targets, met or missed.

Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

HOST = "127.0.0.1"  # the only address this script ever targets
SERVER_CPU = 0
CLIENT_CPU: int | None = 1  # None when there is no second CPU
READY_TIMEOUT = 30.0  # seconds a server process has to report its port
WRK_GRACE = 30.0  # seconds wrk may run past its -d before we kill it
WRK_TIMEOUT = "2s"  # wrk's per-request timeout (its default), counted as "timeout" errors
IDLE_SECONDS = 10.0
SETTLE_SECONDS = 1.0  # after the load, before measuring idle: let closes finish
CLK_TCK = os.sysconf("SC_CLK_TCK")

# (label, connections, new connection per request)
LOADS = [
    ("keep-alive c=1", 1, False),
    ("keep-alive c=16", 16, False),
    ("keep-alive c=256", 256, False),
    ("new conn c=16", 16, True),
]

CLOSE_LUA = 'wrk.headers["Connection"] = "close"\n'

# Targets for ours; checked at the end.
TARGET_X_UVICORN = {"keep-alive c=16": 2.5, "new conn c=16": 2.0}
TARGET_P99_C256_MS = 5.0
TARGET_STOP_MS = 1.0
TARGET_IDLE_WAKEUPS = 0.0


def alive_callback() -> int:
    return int(time.time())


def health_body() -> bytes:
    """The peers' body: the shape of ours, so every contender sends about as many bytes."""
    last = alive_callback()
    status = {"status": "alive", "last_progress": float(last), "age": 0.0}
    status.update(timeout=60.0, reason=None)
    return (json.dumps(status, separators=(",", ":")) + "\n").encode("ascii")


# -- the contenders, run inside the server process ---------------------------------------
# Each factory does its imports, then returns start(port) -> (bound port, stop). Only
# start() is timed.

Starter = Callable[[int], tuple[int, Callable[[], None]]]


def ours() -> Starter:
    from elastic_healthcheck import HTTPHealthCheckServer

    def start(port: int) -> tuple[int, Callable[[], None]]:
        server = HTTPHealthCheckServer(alive_callback, port, 60, host=HOST)
        server.start()
        return server.port, server.stop

    return start


def threading_http_server() -> Starter:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, since every response has Content-Length

        def do_GET(self) -> None:
            if self.path != "/healthz":
                self.send_error(404)
                return
            body = health_body()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    def start(port: int) -> tuple[int, Callable[[], None]]:
        server = ThreadingHTTPServer((HOST, port), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()

        def stop() -> None:
            server.shutdown()
            server.server_close()

        return server.server_address[1], stop

    return start


def prometheus() -> Starter:
    from prometheus_client import start_http_server

    def start(port: int) -> tuple[int, Callable[[], None]]:
        started = start_http_server(port, addr=HOST)
        if started is None:  # prometheus_client < 0.17 returns nothing: no port, no stop
            raise RuntimeError("prometheus_client >= 0.17 is needed (start_http_server returns)")
        httpd, _thread = started

        def stop() -> None:
            httpd.shutdown()
            httpd.server_close()

        return int(httpd.server_address[1]), stop

    return start


def uvicorn_httptools() -> Starter:
    import httptools  # noqa: F401  (fail early and clearly when it is missing)
    import uvicorn

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] != "/healthz":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        body = health_body()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def start(port: int) -> tuple[int, Callable[[], None]]:
        config = uvicorn.Config(
            app, HOST, port, http="httptools", log_level="warning", access_log=False
        )
        server = uvicorn.Server(config)
        # Signals belong to the main thread. uvicorn >= 0.29 skips them off the main thread
        # by itself (Server.capture_signals); older ones need the hook disabled.
        if hasattr(server, "install_signal_handlers"):
            server.install_signal_handlers = lambda: None
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:  # how an embedding application waits for it
            if not thread.is_alive():
                raise RuntimeError("uvicorn exited before it started")
            time.sleep(0.0005)
        bound = server.servers[0].sockets[0].getsockname()[1]

        def stop() -> None:
            server.should_exit = True
            thread.join(10)

        return int(bound), stop

    return start


CONTENDERS: dict[str, tuple[str, Callable[[], Starter]]] = {
    "elastic_healthcheck": ("/healthz", ours),
    "ThreadingHTTPServer": ("/healthz", threading_http_server),
    "prometheus_client": ("/metrics", prometheus),
    "uvicorn": ("/healthz", uvicorn_httptools),
}
OURS = "elastic_healthcheck"


def raw_get(port: int, path: str, deadline: float = 5.0) -> int:
    """GET over a fresh socket with ``Connection: close``; the status code."""
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n"
    # connect() on a numeric address, not create_connection(): its getaddrinfo() imports
    # the idna codec on first use, a millisecond or two that is the client's, not the server's.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(deadline)
        sock.connect((HOST, port))
        sock.sendall(request.encode("ascii"))
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        while sock.recv(65536):  # to the server's close: the whole answer
            pass
    return int(data.split(b" ", 2)[1])


def serve(name: str) -> None:
    """Server process: start the contender, report its port, serve until stdin closes."""
    os.sched_setaffinity(0, {SERVER_CPU})
    path, factory = CONTENDERS[name]
    start = factory()
    t0 = time.perf_counter()
    port, _stop = start(0)
    t1 = time.perf_counter()
    status = raw_get(port, path)
    t2 = time.perf_counter()
    report = {"port": port, "pid": os.getpid(), "start_ms": (t1 - t0) * 1e3}
    report.update(first_answer_ms=(t2 - t0) * 1e3, first_status=status)
    print(json.dumps(report), flush=True)
    sys.stdin.read()  # the parent closes our stdin (or kills us) when done
    os._exit(0)  # no teardown: stop() is measured separately, by cycle()


def cycle(name: str, cycles: int) -> None:
    """start/GET/stop on one port, ``cycles`` times, as torch's agent does per restart."""
    os.sched_setaffinity(0, {SERVER_CPU})
    path, factory = CONTENDERS[name]
    start = factory()
    port = 0
    starts, firsts, stops = [], [], []
    for _ in range(cycles):
        t0 = time.perf_counter()
        port, stop = start(port)
        t1 = time.perf_counter()
        raw_get(port, path)
        t2 = time.perf_counter()
        stop()
        t3 = time.perf_counter()
        starts.append(t1 - t0)
        firsts.append(t2 - t0)
        stops.append(t3 - t2)
    ms = [s * 1e3 for s in stops]
    report = {"cycles": cycles, "stop_ms": statistics.median(ms), "stop_max_ms": max(ms)}
    report.update(start_ms=statistics.median(starts) * 1e3)
    report.update(first_answer_ms=statistics.median(firsts) * 1e3)
    print(json.dumps(report), flush=True)


# -- the parent: processes, wrk, /proc ----------------------------------------------------


@contextlib.contextmanager
def server_process(name: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """Start a contender's process; yield it with its ready report; always kill it."""
    report: dict[str, Any] = {}
    with tempfile.TemporaryFile("w+") as stderr:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            line = read_line(proc, READY_TIMEOUT)
            if not line:
                proc.wait(5)
                stderr.seek(0)
                raise RuntimeError(f"server exited before it was ready:\n{stderr.read()[-2000:]}")
            report.update(json.loads(line))
            report["spawn_to_ready_ms"] = (time.perf_counter() - t0) * 1e3
            yield proc, report
        finally:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            # A server that prints a traceback per reset connection is worth knowing about.
            stderr.seek(0)
            report["tracebacks"] = stderr.read().count("Traceback (most recent call last)")


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """One line of the child's stdout, or "" on EOF; kills the child on timeout."""
    result: list[str] = []
    assert proc.stdout is not None
    stdout = proc.stdout
    reader = threading.Thread(target=lambda: result.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        proc.kill()
        raise TimeoutError(f"no answer from server process {proc.pid} within {timeout}s")
    return result[0] if result else ""


def run_cycles(name: str, cycles: int) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--cycle", name, "--cycles", str(cycles)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=20 + cycles * 2.0)
    if done.returncode != 0:
        raise RuntimeError(f"{name}: stop/start cycles failed:\n{done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def parse_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"cannot read wrk's time {text!r}")
    return float(match[1]) * UNITS[match[2]]


def parse_wrk(output: str) -> dict[str, Any]:
    result: dict[str, Any] = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "non2xx": 0}
    for pct, value in re.findall(r"^\s+(50|99)%\s+(\S+)", output, re.M):
        result[f"p{pct}_ms"] = parse_ms(value)
    match = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    result["rps"] = float(match[1]) if match else 0.0
    match = re.search(r"(\d+) requests in ([\d.]+\w+)", output)
    result["requests"] = int(match[1]) if match else 0
    match = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if match:
        for key, value in zip(("connect", "read", "write", "timeout"), match.groups(), strict=True):
            result[key] = int(value)
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if match:
        result["non2xx"] = int(match[1])
    return result


def wrk(
    port: int, path: str, connections: int, seconds: float, close: str | None
) -> dict[str, Any]:
    cmd = ["taskset", "-c", str(CLIENT_CPU)] if CLIENT_CPU is not None else []
    cmd += ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    cmd += ["--timeout", WRK_TIMEOUT, "--latency"]
    if close is not None:
        cmd += ["-s", close]
    cmd.append(f"http://{HOST}:{port}{path}")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + WRK_GRACE)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return parse_wrk(done.stdout)


def proc_status(pid: int) -> dict[str, int]:
    """Threads, VmRSS and VmHWM (KiB) from /proc/<pid>/status."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Threads", "VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15)


def context_switches(pid: int) -> int:
    """Voluntary and involuntary switches over every thread: roughly, wake-ups."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


class PeakThreads:
    """Samples a process's thread count in the background, keeping the maximum."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakThreads:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._done.is_set():
            with contextlib.suppress(OSError, KeyError):
                self.peak = max(self.peak, proc_status(self.pid)["Threads"])
            self._done.wait(self.interval)


def bench(name: str, args: argparse.Namespace, close_lua: str) -> dict[str, Any]:
    path = CONTENDERS[name][0]
    result: dict[str, Any] = {"name": name, "path": path, "loads": {}}
    with server_process(name) as (proc, ready):
        result.update(ready)
        if ready["first_status"] != 200:
            raise RuntimeError(f"{name}: GET {path} answered {ready['first_status']}")
        port = ready["port"]
        with PeakThreads(proc.pid) as peak:
            wrk(port, path, 16, args.warmup, None)
            for label, connections, new_conn in LOADS:
                close = close_lua if new_conn else None
                run = wrk(port, path, connections, args.duration, close)
                result["loads"][label] = run
                print(
                    f"  {name:20} {label:17} {run['rps']:>9,.0f} req/s  "
                    f"p50 {fmt_ms(run.get('p50_ms'))}  p99 {fmt_ms(run.get('p99_ms'))}  "
                    f"errors {errors(run)}",
                    file=sys.stderr,
                    flush=True,
                )
        status = proc_status(proc.pid)
        result.update(rss_kib=status["VmRSS"], peak_rss_kib=status["VmHWM"])
        result.update(peak_threads=max(peak.peak, status["Threads"]))
        time.sleep(SETTLE_SECONDS)
        ticks, switches, t0 = cpu_ticks(proc.pid), context_switches(proc.pid), time.monotonic()
        time.sleep(args.idle)
        elapsed = time.monotonic() - t0
        result["idle_cpu_pct"] = (cpu_ticks(proc.pid) - ticks) / CLK_TCK / elapsed * 100
        result["idle_wakeups_per_s"] = (context_switches(proc.pid) - switches) / elapsed
        result["idle_threads"] = proc_status(proc.pid)["Threads"]
    result["tracebacks"] = ready["tracebacks"]
    cycles = args.cycles if name == OURS else max(1, args.cycles // 5)
    result["cycle"] = run_cycles(name, cycles)
    return result


# -- the report ----------------------------------------------------------------------------


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1:
        return f"{ms * 1e3:.0f} us"
    if ms < 100:
        return f"{ms:.2f} ms"
    return f"{ms:,.0f} ms"


def errors(run: dict[str, Any]) -> str:
    keys = ("connect", "read", "write", "timeout")
    if not any(run[k] for k in keys):
        return "0"
    return "/".join(str(run[k]) for k in keys)


def report(results: list[dict[str, Any]]) -> str:
    lines = [
        "| contender | load | req/s | p50 | p99 | socket errors (c/r/w/t) | non-2xx |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for label, run in r["loads"].items():
            lines.append(
                f"| {r['name']} | {label} | {run['rps']:,.0f} | {fmt_ms(run.get('p50_ms'))} "
                f"| {fmt_ms(run.get('p99_ms'))} | {errors(run)} | {run['non2xx']} |"
            )
    lines += [
        "",
        "| contender | spawn to ready | start(), first | start() to 1st answer, first "
        "| start() / to 1st answer, median | stop() median (max, n) | idle CPU "
        "| idle wake-ups/s | RSS after load | peak RSS | threads idle / peak "
        "| tracebacks on stderr |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        c = r["cycle"]
        lines.append(
            f"| {r['name']} | {fmt_ms(r['spawn_to_ready_ms'])} | {fmt_ms(r['start_ms'])} "
            f"| {fmt_ms(r['first_answer_ms'])} "
            f"| {fmt_ms(c['start_ms'])} / {fmt_ms(c['first_answer_ms'])} "
            f"| {fmt_ms(c['stop_ms'])} ({fmt_ms(c['stop_max_ms'])}, {c['cycles']}) "
            f"| {r['idle_cpu_pct']:.2f}% | {r['idle_wakeups_per_s']:.1f} "
            f"| {r['rss_kib'] / 1024:.1f} MiB | {r['peak_rss_kib'] / 1024:.1f} MiB "
            f"| {r['idle_threads']} / {r['peak_threads']} | {r['tracebacks']:,} |"
        )
    return "\n".join(lines)


def targets(results: list[dict[str, Any]]) -> str:
    by_name = {r["name"]: r for r in results}
    us, uv = by_name.get(OURS), by_name.get("uvicorn")
    if us is None:
        return ""
    checks: list[tuple[str, str, bool]] = []
    if uv is not None:
        for label, target in TARGET_X_UVICORN.items():
            ratio = us["loads"][label]["rps"] / max(uv["loads"][label]["rps"], 1e-9)
            checks.append((f">= {target:g}x uvicorn, {label}", f"{ratio:.2f}x", ratio >= target))
        ours_p50 = us["loads"]["keep-alive c=1"]["p50_ms"]
        uv_p50 = uv["loads"]["keep-alive c=1"]["p50_ms"]
        checks.append(
            (
                "p50 at c=1 <= uvicorn's",
                f"{fmt_ms(ours_p50)} vs {fmt_ms(uv_p50)}",
                ours_p50 <= uv_p50,
            )
        )
    run = us["loads"]["keep-alive c=256"]
    checks.append(
        (
            f"p99 at c=256 <= {TARGET_P99_C256_MS:g} ms",
            fmt_ms(run["p99_ms"]),
            run["p99_ms"] <= TARGET_P99_C256_MS,
        )
    )
    socket_errors = sum(
        r[k] for r in us["loads"].values() for k in ("connect", "read", "write", "timeout")
    )
    checks.append(("zero socket errors (every load)", str(socket_errors), socket_errors == 0))
    wakeups = us["idle_wakeups_per_s"]
    checks.append(
        (
            f"idle wake-ups/s <= {TARGET_IDLE_WAKEUPS:g}",
            f"{wakeups:.1f}",
            wakeups <= TARGET_IDLE_WAKEUPS,
        )
    )
    stop_ms = us["cycle"]["stop_ms"]
    checks.append(
        (f"stop() median < {TARGET_STOP_MS:g} ms", fmt_ms(stop_ms), stop_ms < TARGET_STOP_MS)
    )
    lines = ["| target (elastic_healthcheck) | measured | met |", "|---|---:|---|"]
    lines += [f"| {what} | {value} | {'yes' if ok else '**no**'} |" for what, value, ok in checks]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument(
        "--only",
        action="append",
        choices=list(CONTENDERS),
        metavar="NAME",
        help=f"run only this contender (repeatable): {', '.join(CONTENDERS)}",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 s per measurement, 2 s idle, 10 stop() cycles: a smoke test",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the raw results here")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--cycle", help=argparse.SUPPRESS)
    parser.add_argument("--cycles", type=int, default=50, help="stop() cycles for ours")
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve)
    if args.cycle:
        return cycle(args.cycle, args.cycles)
    if not 0 < args.duration <= 600:
        parser.error("--duration must be in (0, 600] seconds")
    args.idle = IDLE_SECONDS
    if args.quick:
        args.duration, args.idle, args.cycles = 1.0, 2.0, min(args.cycles, 10)
    args.warmup = min(1.0, args.duration)

    global CLIENT_CPU
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed: apt-get install wrk util-linux")
    if len(os.sched_getaffinity(0)) < 2 or CLIENT_CPU not in os.sched_getaffinity(0):
        print("warning: fewer than 2 CPUs; server and wrk will share one", file=sys.stderr)
        CLIENT_CPU = None
    else:
        os.sched_setaffinity(0, {CLIENT_CPU})  # keep this process off the server's CPU

    names = args.only or list(CONTENDERS)
    results = []
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(CLOSE_LUA)
    try:
        for name in names:
            try:
                results.append(bench(name, args, lua.name))
            except Exception as exc:  # a missing package or a crashed contender: go on
                print(f"  {name}: skipped: {exc}", file=sys.stderr, flush=True)
    finally:
        os.unlink(lua.name)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print()
    print(
        f"{os.cpu_count()} CPUs, {os.uname().machine}, Python {sys.version.split()[0]}; "
        f"servers on CPU {SERVER_CPU}, wrk -t1 on CPU {CLIENT_CPU}; "
        f"{args.duration:g} s per load, idle {args.idle:g} s"
    )
    print()
    print(report(results))
    print()
    print(targets(results))


if __name__ == "__main__":
    main()
