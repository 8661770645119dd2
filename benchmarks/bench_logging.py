"""get_logger() cost: ours against an inspect.stack()-based derivation, in one run.

Usage: python benchmarks/bench_logging.py [--calls N]

The inspect.stack() baseline applies the algorithm torch 2.13 uses (read every frame's
source context, then inspect.getmodule on the caller's frame); where torch is installed,
its own get_logger is timed too. Printed: microseconds per call (median of 5 rounds) and
the ratio to ours.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import statistics
import time
from collections.abc import Callable

from elastic_healthcheck import get_logger


def stack_based_get_logger(name: str | None = None) -> logging.Logger:
    """The baseline: derive the caller's module through inspect.stack(), set the level."""
    if not name:
        frame_info = inspect.stack()[1]
        module = inspect.getmodule(frame_info.frame)
        if module is not None:
            name = module.__name__
        else:
            name = os.path.splitext(os.path.basename(frame_info.filename))[0]
    logger = logging.getLogger(name)
    logger.setLevel(os.environ.get("LOGLEVEL", "WARNING"))
    return logger


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(rounds)


def deep(depth: int, fn: Callable[[], object]) -> Callable[[], object]:
    """Call fn from `depth` frames down, as a logger call inside a real program would be."""

    def call(level: int = depth) -> object:
        return call(level - 1) if level else fn()

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()

    contenders: dict[str, Callable[[], object]] = {
        "elastic_healthcheck get_logger()": lambda: get_logger(),
        "elastic_healthcheck get_logger('x')": lambda: get_logger("bench.named"),
        "inspect.stack() baseline": lambda: stack_based_get_logger(),
    }
    try:
        from torch.distributed.elastic.utils.logging import get_logger as torch_get_logger
    except ImportError:
        pass
    else:
        contenders["torch get_logger()"] = lambda: torch_get_logger()
        contenders["torch get_logger('x')"] = lambda: torch_get_logger("bench.named")

    print(f"{'contender (20 frames deep)':40} {'us/call':>10} {'x ours':>8}")
    results = {name: per_call_us(deep(20, fn), args.calls) for name, fn in contenders.items()}
    ours = results["elastic_healthcheck get_logger()"]
    for name, us in results.items():
        print(f"{name:40} {us:10.2f} {us / ours:8.1f}")


if __name__ == "__main__":
    main()
