"""/metrics of a real server with the torch integration's detail, read by Prometheus's tools."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from elastic_healthcheck.status import HealthStatus, evaluate

from ..detail_sample import torchrun_detail
from .client import request

DETAIL = torchrun_detail()


@pytest.fixture
def metrics(server_factory) -> bytes:
    """The body of ``GET /metrics`` from a server whose verdict carries the rank detail."""
    server = server_factory(timeout=60)

    def status() -> HealthStatus:
        now = time.time()
        return evaluate(now - 80.25, 60, now).with_detail(DETAIL)

    server.health_status = status
    server.start()
    response = request(server.port, "/metrics")
    assert response.status == 200
    return response.body


def test_promtool_check_metrics_accepts_the_real_exposition(metrics):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus; .ci/run installs it)")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=metrics, capture_output=True, timeout=60
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, b"")


def test_reference_parser_reads_the_real_exposition(metrics):
    parser = pytest.importorskip("prometheus_client.parser")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parser.text_string_to_metric_families(metrics.decode("utf-8"))
        for s in family.samples
    }
    assert samples["elastic_healthcheck_rank_suspect", (("local_rank", "1"),)] == 1
    assert samples["elastic_healthcheck_rank_in_collective", (("local_rank", "1"),)] == 0
    assert samples["elastic_healthcheck_rank_collectives_total", (("local_rank", "0"),)] == 240
    assert samples["elastic_healthcheck_agent_phase", (("phase", "running"),)] == 1
    assert samples["elastic_healthcheck_rank_info", (("local_rank", "1"), ("rank", "7"))] == 1
    assert samples["elastic_healthcheck_verdict", (("verdict", "dead"),)] == 1
