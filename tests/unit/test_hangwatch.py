"""Ending a hung worker group: SIGTERM to the worker's process group, SIGKILL after a grace."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from elastic_healthcheck._torchrun.agentstate import process_gone
from elastic_healthcheck._torchrun.hangwatch import end_processes

IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " + (
    "print('ready', flush=True); time.sleep(60)"
)


def wait_gone(process: subprocess.Popen[str], timeout: float) -> float:
    started = time.monotonic()
    process.wait(timeout=timeout)
    return time.monotonic() - started


def start(code: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    process.stdout.close()
    return process


def test_a_worker_that_takes_sigterm_ends_at_once():
    process = start("import time; print('ready', flush=True); time.sleep(60)")
    end_processes([process.pid], grace=30.0)
    assert wait_gone(process, timeout=10) < 10
    assert process.returncode == -signal.SIGTERM


def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace():
    process = start(IGNORES_SIGTERM)
    end_processes([process.pid], grace=0.5)
    assert wait_gone(process, timeout=10) >= 0.3
    assert process.returncode == -signal.SIGKILL


def test_the_workers_children_go_too():
    """A DataLoader worker is in its worker's process group (torch starts one per worker)."""
    code = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print(child.pid); print('ready', flush=True); time.sleep(60)"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert process.stdout is not None
    child = int(process.stdout.readline())
    assert process.stdout.readline() == "ready\n"
    process.stdout.close()
    end_processes([process.pid], grace=5.0)
    process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while not process_gone(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process_gone(child)


def test_process_gone():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    assert not process_gone(os.getpid())
    deadline = time.monotonic() + 10
    while not process_gone(process.pid) and time.monotonic() < deadline:  # a zombie counts
        time.sleep(0.02)
    assert process_gone(process.pid)
    process.wait()
    assert process_gone(process.pid)
