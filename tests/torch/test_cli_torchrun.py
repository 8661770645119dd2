"""`elastic-healthcheck torchrun`: what it says of where it serves, and its mistakes.

Each mistake is one line on stderr and exit status 2, before training starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.torch

SCRIPT = str(Path(__file__).with_name("scripts") / "show_argv.py")


def run(*arguments: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TORCHELASTIC_HEALTH_CHECK_PORT"}
    return subprocess.run(
        [sys.executable, "-m", "elastic_healthcheck", "torchrun", *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_it_says_where_it_really_listens():
    every = run("--health-port", "0", "--nproc-per-node", "1", "--standalone", SCRIPT)
    assert every.returncode == 0, every.stderr[-2000:]
    first = every.stderr.splitlines()[0]
    assert first.startswith("elastic-healthcheck: health checks for the elastic agent on ")
    assert "http://[::]:" in first and first.endswith("/healthz (every interface)")
    one = run("--health-port", "0", "--health-host", "127.0.0.1", "--nproc-per-node", "1",
              "--standalone", SCRIPT)  # fmt: skip
    assert one.stderr.splitlines()[0].endswith("/healthz") and "http://127.0.0.1:" in one.stderr


def test_without_a_health_port_it_says_so_in_one_line_and_trains():
    result = run("--nproc-per-node", "1", "--standalone", SCRIPT)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if "no health port" in line]
    assert lines == [
        "elastic-healthcheck torchrun: no health port (--health-port, or torch's "
        "TORCHELASTIC_HEALTH_CHECK_PORT): training goes on without a health check"
    ]
    assert result.stdout.count("ARGV") == 1


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (
            ["--nproc-per-node", "2", "--health-timeout", "5", SCRIPT],
            "error: --health-timeout must come before torchrun's own arguments",
        ),
        (
            ["--health-timout", "5", "--nproc-per-node", "2", SCRIPT],
            "error: unknown option --health-timout (did you mean --health-timeout?); "
            "health options come first, before torchrun's",
        ),
    ],
)
def test_a_misplaced_or_mistyped_health_option_is_one_line(arguments, said):
    result = run("--health-port", "0", *arguments)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("elastic-healthcheck torchrun: ")
    assert said in lines[0]
    assert result.stdout == ""


def test_a_health_option_after_the_script_is_the_scripts():
    result = run("--health-port", "0", "--nproc-per-node", "1", "--standalone", SCRIPT,
                 "--health-timeout", "5")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "'--health-timeout', '5'" in result.stdout
