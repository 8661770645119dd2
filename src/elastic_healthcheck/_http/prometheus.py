"""The Prometheus text exposition format, version 0.0.4: numbers in, bytes out, no I/O.

https://prometheus.io/docs/instrumenting/exposition_formats/ : UTF-8, LF line endings,
the last line ends with LF, ``# HELP`` then ``# TYPE`` once per metric family.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from ..status import HealthStatus, Verdict

__all__ = ["AGENT_PHASES", "CONTENT_TYPE", "PREFIX", "RANK_STATES", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

PREFIX = "elastic_healthcheck_"

# What an elastic agent can be doing, in the order it does it. Every phase gets a sample
# (1 for the current one, 0 for the others) so that a rule can ask ``phase="rendezvous" == 1``
# and a dashboard can draw each phase as its own line from the first scrape on.
AGENT_PHASES = ("starting", "rendezvous", "running", "restarting", "exit_barrier", "stopped")

# A local rank's state in the torchrun verdict: no progress yet since its worker started,
# progress within the timeout, none for longer than the timeout, its worker has ended.
RANK_STATES = ("starting", "progressing", "waiting", "stalled", "exited")

_Family = Callable[[str, str, str, list[tuple[str, float]]], None]


def render_metrics(status: HealthStatus, probes: Mapping[Verdict, int]) -> bytes:
    """Render the verdict, the probe counters and what the verdict's detail adds.

    Args:
        status: The current verdict; its ``detail`` (the torch integration's phase and
            ranks) adds the families of :func:`_render_detail`.
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
    _render_detail(status.detail or {}, family)
    lines.append("")
    return "\n".join(lines).encode("utf-8")


def _render_detail(detail: Mapping[str, object], family: _Family) -> None:
    """The families the torch integration's detail allows, each only when its data is there.

    ``detail["ranks"]`` maps a local rank to its record (a mapping with ``state``, ``age``,
    ``rank``, ``steps``, ``collectives``, ``in_collective``) or, in the older shape, to its
    age alone. A value of the wrong type is left out rather than guessed.
    """
    phase = detail.get("phase")
    if isinstance(phase, str):
        phases = AGENT_PHASES if phase in AGENT_PHASES else (*AGENT_PHASES, phase)
        family(
            "agent_phase",
            "gauge",
            "What the elastic agent is doing: 1 for the current phase, 0 for the others.",
            [(_labels(phase=p), 1.0 if p == phase else 0.0) for p in phases],
        )
    run_id = detail.get("run_id")
    if isinstance(run_id, str):
        family(
            "agent_info",
            "gauge",
            "Always 1; the rendezvous run id of the elastic agent's job.",
            [(_labels(run_id=run_id), 1.0)],
        )
    for key, name, help_text in _AGENT_COUNTERS:
        value = _count(detail.get(key))
        if value is not None:
            family(name, "counter", help_text, [("", value)])

    ranks = detail.get("ranks")
    if not isinstance(ranks, Mapping) or not ranks:
        return
    records = {
        str(local): value if isinstance(value, Mapping) else {"age": value}
        for local, value in ranks.items()
    }

    def per_rank(
        name: str, kind: str, help_text: str, value: Callable[[Mapping[str, object]], object]
    ) -> None:
        samples = []
        for local, record in records.items():
            number = value(record)
            if isinstance(number, (int, float)) and not isinstance(number, bool):
                samples.append((_labels(local_rank=local), float(number)))
        if samples:
            family(name, kind, help_text, samples)

    states = [
        (_labels(local_rank=local, state=s), 1.0 if record.get("state") == s else 0.0)
        for local, record in records.items()
        if isinstance(record.get("state"), str)
        for s in RANK_STATES
    ]
    if states:
        family(
            "rank_state",
            "gauge",
            "Each local rank's state: 1 for the current one, 0 for the others.",
            states,
        )
    per_rank(
        "rank_progress_age_seconds",
        "gauge",
        "Seconds since each local rank's last progress (since its start while starting).",
        lambda r: r.get("age"),
    )
    per_rank(
        "rank_in_collective",
        "gauge",
        "1 while a local rank is inside a torch.distributed collective, else 0.",
        lambda r: _flag(r["in_collective"]) if "in_collective" in r else None,
    )
    per_rank(
        "rank_collectives_total",
        "counter",
        "torch.distributed collectives each local rank has entered.",
        lambda r: _count(r.get("collectives")),
    )
    per_rank(
        "rank_steps_total",
        "counter",
        "Progress events of each local rank: optimizer steps and beat() calls.",
        lambda r: _count(r.get("steps")),
    )
    suspects = detail.get("suspect_ranks")
    if isinstance(suspects, (list, tuple)):
        blamed = {str(s) for s in suspects}
        family(
            "rank_suspect",
            "gauge",
            "1 for a local rank the verdict blames for the stall, else 0.",
            [(_labels(local_rank=local), 1.0 if local in blamed else 0.0) for local in records],
        )
    info = [
        (_labels(local_rank=local, rank=str(record["rank"])), 1.0)
        for local, record in records.items()
        if _count(record.get("rank")) is not None
    ]
    if info:
        family("rank_info", "gauge", "Always 1; each local rank's global rank.", info)


# (detail key, family name, help): counters of the agent, read from the detail as given.
_AGENT_COUNTERS = (
    ("restarts", "worker_group_restarts_total", "Worker-group restarts of the elastic agent."),
    ("hang_restarts", "hang_restarts_total", "Worker-group restarts caused by a detected hang."),
)


def _count(value: object) -> float | None:
    """A non-negative whole number as a float, or ``None`` for anything else."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def _flag(value: object) -> float:
    """1 for a collective's name (or ``True``), 0 for ``None``, ``False`` or ``""``."""
    return 1.0 if value else 0.0


def _labels(**labels: str) -> str:
    """``{name="value",...}`` with every value escaped."""
    return "{" + ",".join(f'{name}="{_label(value)}"' for name, value in labels.items()) + "}"


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
