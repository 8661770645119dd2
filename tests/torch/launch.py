"""`python -m elastic_healthcheck torchrun ...` in a subprocess, probed over HTTP every 50 ms.

Both output streams are drained by threads (a full pipe would stall torchrun), with the
time each line arrived, so a test can compare "when the worker said it hung" with "when
the answer turned 503" on one clock.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..servers.client import request

SCRIPTS = Path(__file__).with_name("scripts")
PROBE_INTERVAL = 0.05


@dataclass
class Observation:
    at: float  # time.time() when the answer arrived
    status: int | None  # None: no answer (refused, or cut off)
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def detail(self) -> dict[str, Any]:
        return self.body.get("detail") or {}

    @property
    def phase(self) -> str | None:
        return self.detail.get("phase")


def running(o: Observation) -> bool:
    """The agent runs its worker group (the answer then judges the ranks)."""
    return o.phase == "running"


def dead(o: Observation) -> bool:
    """A 503 about a running worker group."""
    return o.status == 503 and running(o)


class Launch:
    def __init__(
        self,
        *torchrun_args: str,
        script: str = "train.py",
        health: tuple[str, ...] = (),
        port: int | None = 0,
        timeout: float = 1.5,
        nproc: int = 2,
        standalone: bool = True,
        launcher: str = "wrapper",
        **env: str,
    ) -> None:
        """Launch torchrun on a script of tests/torch/scripts.

        ``launcher`` is ``wrapper`` (``elastic-healthcheck torchrun`` with the ``--health-*``
        options), ``torchrun`` (the plain ``torchrun`` command) or ``module`` (``python -m
        torch.distributed.run``); the plain ones get the health options from the
        environment, as a PyTorchJob sets them, and ``port=None`` leaves the health port
        unset.
        """
        environment = {**os.environ, "TRAIN_SECONDS": "3", **env}
        environment.pop("TORCHELASTIC_HEALTH_CHECK_PORT", None)
        torchrun = [
            "--nproc-per-node",
            str(nproc),
            *(["--standalone"] if standalone else []),
            "--monitor-interval",
            "0.1",
            *torchrun_args,
            str(SCRIPTS / script),
        ]
        if launcher == "wrapper":
            command = [sys.executable, "-m", "elastic_healthcheck", "torchrun",
                       "--health-port", str(port), "--health-host", "127.0.0.1",
                       "--health-timeout", str(timeout), *health, *torchrun]  # fmt: skip
        else:
            assert not health, "plain torchrun takes its health options from the environment"
            program = [str(Path(sys.executable).with_name("torchrun"))]
            if launcher == "module":
                program = [sys.executable, "-m", "torch.distributed.run"]
            command = [*program, *torchrun]
            environment.setdefault("ELASTIC_HEALTHCHECK_HOST", "127.0.0.1")
            environment.setdefault("ELASTIC_HEALTHCHECK_TORCHRUN_TIMEOUT", str(timeout))
            if port is not None:
                environment["TORCHELASTIC_HEALTH_CHECK_PORT"] = str(port)
        self.started = time.time()
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
            start_new_session=True,
        )
        assert self.process.stderr is not None and self.process.stdout is not None
        # Where it serves: the first stderr line of the wrapper; plain torchrun says it a few
        # lines in (or never, with no health port).
        self.err_lines: list[tuple[float, str]] = []
        self.port: int | None = None
        self.first_line = ""
        for line in self.process.stderr if launcher == "wrapper" or port is not None else ():
            self.err_lines.append((time.time(), line))
            self.first_line = self.first_line or line
            if "health checks for the elastic agent on http://" in line:
                self.first_line = line
                self.port = int(line.split("http://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
                break
            if launcher == "wrapper" or len(self.err_lines) >= 20:
                break
        self.out_lines: list[tuple[float, str]] = []
        self._readers = [
            threading.Thread(target=self._drain, args=(self.process.stdout, self.out_lines)),
            threading.Thread(target=self._drain, args=(self.process.stderr, self.err_lines)),
        ]
        for reader in self._readers:
            reader.start()
        self.observations: list[Observation] = []
        self.stopped_at: float | None = None
        self._prober: threading.Thread | None = None

    @staticmethod
    def _drain(stream, lines: list[tuple[float, str]]) -> None:
        for line in stream:
            lines.append((time.time(), line))

    def probe_until_exit(self) -> None:
        port = self.port
        assert port is not None, self.first_line

        def loop() -> None:
            while self.process.poll() is None:
                try:
                    response = request(port, timeout=2)
                except OSError:  # refused, or cut off by the listener closing at exit
                    self.observations.append(Observation(time.time(), None))
                else:
                    self.observations.append(
                        Observation(time.time(), response.status, json.loads(response.body))
                    )
                time.sleep(PROBE_INTERVAL)

        self._prober = threading.Thread(target=loop)
        self._prober.start()

    def wait_for(self, predicate: Callable[[Observation], bool], timeout: float) -> Observation:
        """The first observation that satisfies ``predicate``, polled until ``timeout``."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for observation in self.observations[seen:]:
                seen += 1
                if predicate(observation):
                    return observation
            if self.process.poll() is not None and seen == len(self.observations):
                break
            time.sleep(0.02)
        raise AssertionError(
            f"no observation matched in {timeout} s; phases {self.phases()}; last "
            f"{self.observations[-3:]}; log tail {self.stderr()[-2000:]}"
        )

    def stdout_time(self, prefix: str) -> float | None:
        """The epoch seconds printed after ``prefix`` on stdout (HANG <time>), if any."""
        for _, line in list(self.out_lines):
            if line.startswith(prefix):
                return float(line.split()[1])
        return None

    def stderr(self) -> str:
        return "".join(line for _, line in list(self.err_lines))

    def stdout(self) -> str:
        return "".join(line for _, line in list(self.out_lines))

    def stop(self) -> None:
        """End the job as an operator would: SIGTERM to torchrun (its workers follow)."""
        if self.stopped_at is None:
            self.stopped_at = time.time()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def before_stop(self) -> list[Observation]:
        """The observations made before stop(): after it, the job is being torn down (its
        ranks exit one by one, and the verdict follows what is left)."""
        end = self.stopped_at if self.stopped_at is not None else float("inf")
        return [o for o in self.observations if o.at < end]

    def wait(self, timeout: float = 120) -> tuple[int, str, str]:
        try:
            self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            for reader in self._readers:
                reader.join(10)
            for stream in (self.process.stdout, self.process.stderr):
                if stream is not None:
                    stream.close()
            if self._prober is not None:
                self._prober.join(10)
        return self.process.returncode, self.stdout(), self.stderr()

    def phases(self) -> list[str]:
        seen: list[str] = []
        for o in self.observations:
            phase = o.phase
            if phase and (not seen or seen[-1] != phase):
                seen.append(phase)
        return seen
