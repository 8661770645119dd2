"""One local rank's progress record: a small shared file the worker writes and the agent reads.

The agent creates ``rank-<local rank>`` in its rank directory just before it spawns the
worker (so the rank is accounted for from its spawn); the worker maps the same file and
writes into it with single ``struct.pack_into`` calls, which costs a few hundred
nanoseconds and no system call. The agent reads it with one ``pread``.

Layout (little-endian, 256 bytes; every field naturally aligned, so an 8-byte store is
never seen half written on the platforms torch runs on)::

    offset  type  field
         0  u32   magic ``EHC2``
         4  u32   pid of the worker (0 until it starts)
         8  f64   spawn time (agent's epoch seconds)
        16  i64   global rank (-1 unknown)
        24  f64   last progress time (epoch seconds; 0 = no progress yet)
        32  u64   progress events (optimizer steps and beat() calls)
        40  u64   collectives entered (sync calls, async launches, DDP's gradient syncs)
        48  f64   time the rank went inside a collective or a wait for one
        56  u64   code of that collective (see COLLECTIVES)
        64  u64   depth: collectives and waits open on the training thread (> 0: inside)
        72  f64   time the rank last left a collective or a phase (0 = never)
        80  u64   flags (1 = exited normally, 2 = the bootstrap is in,
                  4 = the stack dump is registered: only then may the signal be sent)
        88  u64   phase code (see PHASES; 0 = training)
        96  f64   time the phase began
       104  f64   the phase's own deadline in seconds (0 = the agent's phase timeout)
       112  f64   last sign of life inside the phase (an evaluation forward)
       120  u64   evaluation forwards counted
       128  32s   the phase's name when it is a named phase (UTF-8, NUL padded)
       160  ...   reserved

A rank is inside a collective while its depth is above 0. Only the outermost collective
counts (``all_gather_object`` runs ``all_gather`` inside it, and every synchronous
collective waits on its ``Work`` inside itself).

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
    "FLAG_EXITED",
    "FLAG_STACKS",
    "MAX_PHASE_NAME",
    "PHASES",
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

RECORD_SIZE = 256
MAGIC = 0x32434845  # b"EHC2" read as a little-endian u32
FLAG_EXITED = 1
FLAG_BOOTSTRAP = 2
# Set once faulthandler handles the stack signal. Before that (and without the bootstrap)
# the signal's default action would end the worker.
FLAG_STACKS = 4

# What a rank can be doing besides training, by code. Append only: the code crosses the
# process boundary. "named" phases carry their name in the record.
PHASES = ("training", "evaluation", "checkpoint", "named")
MAX_PHASE_NAME = 32  # bytes of UTF-8

# The torch.distributed collectives (and waits for them) the bootstrap notes, by code
# (0 = none). Append only: the code is what crosses the process boundary.
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
    "all_gather_single",
    "reduce_scatter_single",
    "init_process_group",
    "new_group",
    "wait",  # Work.wait() or Future.wait() of a collective started with async_op=True
    "ddp_all_reduce",  # DistributedDataParallel's gradient all-reduce, at the end of backward
    "broadcast_coalesced",  # DDP and FSDP: parameters and buffers, in C++
    "verify_params_across_processes",  # DDP's constructor, in C++
    "rebuild_buckets",  # DDP's second forward, in C++
    "device_synchronize",  # a host wait for the device while NCCL collectives are pending
)
_CODES = {name: code for code, name in enumerate(COLLECTIVES) if name}
_PHASE_CODES = {name: code for code, name in enumerate(PHASES)}

_WHOLE = struct.Struct("<IIdqdQQdQQdQQdddQ32s")  # the first 160 bytes
_HEAD = struct.Struct("<IIdq")  # magic, pid, spawn, rank
_PROGRESS = struct.Struct("<dQ")  # at 24: last progress, events
_ENTER = struct.Struct("<QdQQ")  # at 40: entered, since, code, depth
_INSIDE = struct.Struct("<dQQ")  # at 48: since, code, depth
_DEPTH = struct.Struct("<Q")  # at 64
_LEFT = struct.Struct("<Qd")  # at 64: depth 0, and when
_LEFT_AT = struct.Struct("<d")  # at 72: when
_FLAGS = struct.Struct("<Q")  # at 80
_PHASE = struct.Struct("<Qddd")  # at 88: code, since, deadline, activity
_ACTIVITY = struct.Struct("<dQ")  # at 112: activity, forwards
_NAME = struct.Struct("<32s")  # at 128


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
    _HEAD.pack_into(data, 0, MAGIC, 0, spawn_time, -1)
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
        "depth",
        "entered",
        "flags",
        "forwards",
        "global_rank",
        "left_time",
        "phase",
        "phase_activity",
        "phase_deadline",
        "phase_since",
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
        depth: int = 0,
        left_time: float = 0.0,
        collective: str | None = None,
        collective_since: float = 0.0,
        flags: int = 0,
        phase: str | None = None,
        phase_since: float = 0.0,
        phase_deadline: float = 0.0,
        phase_activity: float = 0.0,
        forwards: int = 0,
    ) -> None:
        self.spawn_time = spawn_time
        self.pid = pid
        self.global_rank = global_rank
        self.progress_time = progress_time
        self.steps = steps
        self.entered = entered
        self.depth = depth
        self.left_time = left_time
        self.collective = collective
        self.collective_since = collective_since
        self.flags = flags
        self.phase = phase  # None while training
        self.phase_since = phase_since
        self.phase_deadline = phase_deadline
        self.phase_activity = phase_activity
        self.forwards = forwards

    @property
    def in_collective(self) -> bool:
        return self.depth > 0

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
    fields = _WHOLE.unpack(data)
    (magic, pid, spawn, rank, progress, steps, entered, since, code, depth, left_at, flags) = (
        fields[:12]
    )
    (phase_code, phase_since, phase_deadline, activity, forwards, raw_name) = fields[12:]
    if magic != MAGIC:
        return None
    inside = depth > 0
    return RankSnapshot(
        spawn_time=spawn,
        pid=pid,
        global_rank=rank if rank >= 0 else None,
        progress_time=progress,
        steps=steps,
        entered=entered,
        depth=depth,
        collective=(COLLECTIVES[code] if code < len(COLLECTIVES) else "unknown")
        if inside
        else None,
        collective_since=since if inside else 0.0,
        flags=flags,
        left_time=left_at,
        phase=_phase_name(phase_code, raw_name),
        phase_since=phase_since if phase_code else 0.0,
        phase_deadline=phase_deadline if phase_code else 0.0,
        phase_activity=activity if phase_code else 0.0,
        forwards=forwards,
    )


def _phase_name(code: int, raw: bytes) -> str | None:
    if code == 0:
        return None
    if code < len(PHASES) and PHASES[code] != "named":
        return PHASES[code]
    name = raw.rstrip(b"\0").decode("utf-8", "replace")
    return name or "unknown"


class RankRecord:
    """The worker's side: a writable mapping of its own record.

    Every method is one or two ``pack_into`` calls on the shared mapping and never
    raises into the training loop once the record is open. The collective and phase
    methods are called from the training thread only (the hooks see to it).
    """

    __slots__ = ("__weakref__", "_depth", "_entered", "_forwards", "_map", "_steps")

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
        self._depth = _DEPTH.unpack_from(self._map, 64)[0]
        self._forwards = _ACTIVITY.unpack_from(self._map, 112)[1]
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
        current = _FLAGS.unpack_from(self._map, 80)[0]
        _FLAGS.pack_into(self._map, 80, current | flags)

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
        _ENTER.pack_into(self._map, 40, self._entered, time.time(), _CODES.get(name, 0), 1)
        return True

    def wait(self, name: str) -> bool:
        """Note waiting for a collective entered before (not counted again), as :meth:`enter`."""
        if self._depth:
            self._depth += 1
            return False
        self._depth = 1
        _INSIDE.pack_into(self._map, 48, time.time(), _CODES.get(name, 0), 1)
        return True

    def issue(self) -> None:
        """Count a collective started without waiting for it (``async_op=True``)."""
        if not self._depth:
            self._entered += 1
            struct.pack_into("<Q", self._map, 40, self._entered)

    def leave(self) -> None:
        """Note leaving the collective (or wait) entered last."""
        if self._depth != 1:
            self._depth = max(0, self._depth - 1)
            return
        self._depth = 0
        _LEFT.pack_into(self._map, 64, 0, time.time())

    def set_phase(self, phase: str, since: float, deadline: float, name: str = "") -> None:
        """Note the phase the rank is in now (``training`` ends any other)."""
        code = _PHASE_CODES.get(phase, _PHASE_CODES["named"])
        if code == 0:
            # Leaving a phase is a sign of life, as leaving a collective is.
            _LEFT_AT.pack_into(self._map, 72, time.time())
            _PHASE.pack_into(self._map, 88, 0, 0.0, 0.0, 0.0)
            return
        if code == _PHASE_CODES["named"]:
            encoded = (name or phase).encode("utf-8")[:MAX_PHASE_NAME]
            _NAME.pack_into(self._map, 128, encoded.decode("utf-8", "ignore").encode("utf-8"))
        _PHASE.pack_into(self._map, 88, code, since, deadline, since)

    def phase_activity(self) -> None:
        """Note a sign of life inside the phase (an evaluation forward)."""
        self._forwards += 1
        _ACTIVITY.pack_into(self._map, 112, time.time(), self._forwards)

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
