"""Edges a user meets at a terminal: Ctrl-C, a closed pipe, a mistyped path, brackets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest

from elastic_healthcheck import HTTPHealthCheckServer

from .test_cli import COMMAND, run


def _ipv6_loopback() -> bool:
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            return True
    except OSError:
        return False


def test_ctrl_c_during_probe_exits_130_quietly():
    """No KeyboardInterrupt traceback: the user knows why the probe stopped."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        port = silent.getsockname()[1]
        process = subprocess.Popen(
            [*COMMAND, "probe", "--timeout", "60", f"127.0.0.1:{port}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        silent.settimeout(30)
        connection, _ = silent.accept()  # the probe is waiting for its answer now
        with connection:
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
    assert process.returncode == 130
    assert "Traceback" not in err and err.count("\n") <= 1, err
    assert out == ""


def test_probe_into_a_closed_pipe_exits_quietly():
    """`probe ... | head -1`: the reader left early; no BrokenPipeError traceback."""
    server = HTTPHealthCheckServer(lambda: int(time.time()), 0, 60, host="127.0.0.1")
    with server:
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader is gone before the probe writes a line
        try:
            result = subprocess.run(
                [*COMMAND, "probe", *[f"127.0.0.1:{server.port}"] * 50],
                stdout=write_end,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
            )
        finally:
            os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == 0  # every target answered alive: the verdict stands


def test_serve_warns_at_start_when_the_heartbeat_file_s_directory_is_missing(tmp_path):
    missing = tmp_path / "helth" / "progress"
    process = subprocess.Popen(
        [*COMMAND, "serve", "--host", "127.0.0.1", "--port", "0", "--heartbeat-file", missing],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline().startswith("Serving http health checks")
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=10)
    assert process.returncode == 0
    assert err == (
        f"elastic-healthcheck serve: warning: the heartbeat file's directory {missing.parent}"
        " does not exist (yet); the verdict is unknown until the trainer creates the file\n"
    )


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_serve_host_in_brackets_is_an_address_not_a_name():
    process = subprocess.Popen(
        [*COMMAND, "serve", "--host", "[::1]", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert banner.startswith("Serving http health checks on http://[::1]:"), banner
        target = banner.split(" on ", 1)[1].split(" ", 1)[0]
        probe = run("probe", target)
        assert probe.returncode == 0, probe.stdout + probe.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=10)
    assert process.returncode == 0


def test_serve_reads_its_kind_and_port_from_the_environment():
    """ELASTIC_HEALTHCHECK_SERVER and ELASTIC_HEALTHCHECK_PORT do what the docs say."""
    env = {**os.environ, "ELASTIC_HEALTHCHECK_SERVER": "tcp", "ELASTIC_HEALTHCHECK_PORT": "0"}
    process = subprocess.Popen(
        [*COMMAND, "serve", "--host", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert banner.startswith("Serving tcp health checks on tcp://127.0.0.1:"), banner
        target = banner.split(" on ", 1)[1].split(" ", 1)[0]
        assert target != "tcp://127.0.0.1:8080"  # the variable's 0, not the flag's default
        assert run("probe", target).returncode == 0
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=10)
    assert process.returncode == 0
