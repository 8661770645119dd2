"""Every command-line mistake gets one line, and every hostile server is one target's error.

Usage mistakes exit 2 with exactly one line on stderr; a target that is not alive makes
``probe`` exit 1 with its reason in the table (stdout), never a traceback. The hostile
servers are real loopback listeners that send the exact bytes under test.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from elastic_healthcheck import HTTPHealthCheckServer, TCPHealthCheckServer

from .test_cli import COMMAND, run


def _one_line_error(result: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    assert result.returncode == code, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


# -- usage mistakes: exit 2, one line, before anything happens --------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["probe", "--timeout", "1e9", "127.0.0.1:1"],
            "--timeout='1e9' is not a number of seconds > 0 and at most 86400",
            id="probe-timeout-past-a-day",
        ),
        pytest.param(
            ["serve", "--timeout", "0"],
            "--timeout='0' is not a number of seconds > 0",
            id="serve-timeout-0",
        ),
        pytest.param(
            ["serve", "--kind", "noop"], "--kind noop is torch's no-op server", id="serve-noop"
        ),
        pytest.param(
            ["serve", "--port", "²"], "invalid port '²' from --port", id="superscript-port"
        ),
        pytest.param(
            ["serve", "--port", "８０８０"],
            "invalid port '８０８０' from --port",
            id="full-width-port",
        ),
        pytest.param(["probe", "127.0.0.1:²"], "port must be a number", id="superscript-target"),
    ],
)
def test_usage_mistake_is_one_line_and_exit_2(args, message):
    _one_line_error(run(*args), 2, message)


def test_invalid_loglevel_is_one_line_not_a_traceback():
    result = subprocess.run(
        [*COMMAND, "serve", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        env=_env(LOGLEVEL="debug"),
    )
    _one_line_error(result, 2, "LOGLEVEL='debug' is not a logging level")


def test_heartbeat_file_that_is_a_directory_is_a_usage_error(tmp_path):
    _one_line_error(
        run("serve", "--port", "0", "--heartbeat-file", str(tmp_path)), 2, "is a directory"
    )


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        pytest.param(["--health-kind", "bogus"], {}, "--health-kind='bogus'", id="kind"),
        pytest.param(
            ["--health-timeout", "0"],
            {},
            "--health-timeout='0' is not a number of seconds > 0",
            id="timeout-0",
        ),
        pytest.param(
            ["--health-port", "８０"], {}, "invalid port '８０' from --health-port", id="port"
        ),
        pytest.param(
            ["--health-on-hang", "reboot"],
            {},
            "--health-on-hang='reboot' is not one of report, restart",
            id="on-hang",
        ),
        pytest.param(
            [],
            {"ELASTIC_HEALTHCHECK_TORCHRUN_TIMOUT": "5"},
            "ELASTIC_HEALTHCHECK_TORCHRUN_TIMOUT is not a variable elastic-healthcheck reads:"
            " did you mean ELASTIC_HEALTHCHECK_TORCHRUN_TIMEOUT?",
            id="env-typo",
        ),
        pytest.param(
            [],
            {"ELASTIC_HEALTHCHECK_TORCHRUN_PHASE_TIMEOUT": "-1"},
            "ELASTIC_HEALTHCHECK_TORCHRUN_PHASE_TIMEOUT='-1' is not a number of seconds > 0",
            id="phase-timeout",
        ),
        pytest.param(
            ["--health-kind", "noop", "--health-host", "::1"],
            {},
            "unexpected option 'host'",
            id="option-the-kind-lacks",
        ),
        pytest.param([], {"ELASTIC_HEALTHCHECK_HSOT": "x"}, "ELASTIC_HEALTHCHECK_HSOT", id="env"),
        pytest.param([], {"LOGLEVEL": "debug"}, "LOGLEVEL='debug'", id="loglevel"),
    ],
)
def test_torchrun_mistake_exits_2_before_training(tmp_path, args, env, message):
    """A wrong --health-* flag is a usage error found before torch is imported: the script
    never runs (it would leave a file behind)."""
    script = tmp_path / "train.py"
    ran = tmp_path / "ran"
    script.write_text(f"open({str(ran)!r}, 'w').close()\n")
    result = subprocess.run(
        [*COMMAND, "torchrun", *args, "--standalone", "--nproc-per-node", "1", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(**env),
    )
    _one_line_error(result, 2, message)
    assert not ran.exists()


def _env(**extra: str) -> dict[str, str]:
    import os

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ELASTIC_HEALTHCHECK_") and k != "LOGLEVEL"
    }
    return env | extra


# -- serve prints where it really listens ---------------------------------------------------


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        pytest.param([], "http://[::]:{port}/healthz (every interface; ", id="http-everywhere"),
        pytest.param(["--kind", "tcp", "--host", "::"], "tcp://[::]:{port} (every", id="tcp-v6"),
        pytest.param(["--kind", "tcp", "--host", "127.0.0.1"], "tcp://127.0.0.1:{port} (", id="v4"),
    ],
)
def test_serve_prints_every_address_it_listens_on(args, shown):
    process = subprocess.Popen(
        [*COMMAND, "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        port = int(banner.split("]:" if "[" in banner else "1:", 1)[1].split("/")[0].split()[0])
        assert shown.format(port=port) in banner, banner
        target = banner.split(" on ", 1)[1].split(" ", 1)[0].replace("[::]", "[::1]")
        probe = run("probe", target)
        assert probe.returncode == 0, probe.stdout + probe.stderr
    finally:
        process.terminate()
        process.communicate(timeout=10)
    assert process.returncode == 0


# -- probe: hostile and foreign servers -----------------------------------------------------


class Hostile:
    """A loopback listener that answers every connection with exactly ``response``.

    With ``greet``, it sends at once (a banner); otherwise after the request head. With
    ``hold``, it keeps the connection open afterwards, as an SSH server would.
    """

    def __init__(self, response: bytes, *, greet: bool = False, hold: bool = False) -> None:
        self.response = response
        self.greet = greet
        self.hold = hold
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, name="hostile", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            conn, _ = self.listener.accept()
            if self.stopping:
                conn.close()
                return
            conn.settimeout(5)
            try:
                if not self.greet:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                conn.sendall(self.response)
            except OSError:
                pass
            if self.hold:
                self.held.append(conn)
            else:
                conn.close()

    def close(self) -> None:
        self.stopping = True
        socket.create_connection(("127.0.0.1", self.port), timeout=5).close()
        self.thread.join(timeout=10)
        self.listener.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def hostile():
    made: list[Hostile] = []

    def make(response: bytes, **kwargs: bool) -> Hostile:
        server = Hostile(response, **kwargs)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


@pytest.fixture
def alive_port():
    server = HTTPHealthCheckServer(lambda: int(time.time()), 0, 60, host="127.0.0.1")
    server.start()
    yield server.port
    server.stop()


def _http(body: bytes, status: str = "200 OK") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def _json_strict(text: str) -> dict[str, Any]:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    data: dict[str, Any] = json.loads(text, parse_constant=refuse)
    return data


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        pytest.param(_http(b"[" * 200_000), "HTTP 200, not a health-check answer", id="nested"),
        pytest.param(
            _http(b'{"status": "alive", "age": ' + b"9" * 400 + b"}"),
            "HTTP 200, age is not a finite number of seconds",
            id="400-digit-age",
        ),
        pytest.param(
            _http(b'{"status": "alive", "age": 1e999}'),
            "HTTP 200, age is not a finite number of seconds",
            id="infinite-age",
        ),
        pytest.param(
            b"\x00\xff garbage\r\n\r\n",
            "not an HTTP response: it sent '\\x00\ufffd garbage'",
            id="not-http",
        ),
    ],
)
def test_probe_garbage_is_that_targets_error(hostile, alive_port, response, reason):
    """The garbage is reported for its target; the good target is still reported, and
    --json stays JSON (no Infinity)."""
    bad = hostile(response)
    targets = [f"127.0.0.1:{alive_port}", f"127.0.0.1:{bad.port}"]
    result = run("probe", "--json", *targets)
    assert result.returncode == 1, result.stderr
    assert result.stderr == ""
    good, garbage = _json_strict(result.stdout)["results"]
    assert good["verdict"] == "alive"
    assert garbage["verdict"] == "error"
    assert garbage["reason"].startswith(reason), garbage
    table = run("probe", *targets)
    assert (table.returncode, table.stderr) == (1, "")
    assert reason in table.stdout and "alive" in table.stdout


def test_probe_escapes_control_characters_in_a_reason(hostile):
    """A reason with escape codes and CR LF cannot drive the terminal or forge a row."""
    body = b'{"status": "unknown", "reason": "\\u001b[2J\\r\\nnode9:1  alive  0.1s"}'
    bad = hostile(_http(body, "503 Service Unavailable"))
    result = run("probe", f"127.0.0.1:{bad.port}")
    assert (result.returncode, result.stderr) == (1, "")
    assert "\x1b" not in result.stdout and "\r" not in result.stdout
    lines = result.stdout.splitlines()
    assert len(lines) == 2, lines  # the header and one row
    assert lines[1].endswith("\\x1b[2J\\r\\nnode9:1  alive  0.1s")
    document = _json_strict(run("probe", "--json", f"127.0.0.1:{bad.port}").stdout)
    assert document["results"][0]["reason"] == "\x1b[2J\r\nnode9:1  alive  0.1s"  # data as sent


def test_probe_tcp_against_an_ssh_banner_says_what_it_got_at_once(hostile):
    ssh = hostile(b"SSH-2.0-OpenSSH_9.6\r\n", greet=True, hold=True)
    started = time.monotonic()
    result = run("probe", "--timeout", "20", f"tcp://127.0.0.1:{ssh.port}")
    elapsed = time.monotonic() - started
    assert (result.returncode, result.stderr) == (1, "")
    assert "not a health-check status line: it sent 'SSH-2.0-OpenSSH_9.6'" in result.stdout
    assert elapsed < 10, elapsed  # not the 20 s timeout


def test_probe_tcp_against_an_http_server_fails_at_once(alive_port):
    """An HTTP server waits for a request; the probe's half-close ends that at once."""
    started = time.monotonic()
    result = run("probe", "--timeout", "20", f"tcp://127.0.0.1:{alive_port}")
    elapsed = time.monotonic() - started
    assert (result.returncode, result.stderr) == (1, "")
    assert "the server closed the connection without a status line" in result.stdout
    assert elapsed < 10, elapsed


def test_probe_tcp_still_reads_our_status_line():
    server = TCPHealthCheckServer(lambda: int(time.time()), 0, 60, host="127.0.0.1")
    with server:
        for _ in range(20):  # the half-close must never cost our own server its answer
            result = run("probe", "--json", f"tcp://127.0.0.1:{server.port}")
            assert result.returncode == 0, result.stdout


def test_a_hung_resolver_does_not_outlast_the_timeout(alive_port):
    """getaddrinfo cannot be cancelled: a name that takes 30 s to resolve must not hold the
    command past --timeout. The slow resolver is the real function made slow, in the child."""
    code = (
        "import socket, sys, time\n"
        "real = socket.getaddrinfo\n"
        "def slow(host, *args, **kwargs):\n"
        "    if host == 'slow.test':\n"
        "        time.sleep(30)\n"
        "    return real(host, *args, **kwargs)\n"
        "socket.getaddrinfo = slow\n"
        "from elastic_healthcheck._cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", code, "probe", "--json", "--timeout", "0.5"]
        + ["slow.test:80", f"localhost:{alive_port}", f"127.0.0.1:{alive_port}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert (result.returncode, result.stderr) == (1, "")
    slow, by_name, by_address = json.loads(result.stdout)["results"]
    assert slow["reason"] == "cannot resolve slow.test: no answer within 0.5s"
    assert by_name["verdict"] == by_address["verdict"] == "alive"
    assert elapsed < 10, elapsed  # 0.5 s and an interpreter, not 30 s


@pytest.mark.parametrize("knows_the_limit", [True, False], ids=["limit-read", "emfile-seen"])
def test_more_targets_than_the_open_file_limit_are_probed_in_turn(alive_port, knows_the_limit):
    """With `ulimit -n 64`, 300 targets are all probed and reported; none is lost to EMFILE,
    whether the limit was read up front or only met as EMFILE."""
    targets = [f"127.0.0.1:{alive_port}"] * 299 + ["127.0.0.1:1"]
    code = (
        "import resource, sys\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))\n"
        "from elastic_healthcheck._cli import probe as _probe\n"
        + ("" if knows_the_limit else "_probe._max_open = lambda: 1 << 30\n")
        + "from elastic_healthcheck._cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "probe", "--json", "--timeout", "10", *targets],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (result.returncode, result.stderr) == (1, "")
    verdicts = [r["verdict"] for r in json.loads(result.stdout)["results"]]
    assert verdicts == ["alive"] * 299 + ["error"]
