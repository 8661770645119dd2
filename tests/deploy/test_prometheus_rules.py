"""The Prometheus rules under deploy/prometheus/, checked and unit-tested by the real promtool."""

from __future__ import annotations

import re
import subprocess

from .conftest import DEPLOY

RULES = DEPLOY / "prometheus" / "elastic-healthcheck.rules.yml"
RULE_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.test.yml"))


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_rule_tests_exist():
    assert [p.name for p in RULE_TESTS] == [
        "culprit.test.yml",
        "ddp.test.yml",
        "lifecycle.test.yml",
    ]


def test_promtool_check_rules(promtool):
    result = _run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules(promtool):
    """Each alert fires when it should and stays silent through a restart and a rendezvous."""
    result = _run(promtool, "test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout


def test_docs_name_every_recording_rule_and_alert():
    docs = (DEPLOY.parent / "docs" / "deploy.md").read_text()
    names = re.findall(r"^\s*- (?:record|alert):\s*(\S+)\s*$", RULES.read_text(), re.MULTILINE)
    assert len(names) == 18
    assert [n for n in names if f"`{n}`" not in docs] == []
