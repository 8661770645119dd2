"""What a rank is doing besides training: evaluation, a checkpoint, or a phase it names.

A rank inside a phase is judged by the phase's deadline (the agent's phase timeout unless
the phase sets its own), counted from its last sign of life there, instead of by the
timeout between optimizer steps: a checkpoint written in one long ``torch.save`` or an
evaluation between two steps is not a hang, and one that never ends is still reported.

Phases nest; the record shows the innermost. The bootstrap opens them by itself:
evaluation from ``model.eval()`` until ``model.train()`` or the next optimizer step,
a checkpoint around ``torch.save``, ``torch.load``, ``torch.distributed.checkpoint`` and
``safetensors`` calls (and until an ``async_save`` is done). A script names its own with
:func:`elastic_healthcheck.worker.phase`.

A phase may end on another thread (an ``async_save`` finishes on torch's checkpoint
thread), so changes take a lock; they happen a few times per step at most.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from .record import RankRecord

__all__ = ["EVALUATION", "CHECKPOINT", "Phase", "PhaseStack"]

EVALUATION = "evaluation"
CHECKPOINT = "checkpoint"


@dataclass(eq=False)
class Phase:
    """One open phase (compared by identity: the same name may be open twice)."""

    kind: str  # "evaluation", "checkpoint" or "named"
    name: str
    deadline: float  # seconds; 0 = the agent's phase timeout
    since: float = field(default_factory=time.time)


class PhaseStack:
    """The phases a rank is in, innermost last; the record shows the innermost."""

    def __init__(self, record: RankRecord) -> None:
        self._record = record
        self._lock = threading.Lock()
        self._open: list[Phase] = []

    @property
    def current(self) -> Phase | None:
        return self._open[-1] if self._open else None

    def push(self, kind: str, name: str = "", deadline: float = 0.0) -> Phase:
        """Open a phase; the returned value closes it with :meth:`pop`."""
        phase = Phase(kind, name or kind, deadline)
        with self._lock:
            self._open.append(phase)
            self._show()
        return phase

    def pop(self, phase: Phase) -> None:
        """Close a phase (wherever it is in the stack); closing it twice does nothing."""
        with self._lock:
            for index in range(len(self._open) - 1, -1, -1):
                if self._open[index] is phase:
                    del self._open[index]
                    self._show()
                    return

    def pop_kind(self, kind: str) -> None:
        """Close every open phase of one kind (an optimizer step ends evaluation)."""
        with self._lock:
            kept = [phase for phase in self._open if phase.kind != kind]
            if len(kept) != len(self._open):
                self._open = kept
                self._show()

    def _show(self) -> None:
        top = self._open[-1] if self._open else None
        if top is None:
            self._record.set_phase("training", 0.0, 0.0)
        else:
            self._record.set_phase(top.kind, top.since, top.deadline, top.name)
