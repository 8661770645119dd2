"""Progress helpers: honest ``alive_callback`` values for a training loop or a sidecar.

An alive callback answers one question, "when did this job last make progress?", in
epoch seconds. It is honest only if the answer comes from the loop that makes the
progress: call ``beat()`` once per training step, never from a timer thread, which
would report that the timer is alive, not that training is.

In the same process, a :class:`ProgressTracker` is itself the callback:

>>> from elastic_healthcheck import check_liveness
>>> tracker = ProgressTracker()
>>> tracker.beat()  # once per training step
>>> check_liveness(tracker, timeout=60).verdict
<Verdict.ALIVE: 'alive'>

Across processes or containers, the trainer touches a file and the sidecar reads the
file's modification time (the file has no content; only its mtime matters)::

    # in the training process
    with HeartbeatFile("/run/heartbeat/progress", interval=1.0) as heartbeat:
        for batch in loader:
            train_step(batch)
            heartbeat.beat()

    # in the sidecar
    server = HTTPHealthCheckServer(HeartbeatFileReader("/run/heartbeat/progress"), 8080, 60)

A file's progress time is up to ``interval`` seconds older than the trainer's real last
step, so pick ``interval`` well below the server's timeout (1 s against torch's 60 s).
"""

from __future__ import annotations

import errno
import math
import os
import stat
import time
from collections.abc import Callable

from .logging import get_logger
from .status import check_seconds

log = get_logger(__name__)

__all__ = ["HeartbeatFile", "HeartbeatFileReader", "ProgressTracker"]

# Permission bits for a heartbeat file we create, before the umask: what touch(1) uses
# (coreutils). The file holds no data, so there is nothing to protect.
_FILE_MODE = 0o666


class ProgressTracker:
    """The last progress time of this process, recorded by ``beat()``; an alive callback.

    Construction counts as progress, as in torch's ``FileTimerServer``: a job that is
    still loading its data before the first step is not dead yet. Call ``beat()`` once
    per step; pass the tracker itself as the ``alive_callback``.

    ``beat()`` is safe to call from any number of threads without a lock: see the
    comment in its body.

    >>> clock = iter([100.0, 130.0]).__next__
    >>> tracker = ProgressTracker(clock)
    >>> tracker()
    100.0
    >>> tracker.beat()
    >>> tracker.last_progress
    130.0

    Args:
        clock: Returns the current time in epoch seconds; read once at construction and
            once per ``beat()``. It must share its epoch with the clock the liveness rule
            uses (``time.time`` for every server).
    """

    __slots__ = ("_clock", "_last")

    _clock: Callable[[], float]
    _last: float

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._last = clock()

    def beat(self) -> None:
        """Record that the job made progress now."""
        # No lock, on purpose. The store is one bytecode (STORE_ATTR) writing one object
        # reference: under the GIL a reader sees the old float or the new one, never a
        # mix, and the free-threaded build (PEP 703) guards a slot store with the
        # object's own mutex and reads slots atomically. There is no read-modify-write
        # to lose, only a race between two near-simultaneous times: a thread preempted
        # between reading the clock and storing may leave a time a scheduling delay
        # (microseconds to milliseconds) older than the newest, irrelevant against a
        # timeout of seconds. A lock would cost every training step more than this whole
        # method does (benchmarks/bench_progress.py) and buy nothing a probe can observe.
        self._last = self._clock()

    def __call__(self) -> float:
        """Return the last progress time, in epoch seconds."""
        return self._last

    @property
    def last_progress(self) -> float:
        """The last progress time, in epoch seconds (read-only)."""
        return self._last

    def __repr__(self) -> str:
        return f"ProgressTracker(last_progress={self._last!r})"


class HeartbeatFile:
    """The writer side of a file heartbeat: ``beat()`` updates the file's mtime.

    ``beat()`` touches the file (creates it if missing, else sets its modification time
    to now) at most once per ``interval`` seconds however often it is called; between
    touches it costs one clock read and one comparison. Construction counts as progress
    and touches the file at once, so a stale file left by an earlier run cannot get a
    restarted job killed while it starts up.

    Creating the file's directory is the caller's job: a missing directory raises
    ``FileNotFoundError`` naming it. A failure to touch the file at construction raises,
    since it is almost surely a wrong path. A failure later (the
    directory was removed, the disk went away) never raises out of ``beat()``, because
    that would kill the training step it reports on: it is logged once as a WARNING
    naming the path and errno, retried every ``interval`` seconds, and its end is logged
    at INFO. Meanwhile the file ages and the reader's verdict turns ``dead``, as it
    should. ``beat()`` may be called from several threads; at worst two of them touch the
    file in the same interval.

    Args:
        path: The heartbeat file.
        interval: The least number of seconds between two touches; finite and >= 0
            (0 touches on every ``beat()``).
        clock: A monotonic clock in seconds, which paces the touches. The file's mtime
            itself always comes from the system (the file server's clock on NFS).
        remove_on_close: Whether ``close()`` removes the file, so a reader sees
            ``unknown`` rather than a stale time once the job has ended on purpose.

    Raises:
        FileNotFoundError: The file's directory does not exist.
        IsADirectoryError: The path is a directory.
        OSError: The file could not be created or touched at construction (its message
            names the path and errno).
        ValueError: ``interval`` is negative or not finite.
        TypeError: ``interval`` is not a real number.
    """

    __slots__ = ("_clock", "_closed", "_failing", "_interval", "_next", "_path", "_remove")

    def __init__(
        self,
        path: str | os.PathLike[str],
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        remove_on_close: bool = False,
    ) -> None:
        self._path = os.fspath(path)
        self._interval = check_seconds("interval", interval)
        self._clock = clock
        self._remove = remove_on_close
        self._closed = False
        self._failing = False
        if os.path.isdir(self._path):  # utime() would touch the directory, and say nothing
            raise IsADirectoryError(errno.EISDIR, "a heartbeat file cannot be a directory", path)
        try:
            _touch(self._path)
        except FileNotFoundError:
            directory = os.path.dirname(os.path.abspath(self._path))
            message = (
                f"cannot create the heartbeat file: no directory {directory} (create it first)"
            )
            raise FileNotFoundError(errno.ENOENT, message, self._path) from None
        self._next = clock() + self._interval

    @property
    def path(self) -> str:
        """The heartbeat file's path."""
        return self._path

    def beat(self) -> None:
        """Record progress: touch the file unless it was touched less than ``interval`` ago.

        Does nothing after ``close()``.
        """
        now = self._clock()
        if now < self._next:
            return
        # Schedule the next touch first, so a failing touch is retried an interval later
        # rather than on every step. close() sets _next to +inf: no check on the fast path.
        self._next = now + self._interval
        try:
            _touch(self._path)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                log.warning(
                    "Cannot update heartbeat file %s: [Errno %s %s] %s; "
                    "retrying every %gs, without warning again until it works",
                    self._path,
                    exc.errno,
                    errno.errorcode.get(exc.errno or 0, "?"),
                    exc.strerror,
                    self._interval,
                )
            return
        if self._failing:
            self._failing = False
            log.info("Heartbeat file %s is updated again", self._path)

    def close(self) -> None:
        """Stop touching the file, and remove it if ``remove_on_close`` was set.

        Idempotent. A file that is already gone is not an error.

        Raises:
            OSError: The file exists but could not be removed.
        """
        if self._closed:
            return
        self._closed = True
        self._next = math.inf
        if self._remove:
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> HeartbeatFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"HeartbeatFile({self._path!r}, interval={self._interval!r}, "
            f"remove_on_close={self._remove!r}, closed={self._closed!r})"
        )


class HeartbeatFileReader:
    """The reader side of a file heartbeat: an alive callback returning the file's mtime.

    A missing file raises ``FileNotFoundError``, which the liveness rule turns into
    ``unknown`` with the reason ``"callback raised FileNotFoundError"``: the job has not
    started, has ended with ``remove_on_close``, or the path is wrong, and no verdict
    would be honest. A directory raises ``IsADirectoryError`` (``unknown`` too): its
    modification time says nothing about progress. An mtime a little ahead of the local
    clock (another machine's clock on a network file system) counts as alive with age 0,
    as for any callback.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile() as f:
    ...     os.utime(f.name, (1_700_000_000, 1_700_000_000))
    ...     HeartbeatFileReader(f.name)()
    1700000000.0

    Args:
        path: The heartbeat file that a :class:`HeartbeatFile` updates.
    """

    __slots__ = ("_path",)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)

    @property
    def path(self) -> str:
        """The heartbeat file's path."""
        return self._path

    def __call__(self) -> float:
        """Return the heartbeat file's modification time, in epoch seconds.

        Raises:
            FileNotFoundError: The file does not exist.
            IsADirectoryError: The path is a directory.
            OSError: The file could not be examined (for example ``PermissionError``).
        """
        info = os.stat(self._path)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(
                errno.EISDIR, "a heartbeat file cannot be a directory", self._path
            )
        return info.st_mtime

    def __repr__(self) -> str:
        return f"HeartbeatFileReader({self._path!r})"


def _touch(path: str) -> None:
    """Set ``path``'s modification time to now, creating the file if it is missing."""
    try:
        # One syscall in the common case, where the file exists.
        os.utime(path)
        return
    except FileNotFoundError:
        pass  # outside the handler, so that a failure below is not chained to this one
    # A new file's mtime is its creation time, so there is nothing more to set. No
    # O_TRUNC: if another process created the file meanwhile, it is left as it is.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, _FILE_MODE))
