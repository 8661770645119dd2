"""Does a restarted worker group train again? A crash and a hang, launchers side by side.

The training script is tests/torch/scripts/ddp_loop.py: a plain
``init_process_group("gloo")``, DDP, a DataLoader; 2 local ranks, ``--standalone``,
``--max-restarts 1``. On the first attempt only, local rank 1 either exits with status 3
at step 5 (the crash) or blocks forever at step 5 (the hang). A trial succeeds when the
restarted group trains to the end: both ranks print ``DONE ... attempt=1`` and the
launcher exits 0. The contenders run interleaved, trial by trial, in one run:

* the crash, under plain torchrun (torch keeps one worker store for every rendezvous
  round), plain torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, elastic-healthcheck
  torchrun (a fresh worker store per round) and elastic-healthcheck torchrun with
  ELASTIC_HEALTHCHECK_TORCHRUN_FRESH_STORE=0 (torch's one store again);
* the hang, under elastic-healthcheck torchrun --health-on-hang restart: also the seconds
  from the hang to the restarted group's first step; and once under plain torchrun, which
  waits for gloo's 30-minute collective timeout.

Every trial is bounded: ``--cap`` seconds from its launch, again from the first step of
attempt 0 and again from the hang. Its processes are then ended: SIGTERM to the launcher,
SIGKILL to its session after GRACE seconds, and SIGKILL to any process of the trial still
running in a session of its own (torchrun starts each worker in one).

    python benchmarks/bench_hang_recovery.py [--trials 5] [--timeout 5] [--cap 90]
        [--tail LINES] [--logs DIR]
"""

from __future__ import annotations

import argparse
import collections
import enum
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "torch" / "scripts" / "ddp_loop.py"

# torchrun gives its workers 30 s between SIGTERM and SIGKILL when it is told to stop
# (torch/distributed/elastic/multiprocessing/api.py, PContext.close); a little more here.
GRACE = 40.0
POLL = 0.1  # seconds between reads of a trial's output

# Every process of a trial inherits this variable, set to the trial's own directory: the
# way to find workers that torchrun started in sessions of their own once it is gone.
MARKER = "BENCH_HANG_RECOVERY_TRIAL"

# Settings of the caller's environment that would change what is measured.
DROPPED = (
    "TORCH_DISABLE_SHARE_RDZV_TCP_STORE",
    "TORCHELASTIC_HEALTH_CHECK_PORT",
    *"HANG_RANK HANG_STEP HANG_WHERE CRASH_RANK CRASH_STEP STEPS STEP_SECONDS".split(),
    *"LOAD_RANK LOAD_SECONDS LOAD_ATTEMPT EVAL_EVERY SAVE_EVERY STUCK_SAVE_STEP".split(),
    *"PARAMS_OUT FSDP".split(),
)

# ddp_loop.py's lines. Searched for, not matched whole: the ranks share one stdout, and
# under PYTHONUNBUFFERED a print's newline is a write of its own, so two ranks' lines can
# come out as "DONE rank=0 attempt=1DONE rank=1 attempt=1".
HANG = re.compile(r"HANG (\d+\.\d+)")
STEPPING = re.compile(r"STEPPING (\d+\.\d+) attempt=(\d+)")
DONE = re.compile(r"DONE rank=(\d+) attempt=(\d+)")
FULL_MESH = "connectFullMesh failed"
# elastic-healthcheck's line as it ends a hung group (docs/torchrun.md); read within POLL s.
ENDING = "Ending the hung worker group"


class Case(str, enum.Enum):
    CRASH = "crash"
    HANG = "hang"


# What each case sets for ddp_loop.py; both act on the first attempt only.
INJECT = {
    Case.CRASH: {"CRASH_RANK": "1", "CRASH_STEP": "5"},
    Case.HANG: {"HANG_RANK": "1", "HANG_STEP": "5"},
}


@dataclass(frozen=True)
class Contender:
    case: Case
    name: str
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()  # set for this contender only
    once: bool = False  # one trial only (plain torchrun on a hang: each takes --cap s)


@dataclass
class Trial:
    """What one launch did, read from its merged stdout and stderr."""

    returncode: int | None = None  # None: still running at the cap, then ended by us
    done: set[int] = field(default_factory=set)  # ranks that printed DONE on attempt 1
    stepped: float | None = None  # epoch seconds of the first STEPPING ... attempt=0
    hung: float | None = None  # epoch seconds of the HANG line
    ended: float | None = None  # epoch seconds when the ENDING line was read
    resumed: float | None = None  # epoch seconds of the first STEPPING ... attempt=1
    full_mesh: bool = False
    leftovers: int = 0  # processes still running after the launcher had ended
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)  # the output, read so far
    tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.done == {0, 1}

    def failure(self, case: Case, cap: float) -> str:
        """The failure mode in a few words; "" for a success."""
        if self.ok:
            return ""
        if case is Case.HANG and self.hung is None:
            mode = "never hung"
        elif self.returncode is None and case is Case.HANG and self.resumed is None:
            mode = f"still hung after {cap:g} s"
        elif self.returncode is None:
            when = "after" if self.resumed is not None else "before"
            mode = f"timed out {when} attempt 1 stepped"
        elif self.returncode == 0:
            mode = "exit 0 without both DONE attempt=1"
        else:
            mode = f"exit {self.returncode}"
        if self.full_mesh:
            mode += f", {FULL_MESH}"
        return mode


def environment(contender: Contender, directory: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in DROPPED and not k.startswith("ELASTIC_HEALTHCHECK_")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    # torch's log directories and anything the script writes land in the trial's directory.
    env.update(TMPDIR=directory, STEPS="30", **{MARKER: directory})
    env.update(INJECT[contender.case])
    env.update(dict(contender.env))
    return env


def trial_pids(directory: str) -> list[int]:
    """Processes of ours that inherited the trial's MARKER (none where /proc is missing)."""
    entry = f"{MARKER}={directory}".encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            environ = (proc / "environ").read_bytes()
        except OSError:  # gone, or not ours
            continue
        if int(proc.name) != os.getpid() and entry in environ.split(b"\0"):
            found.append(int(proc.name))
    return found


def end(process: subprocess.Popen[bytes], directory: str) -> int:
    """End a trial's processes; how many were left once the launcher had ended."""
    if process.poll() is None:
        # SIGTERM first: torchrun then stops its workers, each in a session of its own.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=GRACE)
        except subprocess.TimeoutExpired:
            pass
    leftovers = trial_pids(directory)
    try:
        os.killpg(process.pid, signal.SIGKILL)  # torchrun's session: a killed agent's kin
    except (ProcessLookupError, PermissionError):
        pass
    for _ in range(5):  # a dying process may still fork once
        pids = trial_pids(directory)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(POLL)
    process.wait()
    return len(leftovers)


def read(trial: Trial, lines: list[str]) -> None:
    trial.lines += lines
    for line in lines:
        for match in HANG.finditer(line):
            trial.hung = trial.hung or float(match[1])
        for match in STEPPING.finditer(line):
            if match[2] == "0":
                trial.stepped = trial.stepped or float(match[1])
            elif match[2] == "1":
                trial.resumed = trial.resumed or float(match[1])
        for match in DONE.finditer(line):
            if match[2] == "1":
                trial.done.add(int(match[1]))
        if FULL_MESH in line:
            trial.full_mesh = True
        if ENDING in line and trial.ended is None:
            trial.ended = time.time()


def run(contender: Contender, cap: float, tail: int, keep: Path | None) -> Trial:
    """One launch, bounded by ``cap`` seconds from its start, then again from attempt 0's
    first step (the crash or the hang follows 5 steps later) and from the hang."""
    trial = Trial()
    directory = tempfile.mkdtemp(prefix="bench-hang-recovery-")
    started = time.time()
    try:
        log = Path(directory, "output.log")
        with log.open("wb") as out, log.open("rb") as reader:
            process = subprocess.Popen(
                contender.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=environment(contender, directory),
                cwd=directory,
                start_new_session=True,
            )
            pending = b""
            exited = False
            try:
                while not exited:
                    exited = process.poll() is not None  # before the read: nothing missed
                    pending += reader.read()
                    *complete, pending = pending.split(b"\n")
                    read(trial, [line.decode(errors="replace") for line in complete])
                    clock = max(started, trial.stepped or 0.0, trial.hung or 0.0)
                    if not exited and time.time() - clock > cap:
                        break
                    time.sleep(0 if exited else POLL)
            finally:
                trial.leftovers = end(process, directory)
            if exited:
                trial.returncode = process.returncode
                read(trial, (pending + reader.read()).decode(errors="replace").splitlines())
        # What the trial printed before it ended, not the noise of our ending it.
        trial.tail = trial.lines[-tail:] if tail else []
        if keep is not None:
            shutil.copyfile(log, keep)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    trial.seconds = time.time() - started
    return trial


def contenders(timeout: float) -> list[Contender]:
    common = ("--standalone", "--nproc-per-node", "2", "--max-restarts", "1", str(SCRIPT))
    plain = (sys.executable, "-m", "torch.distributed.run", *common)
    health = ("--health-port", "0", "--health-host", "127.0.0.1")
    ours = (sys.executable, "-m", "elastic_healthcheck", "torchrun", *health)
    on_hang = ("--health-on-hang", "restart", "--health-timeout", f"{timeout:g}")
    return [
        Contender(Case.CRASH, "plain torchrun", plain),
        Contender(
            Case.CRASH,
            "plain torchrun, TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1",
            plain,
            (("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1"),),
        ),
        Contender(Case.CRASH, "elastic-healthcheck torchrun", (*ours, *common)),
        Contender(
            Case.CRASH,
            "elastic-healthcheck torchrun, ELASTIC_HEALTHCHECK_TORCHRUN_FRESH_STORE=0",
            (*ours, *common),
            (("ELASTIC_HEALTHCHECK_TORCHRUN_FRESH_STORE", "0"),),
        ),
        Contender(
            Case.HANG,
            f"elastic-healthcheck torchrun --health-on-hang restart --health-timeout {timeout:g}",
            (*ours, *on_hang, *common),
        ),
        Contender(Case.HANG, "plain torchrun", plain, once=True),
    ]


def since_hang(trial: Trial, when: float | None) -> float | None:
    return None if trial.hung is None or when is None else when - trial.hung


def spread(values: list[float | None]) -> str:
    """Median and range, in seconds."""
    known = [v for v in values if v is not None]
    if not known:
        return ""
    return f"{statistics.median(known):.1f} s ({min(known):.1f}-{max(known):.1f})"


def row(contender: Contender, trials: list[Trial], cap: float) -> list[str]:
    ended = spread([since_hang(t, t.ended) for t in trials])
    resumed = spread([since_hang(t, t.resumed) for t in trials])
    modes = collections.Counter(t.failure(contender.case, cap) for t in trials if not t.ok)
    failures = "; ".join(f"{count}x {mode}" for mode, count in modes.most_common())
    if sum(t.leftovers for t in trials):
        failures += f" ({sum(t.leftovers for t in trials)} processes outlived the launcher)"
    ok = sum(t.ok for t in trials)
    return [contender.case.value, contender.name, f"{ok}/{len(trials)}", ended, resumed, failures]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5, help="trials per contender")
    parser.add_argument("--timeout", type=float, default=5.0, help="--health-timeout (s)")
    parser.add_argument("--cap", type=float, default=90.0, help="give a trial up after (s)")
    parser.add_argument("--tail", type=int, default=0, help="output lines shown per failure")
    parser.add_argument("--logs", type=Path, help="keep every trial's output in this directory")
    args = parser.parse_args()
    everyone = contenders(args.timeout)
    results: dict[Contender, list[Trial]] = {c: [] for c in everyone}
    for index in range(args.trials):
        # Interleaved, and rotated so that no contender always runs first.
        turn = [c for c in everyone if not c.once or index == 0]
        shift = index % len(turn)
        for contender in turn[shift:] + turn[:shift]:
            keep = None
            if args.logs is not None:
                args.logs.mkdir(parents=True, exist_ok=True)
                number = everyone.index(contender) + 1
                keep = args.logs / f"trial{index + 1}-contender{number}-{contender.case.value}.log"
            trial = run(contender, args.cap, args.tail, keep)
            results[contender].append(trial)
            outcome = trial.failure(contender.case, args.cap) or "ok"
            extra = f", {trial.seconds:.0f} s"
            ended, resumed = since_hang(trial, trial.ended), since_hang(trial, trial.resumed)
            if ended is not None:
                extra += f", hang -> group ended {ended:.1f} s"
            if resumed is not None:
                extra += f", hang -> training again {resumed:.1f} s"
            if trial.leftovers:
                extra += f", {trial.leftovers} processes outlived the launcher"
            where = f"[{index + 1}/{args.trials}] {contender.case.value} | {contender.name}"
            print(f"{where}: {outcome}{extra}", flush=True)
            if not trial.ok and trial.tail:
                print("\n".join("    " + line for line in trial.tail), flush=True)
    print(
        f"\nddp_loop.py, 2 local ranks, --max-restarts 1; rank 1 crashes or hangs at step 5 of"
        f" attempt 0; trained again = both ranks DONE on attempt 1 and exit 0;"
        f" cap {args.cap:g} s"
    )
    header = ["case", "launcher", "trained again", "hang -> group ended", "hang -> training again"]
    table = [[*header, "failures"]]
    table += [row(c, trials, args.cap) for c, trials in results.items()]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )


if __name__ == "__main__":
    main()
