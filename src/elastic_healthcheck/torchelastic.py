"""Make torchrun's elastic agent serve real health checks, with no gap across restarts.

torch's ``LocalElasticAgent`` builds a health-check server at every worker-group start
(from ``TORCHELASTIC_HEALTH_CHECK_PORT``) and stops it before every restart, so the port
is closed for the length of each rendezvous, and open source builds a no-op anyway.
:func:`install` changes that, for the agent in this process:

* one listener for the agent's whole life, up at once (before the first rendezvous) and
  kept through every restart and rendezvous. The agent's stop/create/start cycle swaps
  what the server reports, never the socket;
* every local rank is accounted for from its worker's spawn: the patched
  ``start_processes`` creates each rank's record (:mod:`._torchrun.record`) and starts the
  worker through the bootstrap (:mod:`._torchrun.bootstrap`), which counts optimizer steps as
  progress and notes collectives, with no change to the training script;
* the verdict (:mod:`._torchrun.verdict`) follows what the agent is doing: while it starts,
  rendezvous, restarts or waits in the exit barrier it answers alive; while workers run,
  it judges every local rank, gives ranks that have not progressed yet a startup
  deadline, and blames a rank only when it can be told;
* on the agent's monitor tick, a verdict that turns dead has its stalled ranks' stacks
  captured and logged once (:mod:`._torchrun.hangwatch`), and with ``on_hang="restart"`` the hung
  worker group is ended so that torchrun restarts it;
* the JSON body and ``/metrics`` show the phase, every rank's state and the suspects.

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
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType

from ._torchrun.agentstate import AgentState, GroupView
from ._torchrun.hangwatch import HANG_GRACE, HangWatch, end_processes
from ._torchrun.record import (
    ENV_DIR,
    ENV_LOCAL_RANK,
    ENV_STACK_SIGNAL,
    create_record,
    record_path,
)
from ._torchrun.stacks import STACK_SIGNAL
from .health_check_server import HealthCheckServer
from .logging import get_logger
from .status import HealthStatus

__all__ = [
    "DEFAULT_STARTUP_TIMEOUT",
    "ENV_BOOTSTRAP",
    "ENV_ON_HANG",
    "ENV_PORT",
    "ENV_STARTUP_TIMEOUT",
    "ENV_TIMEOUT",
    "ON_HANG",
    "PHASES",
    "TORCH_INTERNALS",
    "Integration",
    "install",
]

log = get_logger(__name__)

ENV_PORT = "TORCHELASTIC_HEALTH_CHECK_PORT"  # torch's own variable
ENV_TIMEOUT = "ELASTIC_HEALTHCHECK_TORCHRUN_TIMEOUT"  # overrides the 60 s torch passes
ENV_STARTUP_TIMEOUT = "ELASTIC_HEALTHCHECK_TORCHRUN_STARTUP_TIMEOUT"
ENV_BOOTSTRAP = "ELASTIC_HEALTHCHECK_TORCHRUN_BOOTSTRAP"  # 0 turns the worker bootstrap off
ENV_ON_HANG = "ELASTIC_HEALTHCHECK_TORCHRUN_ON_HANG"  # report (default) or restart

# From a worker group's spawn, how long ranks may go without their first progress (an
# optimizer step or a beat) before they are blamed. It covers importing torch, the
# process group's own rendezvous, loading data and the first step of a large job:
# torch's own default timeout for init_process_group (and its first collectives on
# gloo) is 30 minutes, so a first step that takes longer fails in torch anyway.
DEFAULT_STARTUP_TIMEOUT = 1800.0
ON_HANG = ("report", "restart")
BOOTSTRAP_MODULE = "elastic_healthcheck._torchrun.bootstrap"

# The torch internals the integration uses, all in one place, and the versions whose
# end-to-end tests passed with them (benchmarks/../scripts/torch-versions.sh records them).
TORCH_INTERNALS = (
    "torch.distributed.elastic.agent.server.local_elastic_agent.create_healthcheck_server",
    "torch.distributed.elastic.agent.server.local_elastic_agent.start_processes",
    "torch.distributed.elastic.multiprocessing.api.SignalException",
    "torch.distributed.elastic.agent.server.api.SimpleElasticAgent.run",
    "torch.distributed.elastic.agent.server.api.SimpleElasticAgent._rendezvous",
    "torch.distributed.elastic.agent.server.api.SimpleElasticAgent._exit_barrier",
    "torch.distributed.elastic.agent.server.local_elastic_agent.LocalElasticAgent._start_workers",
    "torch.distributed.elastic.agent.server.local_elastic_agent.LocalElasticAgent._stop_workers",
    "torch.distributed.elastic.agent.server.local_elastic_agent.LocalElasticAgent._monitor_workers",
    "torch.optim.optimizer.register_optimizer_step_post_hook",
    "torch.distributed.<collective> and torch.distributed.distributed_c10d.<collective>",
)
PROVEN_TORCH = ("2.13.0", "2.14.1")

DEFAULT_KIND = "http"

PHASES = ("starting", "rendezvous", "running", "restarting", "exit_barrier", "stopped")

_MISSING_TORCH = (
    "the torch integration needs PyTorch: pip install torch"
    " (or, in a checkout of elastic-healthcheck: pip install '.[torch]')"
)

_lock = threading.Lock()
_installed: Integration | None = None


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
        *,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        bootstrap: bool = True,
        on_hang: str = "report",
    ) -> None:
        self._kind = kind
        self._port = port
        self._options = dict(options)
        self._bootstrap = bootstrap
        self._on_hang = on_hang
        self._state = AgentState(
            tempfile.mkdtemp(prefix="elastic-healthcheck-ranks-"), timeout, startup_timeout
        )
        self._server: HealthCheckServer | None = None
        self._handle: _AgentHandle | None = None
        self._patches: list[tuple[object, str, object]] = []
        self._environ: dict[str, str | None] = {}
        self._watch = HangWatch(self._state)
        # Exceptions a health check must never swallow (torch's SignalException).
        self._passthrough: tuple[type[BaseException], ...] = ()
        self._ended: GroupView | None = None  # the worker group ended for a hang, if any
        self._starts = 0  # worker groups started

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
        """The directory where local ranks' progress records live."""
        return self._state.rank_dir

    def health_status(self) -> HealthStatus:
        """The verdict the server would give now."""
        return self._state.status()

    def debug_text(self, name: str) -> str | None:
        """``/debug/ranks``: each rank's state and its latest captured stacks."""
        if name != "ranks":
            return None
        return self._watch.report(self._state.status())

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
        from ._config.kinds import ConfigurationError, create_server

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
        server.debug_text = self.debug_text  # type: ignore[attr-defined]
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

    def _spawn(self, original: Callable[..., object], kwargs: dict[str, object]) -> object:
        """torch's start_processes, with each rank's record made and its bootstrap in."""
        state = self._state
        envs = kwargs.get("envs")
        args = kwargs.get("args")
        entrypoint = kwargs.get("entrypoint")
        if not isinstance(envs, dict) or not isinstance(args, dict):
            return original(**kwargs)
        state.clear_ranks()
        now = time.time()
        local_ranks = tuple(str(rank) for rank in sorted(envs))
        envs = {rank: dict(env) for rank, env in envs.items()}
        args = dict(args)
        bootstrap = self._bootstrap and isinstance(entrypoint, str) and _is_python(entrypoint)
        for rank in sorted(envs):
            try:
                create_record(record_path(state.rank_dir, rank), now)
            except OSError as exc:
                log.warning("Cannot create the progress record of local rank %s: %s", rank, exc)
            envs[rank].update(
                {
                    ENV_DIR: state.rank_dir,
                    ENV_LOCAL_RANK: str(rank),
                    ENV_STACK_SIGNAL: str(STACK_SIGNAL),
                }
            )
            if bootstrap:
                args[rank] = _bootstrap_args(tuple(args[rank]))
        state.group = GroupView(now, local_ranks)
        self._watch.new_group()
        kwargs = {**kwargs, "envs": envs, "args": args}
        return original(**kwargs)

    def _started(self, agent: object, worker_group: object, pids: object) -> None:
        """After the agent started a worker group: note its pids, run id and restarts."""
        state = self._state
        group = state.group
        if group is not None and isinstance(pids, Mapping):
            state.group = GroupView(
                group.start, group.local_ranks, {str(r): int(p) for r, p in pids.items()}
            )
        try:
            spec = getattr(worker_group, "spec", None)
            run_id = spec.rdzv_handler.get_run_id()  # type: ignore[union-attr]
            state.run_id = str(run_id)
        except Exception:  # an agent without a rendezvous handler; no run id then
            pass
        self._starts += 1
        state.restarts = self._starts - 1

    def _monitor(self, agent: object) -> None:
        """On the agent's monitor tick: see a hang, capture its stacks, act on it."""
        if self._state.phase != "running":
            return
        status = self._state.status()
        if not self._watch.observe(status):
            return
        if self._on_hang == "restart":
            self._end_hung_group(agent, status)

    def _end_hung_group(self, agent: object, status: HealthStatus) -> None:
        detail = status.detail or {}
        group = self._state.group
        if group is None or not group.pids or self._ended is group:
            return  # exactly once per hang: this group is being torn down already
        self._ended = group
        remaining = getattr(agent, "_remaining_restarts", None)
        suspects = detail.get("suspect_ranks") or []
        log.warning(
            "Ending the hung worker group (%s; no progress for %.1f s) so that torchrun %s",
            detail.get("summary", "stalled"),
            status.age or 0.0,
            "restarts it" if remaining else "ends the job: no restarts are left",
        )
        self._state.hang_restarts += 1
        self._state.last_hang_restart = {
            "at": round(time.time(), 3),
            "suspect_ranks": list(suspects) if isinstance(suspects, list) else [],
            "stalled_for": status.age,
            "summary": detail.get("summary"),
        }
        end_processes(list(group.pids.values()), HANG_GRACE)

    def _patch(self) -> None:
        try:
            from torch.distributed.elastic.agent.server import api, local_elastic_agent
        except ImportError as exc:
            raise ImportError(_MISSING_TORCH) from exc

        def factory(
            alive_callback: Callable[[], int], port: int, timeout: int
        ) -> HealthCheckServer:
            return _AgentHandle(alive_callback, port, timeout)

        try:
            from torch.distributed.elastic.multiprocessing.api import SignalException
        except ImportError:
            _missing("torch.distributed.elastic.multiprocessing.api.SignalException")
        else:
            self._passthrough = (SignalException,)
        integration = self
        self._replace(local_elastic_agent, "create_healthcheck_server", factory)
        spawn = getattr(local_elastic_agent, "start_processes", None)
        if callable(spawn):

            def start_processes(**kwargs: object) -> object:
                return integration._spawn(spawn, kwargs)

            self._replace(local_elastic_agent, "start_processes", start_processes)
        else:
            _missing("torch.distributed.elastic.agent.server.local_elastic_agent.start_processes")
        simple = api.SimpleElasticAgent
        local = local_elastic_agent.LocalElasticAgent
        self._wrap(simple, "run", before="starting", after="stopped")
        self._wrap(simple, "_rendezvous", before="rendezvous")
        self._wrap(local, "_start_workers", before=None, after="running", then=self._started)
        self._wrap(local, "_stop_workers", before="restarting")
        self._wrap(simple, "_exit_barrier", before="exit_barrier")
        self._wrap(local, "_monitor_workers", before=None, then=self._monitored)

    def _monitored(self, agent: object, worker_group: object, result: object) -> None:
        try:
            self._monitor(agent)
        except Exception as exc:  # never let health checking break the agent's loop...
            if isinstance(exc, self._passthrough):
                raise  # ...but torch's SIGTERM (SignalException) must end it as it would
            log.warning("Cannot check the worker group for a hang", exc_info=True)

    def _replace(self, owner: object, name: str, value: object) -> None:
        self._patches.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def _wrap(
        self,
        cls: type,
        name: str,
        before: str | None,
        after: str | None = None,
        then: Callable[[object, object, object], None] | None = None,
    ) -> None:
        original = cls.__dict__.get(name)
        if original is None or not callable(original):
            _missing(f"{cls.__module__}.{cls.__name__}.{name}")
            return
        integration = self

        def wrapper(agent: object, *args: object, **kwargs: object) -> object:
            if before is not None:
                integration._set_phase(before)
            try:
                result = original(agent, *args, **kwargs)
            finally:
                if after is not None:
                    integration._set_phase(after)
            if then is not None:
                then(agent, args[0] if args else kwargs.get("worker_group"), result)
            return result

        wrapper.__name__ = name
        wrapper.__qualname__ = f"{cls.__name__}.{name}"
        wrapper.__doc__ = getattr(original, "__doc__", None)
        self._replace(cls, name, wrapper)

    def _export(self, name: str, value: str) -> None:
        self._environ.setdefault(name, os.environ.get(name))
        os.environ[name] = value


def _missing(name: str) -> None:
    log.warning(
        "This torch has no %s; the elastic-healthcheck integration cannot use it "
        "(proven torch versions: %s)",
        name,
        ", ".join(PROVEN_TORCH),
    )


def _is_python(entrypoint: str) -> bool:
    """Whether torchrun runs workers with this Python (not --no-python, not --run-path)."""
    return entrypoint in (sys.executable, os.environ.get("PYTHON_EXEC")) or os.path.basename(
        entrypoint
    ).startswith("python")


def _bootstrap_args(args: tuple[object, ...]) -> tuple[object, ...]:
    """The bootstrap in front of the script: ``-u x.py a`` -> ``-u -m BOOTSTRAP x.py a``."""
    index = 0
    while index < len(args):
        arg = args[index]
        if not isinstance(arg, str) or arg in ("-c", "-"):
            return args  # a command string or stdin: nothing to wrap
        if arg == "-m" or not arg.startswith("-"):
            break
        index += 1
    else:
        return args
    return (*args[:index], "-m", BOOTSTRAP_MODULE, *args[index:])


def install(
    *,
    kind: str | None = None,
    port: int | None = None,
    timeout: float | None = None,
    startup_timeout: float | None = None,
    bootstrap: bool | None = None,
    on_hang: str | None = None,
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
        startup_timeout: Seconds from a worker group's spawn during which ranks that have
            made no progress yet count as starting (answer 200); default:
            ``ELASTIC_HEALTHCHECK_TORCHRUN_STARTUP_TIMEOUT``, else 1800.
        bootstrap: Start workers through the bootstrap that counts optimizer steps and
            notes collectives (no change to the script needed); default:
            ``ELASTIC_HEALTHCHECK_TORCHRUN_BOOTSTRAP`` (``0`` turns it off), else on.
        on_hang: ``report`` (answer 503, log the stacks) or ``restart`` (also end the
            hung worker group so that torchrun restarts it); default:
            ``ELASTIC_HEALTHCHECK_TORCHRUN_ON_HANG``, else ``report``.
        options: Server options (``host``, ``callback_timeout``, ...), as for the kind;
            ``ELASTIC_HEALTHCHECK_<OPTION>`` variables apply too.

    Returns:
        The :class:`Integration`; ``uninstall()`` it, or use it in a ``with`` block.

    Raises:
        ImportError: torch is not installed (the message names the extra to install).
        RuntimeError: An integration is installed already.
        ValueError: An argument (or its variable) is malformed.
    """
    global _installed
    if timeout is None and os.environ.get(ENV_TIMEOUT, "").strip():
        timeout = _number(ENV_TIMEOUT, os.environ[ENV_TIMEOUT])
    if port is None and os.environ.get(ENV_PORT, "").strip():
        port = int(_number(ENV_PORT, os.environ[ENV_PORT], integer=True))
    if startup_timeout is None:
        text = os.environ.get(ENV_STARTUP_TIMEOUT, "").strip()
        startup_timeout = _number(ENV_STARTUP_TIMEOUT, text) if text else DEFAULT_STARTUP_TIMEOUT
    if bootstrap is None:
        text = os.environ.get(ENV_BOOTSTRAP, "").strip().lower()
        if text not in ("", "0", "1", "false", "true", "no", "yes", "off", "on"):
            raise ValueError(f"{ENV_BOOTSTRAP}={text!r} is not 0 or 1")
        bootstrap = text not in ("0", "false", "no", "off")
    if on_hang is None:
        on_hang = os.environ.get(ENV_ON_HANG, "").strip() or "report"
        if on_hang not in ON_HANG:
            raise ValueError(f"{ENV_ON_HANG}={on_hang!r} is not one of {', '.join(ON_HANG)}")
    if on_hang not in ON_HANG:
        raise ValueError(f"on_hang={on_hang!r} is not one of {', '.join(ON_HANG)}")
    for name, value in (("timeout", timeout), ("startup_timeout", startup_timeout)):
        if value is not None and not (0 <= value < float("inf")):
            raise ValueError(f"{name}={value!r} must be a finite number of seconds >= 0")
    with _lock:
        if _installed is not None:
            raise RuntimeError("the elastic-healthcheck torch integration is installed already")
        integration = Integration(
            kind,
            port,
            timeout,
            options,
            startup_timeout=startup_timeout,
            bootstrap=bootstrap,
            on_hang=on_hang,
        )
        _installed = integration
    try:
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
