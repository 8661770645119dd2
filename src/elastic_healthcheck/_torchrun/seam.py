"""Torch's seam: every torch internal the integration relies on, in one table.

Each :class:`Reliance` says where it is, how it is used (replaced, wrapped or read),
whether the integration can work without it, and what torch must do for it. The agent's
patching (:class:`Patches`), the test that everything is restored, the log line at
install and the table in docs/torchrun.md all come from :data:`TORCH_SEAM`.

A torch that is not what we expected is never a reason to stop training: a missing
optional internal is one WARNING naming it (that part is skipped); a missing required
one raises :class:`TorchMismatchError`, which the CLI turns into one line and the
integration into a WARNING, and torchrun runs as torch would.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..logging import get_logger
from .ranks import AgentPhase

__all__ = [
    "PROVEN_TORCH",
    "TORCH_SEAM",
    "How",
    "Patches",
    "Reliance",
    "TorchMismatchError",
]

log = get_logger("elastic_healthcheck.torchelastic")  # the public name

# The torch versions whose end-to-end tests passed (tools/torch-versions.sh records them).
PROVEN_TORCH = ("2.13.0", "2.14.1")


class TorchMismatchError(RuntimeError):
    """This torch is not what the integration expects (a required internal is missing)."""

    __module__ = "elastic_healthcheck.torchelastic"  # where users catch it from


class How(str, enum.Enum):
    """How the integration uses a torch internal."""

    REPLACED = "replaced"  # ours instead of torch's
    WRAPPED = "wrapped"  # ours around torch's, which is called with the same arguments
    READ = "read"  # used as torch defines it

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Reliance:
    """One torch internal the integration relies on.

    Attributes:
        module: The module that holds it.
        name: Its name there (``Class.method`` for a method).
        how: Replaced, wrapped or read.
        required: Whether the integration can work without it.
        needs: What torch must do for the integration, in a few words.
        hook: Which of the agent's handlers builds ours (``None``: the worker side, or read).
        before: For a phase hook, the agent's phase while the call runs.
        after: For a phase hook, the agent's phase once the call has returned.
        side: ``agent`` (patched in torchrun's process) or ``worker`` (the bootstrap's).
        at_run_time: Read on the agent's objects while it runs (an instance attribute):
            not resolved at install; without it, that part does nothing.
    """

    module: str
    name: str
    how: How
    required: bool
    needs: str
    hook: str | None = None
    before: AgentPhase | None = None
    after: AgentPhase | None = None
    side: str = "agent"
    at_run_time: bool = False

    @property
    def path(self) -> str:
        return f"{self.module}.{self.name}"


_AGENT = "torch.distributed.elastic.agent.server"
_LOCAL = f"{_AGENT}.local_elastic_agent"
_API = f"{_AGENT}.api"
_P = AgentPhase

TORCH_SEAM: tuple[Reliance, ...] = (
    Reliance(_LOCAL, "create_healthcheck_server", How.REPLACED, True,
             "the agent builds its health-check server through it", "factory"),
    Reliance(_LOCAL, "start_processes", How.WRAPPED, False,
             "spawns the worker group from per-rank envs and args", "spawn"),
    Reliance(_API, "SimpleElasticAgent.run", How.WRAPPED, False,
             "runs the agent from its start to its end", "phase", _P.STARTING, _P.STOPPED),
    Reliance(_API, "SimpleElasticAgent._rendezvous", How.WRAPPED, False,
             "joins each rendezvous round", "phase", _P.RENDEZVOUS),
    Reliance(_LOCAL, "LocalElasticAgent._start_workers", How.WRAPPED, False,
             "starts a worker group and returns its pids", "started", None, _P.RUNNING),
    Reliance(_LOCAL, "LocalElasticAgent._stop_workers", How.WRAPPED, False,
             "stops the worker group before a restart", "phase", _P.RESTARTING),
    Reliance(_API, "SimpleElasticAgent._exit_barrier", How.WRAPPED, False,
             "waits for the other nodes at the end", "phase", _P.EXIT_BARRIER),
    Reliance(_LOCAL, "LocalElasticAgent._monitor_workers", How.WRAPPED, False,
             "is called on every monitor tick while workers run", "monitored"),
    Reliance("torch.distributed.elastic.multiprocessing.api", "SignalException", How.READ,
             False, "is what the agent raises on SIGTERM: never swallowed"),
    Reliance("torch.distributed.elastic.rendezvous.dynamic_rendezvous",
             "DynamicRendezvousHandler.next_rendezvous", How.WRAPPED, False,
             "keeps the workers' store in _shared_tcp_store_server and _bootstrap_store_info",
             "fresh_store"),
    Reliance(_LOCAL, "LocalElasticAgent._pcontext", How.READ, False,
             "holds the worker group's error_files (TORCHELASTIC_ERROR_FILE)",
             at_run_time=True),
    Reliance(_API, "SimpleElasticAgent._store", How.READ, False,
             "holds the rendezvous round's store, shared by every node's agent",
             at_run_time=True),
    Reliance("torch.optim.optimizer", "register_optimizer_step_post_hook", How.READ, False,
             "calls a hook after every optimizer step", side="worker"),
    Reliance("torch.distributed.distributed_c10d", "<collectives>", How.WRAPPED, False,
             "looks collectives up at call time", side="worker"),
)  # fmt: skip


def _resolve(reliance: Reliance) -> tuple[object, str, object] | None:
    """``(owner, attribute, value)`` for an internal, or ``None`` when torch lacks it."""
    try:
        owner: object = importlib.import_module(reliance.module)
    except ImportError:
        return None
    *path, attribute = reliance.name.split(".")
    for part in path:
        owner = getattr(owner, part, None)
        if owner is None:
            return None
    if isinstance(owner, type):
        value = owner.__dict__.get(attribute)  # this class's own method, not an inherited one
    else:
        value = getattr(owner, attribute, None)
    if value is None:
        return None
    return owner, attribute, value


def missing(reliance: Reliance) -> str:
    """The WARNING (or error) text for an internal this torch lacks."""
    kind = "needs" if reliance.required else "cannot use"
    return (
        f"This torch has no {reliance.path}; the elastic-healthcheck integration {kind} it "
        f"(proven torch versions: {', '.join(PROVEN_TORCH)})"
    )


# A handler builds ours from torch's original and the reliance's row.
Handler = Callable[[Reliance, object], object]


class Patches:
    """The agent side of the seam, applied to torch and restored exactly."""

    def __init__(self) -> None:
        self._applied: list[tuple[object, str, object]] = []
        self.values: dict[str, object] = {}  # what READ rows resolved to, by name

    def apply(self, handlers: Mapping[str, Handler]) -> list[str]:
        """Put every agent-side hook of :data:`TORCH_SEAM` in place.

        Returns:
            The paths of the optional internals this torch lacks (each already logged).

        Raises:
            TorchMismatchError: A required internal is missing (nothing is left patched).
        """
        skipped = []
        for reliance in TORCH_SEAM:
            if reliance.side != "agent" or reliance.at_run_time:
                continue
            found = _resolve(reliance)
            if found is None:
                if reliance.required:
                    self.restore()
                    raise TorchMismatchError(missing(reliance))
                log.warning("%s", missing(reliance))
                skipped.append(reliance.path)
                continue
            owner, attribute, original = found
            if reliance.hook is None:
                self.values[reliance.name] = original
                continue
            ours = handlers[reliance.hook](reliance, original)
            self._applied.append((owner, attribute, original))
            setattr(owner, attribute, ours)
        return skipped

    def restore(self) -> None:
        """Put torch back as it was; idempotent."""
        for owner, attribute, original in reversed(self._applied):
            setattr(owner, attribute, original)
        self._applied.clear()

    @property
    def patched(self) -> list[str]:
        """What is replaced or wrapped now, as ``module.name`` paths."""
        return [
            f"{getattr(owner, '__module__', '')}.{getattr(owner, '__qualname__', owner)}.{name}"
            if isinstance(owner, type)
            else f"{getattr(owner, '__name__', owner)}.{name}"
            for owner, name, _ in self._applied
        ]
