"""Import time of elastic_healthcheck against a bare interpreter, in one run.

Usage: python benchmarks/bench_import.py [--runs N]

Runs `python -c pass` and `python -c "import elastic_healthcheck"` alternately, N times
each, and prints the medians and their difference (the cost the package adds).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = {
    "bare interpreter": "pass",
    "import elastic_healthcheck": "import elastic_healthcheck",
}


def run_once(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--case", action="append", metavar="CODE", help="extra code to time")
    args = parser.parse_args()
    cases = dict(CASES)
    for code in args.case or []:
        cases[code] = code

    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.runs):
        for name, code in cases.items():
            samples[name].append(run_once(code))
    base = statistics.median(samples["bare interpreter"])
    print(f"{'case':40} {'median ms':>10} {'added ms':>9}")
    for name, times in samples.items():
        median = statistics.median(times)
        print(f"{name:40} {median * 1e3:10.1f} {(median - base) * 1e3:9.1f}")


if __name__ == "__main__":
    main()
