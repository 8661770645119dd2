"""A torchrun verdict's detail as the integration really builds it, for tests of /metrics.

Two local ranks of job "job-42" after one restart: local rank 1 (global 7) hung in compute
at 80.25 s without progress, local rank 0 (global 6) waiting for it in all_reduce.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from elastic_healthcheck._torchrun.record import RankSnapshot
from elastic_healthcheck._torchrun.verdict import group_status

NOW = 1_795_600_300.0


def torchrun_detail() -> Mapping[str, Any]:
    """The detail of a real dead verdict: every key /metrics renders is in it."""
    ranks = {
        "0": RankSnapshot(
            spawn_time=NOW - 900,
            pid=4101,
            global_rank=6,
            progress_time=NOW - 75.5,
            steps=120,
            entered=240,
            depth=1,
            collective="all_reduce",
            collective_since=NOW - 75.0,
        ),
        "1": RankSnapshot(
            spawn_time=NOW - 900,
            pid=4102,
            global_rank=7,
            progress_time=NOW - 80.25,
            steps=120,
            entered=239,
        ),
    }
    status = group_status(
        phase="running",
        now=NOW,
        timeout=60.0,
        startup_timeout=1800.0,
        group_start=NOW - 900,
        ranks=ranks,
        extra={"restarts": 1, "hang_restarts": 0, "run_id": "job-42"},
    )
    assert status.detail is not None and status.detail["suspect_ranks"] == ["1"]
    return status.detail  # the typed verdict: it offers its /metrics families too
