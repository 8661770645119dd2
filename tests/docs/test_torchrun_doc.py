"""docs/torchrun.md: every JSON body it shows is what the verdict's code answers.

Each example is preceded by ``<!-- verdict: timeout=T startup=S started=A [world=W]
[phase_timeout=P] -->`` (the timeouts, how long ago the worker group was spawned, and the
job's world size). The test rebuilds each rank's record from the body (state, age,
collectives, where it waits, its phase), runs the verdict at the same instant, and
compares the whole body.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from elastic_healthcheck._torchrun.record import FLAG_EXITED, RankSnapshot
from elastic_healthcheck._torchrun.seam import TORCH_SEAM
from elastic_healthcheck._torchrun.verdict import BLAME_RULES, group_status

DOC = Path(__file__).resolve().parents[2] / "docs" / "torchrun.md"
EXAMPLE = re.compile(r"<!-- verdict: (?P<settings>[^>]*?) -->\n```json\n(?P<body>.*?)```", re.S)
NOW = 1_795_600_300.0  # the instant every example is taken at


def examples() -> list[re.Match[str]]:
    return list(EXAMPLE.finditer(DOC.read_text(encoding="utf-8")))


def settings(example: re.Match[str]) -> dict[str, float]:
    return {k: float(v) for k, v in (s.split("=") for s in example["settings"].split())}


def snapshot(record: dict[str, Any], started: float) -> RankSnapshot:
    state, age = record["state"], record["age"]
    inside = record["in_collective"]
    phase = None if record["phase"] == "training" else record["phase"]
    return RankSnapshot(
        phase=phase,
        phase_since=NOW - record["phase_age"] if phase else 0.0,
        spawn_time=NOW - started,
        pid=record["pid"],
        global_rank=record["rank"],
        progress_time=0.0 if state == "starting" else NOW - age,
        steps=record["steps"],
        entered=record["collectives"],
        depth=1 if inside else 0,
        collective=inside,
        collective_since=NOW - record["collective_age"] if inside else 0.0,
        flags=FLAG_EXITED if state == "exited" else 0,
    )


def close(ours: object, theirs: object) -> bool:
    if isinstance(ours, float) or isinstance(theirs, float):
        return isinstance(ours, int | float) and ours == pytest.approx(theirs, abs=0.051)
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return ours.keys() == theirs.keys() and all(close(ours[k], theirs[k]) for k in ours)
    if isinstance(ours, list) and isinstance(theirs, list):
        return len(ours) == len(theirs) and all(map(close, ours, theirs))
    return ours == theirs


def test_the_document_has_an_example_for_every_case():
    bodies = [json.loads(m["body"]) for m in examples()]
    states = {r["state"] for b in bodies for r in b["detail"]["ranks"].values()}
    assert states == {"starting", "progressing", "busy", "waiting", "stalled", "exited"}
    assert {b["status"] for b in bodies} == {"alive", "dead"}
    assert len(bodies) >= 8


@pytest.mark.parametrize(
    "example", examples(), ids=lambda m: m["body"].split('"summary": ')[-1][:40]
)
def test_the_body_is_what_the_verdict_answers(example):
    documented = json.loads(example["body"])
    given = settings(example)
    started = given["started"]
    ranks = {
        rank: snapshot(record, started) for rank, record in documented["detail"]["ranks"].items()
    }
    status = group_status(
        phase=documented["detail"]["phase"],
        now=NOW,
        timeout=given["timeout"],
        startup_timeout=given["startup"],
        group_start=NOW - started,
        ranks=ranks,
        world_size=int(given["world"]) if "world" in given else None,
        phase_timeout=given.get("phase_timeout", 1800.0),
    )
    ours = json.loads(json.dumps(status.to_dict()))
    assert close(ours, documented), json.dumps(ours, indent=1)


def _section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(title)
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_the_blame_rules_are_listed_in_the_order_the_code_applies_them():
    section = _section("Blame goes to the first of these")
    listed = re.findall(r"^\d+\. \*\*(.+?)\*\*", section, re.M)
    assert listed == [name for name, _rule in BLAME_RULES]


def test_the_table_of_torch_internals_is_the_seam():
    section = _section("## torch internals used")
    rows = re.findall(r"^\| `([^`]+)` \| (\w+) \| (\w+) \| (\w+) \| (.+?) \|$", section, re.M)
    assert rows == [
        (r.path, r.side, r.how.value, "yes" if r.required else "no", r.needs) for r in TORCH_SEAM
    ]
