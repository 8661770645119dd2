"""The README's torchrun example runs: its train.py under its command, and the 503 it shows.

The README marks these blocks no-test (they need torch and take a minute); this test runs
them as a reader would on one machine, on a free port, and compares the answer with the
body the README shows. Without torch it skips.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ..servers.client import request
from .markdown import ROOT, blocks

README = ROOT / "README.md"
DEADLINE = 180.0  # seconds for the whole job to start, train 50 steps and hang


def _block(language: str, starts_with: str) -> str:
    found = [
        b.text for b in blocks(README) if b.language == language and b.text.startswith(starts_with)
    ]
    assert len(found) == 1, f"README: one {language} block with {starts_with!r}"
    return found[0]


def _command() -> tuple[dict[str, str], list[str]]:
    """The README's `HANG=1 elastic-healthcheck torchrun ...` line: its variables and words."""
    text = _block("console", "$ HANG=1 elastic-healthcheck torchrun")
    line = text.split("$ ", 1)[1].split("\n$ ", 1)[0].replace("\\\n", " ")
    words = shlex.split(line.rstrip().rstrip("&"))
    env = dict(word.split("=", 1) for word in words if "=" in word and not word.startswith("-"))
    return env, [word for word in words if "=" not in word or word.startswith("-")]


def test_the_readme_shows_the_command_it_runs():
    # Plain torchrun with torch's variable, then the wrapper with the same port as a flag
    # (tests/torch/test_plain_torchrun.py runs the first shape, this module the second).
    both = _block("console", "$ TORCHELASTIC_HEALTH_CHECK_PORT=29600 torchrun")
    assert both.strip().splitlines() == [
        "$ TORCHELASTIC_HEALTH_CHECK_PORT=29600 torchrun --nproc-per-node 2 --standalone train.py",
        "$ elastic-healthcheck torchrun --health-port 29600 --nproc-per-node 2 --standalone"
        " train.py",
    ]
    env, words = _command()
    assert env == {"HANG": "1"}
    assert words[:2] == ["elastic-healthcheck", "torchrun"] and words[-1] == "train.py"


def _answer(port: int) -> tuple[int, dict[str, Any]] | None:
    try:
        response = request(port, timeout=2)
    except OSError:
        return None
    return response.status, json.loads(response.body)


def _port(log: Path, process: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        first = log.read_text().split("\n", 1)[0]
        if "health checks for the elastic agent on http://" in first:
            return int(first.rsplit(":", 1)[1].split("/", 1)[0])
        time.sleep(0.1)
    raise AssertionError(f"no health server: {log.read_text()[-2000:]}")


def _as_shown(answer: tuple[int, dict[str, Any]]) -> bool:
    """A 503 with both ranks stalled, as the README shows it. (For a moment after the
    first 503, the rank that waits may still count as progressing: its last progress can
    be a little younger than the hung rank's.)"""
    status, body = answer
    ranks = (body.get("detail") or {}).get("ranks") or {}
    return (
        status == 503
        and len(ranks) == 2
        and all(r.get("state") == "stalled" for r in ranks.values())
    )


def test_the_readme_example_names_the_hung_rank(tmp_path):
    pytest.importorskip("torch.distributed.run", reason="the torch example needs torch")
    (tmp_path / "train.py").write_text(_block("python", "# train.py"))
    env, words = _command()
    # A free port instead of 29600, on loopback; the rest as the README has it.
    at = words.index("--health-port")
    words[at : at + 2] = ["--health-port", "0", "--health-host", "127.0.0.1"]
    argv = [sys.executable, "-m", "elastic_healthcheck", *words[1:]]
    log = tmp_path / "torchrun.log"
    with log.open("w") as err:
        process = subprocess.Popen(
            argv,
            cwd=tmp_path,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,  # its workers too are ended below
        )
    try:
        port = _port(log, process)
        deadline = time.monotonic() + DEADLINE
        answer = None
        while time.monotonic() < deadline and process.poll() is None:
            answer = _answer(port)
            if answer is not None and _as_shown(answer):
                break
            time.sleep(0.2)
        assert answer is not None and _as_shown(answer), (answer, log.read_text()[-3000:])
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    body = answer[1]
    seen = json.dumps(body)  # in every failure message: the README's body is made from it
    shown = json.loads(_block("json", '{"status": "dead"'))
    assert body.keys() == shown.keys(), seen
    assert body["status"] == shown["status"] == "dead", seen
    assert body["detail"].keys() == shown["detail"].keys(), seen
    # slowest_rank is information, not blame: which of two ranks stalled in one step is
    # older is a matter of milliseconds, so it is not compared.
    for key in ("phase", "suspect_ranks", "summary"):
        assert body["detail"][key] == shown["detail"][key], (key, seen)
    for local, record in shown["detail"]["ranks"].items():
        real = body["detail"]["ranks"][local]
        assert real.keys() == record.keys(), seen
        for key in ("state", "rank", "steps", "collectives", "in_collective", "phase"):
            assert real[key] == record[key], (local, key, seen)
