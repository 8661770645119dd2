"""The evaluator thread: runs the user's callables (the verdict, debug texts) off the I/O thread.

Jobs run one at a time, in order. A job that never returns keeps this one thread and
blocks the jobs behind it; the loop does not wait for it (every request has a deadline
there), so a hung callback costs one thread and no pile-up.

No Python-level lock is taken on the way in or out: jobs travel through a
``SimpleQueue`` (implemented in C) and results go back through the loop's
:meth:`~elastic_healthcheck._engine.loop.Loop.call_soon`, so an exception raised by a signal
handler in the middle of ``stop()`` cannot leave a lock held that the next ``stop()`` or
this thread would wait on forever.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable

__all__ = ["JOIN_TIMEOUT", "Evaluator"]

# Seconds stop() waits for a thread that should exit at once.
JOIN_TIMEOUT = 5.0

Job = tuple[Callable[[], object], Callable[[object], None]]


class Evaluator:
    """One daemon thread that runs jobs and posts each result back to the loop.

    Args:
        post: Called on this thread with a no-argument callable that delivers a result;
            it must hand it to the I/O thread (``Loop.call_soon``).
    """

    def __init__(self, post: Callable[[Callable[[], None]], None]) -> None:
        self._post = post
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._closed = False
        self._busy = False  # set before `_closed` is read, so close() knows whether to wait
        self.thread: threading.Thread | None = None

    def start(self, name: str) -> None:
        """Start the thread. The thread is recorded before it starts, for :meth:`close`."""
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def submit(self, job: Callable[[], object], done: Callable[[object], None]) -> None:
        """Run ``job`` on this thread, then ``done(result)`` on the loop's.

        A job that raises delivers its exception as the result.
        """
        self._jobs.put((job, done))

    def close(self) -> None:
        """Stop the thread; wait for it unless it is inside a job that may never return."""
        self._closed = True
        self._jobs.put(None)
        thread = self.thread
        if thread is None or self._busy or thread is threading.current_thread():
            return
        try:
            thread.join(JOIN_TIMEOUT)
        except RuntimeError:
            pass  # interrupted inside start(): the thread never started

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            self._busy = True
            if self._closed or item is None:
                self._busy = False
                return
            job, done = item
            try:
                result: object = job()
            except BaseException as exc:  # the loop must get an answer, whatever happens
                result = exc
            self._busy = False
            self._post(functools.partial(done, result))
