"""Make torchrun's elastic agent serve real health checks, with no gap across restarts.

torch's ``LocalElasticAgent`` builds a health-check server at every worker-group start
(from ``TORCHELASTIC_HEALTH_CHECK_PORT``) and stops it before every restart, so the port
is closed for the length of each rendezvous, and open source builds a no-op anyway.
:func:`install` changes that, for the agent in this process:

* one listener for the agent's whole life, up at once (before the first rendezvous) and
  kept through every restart and rendezvous. The agent's stop/create/start cycle swaps
  what the server reports, never the socket;
* the verdict follows what the agent is doing. While it starts, rendezvous, restarts or
  waits in the exit barrier, it is making progress of its own, and answers alive. While
  workers run, the verdict follows the agent's own alive callback (torch's) and, once
  ranks call :func:`elastic_healthcheck.worker.beat`, the slowest local rank. A rank
  counts from its first beat (before that the agent decides: startup grace), and stops
  counting when it exits normally;
* the JSON body and ``/metrics`` show the phase and each local rank's age.

A bind failure is logged as an error naming host and port, and training goes on without
a health server: a health check must never be what ends a training job.

>>> from elastic_healthcheck import torchelastic
>>> with torchelastic.install(port=29600):      # doctest: +SKIP
...     torch.distributed.run.main(["--nproc-per-node", "2", "train.py"])

``elastic-healthcheck torchrun`` does exactly this around torchrun's own ``main``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType

from .health_check_server import HealthCheckServer
from .logging import get_logger
from .status import HealthStatus, Verdict, evaluate
from .worker import ENV_DIR, ENV_INTERVAL

__all__ = [
    "ENV_PORT",
    "ENV_TIMEOUT",
    "PHASES",
    "Integration",
    "install",
]

log = get_logger(__name__)

ENV_PORT = "TORCHELASTIC_HEALTH_CHECK_PORT"  # torch's own variable
ENV_TIMEOUT = "ELASTIC_HEALTHCHECK_TORCHRUN_TIMEOUT"  # overrides the 60 s torch passes

DEFAULT_KIND = "http"
TORCH_TIMEOUT = 60.0  # what LocalElasticAgent passes to create_healthcheck_server

PHASES = ("starting", "rendezvous", "running", "restarting", "exit_barrier", "stopped")

_MISSING_TORCH = (
    "the torch integration needs PyTorch: pip install torch"
    " (or, in a checkout of elastic-healthcheck: pip install '.[torch]')"
)

_lock = threading.Lock()
_installed: Integration | None = None


class _AgentState:
    """What the agent is doing and how its ranks progress; the server's status source.

    Read on the server's callback thread, written by the agent's main thread: every field
    is replaced whole, never mutated, so a reader sees one value or the next.
    """

    def __init__(self, rank_dir: str, timeout: float | None) -> None:
        self.rank_dir = rank_dir
        self.phase = "starting"
        self.callback: Callable[[], object] | None = None
        self.override_timeout = timeout
        self.torch_timeout = TORCH_TIMEOUT

    @property
    def timeout(self) -> float:
        return self.override_timeout if self.override_timeout is not None else self.torch_timeout

    def ranks(self) -> dict[str, float]:
        """Local rank -> the mtime of its heartbeat file, for ranks that have beaten."""
        found: dict[str, float] = {}
        try:
            entries = os.scandir(self.rank_dir)
        except OSError:
            return found
        with entries:
            for entry in entries:
                if entry.name.startswith("rank-"):
                    try:
                        found[entry.name[5:]] = entry.stat().st_mtime
                    except OSError:
                        pass  # the rank just exited and removed it
        return dict(sorted(found.items(), key=lambda item: int(item[0])))

    def clear_ranks(self) -> None:
        """Forget the previous worker group's beats: a new group starts its grace anew."""
        try:
            entries = list(os.scandir(self.rank_dir))
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("rank-"):
                try:
                    os.unlink(entry.path)
                except OSError:
                    pass

    def __call__(self) -> float:
        """The combined last progress time: a plain alive_callback for any server kind."""
        status = self.status()
        if status.last_progress is None:
            raise RuntimeError(status.reason or "no progress time")
        return status.last_progress

    def status(self, now: float | None = None) -> HealthStatus:
        """The verdict: the phase's, or while running the agent's and the slowest rank's."""
        phase, callback, timeout = self.phase, self.callback, self.timeout
        if now is None:
            now = time.time()
        if phase != "running":
            # Starting, rendezvous, restarting, exit barrier: the agent itself is at work.
            return evaluate(now, timeout, now).with_detail({"phase": phase})
        try:
            # No callback: the agent did not ask for a server (no TORCHELASTIC_HEALTH_CHECK_PORT
            # in its environment); the ranks still count.
            agent_last = callback() if callback is not None else now
        except Exception as exc:
            status = HealthStatus.unknown(timeout, f"agent callback raised {type(exc).__name__}")
            return status.with_detail({"phase": phase})
        status = evaluate(agent_last, timeout, now)
        if status.verdict is Verdict.UNKNOWN or status.last_progress is None:
            return status.with_detail({"phase": phase})
        ranks = self.ranks()
        detail: dict[str, object] = {
            "phase": phase,
            "ranks": {rank: round(max(0.0, now - mtime), 3) for rank, mtime in ranks.items()},
        }
        if ranks:
            slowest = min(ranks, key=ranks.__getitem__)
            detail["slowest_rank"] = slowest
            if ranks[slowest] < status.last_progress:
                status = evaluate(ranks[slowest], timeout, now)
        return status.with_detail(detail)


class _AgentHandle(HealthCheckServer):
    """What torch's agent gets from create_healthcheck_server: a view of the one server.

    ``start()`` attaches the agent's callback (and opens the listener if it is not open
    yet); ``stop()`` detaches it. Neither closes the socket; neither raises.
    """

    def __init__(self, alive_callback: Callable[[], int], port: int, timeout: int) -> None:
        super().__init__(alive_callback, port, timeout)

    def start(self) -> None:
        integration = _installed
        if integration is not None:
            integration._attach(self)

    def stop(self) -> None:
        integration = _installed
        if integration is not None:
            integration._detach(self)


class Integration:
    """An installed integration: the patched agent, the one server and the rank directory.

    Use :func:`install` to make one, and :meth:`uninstall` (or ``with``) to undo it.
    """

    def __init__(
        self,
        kind: str | None,
        port: int | None,
        timeout: float | None,
        options: Mapping[str, object],
    ) -> None:
        self._kind = kind
        self._port = port
        self._options = dict(options)
        self._state = _AgentState(tempfile.mkdtemp(prefix="elastic-healthcheck-ranks-"), timeout)
        self._server: HealthCheckServer | None = None
        self._handle: _AgentHandle | None = None
        self._patches: list[tuple[object, str, object]] = []
        self._environ: dict[str, str | None] = {}

    @property
    def server(self) -> HealthCheckServer | None:
        """The listening server, once started (``None`` if binding failed)."""
        return self._server

    @property
    def phase(self) -> str:
        """What the agent is doing: one of :data:`PHASES`."""
        return self._state.phase

    @property
    def rank_dir(self) -> str:
        """The directory where local ranks' heartbeat files live."""
        return self._state.rank_dir

    def health_status(self) -> HealthStatus:
        """The verdict the server would give now."""
        return self._state.status()

    def uninstall(self) -> None:
        """Restore torch, stop the server, remove the rank directory. Idempotent."""
        global _installed
        with _lock:
            for owner, name, original in reversed(self._patches):
                setattr(owner, name, original)
            self._patches.clear()
            if _installed is self:
                _installed = None
        self._state.phase = "stopped"
        server, self._server = self._server, None
        if server is not None:
            server.stop()
        for name, value in self._environ.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._environ.clear()
        shutil.rmtree(self._state.rank_dir, ignore_errors=True)

    def __enter__(self) -> Integration:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstall()

    # -- what the patched agent calls ------------------------------------------------

    def _open(self, port: int) -> None:
        """Start the one server on ``port``; on failure, log and carry on without it."""
        if self._server is not None:
            if self._port is not None and port != self._port:
                log.warning(
                    "The agent asked for health checks on port %s; serving on %s already",
                    port,
                    self._port,
                )
            return
        from ._kinds import ConfigurationError, create_server

        self._port = port
        kind = (
            self._kind or os.environ.get("ELASTIC_HEALTHCHECK_SERVER", "").strip() or DEFAULT_KIND
        )
        state = self._state
        try:
            server = create_server(state, port, state.timeout, kind=kind, options=self._options)  # type: ignore[arg-type]
        except ConfigurationError as exc:
            log.error("Not serving health checks for the elastic agent: %s", exc)
            return
        # Every kind built on the engine asks health_status() for its verdict; give it
        # the agent's. (Other kinds see the combined time through the callback.)
        server.health_status = state.status  # type: ignore[method-assign]
        try:
            server.start()
        except (OSError, OverflowError, ValueError) as exc:
            where = f"{getattr(server, 'host', '*')}:{port}"
            log.error(
                "Cannot serve health checks for the elastic agent on %s: %s; "
                "training goes on without a health server",
                where,
                exc,
            )
            return
        self._server = server
        self._port = getattr(server, "port", port)
        # The agent builds its server only if this variable is set: point it at ours.
        self._export(ENV_PORT, str(getattr(server, "port", port)))

    def _attach(self, handle: _AgentHandle) -> None:
        self._open(handle._port)
        self._handle = handle
        self._state.torch_timeout = float(handle._timeout)
        self._state.callback = handle._alive_callback

    def _detach(self, handle: _AgentHandle) -> None:
        if self._handle is handle:
            self._handle = None
            self._state.callback = None

    def _set_phase(self, phase: str) -> None:
        if self._state.phase != phase:
            log.debug("Elastic agent phase: %s -> %s", self._state.phase, phase)
            self._state.phase = phase

    def _patch(self) -> None:
        try:
            from torch.distributed.elastic.agent.server import api, local_elastic_agent
        except ImportError as exc:
            raise ImportError(_MISSING_TORCH) from exc

        def factory(
            alive_callback: Callable[[], int], port: int, timeout: int
        ) -> HealthCheckServer:
            return _AgentHandle(alive_callback, port, timeout)

        self._replace(local_elastic_agent, "create_healthcheck_server", factory)
        simple = api.SimpleElasticAgent
        local = local_elastic_agent.LocalElasticAgent
        self._wrap(simple, "run", before="starting", after="stopped")
        self._wrap(simple, "_rendezvous", before="rendezvous")
        self._wrap(local, "_start_workers", before=None, after="running", clear=True)
        self._wrap(local, "_stop_workers", before="restarting")
        self._wrap(simple, "_exit_barrier", before="exit_barrier")

    def _replace(self, owner: object, name: str, value: object) -> None:
        self._patches.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def _wrap(
        self,
        cls: type,
        name: str,
        before: str | None,
        after: str | None = None,
        clear: bool = False,
    ) -> None:
        original = cls.__dict__.get(name)
        if original is None or not callable(original):
            log.debug("torch has no %s.%s here; that phase is not tracked", cls.__name__, name)
            return
        integration = self

        def wrapper(agent: object, *args: object, **kwargs: object) -> object:
            if clear:
                integration._state.clear_ranks()
            if before is not None:
                integration._set_phase(before)
            try:
                return original(agent, *args, **kwargs)
            finally:
                if after is not None:
                    integration._set_phase(after)

        wrapper.__name__ = name
        wrapper.__qualname__ = f"{cls.__name__}.{name}"
        wrapper.__doc__ = getattr(original, "__doc__", None)
        self._replace(cls, name, wrapper)

    def _export(self, name: str, value: str) -> None:
        self._environ.setdefault(name, os.environ.get(name))
        os.environ[name] = value


def install(
    *,
    kind: str | None = None,
    port: int | None = None,
    timeout: float | None = None,
    **options: object,
) -> Integration:
    """Make torch's elastic agents in this process serve real health checks.

    Args:
        kind: The server kind (``http``, ``tcp`` or a plugin's); default:
            ``ELASTIC_HEALTHCHECK_SERVER``, else ``http``.
        port: Listen now, on this port, so that health checks answer before the first
            rendezvous. Default: ``TORCHELASTIC_HEALTH_CHECK_PORT`` if set; otherwise the
            server starts when the agent first asks for one (and only if it does).
        timeout: Seconds without progress before dead; default:
            ``ELASTIC_HEALTHCHECK_TORCHRUN_TIMEOUT``, else the 60 s torch passes.
        options: Server options (``host``, ``callback_timeout``, ...), as for the kind;
            ``ELASTIC_HEALTHCHECK_<OPTION>`` variables apply too.

    Returns:
        The :class:`Integration`; ``uninstall()`` it, or use it in a ``with`` block.

    Raises:
        ImportError: torch is not installed (the message names the extra to install).
        RuntimeError: An integration is installed already.
        ValueError: ``port`` or ``timeout`` (or their variables) are malformed.
    """
    global _installed
    if timeout is None and os.environ.get(ENV_TIMEOUT, "").strip():
        timeout = _number(ENV_TIMEOUT, os.environ[ENV_TIMEOUT])
    if port is None and os.environ.get(ENV_PORT, "").strip():
        port = int(_number(ENV_PORT, os.environ[ENV_PORT], integer=True))
    with _lock:
        if _installed is not None:
            raise RuntimeError("the elastic-healthcheck torch integration is installed already")
        integration = Integration(kind, port, timeout, options)
        _installed = integration
    try:
        state = integration._state
        integration._export(ENV_DIR, state.rank_dir)
        # Beat at least four times per timeout, and at most once a second.
        interval = min(1.0, state.timeout / 4) if state.timeout > 0 else 0.0
        integration._export(ENV_INTERVAL, repr(interval))
        if port is not None:
            # Listen before importing torch (1-3 s): probes answer "starting" meanwhile.
            integration._open(port)
        integration._patch()
    except BaseException:
        integration.uninstall()
        raise
    return integration


def _number(name: str, text: str, integer: bool = False) -> float:
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "an integer" if integer else "a number of seconds"
        raise ValueError(f"{name}={text!r} is not {kind}") from None
    if value < 0 or value != value:
        raise ValueError(f"{name}={text!r} must not be negative")
    return value
