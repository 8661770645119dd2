"""A worker group's spawn: each rank's record made, its environment set, the bootstrap in.

The agent's ``start_processes`` is wrapped so that, whatever the call's shape (keywords
or positions), the ``envs`` and ``args`` it passes for each local rank get what the
workers need; a call this module cannot read goes through to torch unchanged.
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from collections.abc import Callable, Mapping

from ..logging import get_logger
from .agentstate import AgentState, GroupView
from .record import ENV_DIR, ENV_LOCAL_RANK, ENV_STACK_SIGNAL, create_record, record_path
from .stacks import STACK_SIGNAL

__all__ = ["BOOTSTRAP_MODULE", "Spawner", "bootstrap_args", "is_python"]

log = get_logger("elastic_healthcheck.torchelastic")  # the public name

BOOTSTRAP_MODULE = "elastic_healthcheck._torchrun.bootstrap"


def is_python(entrypoint: str) -> bool:
    """Whether torchrun runs workers with this Python (not --no-python, not --run-path)."""
    return entrypoint in (sys.executable, os.environ.get("PYTHON_EXEC")) or os.path.basename(
        entrypoint
    ).startswith("python")


def bootstrap_args(args: tuple[object, ...]) -> tuple[object, ...]:
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


class Spawner:
    """Wraps torch's ``start_processes``: records, environment and bootstrap per rank."""

    def __init__(self, state: AgentState, bootstrap: bool, on_group: Callable[[], None]) -> None:
        self._state = state
        self._bootstrap = bootstrap
        self._on_group = on_group

    def wrap(self, original: Callable[..., object]) -> Callable[..., object]:
        """``start_processes`` as torch has it -> ours, which takes any call shape."""
        try:
            signature: inspect.Signature | None = inspect.signature(original)
        except (TypeError, ValueError):
            signature = None
        spawner = self

        def start_processes(*args: object, **kwargs: object) -> object:
            bound = None
            if signature is not None:
                try:
                    bound = signature.bind(*args, **kwargs)
                except TypeError:
                    bound = None
            named = _named(bound) if bound is not None else None
            if bound is None or named is None or not spawner.prepare(named):
                return original(*args, **kwargs)
            return original(*bound.args, **bound.kwargs)

        start_processes.__wrapped__ = original  # type: ignore[attr-defined]
        return start_processes

    def prepare(self, arguments: dict[str, object]) -> bool:
        """Make each rank's record and add its environment and bootstrap, in ``arguments``.

        Returns:
            ``False`` when the call is not the shape torch's agent uses (left alone).
        """
        envs, args, entrypoint = (arguments.get(k) for k in ("envs", "args", "entrypoint"))
        if not isinstance(envs, Mapping) or not isinstance(args, Mapping):
            return False
        state = self._state
        state.clear_ranks()
        now = time.time()
        new_envs = {rank: dict(env) for rank, env in envs.items()}
        new_args = dict(args)
        bootstrap = self._bootstrap and isinstance(entrypoint, str) and is_python(entrypoint)
        failed: list[str] = []
        for rank in sorted(new_envs):
            try:
                create_record(record_path(state.rank_dir, rank), now)
            except OSError as exc:
                failed.append(f"{rank} ({exc.strerror or exc})")
            new_envs[rank].update(
                {
                    ENV_DIR: state.rank_dir,
                    ENV_LOCAL_RANK: str(rank),
                    ENV_STACK_SIGNAL: str(STACK_SIGNAL),
                }
            )
            if bootstrap and rank in new_args:
                new_args[rank] = bootstrap_args(tuple(new_args[rank]))
        if failed:
            log.warning(
                "Cannot create the progress records of local ranks %s in %s: they are judged "
                "from their spawn, with no progress to see; training goes on",
                ", ".join(failed),
                state.rank_dir,
            )
        state.group = GroupView(
            now, tuple(str(rank) for rank in sorted(new_envs)), world_size=_world_size(new_envs)
        )
        self._on_group()
        arguments["envs"], arguments["args"] = new_envs, new_args
        return True


def _named(bound: inspect.BoundArguments) -> dict[str, object] | None:
    """The call's arguments by name, as one dict whose changes reach the call.

    Arguments caught by ``**kwargs`` live in their own dict: that dict is returned when it
    holds the ones we need, else the bound arguments themselves.
    """
    for parameter in bound.signature.parameters.values():
        if parameter.kind is parameter.VAR_KEYWORD:
            extra = bound.arguments.get(parameter.name)
            if isinstance(extra, dict) and "envs" in extra:
                return extra
    arguments: dict[str, object] = bound.arguments
    return arguments


def _world_size(envs: Mapping[object, Mapping[str, str]]) -> int | None:
    """The job's world size, as torch tells each worker (``WORLD_SIZE``), if it does."""
    for env in envs.values():
        text = env.get("WORLD_SIZE", "")
        if text.isdigit():
            return int(text)
    return None
