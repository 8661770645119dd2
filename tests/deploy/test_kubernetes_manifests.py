"""The manifests under deploy/kubernetes/: valid resources, probes sized from the timeouts.

Core resources are validated offline against the Kubernetes OpenAPI schemas shipped in
kubernetes-validate (a ``test`` extra); the custom resources' pod templates are validated
as core PodTemplates. Without that package these tests skip.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import DEPLOY

yaml = pytest.importorskip("yaml", reason="PyYAML comes with kubernetes-validate (test extra)")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (test extra)"
)

MANIFESTS = DEPLOY / "kubernetes"
# Kubernetes 1.27 is the first to label a Job's pods batch.kubernetes.io/job-name.
KUBERNETES_VERSION = "1.27.0"
# The agent's defaults: --health-timeout (torch passes 60) and --health-startup-timeout.
TIMEOUT = 60.0
STARTUP_TIMEOUT = 1800.0


def _documents(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]


def _pod_templates() -> list[tuple[str, dict[str, Any]]]:
    """(file, pod template) for every workload under deploy/kubernetes/."""
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in _documents(path.name):
            if doc["kind"] == "Job":
                found.append((path.name, doc["spec"]["template"]))
            elif doc["kind"] == "PyTorchJob":
                for replicas in doc["spec"]["pytorchReplicaSpecs"].values():
                    found.append((path.name, replicas["template"]))
    return found


def test_the_manifests_are_there():
    assert sorted(p.name for p in MANIFESTS.glob("*.yaml")) == [
        "podmonitor.yaml",
        "pytorchjob.yaml",
        "torchrun-job-restart-on-hang.yaml",
        "torchrun-job.yaml",
    ]
    assert len(_pod_templates()) == 3


@pytest.mark.parametrize("name", ["torchrun-job.yaml", "torchrun-job-restart-on-hang.yaml"])
def test_core_resources_pass_the_strict_schema(name):
    for doc in _documents(name):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(("name", "template"), _pod_templates(), ids=lambda v: str(v)[:40])
def test_every_pod_template_passes_the_strict_schema(name, template):
    """A custom resource's pod template too, as a core PodTemplate."""
    wrapped = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "check"},
        "template": template,
    }
    kubernetes_validate.validate(wrapped, KUBERNETES_VERSION, strict=True)


def test_the_validator_rejects_a_misspelt_probe_field():
    """The check can fail: a typo in a probe is caught offline."""
    job = _documents("torchrun-job.yaml")[1]
    job["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["periodSecond"] = 10
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)


def _options(command: list[str]) -> dict[str, str]:
    """``--name=value`` arguments as a mapping."""
    return dict(arg.split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)


def _window(probe: dict[str, Any]) -> float:
    """Seconds of failed probes before the kubelet acts."""
    return float(probe["failureThreshold"] * probe["periodSeconds"])


# The same setting as a wrapper flag, and as the variable plain torchrun is given.
SETTINGS = {
    "port": ("--health-port", "TORCHELASTIC_HEALTH_CHECK_PORT"),
    "timeout": ("--health-timeout", "ELASTIC_HEALTHCHECK_TORCHRUN_TIMEOUT"),
    "startup": ("--health-startup-timeout", "ELASTIC_HEALTHCHECK_TORCHRUN_STARTUP_TIMEOUT"),
}


def _settings(container: dict[str, Any]) -> dict[str, str]:
    """The health settings of a container: the wrapper's flags, or plain torchrun's env."""
    command = container["command"]
    if command[:2] == ["elastic-healthcheck", "torchrun"]:
        options = _options(command)
        return {name: options[flag] for name, (flag, _) in SETTINGS.items()}
    assert command[0] == "torchrun", command
    env = {item["name"]: item["value"] for item in container.get("env", [])}
    return {name: env[variable] for name, (_, variable) in SETTINGS.items()}


def test_plain_torchrun_is_shown_with_only_variables_and_the_wrapper_too():
    commands = {
        name: template["spec"]["containers"][0]["command"][0] for name, template in _pod_templates()
    }
    assert commands == {
        "pytorchjob.yaml": "torchrun",
        "torchrun-job-restart-on-hang.yaml": "elastic-healthcheck",
        "torchrun-job.yaml": "elastic-healthcheck",
    }


def test_every_variable_set_is_one_elastic_healthcheck_reads():
    from elastic_healthcheck._config.settings import ConfigurationError, read

    for _name, template in _pod_templates():
        env = {
            item["name"]: item["value"]
            for item in template["spec"]["containers"][0].get("env", [])
            if item["name"].startswith("ELASTIC_HEALTHCHECK_")
        }
        try:
            read("torchrun", flags={}, environ=env)
        except ConfigurationError as exc:  # an unknown or malformed variable
            pytest.fail(str(exc))


@pytest.mark.parametrize(("name", "template"), _pod_templates(), ids=lambda v: str(v)[:40])
def test_probes_scrape_and_port_agree(name, template):
    (container,) = template["spec"]["containers"]
    options = _settings(container)
    assert float(options["timeout"]) == TIMEOUT
    assert float(options["startup"]) == STARTUP_TIMEOUT
    port = int(options["port"])
    assert {"name": "health", "containerPort": port} in container["ports"]
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert template["metadata"]["labels"]["elastic-healthcheck/scrape"] == "true"
    startup, liveness = container["startupProbe"], container["livenessProbe"]
    assert startup["httpGet"] == {"path": "/healthz", "port": "health"}
    assert liveness["httpGet"] == {"path": "/livez", "port": "health"}
    # The agent answers within its callback deadline (0.5 s); a probe waits longer.
    assert liveness["timeoutSeconds"] >= 1


@pytest.mark.parametrize(("name", "template"), _pod_templates(), ids=lambda v: str(v)[:40])
def test_a_hang_ends_the_pod_within_timeout_plus_the_probe_window(name, template):
    """Detection: the verdict's timeout plus the liveness window, minutes at most."""
    (container,) = template["spec"]["containers"]
    assert TIMEOUT + _window(container["livenessProbe"]) <= 180


def test_restart_on_hang_gives_the_in_job_restart_its_chance_first():
    """With --health-on-hang restart the liveness window outlasts the in-job restart.

    The agent ends a hung group within seconds (stacks within 2 s, a polite signal, SIGKILL
    after a short grace) and then answers 200 while restarting; 60 s of 503 leaves room.
    """
    (report,) = _documents("torchrun-job.yaml")[1]["spec"]["template"]["spec"]["containers"]
    (restart,) = _documents("torchrun-job-restart-on-hang.yaml")[1]["spec"]["template"]["spec"][
        "containers"
    ]
    assert "--health-on-hang" not in _options(report["command"])
    assert _options(restart["command"])["--health-on-hang"] == "restart"
    assert _window(restart["livenessProbe"]) >= 60
    assert _window(restart["livenessProbe"]) > _window(report["livenessProbe"])


def test_every_health_option_is_one_the_cli_knows():
    result = subprocess.run(
        [sys.executable, "-m", "elastic_healthcheck", "torchrun", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    known = set(re.findall(r"--health-[\w-]+", result.stdout))
    used = {
        option
        for path in MANIFESTS.glob("*.yaml")
        for option in re.findall(r"--health-[\w-]+", path.read_text())
    }
    assert used - known == set()


def test_podmonitor_scrapes_the_port_and_labels_the_rules_expect():
    (monitor,) = _documents("podmonitor.yaml")
    assert monitor["spec"]["selector"]["matchLabels"] == {"elastic-healthcheck/scrape": "true"}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("health", "/metrics")
    targets = {r["targetLabel"]: r for r in endpoint["relabelings"]}
    assert targets["job"]["replacement"] == "elastic-healthcheck"
    rules = (DEPLOY / "prometheus" / "elastic-healthcheck.rules.yml").read_text()
    assert 'up{job="elastic-healthcheck"}' in rules
    assert "training_job" in targets


@pytest.mark.parametrize(
    ("kubeflow", "batch", "expected"),
    [
        ("llama", "", "llama"),
        ("llama", "llama-worker", "llama"),
        ("", "trainer", "trainer"),
        ("", "", None),
    ],
)
def test_training_job_relabeling(kubeflow, batch, expected):
    """The relabeling regex (anchored, as Prometheus anchors it) picks the job's name."""
    (monitor,) = _documents("podmonitor.yaml")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    rule = next(r for r in endpoint["relabelings"] if r["targetLabel"] == "training_job")
    match = re.fullmatch(rule["regex"], rule["separator"].join([kubeflow, batch]))
    got = None
    if match is not None:  # Prometheus writes $1, Python \1; an unmatched group is ""
        got = match.expand(re.sub(r"\$(\d)", r"\\\1", rule["replacement"]))
    assert got == expected


def test_docs_show_the_same_relabeling():
    docs = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text()
    assert 'regex: "([^;]+);.*|;(.+)"' in docs


def _probes(node: object) -> list[tuple[str, dict[str, Any]]]:
    """Every (kind, probe) with an httpGet under ``node``: startupProbe, livenessProbe, ..."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key.endswith("Probe") and isinstance(value, dict) and "httpGet" in value:
                found.append((key, value))
            else:
                found.extend(_probes(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_probes(item))
    return found


def _documented_probes() -> list[tuple[str, str, dict[str, Any]]]:
    from ..docs.markdown import blocks, documents

    found = []
    for path in documents():
        for block in blocks(path):
            if block.language == "yaml":
                for kind, probe in _probes(yaml.safe_load(block.text)):
                    found.append((block.where, kind, probe))
    return found


def test_documented_probes_are_the_manifests_probes():
    """README, docs and manifests size the kubelet's HTTP probes alike (exec probes, which
    start an interpreter, are their own)."""
    (container,) = _documents("torchrun-job.yaml")[1]["spec"]["template"]["spec"]["containers"]
    reference = dict(_probes(container))
    documented = _documented_probes()
    assert {kind for _, kind, _ in documented} == set(reference), documented
    for where, kind, probe in documented:
        assert probe == reference[kind], (where, kind, probe, reference[kind])


@pytest.mark.parametrize(("name", "template"), _pod_templates(), ids=lambda v: str(v)[:40])
def test_every_manifest_sizes_its_probes_alike(name, template):
    """Only --health-on-hang restart widens the liveness window (to give its restart time)."""
    (container,) = _documents("torchrun-job.yaml")[1]["spec"]["template"]["spec"]["containers"]
    reference = dict(_probes(container))
    (mine,) = template["spec"]["containers"]
    probes = dict(_probes(mine))
    assert probes["startupProbe"] == reference["startupProbe"]
    expected = dict(reference["livenessProbe"])
    if _options(mine["command"]).get("--health-on-hang") == "restart":
        expected["failureThreshold"] = probes["livenessProbe"]["failureThreshold"]
    assert probes["livenessProbe"] == expected
