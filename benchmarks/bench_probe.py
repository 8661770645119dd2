"""Wall time of one probe, as Docker's HEALTHCHECK runs it: ours against curl, in one run.

Usage: python benchmarks/bench_probe.py [--runs N]

Starts an HTTPHealthCheckServer on 127.0.0.1 in this process, then runs each command N
times, alternating, and prints the median and p90 wall time of the whole process (start,
probe, exit). Contenders: `elastic-healthcheck probe`, `python -m elastic_healthcheck
probe`, curl (when installed), the `python -c "import urllib.request ..."` one-liner
people write into images without curl, and a bare `python -c pass` for scale.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from elastic_healthcheck import HTTPHealthCheckServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()

    server = HTTPHealthCheckServer(lambda: int(time.time()), 0, 60, host="127.0.0.1")
    server.start()
    try:
        url = server.url
        target = f"127.0.0.1:{server.port}"
        script = Path(sys.executable).with_name("elastic-healthcheck")
        commands = {
            "python -c pass (interpreter only)": [sys.executable, "-c", "pass"],
            "elastic-healthcheck probe": [str(script), "probe", "-q", target],
            "python -m elastic_healthcheck probe": [
                sys.executable,
                "-m",
                "elastic_healthcheck",
                "probe",
                "-q",
                target,
            ],
            "python -c urllib.request.urlopen(...)": [
                sys.executable,
                "-c",
                f"import urllib.request; urllib.request.urlopen({url!r})",
            ],
        }
        curl = shutil.which("curl")
        if curl:
            commands["curl -fsS"] = [curl, "-fsS", "-o", "/dev/null", url]
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, command in commands.items():
                start = time.perf_counter()
                subprocess.run(
                    command, check=True, stdout=subprocess.DEVNULL
                )  # no timeout: it polls
                samples[name].append(time.perf_counter() - start)
    finally:
        server.stop()

    base = statistics.median(samples["curl -fsS"]) if curl else None
    print(f"{'command':40} {'median ms':>10} {'p90 ms':>8} {'x curl':>7}")
    for name, times in samples.items():
        median = statistics.median(times)
        p90 = statistics.quantiles(times, n=10)[-1]
        ratio = f"{median / base:7.1f}" if base else "      -"
        print(f"{name:40} {median * 1e3:10.1f} {p90 * 1e3:8.1f} {ratio}")


if __name__ == "__main__":
    main()
