"""The ``/metrics`` families a torchrun verdict adds: the agent's phase and counters, each rank.

Pure: a :class:`~.verdict.GroupVerdict` in, :class:`MetricFamily` values out; the HTTP
server prints them after the verdict's own families. docs/deploy.md lists every family.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .._http.prometheus import MetricFamily, Sample

if TYPE_CHECKING:
    from .verdict import GroupVerdict, RankVerdict

__all__ = ["families"]

# (counter key in the verdict's counters, family name, help)
_AGENT_COUNTERS = (
    ("restarts", "worker_group_restarts_total", "Worker-group restarts of the elastic agent."),
    ("hang_restarts", "hang_restarts_total", "Worker-group restarts caused by a detected hang."),
)


def _sample(value: float, **labels: str) -> Sample:
    return Sample(tuple(labels.items()), value)


def families(verdict: GroupVerdict) -> Iterator[MetricFamily]:
    """Every family the verdict has data for, in the documented order."""
    phases = type(verdict.phase)  # every phase gets a sample: the enum, as the verdict has it
    yield MetricFamily(
        "agent_phase",
        "gauge",
        "What the elastic agent is doing: 1 for the current phase, 0 for the others.",
        tuple(_sample(1.0 if p is verdict.phase else 0.0, phase=p.value) for p in phases),
    )
    run_id = verdict.counters.get("run_id")
    if isinstance(run_id, str):
        yield MetricFamily(
            "agent_info",
            "gauge",
            "Always 1; the rendezvous run id of the elastic agent's job.",
            (_sample(1.0, run_id=run_id),),
        )
    for key, name, help_text in _AGENT_COUNTERS:
        value = verdict.counters.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            yield MetricFamily(name, "counter", help_text, (_sample(float(value)),))
    ranks = verdict.ranks
    if not ranks:
        return
    states = type(next(iter(ranks.values())).state)
    yield MetricFamily(
        "rank_state",
        "gauge",
        "Each local rank's state: 1 for the current one, 0 for the others.",
        tuple(
            _sample(1.0 if r.state is s else 0.0, local_rank=local, state=s.value)
            for local, r in ranks.items()
            for s in states
        ),
    )
    yield MetricFamily(
        "rank_phase",
        "gauge",
        "Always 1; what each local rank does: training, evaluation, checkpoint or a named phase.",
        tuple(_sample(1.0, local_rank=local, phase=r.phase) for local, r in ranks.items()),
    )
    for name, kind, help_text, value in _PER_RANK:
        yield MetricFamily(
            name,
            kind,
            help_text,
            tuple(_sample(value(r), local_rank=local) for local, r in ranks.items()),
        )
    if verdict.suspects is not None:
        blamed = set(verdict.suspects)
        yield MetricFamily(
            "rank_suspect",
            "gauge",
            "1 for a local rank the verdict blames for the stall, else 0.",
            tuple(_sample(1.0 if local in blamed else 0.0, local_rank=local) for local in ranks),
        )
    yield MetricFamily(
        "rank_info",
        "gauge",
        "Always 1; each local rank's global rank.",
        tuple(
            _sample(1.0, local_rank=local, rank=str(r.rank))
            for local, r in ranks.items()
            if r.rank is not None
        ),
    )


# (family name, type, help, value): one sample per local rank.
_PER_RANK: tuple[tuple[str, str, str, Callable[[RankVerdict], float]], ...] = (
    (
        "rank_progress_age_seconds",
        "gauge",
        "Seconds since each local rank's last progress (since its start while starting).",
        lambda r: r.age,
    ),
    (
        "rank_in_collective",
        "gauge",
        "1 while a local rank is inside a torch.distributed collective, else 0.",
        lambda r: 1.0 if r.in_collective else 0.0,
    ),
    (
        "rank_collectives_total",
        "counter",
        "torch.distributed collectives each local rank has entered.",
        lambda r: float(r.collectives),
    ),
    (
        "rank_steps_total",
        "counter",
        "Progress events of each local rank: optimizer steps and beat() calls.",
        lambda r: float(r.steps),
    ),
)
