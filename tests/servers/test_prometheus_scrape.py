"""A real Prometheus scrapes four real servers and the rules name the culprit across nodes.

4 nodes x 2 ranks, each node's /metrics served by an HTTPHealthCheckServer on loopback
whose verdict carries the torch integration's detail: global rank 7 (node 3, local rank 1)
is stuck in compute, the other 7 ranks wait inside a collective, and no node's own verdict
blames anyone. Prometheus (Debian's package) scrapes every second with the labels a
Kubernetes scrape adds, evaluates deploy/prometheus's rules, and is asked every query of
the Grafana dashboard. Skipped, saying why, without the prometheus binary.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from elastic_healthcheck._torchrun.verdict import AgentPhase, GroupVerdict, RankState, RankVerdict
from elastic_healthcheck.status import HealthStatus, Verdict, evaluate

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

DEADLINE = 60.0
NODES, RANKS = 4, 2
CULPRIT = (3, 1)


def _detail(node: int) -> GroupVerdict:
    """One node's verdict: every rank stalled, the culprit outside all_reduce, one behind."""
    ranks = {}
    for local in range(RANKS):
        culprit = (node, local) == CULPRIT
        ranks[str(local)] = RankVerdict(
            state=RankState.STALLED,
            age=95.0 if culprit else 90.0,
            rank=node * RANKS + local,
            pid=None,
            steps=50,
            collectives=101 if culprit else 102,
            in_collective=None if culprit else "all_reduce",
            collective_age=None if culprit else 90.0,
        )
    return GroupVerdict(
        verdict=Verdict.DEAD,
        timeout=60.0,
        last_progress=None,
        age=None,
        phase=AgentPhase.RUNNING,
        counters={"restarts": 0, "hang_restarts": 0, "run_id": "llama-1"},
        ranks=ranks,
        suspects=(),
    )


def _listening_port(pid: int) -> int | None:
    """The TCP port process ``pid`` listens on, read from /proc (Prometheus binds port 0)."""
    inodes = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # the process has just ended; the caller sees it exit
        return None
    for fd in fds:
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                return int(fields[1].rsplit(":", 1)[1], 16)
    return None


def _ready(port: int) -> bool:
    """Whether Prometheus answers 200 on /-/ready (503 while its storage opens)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class Prometheus:
    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process, self.port = process, port

    def get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result = self.get("/api/v1/query", query=expr)["result"]
        assert isinstance(result, list)
        return result

    def wait_for(self, expr: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result:
                return result
            time.sleep(0.2)
        raise AssertionError(f"{expr} stayed empty for {DEADLINE}s")


@pytest.fixture
def prometheus(tmp_path: Path, server_factory) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (Debian package prometheus; .ci/run installs it)")
    targets = []
    for node in range(NODES):
        detail = _detail(node)
        server = server_factory(timeout=60)

        def status(detail: GroupVerdict = detail) -> HealthStatus:
            now = time.time()
            return evaluate(now - 95.0, 60, now).with_detail(detail)

        server.health_status = status
        server.start()
        targets.append(
            f"      - targets: ['127.0.0.1:{server.port}']\n"
            f"        labels: {{namespace: ml, training_job: llama, pod: llama-worker-{node}}}\n"
        )
    shutil.copy(DEPLOY / "prometheus" / "elastic-healthcheck.rules.yml", tmp_path)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "rule_files: [elastic-healthcheck.rules.yml]\n"
        "scrape_configs:\n"
        "  - job_name: elastic-healthcheck\n"
        "    static_configs:\n" + "".join(targets)
    )
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            "--web.listen-address=127.0.0.1:0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + DEADLINE
        port = None
        while port is None and time.monotonic() < deadline and process.poll() is None:
            port = _listening_port(process.pid)
            if port is None:
                time.sleep(0.05)
        assert port is not None, "prometheus did not listen"
        # It listens before its storage is open, and answers 503 until then: wait for ready.
        while not _ready(port):
            assert time.monotonic() < deadline and process.poll() is None, "never ready"
            time.sleep(0.05)
        yield Prometheus(process, port)
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]


def test_rules_name_the_culprit_and_every_dashboard_query_answers(prometheus):
    # The rules run every second from the first scrape on; wait until they have seen every
    # node (before that, a rule evaluated on some of the nodes can be right about those).
    prometheus.wait_for(
        f"training_job:elastic_healthcheck_ranks_stalled_in_collective:count == {NODES * RANKS - 1}"
    )
    prometheus.wait_for(
        'training_job_rank:elastic_healthcheck_culprit:progress_age_seconds{pod="llama-worker-3"}'
    )
    (culprit,) = prometheus.query(
        "training_job_rank:elastic_healthcheck_culprit:progress_age_seconds"
    )
    assert {k: culprit["metric"][k] for k in ("pod", "local_rank", "rank")} == {
        "pod": "llama-worker-3",
        "local_rank": "1",
        "rank": "7",
    }
    assert float(culprit["value"][1]) == 95.0
    (waiting,) = prometheus.query(
        "training_job:elastic_healthcheck_ranks_stalled_in_collective:count"
    )
    assert float(waiting["value"][1]) == NODES * RANKS - 1

    dashboard = json.loads((DEPLOY / "grafana" / "elastic-healthcheck.json").read_text())
    variables = {"$namespace": "ml", "$training_job": "llama", "$__rate_interval": "10s"}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    for expr in exprs:
        expr = re.sub(r"\$\w+", lambda m: variables[m.group()], expr)
        assert prometheus.wait_for(expr), expr
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable["query"]["query"])
            assert found
            selector = found.group(1).replace("$namespace", "ml")
            values = prometheus.get(
                f"/api/v1/label/{found.group(2)}/values", **{"match[]": selector}
            )
            assert values == [{"namespace": "ml", "training_job": "llama"}[found.group(2)]]
