"""Worker-side progress for a training script run by ``elastic-healthcheck torchrun``.

Call :func:`beat` once per training step::

    from elastic_healthcheck.worker import beat

    for batch in loader:
        train_step(batch)
        beat()

Under the integration, each local rank's ``beat()`` touches its own heartbeat file in a
directory the agent created (``ELASTIC_HEALTHCHECK_WORKER_DIR``), at most once per
interval (``ELASTIC_HEALTHCHECK_WORKER_INTERVAL``, default 1 s), and the agent's health
server follows the slowest rank. Anywhere else (plain ``torchrun``, ``python train.py``,
a test) it does nothing. It never raises into the training loop, needs no torch, and
costs about 0.1 us between touches.

When the worker exits normally its file is removed, so a rank that has finished is never
taken for a hung one. A process forked from a worker (a DataLoader worker, say) does not
beat for it: only the process that owns the rank can say that the rank made progress.
"""

from __future__ import annotations

import os

__all__ = ["ENV_DIR", "ENV_INTERVAL", "beat", "heartbeat_path"]

ENV_DIR = "ELASTIC_HEALTHCHECK_WORKER_DIR"
ENV_INTERVAL = "ELASTIC_HEALTHCHECK_WORKER_INTERVAL"
DEFAULT_INTERVAL = 1.0

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._progress import HeartbeatFile

# None: not set up yet; False: not under the integration (beat() does nothing).
_heartbeat: HeartbeatFile | bool | None = None


def heartbeat_path(directory: str, local_rank: str | int) -> str:
    """The heartbeat file of one local rank in the agent's directory."""
    return os.path.join(directory, f"rank-{local_rank}")


def beat() -> None:
    """Record that this rank made progress (a no-op outside the integration)."""
    heartbeat = _heartbeat
    if heartbeat is None:
        heartbeat = _set_up()
    if heartbeat is not False:
        heartbeat.beat()  # type: ignore[union-attr]


def _set_up() -> HeartbeatFile | bool:
    global _heartbeat
    directory = os.environ.get(ENV_DIR)
    local_rank = os.environ.get("LOCAL_RANK")
    if not directory or local_rank is None or not local_rank.isdigit():
        _heartbeat = False
        return False
    import atexit

    from ._progress import HeartbeatFile
    from .logging import get_logger

    try:
        interval = float(os.environ.get(ENV_INTERVAL, DEFAULT_INTERVAL))
        heartbeat: HeartbeatFile | bool = HeartbeatFile(
            heartbeat_path(directory, local_rank), interval, remove_on_close=True
        )
    except (OSError, ValueError, TypeError) as exc:
        get_logger(__name__).warning(
            "Cannot report progress for local rank %s in %s: %s", local_rank, directory, exc
        )
        heartbeat = False
    else:
        atexit.register(_close)
    _heartbeat = heartbeat
    return heartbeat


def _close() -> None:
    global _heartbeat
    heartbeat, _heartbeat = _heartbeat, False
    if heartbeat is not None and heartbeat is not False and heartbeat is not True:
        try:
            heartbeat.close()
        except OSError:
            pass


def _forget_in_child() -> None:
    global _heartbeat
    _heartbeat = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
