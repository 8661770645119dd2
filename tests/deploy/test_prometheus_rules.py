"""The Prometheus rules under deploy/prometheus/, checked and unit-tested by the real promtool."""

from __future__ import annotations

import subprocess

from .conftest import DEPLOY

RULES = DEPLOY / "prometheus" / "elastic-healthcheck.rules.yml"
RULE_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.test.yml"))


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_rule_tests_exist():
    assert [p.name for p in RULE_TESTS] == ["culprit.test.yml", "lifecycle.test.yml"]


def test_promtool_check_rules(promtool):
    result = _run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules(promtool):
    """Each alert fires when it should and stays silent through a restart and a rendezvous."""
    result = _run(promtool, "test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout
