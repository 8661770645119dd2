"""Cost of rendering /metrics, by the number of local ranks in the torch integration's detail.

Usage: python benchmarks/bench_metrics.py [--calls N]

Renders the verdict alone, then with the full detail (phase, run id, restart counters, and
per rank its state, age, global rank, steps, collectives, whether it is in a collective,
suspects) for 1, 8 and 64 local ranks. Printed: microseconds per render (median of 5 rounds)
and the size of the exposition.
"""

from __future__ import annotations

import argparse
import statistics
import time

from elastic_healthcheck._http.prometheus import render_metrics
from elastic_healthcheck.status import HealthStatus, evaluate


def detail(ranks: int) -> dict[str, object]:
    return {
        "phase": "running",
        "run_id": "job-42",
        "restarts": 1,
        "hang_restarts": 0,
        "ranks": {
            str(local): {
                "state": "progressing",
                "age": 0.42,
                "rank": 8 + local,
                "steps": 120,
                "collectives": 240,
                "in_collective": "all_reduce",
                "collective_age": 1.2,
            }
            for local in range(ranks)
        },
        "suspect_ranks": [],
    }


def per_call(status: HealthStatus, calls: int) -> float:
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            render_metrics(status, {})
        rounds.append((time.perf_counter() - start) / calls)
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    plain = evaluate(1_700_000_000, 60, now=1_700_000_030)
    cases = [("verdict only", plain)]
    cases += [(f"{n} ranks", plain.with_detail(detail(n))) for n in (1, 8, 64)]
    print(f"{'case':<14} {'us/render':>10} {'bytes':>8}")
    for name, status in cases:
        seconds = per_call(status, args.calls)
        size = len(render_metrics(status, {}))
        print(f"{name:<14} {seconds * 1e6:>10.1f} {size:>8}")


if __name__ == "__main__":
    main()
