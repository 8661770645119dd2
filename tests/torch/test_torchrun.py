"""End to end: the real `elastic-healthcheck torchrun` with real workers, probed over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ..servers.client import request

SCRIPT = Path(__file__).with_name("scripts") / "train.py"
PROBE_INTERVAL = 0.05


@dataclass
class Observation:
    at: float
    status: int | None  # None: no answer (refused, or cut off)
    body: dict = field(default_factory=dict)


class Launch:
    """`python -m elastic_healthcheck torchrun ...` in a subprocess, probed every 50 ms."""

    def __init__(self, *torchrun_args: str, port: int = 0, timeout: float = 1.5, **env: str):
        environment = {**os.environ, "TRAIN_SECONDS": "3", **env}
        environment.pop("TORCHELASTIC_HEALTH_CHECK_PORT", None)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "elastic_healthcheck",
                "torchrun",
                "--health-port",
                str(port),
                "--health-host",
                "127.0.0.1",
                "--health-timeout",
                str(timeout),
                "--nproc-per-node",
                "2",
                "--standalone",
                "--monitor-interval",
                "0.1",
                *torchrun_args,
                str(SCRIPT),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        assert self.process.stderr is not None
        self.first_line = self.process.stderr.readline()
        self.port: int | None = None
        if "health checks for the elastic agent on http://" in self.first_line:
            self.port = int(self.first_line.rsplit(":", 1)[1].split("/", 1)[0])
        self.observations: list[Observation] = []
        self._prober: threading.Thread | None = None

    def probe_until_exit(self) -> None:
        def loop() -> None:
            while self.process.poll() is None:
                try:
                    response = request(self.port, timeout=2)
                except OSError:  # refused, or cut off by the listener closing at exit
                    self.observations.append(Observation(time.monotonic(), None))
                else:
                    self.observations.append(
                        Observation(time.monotonic(), response.status, json.loads(response.body))
                    )
                time.sleep(PROBE_INTERVAL)

        self._prober = threading.Thread(target=loop)
        self._prober.start()

    def wait(self, timeout: float = 120) -> tuple[int, str, str]:
        try:
            out, err = self.process.communicate(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.communicate()
            if self._prober is not None:
                self._prober.join(10)
        return self.process.returncode, out, self.first_line + err

    def phases(self) -> list[str]:
        seen: list[str] = []
        for o in self.observations:
            phase = o.body.get("detail", {}).get("phase")
            if phase and (not seen or seen[-1] != phase):
                seen.append(phase)
        return seen


def test_200_while_ranks_beat_then_503_naming_the_stuck_rank():
    launch = Launch(STUCK_RANK="1", TRAIN_SECONDS="5")
    assert launch.port, launch.first_line
    launch.probe_until_exit()
    code, _, err = launch.wait()
    assert code == 0, err
    running = [o for o in launch.observations if o.body.get("detail", {}).get("phase") == "running"]
    both_beating = [o for o in running if set(o.body["detail"]["ranks"]) == {"0", "1"}]
    assert any(o.status == 200 for o in both_beating), launch.observations
    stuck = [o for o in running if o.status == 503]
    assert stuck, [o.body for o in running]
    assert all(o.body["status"] == "dead" for o in stuck)
    assert {o.body["detail"]["slowest_rank"] for o in stuck} == {"1"}
    assert all(o.body["detail"]["ranks"]["1"] > 1.5 for o in stuck)


def test_no_refused_probe_from_first_listen_to_exit_across_a_restart():
    launch = Launch("--max-restarts", "1", FAIL_RANK="1", TRAIN_SECONDS="2")
    assert launch.port, launch.first_line
    launch.probe_until_exit()
    code, _, err = launch.wait()
    assert code == 0, err
    answered = [i for i, o in enumerate(launch.observations) if o.status is not None]
    refused = [i for i, o in enumerate(launch.observations) if o.status is None]
    assert answered, launch.observations
    # A probe without an answer may only come after the last answer (the listener closes
    # at exit, and can cut off a probe in flight then).
    assert not refused or min(refused) > max(answered), launch.phases()
    phases = launch.phases()
    assert phases.count("running") >= 2, phases  # the worker group ran twice
    assert "restarting" in phases or "rendezvous" in phases[1:], phases
    assert all(o.status == 200 for o in launch.observations if o.status is not None)


def test_port_is_free_after_exit():
    launch = Launch(TRAIN_SECONDS="1")
    port = launch.port
    assert port
    code, _, err = launch.wait()
    assert code == 0, err
    with socket.create_server(("127.0.0.1", port)):
        pass  # binds at once: nothing holds the port


def test_port_in_use_logs_the_error_and_training_goes_on():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        launch = Launch(port=port, TRAIN_SECONDS="1")
        code, _, err = launch.wait()
    assert code == 0, err
    assert f"Cannot serve health checks for the elastic agent on 127.0.0.1:{port}" in err
    assert "training goes on" in err


def test_sigterm_ends_it_as_plain_torchrun_does():
    """Plain torchrun turns SIGTERM into SignalException and exits 1; so must we."""
    launch = Launch(TRAIN_SECONDS="60")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = json.loads(request(launch.port).body)
        if body.get("detail", {}).get("phase") == "running":
            break
        time.sleep(PROBE_INTERVAL)
    launch.process.send_signal(signal.SIGTERM)
    code, _, err = launch.wait(timeout=60)
    assert code == 1
    assert "SignalException" in err and "got signal: 15" in err
    with pytest.raises(ConnectionRefusedError):
        request(launch.port, timeout=1)


def test_bad_health_option_is_a_usage_error():
    result = subprocess.run(
        [sys.executable, "-m", "elastic_healthcheck", "torchrun", "--health-port", "x", "t.py"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "invalid port 'x'" in result.stderr


def test_torchrun_help_lists_the_health_options():
    result = subprocess.run(
        [sys.executable, "-m", "elastic_healthcheck", "torchrun", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert "--health-port" in result.stdout and "torchrun" in result.stdout
