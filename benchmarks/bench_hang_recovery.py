"""From a hang to training again: `--health-on-hang restart` against plain torchrun.

The same real training script (tests/torch/scripts/steps.py: 2 gloo workers, all_reduce
of the gradients, optimizer.step()) hangs in compute on local rank 1 at step 10 of the
first attempt only, under `--max-restarts 1`. Measured, side by side in one run:

* elastic-healthcheck torchrun --health-on-hang restart: seconds from the hang to the
  second attempt's first completed step;
* plain torchrun: the same, or "still hung" when --cap seconds pass (gloo's default
  collective timeout is 30 minutes, and only then would torchrun restart).

    python benchmarks/bench_hang_recovery.py [--timeout 5] [--cap 120] [--runs 1]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "torch" / "scripts" / "steps.py"


def measure(command: list[str], cap: float) -> tuple[float | None, float | None]:
    """(seconds from hang to the next attempt stepping, seconds from hang to exit)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])
        ),
        "HANG_RANK": "1",
        "HANG_STEP": "10",
        "HANG_ATTEMPTS": "first",
        "STEPS": "30",
    }
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.DEVNULL, env=env, start_new_session=True
        )
        deadline = time.monotonic() + cap + 120
        hung = resumed = None
        while time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
            out.seek(0)
            for line in out.read().splitlines():
                word, _, rest = line.partition(" ")
                if word == "HANG" and hung is None:
                    hung = float(rest)
                if word == "STEPPING" and rest.endswith("attempt=1") and resumed is None:
                    resumed = float(rest.split()[0])
            if hung is not None and resumed is None and time.time() - hung > cap:
                break
        if process.poll() is None:
            # SIGTERM first: torchrun then ends its workers, which run in sessions of their
            # own and would outlive a SIGKILL to torchrun's process group.
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        ended = time.time()
    if hung is None:
        raise RuntimeError(f"{command[:4]}: the script never hung")
    return (None if resumed is None else resumed - hung), (
        ended - hung if process.returncode == 0 else None
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=5.0, help="--health-timeout (s)")
    parser.add_argument("--cap", type=float, default=120.0, help="give up on plain after (s)")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    common = ["--nproc-per-node", "2", "--standalone", "--max-restarts", "1"]
    ours = [
        sys.executable, "-m", "elastic_healthcheck", "torchrun",
        "--health-port", "0", "--health-host", "127.0.0.1",
        "--health-timeout", str(args.timeout), "--health-on-hang", "restart",
        *common, str(SCRIPT),
    ]  # fmt: skip
    plain = [sys.executable, "-m", "torch.distributed.run", *common, str(SCRIPT)]
    results: dict[str, list[float | None]] = {"--health-on-hang restart": [], "plain torchrun": []}
    for _ in range(args.runs):
        results["--health-on-hang restart"].append(measure(ours, args.cap)[0])
        results["plain torchrun"].append(measure(plain, args.cap)[0])
    print(f"hang -> training again (--health-timeout {args.timeout:g} s, cap {args.cap:g} s)")
    for name, values in results.items():
        done = [v for v in values if v is not None]
        text = f"{statistics.median(done):.1f} s" if done else f"still hung after {args.cap:g} s"
        if done and len(done) < len(values):
            text += f" ({len(values) - len(done)} of {len(values)} runs still hung)"
        print(f"  {name:26} {text}")


if __name__ == "__main__":
    main()
