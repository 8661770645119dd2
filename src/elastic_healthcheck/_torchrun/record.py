"""One local rank's progress record: a small shared file the worker writes and the agent reads.

The agent creates ``rank-<local rank>`` in its rank directory just before it spawns the
worker (so the rank is accounted for from its spawn); the worker maps the same file and
writes into it with single ``struct.pack_into`` calls, which costs a few hundred
nanoseconds and no system call. The agent reads it with one ``pread``.

Layout (little-endian, 128 bytes; every field naturally aligned, so an 8-byte store is
never seen half written on the platforms torch runs on)::

    offset  type  field
         0  u32   magic ``EHC1``
         4  u32   pid of the worker (0 until it starts)
         8  f64   spawn time (agent's epoch seconds)
        16  i64   global rank (-1 unknown)
        24  f64   last progress time (epoch seconds; 0 = no progress yet)
        32  u64   progress events (optimizer steps and beat() calls)
        40  u64   collectives entered
        48  f64   time the current collective was entered
        56  u64   code of the current collective (see COLLECTIVES)
        64  u64   collectives left
        72  u64   flags (1 = exited normally, 2 = the bootstrap is in,
                  4 = the stack dump is registered: only then may the signal be sent)
        80  f64   time the last collective was left (0 = none yet)
        88  ...   reserved

A rank is inside a collective while ``entered > left``. Only the outermost collective
counts (``all_gather_object`` runs ``all_gather`` inside it).

Only the worker writes its record. A process forked from it (a DataLoader worker) inherits
the mapping, so after ``fork()`` every open record in the child is detached: its writes go
to private memory and never reach the file.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
import weakref

__all__ = [
    "COLLECTIVES",
    "ENV_DIR",
    "ENV_LOCAL_RANK",
    "ENV_STACK_SIGNAL",
    "FLAG_BOOTSTRAP",
    "FLAG_STACKS",
    "FLAG_EXITED",
    "RECORD_SIZE",
    "RankRecord",
    "RankSnapshot",
    "create_record",
    "read_record",
    "record_path",
    "stack_path",
]

# What the agent puts in each worker's environment.
ENV_DIR = "ELASTIC_HEALTHCHECK_WORKER_DIR"  # the agent's rank directory
# The worker's index in the group. Not LOCAL_RANK: torch's virtual local rank mode sets
# LOCAL_RANK=0 in every worker.
ENV_LOCAL_RANK = "ELASTIC_HEALTHCHECK_WORKER_LOCAL_RANK"
ENV_STACK_SIGNAL = "ELASTIC_HEALTHCHECK_WORKER_STACK_SIGNAL"  # the signal that dumps the stacks

RECORD_SIZE = 128
MAGIC = 0x31434845  # b"EHC1" read as a little-endian u32
FLAG_EXITED = 1
FLAG_BOOTSTRAP = 2
# Set once faulthandler handles the stack signal. Before that (and without the bootstrap)
# the signal's default action would end the worker: SIGUSR1's is to terminate.
FLAG_STACKS = 4

# The torch.distributed collectives the bootstrap notes, by code (0 = none). Append only:
# the code is what crosses the process boundary.
COLLECTIVES = (
    "",
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_object",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "monitored_barrier",
    "broadcast",
    "broadcast_object_list",
    "gather",
    "gather_object",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "scatter",
    "scatter_object_list",
    "send",
    "recv",
    "all_reduce_coalesced",
    "all_gather_coalesced",
    "batch_isend_irecv",
    "send_object_list",
    "recv_object_list",
)
_CODES = {name: code for code, name in enumerate(COLLECTIVES) if name}

_WHOLE = struct.Struct("<IIdqdQQdQQQd")  # the first 88 bytes
_HEAD = struct.Struct("<IIdq")  # magic, pid, spawn, rank
_PROGRESS = struct.Struct("<dQ")  # at 24: last progress, events
_ENTER = struct.Struct("<QdQ")  # at 40: entered, since, code
_LEAVE = struct.Struct("<Q")  # at 64: left
_LEFT_AT = struct.Struct("<d")  # at 80: when
_FLAGS = struct.Struct("<Q")  # at 72


def record_path(directory: str, local_rank: int | str) -> str:
    """The record file of one local rank in the agent's rank directory."""
    return os.path.join(directory, f"rank-{local_rank}")


def stack_path(directory: str, local_rank: int | str) -> str:
    """The file a local rank's ``faulthandler`` writes its stacks to."""
    return os.path.join(directory, f"stack-{local_rank}")


def create_record(path: str, spawn_time: float) -> None:
    """Create (or reset) a rank's record, as the agent does just before spawning it.

    Raises:
        OSError: The file cannot be written.
    """
    data = bytearray(RECORD_SIZE)
    _WHOLE.pack_into(data, 0, MAGIC, 0, spawn_time, -1, 0.0, 0, 0, 0.0, 0, 0, 0, 0.0)
    # Write a new file and rename it over the old one: a worker of the previous group
    # that still maps the old file cannot scribble on the new group's record.
    temporary = f"{path}.new"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(temporary, path)


class RankSnapshot:
    """What one read of a record says (times in epoch seconds; 0 for "never")."""

    __slots__ = (
        "collective",
        "collective_since",
        "entered",
        "flags",
        "global_rank",
        "left",
        "left_time",
        "pid",
        "progress_time",
        "spawn_time",
        "steps",
    )

    def __init__(
        self,
        *,
        spawn_time: float,
        pid: int = 0,
        global_rank: int | None = None,
        progress_time: float = 0.0,
        steps: int = 0,
        entered: int = 0,
        left: int = 0,
        left_time: float = 0.0,
        collective: str | None = None,
        collective_since: float = 0.0,
        flags: int = 0,
    ) -> None:
        self.spawn_time = spawn_time
        self.pid = pid
        self.global_rank = global_rank
        self.progress_time = progress_time
        self.steps = steps
        self.entered = entered
        self.left = left
        self.left_time = left_time
        self.collective = collective
        self.collective_since = collective_since
        self.flags = flags

    @property
    def in_collective(self) -> bool:
        return self.entered > self.left

    @property
    def exited(self) -> bool:
        return bool(self.flags & FLAG_EXITED)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in sorted(self.__slots__))
        return f"RankSnapshot({fields})"


def read_record(path: str) -> RankSnapshot | None:
    """Read a rank's record; ``None`` if it is missing, short or not a record."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.pread(fd, _WHOLE.size, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) < _WHOLE.size:
        return None
    (magic, pid, spawn, rank, progress, steps, entered, since, code, left, flags, left_at) = (
        _WHOLE.unpack(data)
    )
    if magic != MAGIC:
        return None
    inside = entered > left
    return RankSnapshot(
        spawn_time=spawn,
        pid=pid,
        global_rank=rank if rank >= 0 else None,
        progress_time=progress,
        steps=steps,
        entered=entered,
        left=left,
        collective=(COLLECTIVES[code] if code < len(COLLECTIVES) else "unknown")
        if inside
        else None,
        collective_since=since if inside else 0.0,
        flags=flags,
        left_time=left_at,
    )


class RankRecord:
    """The worker's side: a writable mapping of its own record.

    Every method is one or two ``pack_into`` calls on the shared mapping and never
    raises into the training loop once the record is open.
    """

    __slots__ = ("__weakref__", "_depth", "_entered", "_left", "_map", "_steps")

    def __init__(self, path: str) -> None:
        """Map an existing record (the agent created it).

        Raises:
            OSError: The file is missing or cannot be mapped.
            ValueError: The file is not a record.
        """
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            if os.fstat(fd).st_size < RECORD_SIZE:
                raise ValueError(f"{path} is not a rank record")
            self._map: mmap.mmap | bytearray = mmap.mmap(fd, RECORD_SIZE)
        finally:
            os.close(fd)
        if _HEAD.unpack_from(self._map, 0)[0] != MAGIC:
            self._map.close()
            raise ValueError(f"{path} is not a rank record")
        (self._steps, self._entered) = struct.unpack_from("<QQ", self._map, 32)
        self._left = _LEAVE.unpack_from(self._map, 64)[0]
        self._depth = 0
        _OPEN.add(self)

    @property
    def owner(self) -> int:
        """The pid of the worker that started the record (0: none yet)."""
        pid: int = struct.unpack_from("<I", self._map, 4)[0]
        return pid

    def start(self, pid: int, global_rank: int | None, flags: int = 0) -> None:
        """Mark the worker's start: its pid and global rank."""
        struct.pack_into("<I", self._map, 4, pid)
        struct.pack_into("<q", self._map, 16, -1 if global_rank is None else global_rank)
        if flags:
            self.set_flags(flags)

    def set_flags(self, flags: int) -> None:
        current = _FLAGS.unpack_from(self._map, 72)[0]
        _FLAGS.pack_into(self._map, 72, current | flags)

    def progress(self) -> None:
        """Count one progress event (an optimizer step, a beat) at the current time."""
        self._steps += 1
        _PROGRESS.pack_into(self._map, 24, time.time(), self._steps)

    def enter(self, name: str) -> bool:
        """Note entering a collective; ``False`` if one is open already (nested, not counted)."""
        if self._depth:
            self._depth += 1
            return False
        self._depth = 1
        self._entered += 1
        _ENTER.pack_into(self._map, 40, self._entered, time.time(), _CODES.get(name, 0))
        return True

    def leave(self) -> None:
        """Note leaving the collective entered last."""
        if self._depth != 1:
            self._depth = max(0, self._depth - 1)
            return
        self._depth = 0
        self._left = self._entered
        _LEAVE.pack_into(self._map, 64, self._left)
        _LEFT_AT.pack_into(self._map, 80, time.time())

    def exited(self) -> None:
        """Mark a normal exit: the rank is done, not hung."""
        self.set_flags(FLAG_EXITED)

    def close(self) -> None:
        _OPEN.discard(self)
        if isinstance(self._map, mmap.mmap):
            self._map.close()

    def _detach(self) -> None:
        # In a forked child: keep every method working, on memory nobody else reads.
        self._map = bytearray(RECORD_SIZE)


# Every record this process has open, to detach in a forked child.
_OPEN: weakref.WeakSet[RankRecord] = weakref.WeakSet()


def _detach_all_in_child() -> None:
    for record in list(_OPEN):
        record._detach()
    _OPEN.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_detach_all_in_child)
