"""Worker-side progress for a training script run by ``elastic-healthcheck torchrun``.

Under the integration most scripts need nothing from this module: workers start through a
small bootstrap that counts every ``torch.optim`` optimizer step as progress. A loop
without an optimizer (evaluation, data preparation, a custom update) calls :func:`beat`
once per step instead::

    from elastic_healthcheck.worker import beat

    for batch in loader:
        train_step(batch)
        beat()

``beat()`` counts one progress event in this local rank's record, a small shared file the
agent created in its directory (``ELASTIC_HEALTHCHECK_WORKER_DIR``) for the rank named by
``ELASTIC_HEALTHCHECK_WORKER_LOCAL_RANK``. It shares the record with the bootstrap when that is
in; otherwise (``--no-python`` launches, the bootstrap switched off) it opens the record on
its first call and marks the rank's start itself. Anywhere else (plain ``torchrun``,
``python train.py``, a test) it does nothing. It never raises into the training loop,
needs no torch, and costs about 0.05 us outside the integration (0.2 us inside).

Only the process that started the rank writes its record. A process forked from a worker
(a DataLoader worker, say) never beats for it, and neither does a child started with the
same environment (a ``spawn`` DataLoader worker, a subprocess): the record names its owner's
pid. When the worker's script ends without an uncaught exception, the rank is marked as
exited, so a rank that has finished is never taken for a hung one.

``ENV_INTERVAL`` (``ELASTIC_HEALTHCHECK_WORKER_INTERVAL``) is no longer read: every call
writes the record, which costs no system call. The name is kept for code that imports it.
"""

from __future__ import annotations

import os
import sys

from ._torchrun.record import ENV_DIR, ENV_LOCAL_RANK, record_path

__all__ = ["ENV_DIR", "ENV_INTERVAL", "beat", "heartbeat_path", "phase"]

ENV_INTERVAL = "ELASTIC_HEALTHCHECK_WORKER_INTERVAL"  # no longer read; kept for importers

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from ._torchrun.phases import Phase, PhaseStack
    from ._torchrun.record import RankRecord


def _nothing() -> None:
    pass


# What beat() calls: None until the first call decides, then a record's progress() or
# _nothing.
_progress: Callable[[], None] | None = None
_record: RankRecord | None = None
_phases: PhaseStack | None = None


def heartbeat_path(directory: str, local_rank: str | int) -> str:
    """The record file of one local rank in the agent's directory."""
    return record_path(directory, local_rank)


def beat() -> None:
    """Record that this rank made progress (a no-op outside the integration)."""
    progress = _progress
    if progress is None:
        progress = _set_up()
    try:
        progress()
    except Exception:  # the mapping is gone (interpreter shutdown): stop reporting
        _stop()


class phase:
    """Tell the health check what this rank is doing besides training, and for how long.

    Inside the block the rank is judged by the phase's deadline (from its start, or from
    the last sign of life in it), not by the timeout between optimizer steps; a peer that
    waits for it in a collective waits, it is not stalled. Evaluation (``model.eval()``)
    and checkpoints (``torch.save``, ``torch.distributed.checkpoint``, ``safetensors``)
    are seen without it; name what the bootstrap cannot see::

        from elastic_healthcheck.worker import phase

        with phase("upload", deadline=900):
            upload_checkpoint_to_object_store()

    Outside the integration it does nothing (about 0.2 us).

    Args:
        name: What the rank does, as the body and ``/metrics`` show it (at most 32 bytes
            of UTF-8 are kept).
        deadline: Seconds the rank may go without a sign of life in the phase before it
            is stalled; default: the agent's phase timeout (``--health-phase-timeout``).

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: ``name`` is empty, or ``deadline`` is not a finite number > 0.
    """

    __slots__ = ("_deadline", "_name", "_open")

    def __init__(self, name: str, deadline: float | None = None) -> None:
        if not isinstance(name, str):
            raise TypeError(f"phase name must be a str, not {type(name).__name__}")
        if not name.strip():
            raise ValueError("phase name must not be empty")
        if deadline is not None and (
            isinstance(deadline, bool)
            or not isinstance(deadline, (int, float))
            or not 0 < deadline < float("inf")
        ):
            raise ValueError(
                f"phase deadline must be a finite number of seconds > 0, not {deadline!r}"
            )
        self._name = name
        self._deadline = float(deadline or 0.0)
        self._open: Phase | None = None

    def __enter__(self) -> phase:
        if _progress is None:
            _set_up()
        stack = _phases
        if stack is not None:
            self._open = stack.push("named", self._name, self._deadline)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        opened, self._open = self._open, None
        stack = _phases
        if opened is not None and stack is not None:
            stack.pop(opened)


def _adopt(record: RankRecord, phases: PhaseStack | None = None) -> None:
    """Share the bootstrap's record (and its phases): beat() then counts into it."""
    global _progress, _record, _phases
    _record = record
    _progress = record.progress
    if phases is not None:
        _phases = phases


def _set_up() -> Callable[[], None]:
    global _progress, _record
    _progress = _nothing
    directory = os.environ.get(ENV_DIR)
    local_rank = os.environ.get(ENV_LOCAL_RANK)
    if not directory or local_rank is None or _in_child_process():
        return _nothing

    from ._torchrun.phases import PhaseStack
    from ._torchrun.record import RankRecord

    path = record_path(directory, local_rank)
    try:
        record = RankRecord(path)
    except (OSError, ValueError) as exc:
        _warn(__name__, "Cannot report progress for local rank %s: %s", local_rank, exc)
        return _nothing
    owner = record.owner
    if owner == 0:
        record.start(os.getpid(), _global_rank())
        import atexit

        atexit.register(_mark_exited, record)
    elif owner != os.getpid():
        record.close()  # another process owns this rank
        return _nothing
    _record = record
    _progress = record.progress
    global _phases

    _phases = PhaseStack(record)
    return record.progress


def _warn(logger: str, message: str, *args: object) -> None:
    """Log a WARNING that never raises (health reporting never stops training)."""
    import logging

    from .logging import get_logger

    try:
        log = get_logger(logger)
    except ValueError:  # LOGLEVEL is not a level: say it anyway
        log = logging.getLogger(logger)
    log.warning(message, *args)


def _in_child_process() -> bool:
    """A multiprocessing child (a DataLoader worker) of the process that owns the rank."""
    multiprocessing = sys.modules.get("multiprocessing")
    if multiprocessing is None:
        return False
    try:
        return multiprocessing.parent_process() is not None
    except Exception:
        return False


def _global_rank() -> int | None:
    rank = os.environ.get("RANK", "")
    return int(rank) if rank.isdigit() else None


def _mark_exited(record: RankRecord) -> None:
    # An uncaught exception leaves sys.last_value set before atexit runs: that rank did not
    # finish, and its exit code tells the agent so.
    if getattr(sys, "last_value", None) is None and _record is record:
        try:
            record.exited()
        except Exception:
            pass


def _stop() -> None:
    global _progress
    _progress = _nothing


def _forget_in_child() -> None:
    global _progress, _record, _phases
    _progress = _nothing
    _record = None
    _phases = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
