"""A real HAProxy on loopback marks our server up and down with each configuration we document.

The configurations are the ones docs/deploy.md shows: ``agent-check`` with the TCP server's
``agent_check=True``, ``tcp-check expect`` with the plain TCP line, and ``httpchk`` with the
HTTP server. Skipped, saying why, where HAProxy is not installed (Debian package ``haproxy``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from elastic_healthcheck import TCPHealthCheckServer

# HAProxy checks every 100 ms and acts on one result (docs/deploy.md uses its defaults).
CHECKS = "check inter 100ms fall 1 rise 1"
CONFIGS = {
    "agent-check": (
        "tcp",
        {"agent_check": True},
        f"server s1 127.0.0.1:{{port}} {CHECKS} agent-check agent-port {{port}} agent-inter 100ms",
    ),
    "tcp-check": (
        "tcp",
        {},
        "option tcp-check\n    tcp-check expect rstring ^alive\\ age=\n"
        f"    server s1 127.0.0.1:{{port}} {CHECKS}",
    ),
    "httpchk": (
        "http",
        {},
        "option httpchk\n    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host lb\n"
        "    http-check expect status 200\n"
        f"    server s1 127.0.0.1:{{port}} {CHECKS}",
    ),
}
DEADLINE = 15.0


def _stat(sock_path: Path) -> dict[str, str] | None:
    """Server s1's row of ``show stat``, or None while HAProxy is not answering yet."""
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(sock_path))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        return None
    lines = data.decode().splitlines()
    if not lines:
        return None
    header = lines[0].lstrip("# ").split(",")
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("svname") == "s1":
            return row
    return None


def _wait_for(sock_path: Path, want: Callable[[str], bool]) -> dict[str, str]:
    deadline = time.monotonic() + DEADLINE
    row = None
    while time.monotonic() < deadline:
        row = _stat(sock_path)
        if row is not None and want(row["status"]):
            return row
        time.sleep(0.05)
    seen = row and {k: row[k] for k in ("status", "last_chk", "last_agt")}
    raise AssertionError(f"HAProxy did not get there within {DEADLINE}s; last seen {seen}")


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Start HAProxy with one backend section; return its stats socket's path."""
    binary = shutil.which("haproxy")
    if binary is None:
        pytest.skip("haproxy is not installed (Debian package haproxy; .ci/run tries it)")
    started: list[subprocess.Popen[bytes]] = []

    def start(backend: str) -> Path:
        sock_path = tmp_path / "stats.sock"
        config = tmp_path / "haproxy.cfg"
        config.write_text(
            "global\n"
            f"    stats socket {sock_path} mode 600 level admin\n"
            "defaults\n"
            "    mode tcp\n"
            "    timeout connect 1s\n"
            "    timeout client 5s\n"
            "    timeout server 5s\n"
            "backend be\n"
            f"    {backend}\n"
        )
        process = subprocess.Popen(
            [binary, "-f", str(config), "-db"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        started.append(process)
        return sock_path

    yield start
    for process in started:
        process.terminate()
        output, _ = process.communicate(timeout=10)
        assert process.returncode in (0, 143, -15), output.decode(errors="replace")


@pytest.mark.parametrize("config", list(CONFIGS))
def test_haproxy_marks_the_server_down_while_dead_and_up_again(
    config, haproxy, server_factory, tcp_factory
):
    kind, options, backend = CONFIGS[config]
    last = {"progress": time.time()}
    factory = tcp_factory if kind == "tcp" else server_factory
    server = factory(lambda: last["progress"], timeout=60, **options)
    server.start()
    sock_path = haproxy(backend.format(port=server.port))

    _wait_for(sock_path, lambda status: status == "UP")
    last["progress"] = time.time() - 600  # no progress for 10 minutes: dead
    row = _wait_for(sock_path, lambda status: status.startswith("DOWN"))
    if config == "agent-check":
        assert row["last_agt"].startswith("via agent : down (dead age=")
    last["progress"] = time.time()
    _wait_for(sock_path, lambda status: status == "UP")


@pytest.mark.parametrize("agent_check", [False, True])
@pytest.mark.parametrize(("age", "verdict"), [(0, "alive"), (600, "dead")])
def test_probe_reads_both_tcp_line_styles(agent_check, age, verdict, tcp_factory):
    """``elastic-healthcheck probe`` reads the verdict with or without HAProxy's word."""
    from elastic_healthcheck._cli.probe import parse_target, probe

    server = tcp_factory(lambda: time.time() - age, timeout=60, agent_check=agent_check)
    server.start()
    (result,) = probe([parse_target(f"tcp://127.0.0.1:{server.port}")], timeout=5)
    assert result.verdict == verdict
    assert result.age is not None and result.age >= age


def test_agent_check_sees_a_dead_agent_within_one_interval_and_a_refusing_one_never(
    haproxy, tcp_factory
):
    """The layout of docs/deploy.md: HAProxy checks the service's own port and asks our
    agent port for up/down. A dead agent is DOWN within one agent interval; an agent port
    that refuses is not heard at all (HAProxy keeps the last agent state), which is why
    agent_check=True with refuse_while_dead=True is refused at construction."""
    service = tcp_factory()  # stands in for the real service: always answers
    service.start()
    last = {"progress": time.time()}
    agent = tcp_factory(lambda: last["progress"], timeout=60, agent_check=True)
    agent.start()
    sock_path = haproxy(
        f"server s1 127.0.0.1:{service.port} check inter 100ms fall 1 rise 1 "
        f"agent-check agent-port {agent.port} agent-inter 200ms"
    )
    _wait_for(sock_path, lambda status: status == "UP")
    last["progress"] = time.time() - 600
    dead_at = time.monotonic()
    row = _wait_for(sock_path, lambda status: status.startswith("DOWN"))
    assert time.monotonic() - dead_at < 5.0  # one 200 ms interval, and a loaded machine
    assert row["last_agt"].startswith("via agent : down (dead age=")
    last["progress"] = time.time()
    _wait_for(sock_path, lambda status: status == "UP")
    agent.stop()  # the agent port now refuses, as refusing while dead would
    last["progress"] = time.time() - 600
    deadline = time.monotonic() + 1.0  # five agent intervals
    while time.monotonic() < deadline:
        now = _stat(sock_path)
        assert now is not None and now["status"] == "UP", now  # kept: never heard "down"
        time.sleep(0.05)
    with pytest.raises(ValueError, match="agent_check=True and refuse_while_dead=True"):
        TCPHealthCheckServer(lambda: 0, 0, 60, agent_check=True, refuse_while_dead=True)
