"""NCCL's host waits, designed for and tested with a stand-in: NCCL cannot run on CPU.

A NCCL collective returns at once and completes on the device; the rank waits later, in a
host synchronization. Once a NCCL group exists, a synchronization while a collective may be
pending is noted as a wait inside ``device_synchronize``; otherwise it is not.
"""

from __future__ import annotations

import time

import pytest

from elastic_healthcheck._torchrun.hooks import Hooks
from elastic_healthcheck._torchrun.phases import PhaseStack
from elastic_healthcheck._torchrun.record import (
    RankRecord,
    RankSnapshot,
    create_record,
    read_record,
    record_path,
)


@pytest.fixture
def hooks(tmp_path):
    path = record_path(str(tmp_path), 0)
    create_record(path, time.time())
    record = RankRecord(path)
    yield Hooks(record, PhaseStack(record)), path
    record.close()


def test_a_host_wait_after_a_nccl_collective_is_a_wait_inside_it(hooks):
    hooks, path = hooks
    seen: list[RankSnapshot | None] = []
    synchronize = hooks.device_wait(lambda: seen.append(read_record(path)))
    all_reduce = hooks.collective("all_reduce", lambda tensor, async_op=False: "work")
    hooks._nccl = True  # what init_process_group("nccl") sets (it also wraps torch.cuda's waits)
    all_reduce(None, async_op=True)  # returns at once, as NCCL does
    synchronize()  # the host waits for the device: inside, counted once already
    synchronize()  # nothing pending any more: not a wait
    inside, after = seen
    assert inside is not None and after is not None
    assert (inside.depth, inside.collective, inside.entered) == (1, "device_synchronize", 1)
    assert (after.depth, after.entered) == (0, 1)


def test_without_nccl_a_host_wait_is_not_noted(hooks):
    hooks, path = hooks
    seen: list[RankSnapshot | None] = []
    synchronize = hooks.device_wait(lambda: seen.append(read_record(path)))
    hooks._on_nccl("gloo")  # not NCCL: nothing to wrap
    hooks.collective("all_reduce", lambda tensor, async_op=False: "work")(None, async_op=True)
    synchronize()
    assert seen[0] is not None and seen[0].depth == 0
