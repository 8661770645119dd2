"""The real console script, end to end, in subprocesses: serve, probe, signals, exit codes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from elastic_healthcheck import HTTPHealthCheckServer, __version__

SCRIPT = Path(sys.executable).with_name("elastic-healthcheck")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "elastic_healthcheck"]


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=timeout)


class Serving:
    """A running `elastic-healthcheck serve`, with the address it printed."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [*COMMAND, "serve", "--host", "127.0.0.1", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.banner = self.process.stdout.readline()  # printed once listening
        assert self.process.stderr is not None
        assert self.banner.startswith("Serving "), self.banner + self.process.stderr.read()
        self.address = self.banner.split(" on ", 1)[1].split(" ", 1)[0]
        self.port = int(self.address.rsplit(":", 1)[1].split("/", 1)[0])

    def finish(self, sig: int = signal.SIGTERM) -> tuple[int, str, str]:
        self.process.send_signal(sig)
        out, err = self.process.communicate(timeout=10)
        return self.process.returncode, out, err


@pytest.fixture
def serving() -> Iterator[type[Serving]]:
    started: list[Serving] = []

    def start(*args: str) -> Serving:
        s = Serving(*args)
        started.append(s)
        return s

    yield start  # type: ignore[misc]
    for s in started:
        if s.process.poll() is None:
            s.process.kill()
            s.process.communicate(timeout=10)


def test_version():
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"elastic-healthcheck {__version__}"


@pytest.mark.parametrize("command", [[], ["serve"], ["probe"]])
def test_help_on_every_command(command):
    result = run(*command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: elastic-healthcheck")


def test_python_dash_m_is_the_same_command():
    result = subprocess.run(
        [sys.executable, "-m", "elastic_healthcheck", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.stdout.strip() == f"elastic-healthcheck {__version__}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param([], "the following arguments are required: COMMAND", id="no-command"),
        pytest.param(["bogus"], "invalid choice: 'bogus'", id="unknown-command"),
        pytest.param(["probe"], "the following arguments are required: TARGET", id="no-target"),
        pytest.param(["probe", "localhost"], "no port", id="no-port"),
        pytest.param(["probe", "::1:8080"], "put an IPv6 address in brackets", id="bare-ipv6"),
        pytest.param(["probe", "https://x:1"], "unsupported scheme 'https'", id="https"),
        pytest.param(["probe", "x:0"], "port must be a number from 1 to 65535", id="port-zero"),
        pytest.param(
            ["probe", "--timeout", "-1", "x:1"],
            "--timeout='-1' is not a number of seconds > 0 and at most 86400",
            id="bad-timeout",
        ),
        pytest.param(
            ["serve", "--port", "70000"],
            "invalid port '70000' from --port: expected 0 to 65535",
            id="port-range",
        ),
        pytest.param(
            ["serve", "--timeout", "soon"],
            "--timeout='soon' is not a number of seconds > 0",
            id="bad-duration",
        ),
        pytest.param(
            ["serve", "--callback-timeout", "0"],
            "--callback-timeout='0' is not a number of seconds > 0",
            id="zero-deadline",
        ),
        pytest.param(
            ["serve", "--kind", "nope"],
            "--kind='nope' is not a known health check server kind",
            id="unknown-kind",
        ),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(args, message):
    result = run(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_then_probe_then_signal_exits_0(serving, sig):
    server = serving()
    assert server.address == f"http://127.0.0.1:{server.port}/healthz"
    probe = run("probe", f"127.0.0.1:{server.port}")
    assert probe.returncode == 0, probe.stdout + probe.stderr
    assert "alive" in probe.stdout
    code, _, err = server.finish(sig)
    assert code == 0
    assert "Traceback" not in err
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


def test_serve_tcp_kind_answers_a_status_line(serving):
    server = serving("--kind", "tcp")
    probe = run("probe", f"tcp://127.0.0.1:{server.port}")
    assert probe.returncode == 0, probe.stdout + probe.stderr
    assert server.finish()[0] == 0


def test_serve_on_a_port_in_use_fails_with_one_line(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run("serve", "--host", "127.0.0.1", "--port", str(port))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_heartbeat_file_drives_the_verdict(serving, tmp_path):
    heartbeat = tmp_path / "heartbeat"
    heartbeat.touch()
    server = serving("--heartbeat-file", str(heartbeat), "--timeout", "30")
    target = f"127.0.0.1:{server.port}"
    assert run("probe", target).returncode == 0
    old = time.time() - 120
    os.utime(heartbeat, (old, old))
    stale = _probe_until(target, "dead")
    assert stale["age"] > 100
    heartbeat.unlink()
    missing = _probe_until(target, "unknown")
    assert missing["reason"] == f"callback raised FileNotFoundError for {heartbeat}"
    assert server.finish()[0] == 0


def _probe_until(target: str, verdict: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        result = run("probe", "--json", target)
        answer: dict[str, Any]
        (answer,) = json.loads(result.stdout)["results"]
        if answer["verdict"] == verdict:
            assert result.returncode == 1
            return answer
        assert time.monotonic() < deadline, answer
        time.sleep(0.02)  # past the server's 10 ms verdict reuse


def test_probe_json_output(serving):
    server = serving()
    result = run("probe", "--json", f"127.0.0.1:{server.port}", "127.0.0.1:1")
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert document["alive"] is False
    first, second = document["results"]
    assert first["verdict"] == "alive" and first["status"] == 200
    assert second == second | {"verdict": "error", "reason": "connection refused", "status": None}


def test_probe_quiet_prints_nothing(serving):
    server = serving()
    result = run("probe", "-q", f"127.0.0.1:{server.port}")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_probing_a_hundred_targets_takes_about_one_timeout():
    """Alive, dead, closed ports and listeners that never answer, all at once."""
    alive = [
        HTTPHealthCheckServer(lambda: int(time.time()), 0, 60, host="127.0.0.1") for _ in range(5)
    ]
    dead = [HTTPHealthCheckServer(lambda: 0, 0, 60, host="127.0.0.1") for _ in range(5)]
    silent = [socket.create_server(("127.0.0.1", 0), backlog=64) for _ in range(5)]
    closed = []
    for _ in range(5):
        with socket.create_server(("127.0.0.1", 0)) as s:
            closed.append(s.getsockname()[1])
    try:
        for server in alive + dead:
            server.start()
        ports = {
            "alive": [s.port for s in alive],
            "dead": [s.port for s in dead],
            "error": [s.getsockname()[1] for s in silent] + closed,
        }
        targets, expected = [], []
        for verdict, group in ports.items():
            count = 50 if verdict == "error" else 25
            for i in range(count):
                targets.append(f"127.0.0.1:{group[i % len(group)]}")
                expected.append(verdict)
        start = time.monotonic()
        result = run("probe", "--json", "--timeout", "1", *targets)
        elapsed = time.monotonic() - start
    finally:
        for server in alive + dead:
            server.stop()
        for s in silent:
            s.close()
    assert result.returncode == 1
    verdicts = [r["verdict"] for r in json.loads(result.stdout)["results"]]
    assert verdicts == expected
    assert elapsed < 3.0, elapsed  # one 1 s timeout plus interpreter start, not 100 of them
