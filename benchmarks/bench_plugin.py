"""What the torchrun entry point costs a launch that does not ask for a health check.

Usage: python benchmarks/bench_plugin.py [--runs N]

torch loads every ``torchrun.handlers`` entry point in each torchrun launch. With
``TORCHELASTIC_HEALTH_CHECK_PORT`` unset (or ``ELASTIC_HEALTHCHECK_TORCHRUN=0``), the
package's entry point must cost next to nothing: no thread, no listener, no server
imported. Each run starts a fresh interpreter with torch's rendezvous package's own
imports done, then times loading and calling the entry point exactly as torch does
(``entry_point.load()()``), and checks that it started nothing. For scale, the same number
of ``torchrun --help`` runs (torch's own start-up) is timed alongside, alternating.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROBE = """
import json, sys, threading, time
import torch.distributed.elastic.rendezvous.api  # torch's own part, before the clock starts
from importlib.metadata import entry_points
(ours,) = [e for e in entry_points(group="torchrun.handlers") if e.name == "elastic_healthcheck"]
threads = threading.active_count()
start = time.perf_counter()
ours.load()()
spent = time.perf_counter() - start
servers = sorted(m for m in sys.modules if m.startswith("elastic_healthcheck._") and
                 not m.startswith("elastic_healthcheck._torchrun"))
print(json.dumps({"seconds": spent, "threads": threading.active_count() - threads,
                  "imported": servers}))
"""


def probe(env: dict[str, str]) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True
    )
    data: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return data


def torchrun_help() -> float:
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    start = time.perf_counter()
    subprocess.run([torchrun, "--help"], capture_output=True, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if not k.startswith("ELASTIC_HEALTHCHECK")}
    base.pop("TORCHELASTIC_HEALTH_CHECK_PORT", None)
    cases = {
        "no health port": base,
        "port set, ELASTIC_HEALTHCHECK_TORCHRUN=0": {
            **base,
            "TORCHELASTIC_HEALTH_CHECK_PORT": "29600",
            "ELASTIC_HEALTHCHECK_TORCHRUN": "0",
        },
    }
    spent: dict[str, list[float]] = {name: [] for name in cases}
    whole: list[float] = []
    for _ in range(args.runs):
        for name, env in cases.items():
            data = probe(env)
            assert data["threads"] == 0 and data["imported"] == [], data  # started nothing
            spent[name].append(float(data["seconds"]))  # type: ignore[arg-type]
        whole.append(torchrun_help())
    scale = statistics.median(whole)
    print(f"torchrun --help, for scale: median {scale * 1e3:.0f} ms over {args.runs} runs")
    print(f"{'entry point, loaded and called as torch does':48} {'median':>9} {'max':>9}")
    for name, values in spent.items():
        median = statistics.median(values)
        print(
            f"  {name:46} {median * 1e6:7.0f} us {max(values) * 1e6:7.0f} us "
            f"({100 * median / scale:.3f}% of torchrun --help)"
        )
    print("no thread started, no server module imported, in every run")


if __name__ == "__main__":
    main()
