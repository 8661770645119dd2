"""The bootstrap's hooks in real torch, one scenario per process (they patch torch's classes).

Each scenario runs tests/torch/scripts/hooks_probe.py in a world of one gloo rank and reads
the rank's record at each point; the last test trains a DDP model with and without the
bootstrap and compares every parameter bit for bit.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import torch

pytestmark = pytest.mark.torch

SCRIPTS = Path(__file__).with_name("scripts")


def _free_port() -> int:
    # torch's TCPStore needs a port number before it listens; the kernel picks a free one.
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def probe(scenario: str, tmp_path: Path) -> dict[str, dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "hooks_probe.py"), scenario, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PROBE_PORT": str(_free_port())},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    snapshots = [json.loads(line) for line in result.stdout.splitlines()]
    return {s.pop("label"): s for s in snapshots}


def test_collectives_and_waits_on_the_training_thread(tmp_path):
    seen = probe("collectives", tmp_path)
    assert seen["initialized"]["entered"] == 1  # init_process_group is a collective
    assert seen["after all_reduce"]["entered"] == 2
    assert seen["after all_reduce"]["depth"] == 0
    async_started = seen["after an async all_reduce"]
    assert (async_started["entered"], async_started["depth"]) == (3, 0)  # counted, not inside
    waiting = seen["inside its wait"]
    assert (waiting["entered"], waiting["depth"], waiting["collective"]) == (3, 1, "all_reduce")
    assert seen["after its wait"]["depth"] == 0
    assert seen["after an all_reduce on another thread"]["entered"] == 3  # not counted


def test_evaluation_is_a_phase_with_forwards_as_signs_of_life(tmp_path):
    seen = probe("evaluation", tmp_path)
    assert seen["after model.eval()"]["phase"] == "evaluation"
    forwards = seen["after two forwards"]
    assert forwards["phase"] == "evaluation" and forwards["forwards"] == 2
    assert forwards["phase_activity"] >= forwards["phase_since"]
    after = seen["after model.train()"]
    assert after["phase"] is None and after["left_time"] >= forwards["phase_activity"]
    stepped = seen["after an optimizer step"]
    assert stepped["phase"] is None and stepped["steps"] == 1


def test_checkpoints_are_a_phase_until_an_async_save_is_done(tmp_path):
    seen = probe("checkpoints", tmp_path)
    assert seen["inside torch.save"]["phase"] == "checkpoint"
    assert seen["after torch.save"]["phase"] is None
    assert seen["after dcp.save"]["phase"] is None
    assert seen["while async_save goes on"]["phase"] == "checkpoint"
    assert seen["after async_save is done"]["phase"] is None


def test_a_named_phase_with_its_deadline(tmp_path):
    seen = probe("named", tmp_path)
    upload = seen["inside phase(upload)"]
    assert (upload["phase"], upload["phase_deadline"]) == ("upload", 900.0)
    nested = seen["inside a nested phase"]
    assert (nested["phase"], nested["phase_deadline"]) == ("verify", 0.0)
    assert seen["back in upload"]["phase"] == "upload"
    assert seen["after the phase"]["phase"] is None


def test_ddp_gradient_sync_is_a_collective_and_no_sync_is_not(tmp_path):
    seen = probe("ddp", tmp_path)
    before = seen["after two steps"]["entered"]
    synced = seen["after a backward"]
    # One more: the gradient all-reduce (no buffers to broadcast, buckets rebuilt already).
    assert synced["entered"] == before + 1 and synced["depth"] == 0
    assert seen["after a backward under no_sync()"]["entered"] == synced["entered"]


def _train(tmp_path: Path, bootstrap: bool) -> dict[str, torch.Tensor]:
    out = tmp_path / f"params-{bootstrap}.pt"
    script = str(SCRIPTS / "ddp_loop.py")
    common = ["--nproc-per-node", "3", "--standalone", script]
    if bootstrap:
        command = [sys.executable, "-m", "elastic_healthcheck", "torchrun", "--health-port",
                   "0", "--health-host", "127.0.0.1", *common]  # fmt: skip
    else:
        command = [sys.executable, "-m", "torch.distributed.run", *common]
    env = {
        **os.environ,
        "STEPS": "12",
        "STEP_SECONDS": "0",
        "EVAL_EVERY": "5",
        "EVAL_SECONDS": "0.3",
        "SAVE_EVERY": "6",
        "SAVE_SECONDS": "0",
        "PARAMS_OUT": str(out),
    }
    env.pop("TORCHELASTIC_HEALTH_CHECK_PORT", None)
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    params: dict[str, torch.Tensor] = torch.load(out)
    return params


def test_training_is_bit_identical_with_and_without_the_bootstrap(tmp_path):
    """Three ranks (not a power of two), DDP with BatchNorm buffers, evaluation and
    checkpoints: every parameter and buffer is equal, bit for bit."""
    ours, theirs = _train(tmp_path, bootstrap=True), _train(tmp_path, bootstrap=False)
    assert ours.keys() == theirs.keys()
    different = [name for name in ours if not torch.equal(ours[name], theirs[name])]
    assert not different, different
