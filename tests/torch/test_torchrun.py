"""End to end: the real `elastic-healthcheck torchrun` with real workers, probed over HTTP."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from ..servers.client import request
from .launch import PROBE_INTERVAL, Launch


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
    # Named once it lags rank 0 by more than the timeout (or rank 0 has finished); in the
    # first milliseconds of the stall it is not named yet, and nobody else ever is.
    assert any(o.body["detail"]["suspect_ranks"] == ["1"] for o in stuck)
    assert all(o.body["detail"]["suspect_ranks"] in (["1"], []) for o in stuck)
    assert all(o.body["detail"]["ranks"]["1"]["age"] > 1.5 for o in stuck)
    assert all(o.body["detail"]["ranks"]["1"]["state"] == "stalled" for o in stuck)


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
    port = launch.port
    assert port is not None, launch.first_line
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = json.loads(request(port).body)
        if body.get("detail", {}).get("phase") == "running":
            break
        time.sleep(PROBE_INTERVAL)
    launch.process.send_signal(signal.SIGTERM)
    code, _, err = launch.wait(timeout=60)
    assert code == 1
    assert "SignalException" in err and "got signal: 15" in err
    with pytest.raises(ConnectionRefusedError):
        request(port, timeout=1)


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
