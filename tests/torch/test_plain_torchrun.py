"""Plain torchrun (and python -m torch.distributed.run) get the real health check.

With the package installed and TORCHELASTIC_HEALTH_CHECK_PORT set, as a PyTorchJob or a
TorchX component sets it, torch loads the package's ``torchrun.handlers`` entry point in
every launch, and the agent serves what ``elastic-healthcheck torchrun`` serves. Without
the port, or with ``ELASTIC_HEALTHCHECK_TORCHRUN=0``, torchrun is torch's own.
"""

from __future__ import annotations

import pytest

from .launch import Launch, dead, running

pytestmark = pytest.mark.torch

TIMEOUT = 2.0
SLACK = 1.5


@pytest.mark.parametrize("launcher", ["torchrun", "module"])
def test_a_hung_rank_is_named_under_plain_torchrun(launcher):
    launch = Launch(
        script="ddp_loop.py",
        launcher=launcher,
        timeout=TIMEOUT,
        HANG_RANK="1",
        HANG_STEP="8",
        STEPS="1000000",
    )
    try:
        assert launch.port, launch.stderr()[-2000:]
        assert "ELASTIC_HEALTHCHECK_TORCHRUN=0 turns it off" in launch.first_line
        launch.probe_until_exit()
        served = launch.wait_for(running, timeout=60)
        first_dead = launch.wait_for(dead, timeout=90)
        launch.wait_for(lambda o: o.at > first_dead.at + 1.0, timeout=10)
        launch.wait_for(lambda o: "Its Python stacks" in launch.stderr(), timeout=10)
    finally:
        launch.stop()
        launch.wait()
    assert served.at - launch.started < 30  # served within seconds of the launch
    assert set(served.detail["ranks"]) == {"0", "1"}
    hung = launch.stdout_time("HANG")
    assert hung is not None
    assert first_dead.at <= hung + TIMEOUT + SLACK, first_dead.at - hung
    for o in (o for o in launch.before_stop() if dead(o)):
        assert o.detail["suspect_ranks"] == ["1"], o.detail
    assert launch.stderr().count("Local rank 1 (rank 1, pid") == 1


def test_without_the_port_torchrun_is_torchs_own():
    """No health port: no listener, workers started exactly as torch starts them."""
    launch = Launch(script="show_argv.py", launcher="torchrun", port=None)
    code, out, err = launch.wait(timeout=120)
    assert code == 0, err[-3000:]
    assert launch.port is None
    argv = [line for line in out.splitlines() if line.startswith("ARGV")]
    assert len(argv) == 2 and not any("elastic_healthcheck" in line for line in argv), argv
    assert "elastic-healthcheck" not in err


def test_the_opt_out_leaves_torchs_no_op_server():
    launch = Launch(script="show_argv.py", launcher="module", ELASTIC_HEALTHCHECK_TORCHRUN="0")
    code, out, err = launch.wait(timeout=120)
    assert code == 0, err[-3000:]
    assert "No health check server started" in err  # torch's own no-op
    assert not any("elastic_healthcheck" in line for line in out.splitlines())


def test_a_broken_configuration_is_one_warning_and_the_job_still_trains():
    launch = Launch(
        script="ddp_loop.py", launcher="torchrun", STEPS="6",
        ELASTIC_HEALTHCHECK_TORCHRUN_TIMEOUT="soon",
    )  # fmt: skip
    code, out, err = launch.wait(timeout=120)
    assert code == 0, err[-3000:]
    assert out.count("DONE") == 2
    lines = [line for line in err.splitlines() if "elastic-healthcheck could not start" in line]
    assert len(lines) == 1, err[-3000:]
    assert "ELASTIC_HEALTHCHECK_TORCHRUN_TIMEOUT='soon'" in lines[0]
    assert "torchrun runs as torch made it" in lines[0]
