"""What the agent writes into a hung rank's TORCHELASTIC_ERROR_FILE before ending its group,
in the format torchrun's failure summary reads (the dict form @record writes)."""

from __future__ import annotations

import json
import time

from elastic_healthcheck._torchrun.agentstate import AgentState, GroupView
from elastic_healthcheck._torchrun.rootcause import top_frame, write_root_causes
from elastic_healthcheck._torchrun.verdict import (
    AgentPhase,
    GroupVerdict,
    RankState,
    RankVerdict,
)
from elastic_healthcheck.status import Verdict

STACK = """Thread 0x00007f3c8d2fe6c0 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 327 in wait

Current thread 0x00007f3c8e4ff740 (most recent call first):
  File "/job/train.py", line 41 in stuck_in_compute
  File "/job/train.py", line 72 in <module>
"""


def _verdict(suspects: tuple[str, ...]) -> GroupVerdict:
    ranks = {
        "0": RankVerdict(RankState.STALLED, 7.2, 0, 4101, 15, 31, "all_reduce", 7.1),
        "1": RankVerdict(RankState.STALLED, 7.3, 1, 4102, 15, 30, None, None),
    }
    return GroupVerdict(
        Verdict.DEAD,
        5.0,
        1_795_600_292.7,
        7.3,
        AgentPhase.RUNNING,
        ranks=ranks,
        suspects=suspects,
        summary="local rank 1 stalled outside a collective while local rank 0 waits in all_reduce",
    )


def test_the_top_frame_is_the_current_threads_innermost():
    assert top_frame(STACK) == 'File "/job/train.py", line 41 in stuck_in_compute'
    assert top_frame("no frames") is None


def test_only_the_blamed_rank_gets_an_error_file_torchrun_can_read(tmp_path):
    files = {rank: str(tmp_path / rank / "error.json") for rank in ("0", "1")}
    group = GroupView(0.0, ("0", "1"), {"0": 4101, "1": 4102}, 2, files)
    now = time.time()
    write_root_causes(_verdict(("1",)), group, {"1": STACK}, now)
    data = json.loads((tmp_path / "1" / "error.json").read_text())
    message = data["message"]["message"]
    assert message.startswith("Hung: local rank 1 (rank 1) made no progress for 7.3 s")
    assert "local rank 1 stalled outside a collective" in message
    assert message.endswith('top of its stack: File "/job/train.py", line 41 in stuck_in_compute')
    extra = data["message"]["extraInfo"]
    assert extra["py_callstack"].startswith(message) and "stuck_in_compute" in extra["py_callstack"]
    # Earlier than the moment its healthy peer is ended: torchrun's root cause is the first.
    assert int(extra["timestamp"]) == int(now - 7.3) < int(now)
    assert not (tmp_path / "0" / "error.json").exists()


def test_with_no_suspect_every_stalled_rank_is_written_and_a_workers_own_file_is_kept(tmp_path):
    files = {rank: str(tmp_path / f"{rank}.json") for rank in ("0", "1")}
    (tmp_path / "0.json").write_text('{"message": "the worker\'s own"}')
    group = GroupView(0.0, ("0", "1"), {}, 2, files)
    write_root_causes(_verdict(()), group, {}, time.time())
    assert json.loads((tmp_path / "0.json").read_text()) == {"message": "the worker's own"}
    assert "Hung: local rank 1" in (tmp_path / "1.json").read_text()


def test_a_restarted_group_is_held_to_what_the_first_start_took(tmp_path):
    state = AgentState(str(tmp_path), 5.0, 1800.0)
    assert state.startup_deadline() == 1800.0  # nothing known yet
    state.first_startup = 40.0
    assert state.startup_deadline() == 1800.0  # the first group keeps it
    state.restarts = 1
    assert state.startup_deadline() == 120.0  # 3 x 40 s
    state.first_startup = 1.0
    assert state.startup_deadline() == 10.0  # at least twice the timeout
    state.first_startup = 1000.0
    assert state.startup_deadline() == 1800.0  # never more than the startup timeout
