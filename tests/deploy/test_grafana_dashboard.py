"""The Grafana dashboard under deploy/grafana/ asks only for series that exist."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from elastic_healthcheck._http.prometheus import render_metrics
from elastic_healthcheck.status import evaluate

from ..detail_sample import torchrun_detail
from .conftest import DEPLOY

DASHBOARD = DEPLOY / "grafana" / "elastic-healthcheck.json"
RULES = DEPLOY / "prometheus" / "elastic-healthcheck.rules.yml"

# Everything /metrics can expose: the torch integration's full detail shape.
FULL_DETAIL = torchrun_detail()

# PromQL words that are not series names: aggregations, functions, keywords.
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset",
}  # fmt: skip
_WORD = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def series_names(expr: str) -> set[str]:
    """The metric and recording-rule names a PromQL expression selects.

    Strings, label matchers, ranges and the label lists of ``by``/``on``/... are removed
    first; a word followed by ``(`` is a function or an aggregation.
    """
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in _WORD.finditer(expr):
        word = match.group()
        if word in _KEYWORDS or expr[match.end() :].lstrip().startswith("("):
            continue
        names.add(word)
    return names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('max by (pod) (a_b{x="y(z)", w=~"[a-z]+"})', {"a_b"}),
        ("rate(c_total[$__rate_interval]) * on (p, q) group_left (r) d", {"c_total", "d"}),
        ("rec:name:count > 0 and ignoring (s) e == 1", {"rec:name:count", "e"}),
        ("sum(f) or vector(0)", {"f"}),
    ],
)
def test_series_names_finds_exactly_the_selected_series(expr, names):
    assert series_names(expr) == names


def exposed_names() -> set[str]:
    status = evaluate(0, 60, now=100).with_detail(FULL_DETAIL)
    text = render_metrics(status, {}).decode("utf-8")
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def recorded_names() -> set[str]:
    return set(re.findall(r"^\s*- record:\s*(\S+)\s*$", RULES.read_text(), re.MULTILINE))


def queries(dashboard: dict[str, Any]) -> Iterator[str]:
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            yield target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable["query"]["query"])
            assert found, variable
            yield found.group(1)


def test_every_query_names_only_metrics_or_recording_rules_that_exist():
    dashboard = json.loads(DASHBOARD.read_text())
    known = exposed_names() | recorded_names() | {"up"}
    unknown = {(expr, name) for expr in queries(dashboard) for name in series_names(expr) - known}
    assert unknown == set()


def test_the_dashboard_uses_the_recording_rules_and_the_rank_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    used = set().union(*(series_names(e) for e in queries(dashboard)))
    assert "training_job_rank:elastic_healthcheck_culprit:progress_age_seconds" in used
    assert "training_job:elastic_healthcheck_agent_phase:count" in used
    assert "elastic_healthcheck_rank_progress_age_seconds" in used
    assert "training_job:elastic_healthcheck_worker_group_restarts:increase1h" in used


def test_every_panel_has_a_title_a_description_and_a_unique_id():
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert all(p["title"] and p["description"] for p in panels)
    assert len({p["id"] for p in panels}) == len(panels)
