"""The Prometheus text exposition format, version 0.0.4: families in, bytes out, no I/O.

https://prometheus.io/docs/instrumenting/exposition_formats/ : UTF-8, LF line endings,
the last line ends with LF, ``# HELP`` then ``# TYPE`` once per metric family.

Every verdict gives the same six families. A verdict whose ``detail`` knows more offers
them as :class:`MetricFamily` values through a ``metric_families()`` method (the torch
integration's verdict does); this module prints what it is handed and knows nothing of
what it means (as prometheus_client's ``generate_latest`` prints its collectors').
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from ..status import HealthStatus, Verdict

__all__ = ["CONTENT_TYPE", "PREFIX", "MetricFamily", "Sample", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

PREFIX = "elastic_healthcheck_"

KINDS = ("gauge", "counter")


class Sample(NamedTuple):
    """One sample: its labels (name -> value, in order) and its value."""

    labels: tuple[tuple[str, str], ...]
    value: float


class MetricFamily(NamedTuple):
    """One metric family: its name (without :data:`PREFIX`), type, help and samples."""

    name: str
    kind: str  # "gauge" or "counter"
    help: str
    samples: tuple[Sample, ...]


def render_metrics(status: HealthStatus, probes: Mapping[Verdict, int]) -> bytes:
    """Render the verdict, the probe counters and the families the verdict's detail adds.

    Args:
        status: The current verdict. If its ``detail`` has a ``metric_families()``
            method, the :class:`MetricFamily` values it returns follow the verdict's own.
        probes: Health probes answered so far, by verdict.

    Returns:
        The exposition, UTF-8 encoded. Unknown values are ``NaN``.
    """
    lines: list[str] = []
    for family in (*_verdict_families(status, probes), *_offered(status)):
        lines.append(f"# HELP {PREFIX}{family.name} {family.help}")
        lines.append(f"# TYPE {PREFIX}{family.name} {family.kind}")
        lines.extend(
            f"{PREFIX}{family.name}{_labels(sample.labels)} {_number(sample.value)}"
            for sample in family.samples
        )
    lines.append("")
    return "\n".join(lines).encode("utf-8")


def _one(value: float, **labels: str) -> Sample:
    return Sample(tuple(labels.items()), value)


def _verdict_families(status: HealthStatus, probes: Mapping[Verdict, int]) -> list[MetricFamily]:
    return [
        MetricFamily(
            "alive",
            "gauge",
            "1 if the agent made progress within the timeout, else 0 (dead or unknown).",
            (_one(1.0 if status.alive else 0.0),),
        ),
        MetricFamily(
            "verdict",
            "gauge",
            "The current verdict: 1 for the one that holds, 0 for the others.",
            tuple(_one(1.0 if status.verdict is v else 0.0, verdict=v.value) for v in Verdict),
        ),
        MetricFamily(
            "last_progress_timestamp_seconds",
            "gauge",
            "Last progress time reported by the alive callback, in epoch seconds.",
            (_one(_or_nan(status.last_progress)),),
        ),
        MetricFamily(
            "progress_age_seconds",
            "gauge",
            "Seconds since the last progress.",
            (_one(_or_nan(status.age)),),
        ),
        MetricFamily(
            "timeout_seconds",
            "gauge",
            "Seconds without progress after which the agent is dead.",
            (_one(status.timeout),),
        ),
        MetricFamily(
            "probes_total",
            "counter",
            "Health probes answered, by verdict.",
            tuple(_one(float(probes.get(v, 0)), verdict=v.value) for v in Verdict),
        ),
    ]


def _offered(status: HealthStatus) -> Iterable[MetricFamily]:
    """What the detail offers through ``metric_families()``; anything else is left out."""
    offer = getattr(status.detail, "metric_families", None)
    if not callable(offer):
        return ()
    return [family for family in offer() if isinstance(family, MetricFamily) and family.samples]


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    """``{name="value",...}`` with every value escaped; empty for no labels."""
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{_label(value)}"' for name, value in labels) + "}"


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
