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

import functools
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from types import TracebackType

from ._torchrun.agentserver import DEFAULT_KIND as DEFAULT_KIND
from ._torchrun.agentserver import ENV_PORT, AgentHandle, AgentServer
from ._torchrun.agentstate import AgentState, GroupView
from ._torchrun.hangwatch import ON_HANG, HangWatch
from ._torchrun.jobview import JobView
from ._torchrun.ranks import DEFAULT_PHASE_TIMEOUT, AgentPhase
from ._torchrun.seam import PROVEN_TORCH as PROVEN_TORCH
from ._torchrun.seam import TORCH_SEAM, Patches, Reliance, TorchMismatchError
from ._torchrun.spawn import Spawner
from ._torchrun.verdict import GroupVerdict
from .health_check_server import HealthCheckServer
from .logging import get_logger
from .status import HealthStatus

__all__ = [
    "DEFAULT_STARTUP_TIMEOUT",
    "ENV_BOOTSTRAP",
    "ENV_FRESH_STORE",
    "ENV_ON_HANG",
    "ENV_PHASE_TIMEOUT",
    "ENV_PORT",
    "ENV_STARTUP_TIMEOUT",
    "ENV_TIMEOUT",
    "ON_HANG",
    "PHASES",
    "TORCH_INTERNALS",
    "Integration",
    "TorchMismatchError",
    "install",
]

log = get_logger(__name__)

ENV_TIMEOUT = "ELASTIC_HEALTHCHECK_TORCHRUN_TIMEOUT"  # overrides the 60 s torch passes
ENV_STARTUP_TIMEOUT = "ELASTIC_HEALTHCHECK_TORCHRUN_STARTUP_TIMEOUT"
ENV_BOOTSTRAP = "ELASTIC_HEALTHCHECK_TORCHRUN_BOOTSTRAP"  # 0 turns the worker bootstrap off
ENV_ON_HANG = "ELASTIC_HEALTHCHECK_TORCHRUN_ON_HANG"  # report (default) or restart
ENV_PHASE_TIMEOUT = "ELASTIC_HEALTHCHECK_TORCHRUN_PHASE_TIMEOUT"
ENV_FRESH_STORE = "ELASTIC_HEALTHCHECK_TORCHRUN_FRESH_STORE"  # 0 keeps torch's one store

# From a worker group's spawn, how long ranks may go without their first progress (an
# optimizer step or a beat) before they are blamed. It covers importing torch, the
# process group's own rendezvous, loading data and the first step of a large job:
# torch's own default timeout for init_process_group (and its first collectives on
# gloo) is 30 minutes, so a first step that takes longer fails in torch anyway.
DEFAULT_STARTUP_TIMEOUT = 1800.0

# Every torch internal the integration relies on (the rows of TORCH_SEAM), as paths.
TORCH_INTERNALS = tuple(reliance.path for reliance in TORCH_SEAM)

PHASES = tuple(phase.value for phase in AgentPhase)

_MISSING_TORCH = (
    "the torch integration needs PyTorch: pip install torch"
    " (or, in a checkout of elastic-healthcheck: pip install '.[torch]')"
)

_lock = threading.Lock()
_installed: Integration | None = None


class Integration:
    """An installed integration: the patched agent, the one server and the rank directory.

    Use :func:`install` to make one, and :meth:`uninstall` (or ``with``) to undo it. It
    composes the parts of :mod:`elastic_healthcheck._torchrun`: the agent's state (the
    server's status source), the one server, the spawn of each worker group, the hang
    watch, and torch's seam.
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
        phase_timeout: float = DEFAULT_PHASE_TIMEOUT,
        fresh_store: bool = True,
    ) -> None:
        self._state = AgentState(
            tempfile.mkdtemp(prefix="elastic-healthcheck-ranks-"),
            timeout,
            startup_timeout,
            phase_timeout,
        )
        self._watch = HangWatch(self._state, on_hang)
        self._state.debug_pages = {"ranks": self._watch.report}
        self._agent_server = AgentServer(self._state, kind, port, options, self._listening)
        self._spawner = Spawner(self._state, bootstrap, self._watch.new_group)
        self._jobview = JobView(self._state)
        self._fresh_store_on = fresh_store
        self._node_rank: object = None
        self._patches = Patches()
        self._environ: dict[str, str | None] = {}
        self._starts = 0  # worker groups started
        # Exceptions a health check must never swallow (torch's SignalException).
        self._passthrough: tuple[type[BaseException], ...] = ()

    @property
    def server(self) -> HealthCheckServer | None:
        """The listening server, once started (``None`` if binding failed)."""
        return self._agent_server.server

    @property
    def phase(self) -> str:
        """What the agent is doing: one of :data:`PHASES`."""
        return self._state.phase.value

    @property
    def rank_dir(self) -> str:
        """The directory where local ranks' progress records live."""
        return self._state.rank_dir

    def health_status(self) -> HealthStatus:
        """The verdict the server would give now."""
        return self._state.health_status()

    def verdict(self) -> GroupVerdict:
        """The verdict the server would give now, as a typed value."""
        return self._state.verdict()

    def debug_text(self, name: str) -> str | None:
        """``/debug/ranks``: each rank's state and its latest captured stacks."""
        return self._state.debug_text(name)

    def uninstall(self) -> None:
        """Restore torch, stop the server, remove the rank directory. Idempotent."""
        global _installed
        with _lock:
            self._patches.restore()
            if _installed is self:
                _installed = None
        self._state.phase = AgentPhase.STOPPED
        self._agent_server.close()
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
        self._agent_server.open(port)

    def _listening(self, port: int) -> None:
        # The agent builds its server only if this variable is set: point it at ours.
        self._export(ENV_PORT, str(port))

    def _set_phase(self, phase: AgentPhase | str) -> None:
        phase = AgentPhase(phase)
        if self._state.phase is not phase:
            log.debug("Elastic agent phase: %s -> %s", self._state.phase.value, phase.value)
            self._state.phase = phase

    def _spawn(self, original: Callable[..., object], kwargs: dict[str, object]) -> object:
        """torch's start_processes, called as the agent calls it, with the ranks set up."""
        return self._spawner.wrap(original)(**kwargs)

    def _started(self, agent: object, worker_group: object, pids: object) -> None:
        """After the agent started a worker group: note its pids, run id and restarts."""
        state = self._state
        group = state.group
        if group is not None and isinstance(pids, Mapping):
            # torchrun's per-worker error files (TORCHELASTIC_ERROR_FILE), by local rank.
            files = getattr(getattr(agent, "_pcontext", None), "error_files", None)
            state.group = GroupView(
                group.start,
                group.local_ranks,
                {str(r): int(p) for r, p in pids.items()},
                group.world_size,
                {str(r): str(f) for r, f in files.items()} if isinstance(files, Mapping) else {},
            )
        try:
            spec = getattr(worker_group, "spec", None)
            state.run_id = str(spec.rdzv_handler.get_run_id())  # type: ignore[union-attr]
        except Exception:  # an agent without a rendezvous handler; no run id then
            pass
        self._starts += 1
        state.restarts = self._starts - 1
        self._node_rank = getattr(worker_group, "group_rank", None)
        group = state.group
        several_nodes = group is not None and (group.world_size or 0) > len(group.local_ranks)
        # The agent's store of this rendezvous round, shared with the other nodes' agents.
        self._jobview.new_round(getattr(agent, "_store", None) if several_nodes else None)

    def _monitored(self, agent: object, worker_group: object, result: object) -> None:
        try:
            if self._state.phase is AgentPhase.RUNNING:
                self._jobview.tick(self._state.verdict(), self._node_rank)
            self._watch.tick(getattr(agent, "_remaining_restarts", None))
        except Exception as exc:  # never let health checking break the agent's loop...
            if isinstance(exc, self._passthrough):
                raise  # ...but torch's SIGTERM (SignalException) must end it as it would
            log.warning("Cannot check the worker group for a hang", exc_info=True)

    # -- torch's seam ------------------------------------------------------------------

    def _patch(self) -> None:
        try:
            import torch.distributed.elastic.agent.server.local_elastic_agent  # noqa: F401
        except ImportError as exc:
            raise ImportError(_MISSING_TORCH) from exc
        handlers = {
            "factory": self._factory,
            "spawn": lambda reliance, original: self._spawner.wrap(original),  # type: ignore[arg-type]
            "phase": self._phase_hook,
            "started": self._phase_hook,
            "monitored": self._phase_hook,
            "fresh_store": self._fresh_store,
        }
        self._patches.apply(handlers)
        signal_exception = self._patches.values.get("SignalException")
        if isinstance(signal_exception, type) and issubclass(signal_exception, BaseException):
            self._passthrough = (signal_exception,)
        log.info(
            "elastic-healthcheck is in torch's elastic agent (%s replaced or wrapped)",
            len(self._patches.patched),
        )

    def _factory(self, reliance: Reliance, original: object) -> object:
        agent_server = self._agent_server

        def create_healthcheck_server(
            alive_callback: Callable[[], int], port: int, timeout: int
        ) -> HealthCheckServer:
            return AgentHandle(alive_callback, port, timeout, lambda: agent_server)

        return create_healthcheck_server

    def _fresh_store(self, reliance: Reliance, original: object) -> object:
        """A new worker store for each rendezvous round (torch keeps one for all rounds).

        With torch's default, the agent of rank 0 hosts one TCPStore for the workers of
        every round, and workers keep their gloo addresses under the same keys each round:
        a restarted rank can read a dead peer's address there and fail to connect (or hang)
        in ``init_process_group``. Forgetting the round's server before each rendezvous
        makes torch start a new one on a new port, and every agent read it afresh.
        """
        assert callable(original)
        fresh = self._fresh_store_on

        @functools.wraps(original)
        def next_rendezvous(handler: object, *args: object, **kwargs: object) -> object:
            if fresh and getattr(handler, "use_agent_store", False):
                for name in ("_shared_tcp_store_server", "_bootstrap_store_info"):
                    if hasattr(handler, name):
                        setattr(handler, name, None)
            return original(handler, *args, **kwargs)

        return next_rendezvous

    def _phase_hook(self, reliance: Reliance, original: object) -> object:
        """Ours around an agent method: the phase before and after, then a follow-up."""
        assert callable(original)
        before, after = reliance.before, reliance.after
        then = {"started": self._started, "monitored": self._monitored}.get(reliance.hook or "")
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

        name = reliance.name.rpartition(".")[2]
        wrapper.__name__ = name
        wrapper.__qualname__ = reliance.name
        wrapper.__doc__ = getattr(original, "__doc__", None)
        wrapper.__wrapped__ = original  # type: ignore[attr-defined]
        return wrapper

    def _export(self, name: str, value: str) -> None:
        self._environ.setdefault(name, os.environ.get(name))
        os.environ[name] = value


def install(
    *,
    kind: str | None = None,
    port: int | None = None,
    timeout: float | None = None,
    startup_timeout: float | None = None,
    bootstrap: bool | None = None,
    on_hang: str | None = None,
    phase_timeout: float | None = None,
    fresh_store: bool | None = None,
    **options: object,
) -> Integration:
    """Make torch's elastic agents in this process serve real health checks.

    Every argument left ``None`` comes from its ``ELASTIC_HEALTHCHECK_*`` variable, else its
    default (``docs/configuration.md``; the table is ``_config.settings.SETTINGS``).

    Args:
        kind: The server kind (``http``, ``tcp`` or a plugin's); default ``http``.
        port: Listen now, on this port, so that health checks answer before the first
            rendezvous; else ``ELASTIC_HEALTHCHECK_PORT``, else torch's
            ``TORCHELASTIC_HEALTH_CHECK_PORT``; without any, the server starts when the
            agent first asks for one (and only if it does).
        timeout: Seconds without progress before dead; default: the 60 s torch passes.
        startup_timeout: Seconds from a worker group's spawn during which ranks that have
            made no progress yet count as starting (answer 200); default 1800.
        bootstrap: Start workers through the bootstrap that counts optimizer steps and
            notes collectives (no change to the script needed); default on.
        on_hang: ``report`` (answer 503, log the stacks; the default) or ``restart`` (also
            end the hung worker group so that torchrun restarts it).
        phase_timeout: Seconds a rank may stay inside an evaluation, a checkpoint or a
            named phase without a sign of life (unless the phase sets its own deadline);
            default 1800.
        fresh_store: Give the workers a new store at every rendezvous round, so that a
            restarted group cannot read its dead predecessors' addresses (torch keeps one
            store for all rounds); default on. Every node of a job must agree.
        options: Server options (``host``, ``debug``, ``callback_timeout``, ...), as for
            the kind; ``ELASTIC_HEALTHCHECK_<OPTION>`` variables apply too.

    Returns:
        The :class:`Integration`; ``uninstall()`` it, or use it in a ``with`` block.

    Raises:
        ImportError: torch is not installed (the message names the extra to install).
        RuntimeError: An integration is installed already.
        ValueError: (``ConfigurationError``) an argument or an ``ELASTIC_HEALTHCHECK_*``
            variable cannot be used (an unknown variable included); one line says which.
    """
    global _installed
    from ._config.options import torchrun_options

    arguments: dict[str, object] = {
        "kind": kind,
        "port": port,
        "timeout": timeout,
        "startup_timeout": startup_timeout,
        "phase_timeout": phase_timeout,
        "bootstrap": bootstrap,
        "on_hang": on_hang,
        "fresh_store": fresh_store,
        **options,
    }
    settings = torchrun_options(arguments=arguments, environ=os.environ)
    with _lock:
        if _installed is not None:
            raise RuntimeError("the elastic-healthcheck torch integration is installed already")
        integration = Integration(
            settings.kind,
            settings.port,
            settings.timeout,
            settings.server_options,
            startup_timeout=settings.startup_timeout,
            bootstrap=settings.bootstrap,
            on_hang=settings.on_hang,
            phase_timeout=settings.phase_timeout,
            fresh_store=settings.fresh_store,
        )
        _installed = integration
    try:
        if settings.port is not None:
            # Listen before importing torch (1-3 s): probes answer "starting" meanwhile.
            integration._open(settings.port)
        integration._patch()
    except BaseException:
        integration.uninstall()
        raise
    return integration
