"""The Prometheus text exposition format, version 0.0.4: numbers in, bytes out, no I/O.

https://prometheus.io/docs/instrumenting/exposition_formats/ : UTF-8, LF line endings,
the last line ends with LF, ``# HELP`` then ``# TYPE`` once per metric family.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from .status import HealthStatus, Verdict

__all__ = ["CONTENT_TYPE", "PREFIX", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

PREFIX = "elastic_healthcheck_"


def render_metrics(status: HealthStatus, probes: Mapping[Verdict, int]) -> bytes:
    """Render the verdict and the probe counters as Prometheus text.

    Args:
        status: The current verdict.
        probes: Health probes answered so far, by verdict.

    Returns:
        The exposition, UTF-8 encoded. Unknown values are ``NaN``.
    """
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {PREFIX}{name} {help_text}")
        lines.append(f"# TYPE {PREFIX}{name} {kind}")
        lines.extend(f"{PREFIX}{name}{labels} {_number(value)}" for labels, value in samples)

    family(
        "alive",
        "gauge",
        "1 if the agent made progress within the timeout, else 0 (dead or unknown).",
        [("", 1.0 if status.alive else 0.0)],
    )
    family(
        "verdict",
        "gauge",
        "The current verdict: 1 for the one that holds, 0 for the others.",
        [(f'{{verdict="{v.value}"}}', 1.0 if status.verdict is v else 0.0) for v in Verdict],
    )
    family(
        "last_progress_timestamp_seconds",
        "gauge",
        "Last progress time reported by the alive callback, in epoch seconds.",
        [("", _or_nan(status.last_progress))],
    )
    family(
        "progress_age_seconds",
        "gauge",
        "Seconds since the last progress.",
        [("", _or_nan(status.age))],
    )
    family(
        "timeout_seconds",
        "gauge",
        "Seconds without progress after which the agent is dead.",
        [("", status.timeout)],
    )
    family(
        "probes_total",
        "counter",
        "Health probes answered, by verdict.",
        [(f'{{verdict="{v.value}"}}', float(probes.get(v, 0))) for v in Verdict],
    )
    detail = status.detail or {}
    phase = detail.get("phase")
    if isinstance(phase, str):
        family(
            "agent_phase",
            "gauge",
            "What the elastic agent is doing: 1 for the current phase.",
            [(f'{{phase="{_label(phase)}"}}', 1.0)],
        )
    ranks = detail.get("ranks")
    if isinstance(ranks, Mapping) and ranks:
        family(
            "rank_progress_age_seconds",
            "gauge",
            "Seconds since each local rank's last beat().",
            [(f'{{local_rank="{_label(str(rank))}"}}', float(age)) for rank, age in ranks.items()],
        )
    lines.append("")
    return "\n".join(lines).encode("utf-8")


def _label(value: str) -> str:
    """A label value, escaped as the format requires: backslash, double quote, newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(value)
