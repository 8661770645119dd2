"""`serve` builds its server as the factory and torchrun do: variables count and are checked."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest

from .test_cli import COMMAND

BASE = [*COMMAND, "serve", "--host", "127.0.0.1", "--port", "0"]


def _serve(env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        BASE, capture_output=True, text=True, timeout=timeout, env={**os.environ, **env}
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param(
            {"ELASTIC_HEALTHCHECK_MAX_CONNECTIONS": "0"},
            "ELASTIC_HEALTHCHECK_MAX_CONNECTIONS='0'",
            id="rejected value",
        ),
        pytest.param(
            {"ELASTIC_HEALTHCHECK_MAX_CONNECTIONS": "many"},
            "ELASTIC_HEALTHCHECK_MAX_CONNECTIONS",
            id="unparsable value",
        ),
        pytest.param(
            {"ELASTIC_HEALTHCHECK_HSOT": "127.0.0.1"}, "ELASTIC_HEALTHCHECK_HSOT", id="typo"
        ),
    ],
)
def test_serve_checks_variables_as_the_factory_does(env, message):
    result = _serve(env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_honours_an_option_from_the_environment():
    """ELASTIC_HEALTHCHECK_CLIENT_TIMEOUT=0.2: an idle client is closed in 0.2 s, not 5 s."""
    process = subprocess.Popen(
        BASE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "ELASTIC_HEALTHCHECK_CLIENT_TIMEOUT": "0.2"},
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        port = int(banner.split(" on ", 1)[1].split(" ", 1)[0].rsplit(":", 1)[1].split("/")[0])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            start = time.monotonic()
            assert sock.recv(1) == b""  # closed by the server, without a word
            assert time.monotonic() - start < 2.0
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=10)
