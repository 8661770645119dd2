"""Cost of recording progress once per training step, in one run, side by side.

Usage: python benchmarks/bench_progress.py [--calls N] [--dir DIR]

Contenders: ProgressTracker.beat(); a bare time.time() call (the floor: beat() is that plus
one attribute store); the same store guarded by a threading.Lock (the design we rejected);
HeartbeatFile.beat() within its interval (the fast path every step takes); and
HeartbeatFile.beat() with interval=0, which touches the file on every call (the cost paid
once per interval). An empty call gives the loop's own overhead. Printed: nanoseconds per
call (median of 5 rounds) and the ratio to ProgressTracker.beat().
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable

from elastic_healthcheck.progress import HeartbeatFile, ProgressTracker


class LockedTracker:
    """The rejected alternative: the same store, under a lock."""

    __slots__ = ("_last", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = time.time()

    def beat(self) -> None:
        with self._lock:
            self._last = time.time()


def nothing() -> None:
    pass


def per_call_ns(fn: Callable[[], object], calls: int) -> float:
    rounds = []
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter_ns() - start) / calls)
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument(
        "--dir", default=None, help="where the heartbeat files go (default: a temporary dir)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        slow = HeartbeatFile(os.path.join(directory, "fast-path"), interval=3600.0)
        every = HeartbeatFile(os.path.join(directory, "every-call"), interval=0.0)
        contenders: dict[str, Callable[[], object]] = {
            "empty call (loop overhead)": nothing,
            "time.time()": time.time,
            "ProgressTracker.beat()": ProgressTracker().beat,
            "Lock-guarded store": LockedTracker().beat,
            "HeartbeatFile.beat(), within interval": slow.beat,
            "HeartbeatFile.beat(), interval=0 (touch)": every.beat,
        }
        results = {name: per_call_ns(fn, args.calls) for name, fn in contenders.items()}
        slow.close()
        every.close()

    ours = results["ProgressTracker.beat()"]
    print(f"{'contender':42} {'ns/call':>10} {'x beat()':>9}")
    for name, ns in results.items():
        print(f"{name:42} {ns:10.1f} {ns / ours:9.2f}")


if __name__ == "__main__":
    main()
