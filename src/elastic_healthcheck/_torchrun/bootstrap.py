"""Start a worker's training script with progress reporting in place, unchanged otherwise.

The torch integration starts each worker as::

    python -u -m elastic_healthcheck._torchrun.bootstrap SCRIPT ARGS...
    python -u -m elastic_healthcheck._torchrun.bootstrap -m MODULE ARGS...

instead of torchrun's ``python -u [-m] SCRIPT ARGS...``. Before the script runs, this
module opens the local rank's record (see ``.record``) and marks the worker's start,
registers ``faulthandler`` on the agent's stack signal (all threads' stacks, appended to
the rank's stack file; it runs in C, so it works while the main thread is blocked in a
collective), and installs a one-shot import hook: when the script imports ``torch``,
every optimizer step counts as progress and every Python-level ``torch.distributed``
collective notes its entry and exit. Torch is never imported here.

Then the script runs as ``python`` would run it (the model is ``PyRunner`` in coverage.py's
``execfile.py``): the same ``sys.argv``, ``sys.path[0]`` (the script's directory, or the
current directory for ``-m``), a fresh ``__main__`` module with the right ``__file__``,
``__loader__`` and ``__spec__`` (so classes defined in the script pickle, and
multiprocessing ``spawn`` children re-import it), the same traceback and exit code 1 for an
uncaught exception, and ``SystemExit`` codes passed through. Known difference:
``sys.orig_argv`` shows the bootstrap. An uncaught ``KeyboardInterrupt`` prints its
traceback without the bootstrap's frames and, after the exit handlers, ends the process by
SIGINT, as python does.

Health reporting never stops training: whatever fails in the set-up is logged as one
WARNING line and the script runs anyway. The record's ``FLAG_STACKS`` is set only once the
stack dump is registered: before that, the signal would end the worker.

What the collective notes cannot see: a collective with ``async_op=True`` (and every NCCL
collective) has left when it returns, and its wait happens later in ``Work.wait()``; only
the outermost collective of the process counts, so one started by another thread while a
collective is open is not counted; under ``torch.compile`` a traced collective is part of
the graph and is not noted. A script that sets its own handler for the stack signal
replaces the dump.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import types

from .. import worker
from .record import (
    ENV_DIR,
    ENV_LOCAL_RANK,
    ENV_STACK_SIGNAL,
    FLAG_BOOTSTRAP,
    FLAG_STACKS,
    RankRecord,
    record_path,
    stack_path,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from importlib.machinery import ModuleSpec
    from io import FileIO
    from typing import NoReturn

    from .hooks import Hooks

__all__ = ["main"]

USAGE = "usage: python -m elastic_healthcheck._torchrun.bootstrap (SCRIPT | -m MODULE) [ARGS...]"

# This process's state, kept so that nothing is collected while the script runs.
_record: RankRecord | None = None
_hooks: Hooks | None = None
_stack_file: FileIO | None = None
_stack_signal: int | None = None


def main(argv: Sequence[str] | None = None) -> None:
    """Set up progress reporting, then run the script or module named in ``argv``.

    Args:
        argv: ``[SCRIPT, ARGS...]`` or ``["-m", MODULE, ARGS...]``; ``sys.argv[1:]`` if
            not given.

    Raises:
        SystemExit: The script's own exit, 1 after an uncaught exception (its traceback
            printed as ``python`` prints it), or 2 for a bad command line.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    as_module = bool(args) and args[0] == "-m"
    if as_module:
        args = args[1:]
    if not args or (not as_module and args[0].startswith("-")):
        sys.stderr.write(f"{USAGE}\n")
        raise SystemExit(2)
    set_up()
    if as_module:
        _run(_run_module, args)
    else:
        _run(_run_script, args)


def set_up() -> None:
    """Open this rank's record and install the stack dump and the torch hooks.

    Outside the integration (no ``ELASTIC_HEALTHCHECK_*`` environment) this does nothing.
    A failure is logged as one WARNING line; it never raises.
    """
    global _record
    directory = os.environ.get(ENV_DIR)
    local_rank = os.environ.get(ENV_LOCAL_RANK)
    if not directory or local_rank is None:
        return
    try:
        record = RankRecord(record_path(directory, local_rank))
        owner = record.owner
        if owner not in (0, os.getpid()):
            record.close()
            raise ValueError(f"the record belongs to pid {owner}")
        record.start(os.getpid(), worker._global_rank(), FLAG_BOOTSTRAP)
    except Exception as exc:
        _warn("Cannot report progress for local rank %s: %s", local_rank, exc)
        return
    _record = record
    worker._adopt(record)
    try:
        if _register_stack_dump(stack_path(directory, local_rank)):
            record.set_flags(FLAG_STACKS)
    except Exception as exc:
        _warn("Cannot dump the stacks of local rank %s on a signal: %s", local_rank, exc)
    torch = sys.modules.get("torch")
    if torch is not None:  # imported already (a .pth file, sitecustomize)
        _hook_torch(torch)
    else:
        sys.meta_path.insert(0, _PostImportHook("torch", _hook_torch))


def _warn(message: str, *args: object) -> None:
    worker._warn("elastic_healthcheck.worker", message, *args)


def _register_stack_dump(path: str) -> bool:
    """Dump all threads' stacks to ``path`` on the agent's signal; ``False``: none named."""
    global _stack_file, _stack_signal
    value = os.environ.get(ENV_STACK_SIGNAL, "")
    if not value:
        return False
    try:
        signum = int(value)
    except ValueError:
        raise ValueError(f"{ENV_STACK_SIGNAL}={value!r} is not a signal number") from None
    stack_file = open(path, "ab", buffering=0)  # kept open: faulthandler writes to its fd
    try:
        faulthandler.register(signum, file=stack_file, all_threads=True, chain=False)
    except BaseException:
        stack_file.close()
        raise
    _stack_file = stack_file
    _stack_signal = signum
    return True


def _unregister_stack_dump_in_child() -> None:
    # A forked child restores the signal's previous disposition: it has no rank to report.
    global _stack_file, _stack_signal
    if _stack_signal is not None:
        faulthandler.unregister(_stack_signal)
        _stack_signal = None
    _stack_file = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_unregister_stack_dump_in_child)


# --- torch hooks -------------------------------------------------------------------------


class _PostImportHook:
    """A ``sys.meta_path`` finder that calls ``on_import(module)`` once ``name`` has loaded.

    It finds nothing itself: for ``name`` it asks the other finders and wraps the found
    loader's ``exec_module``. A spec found only to ask whether torch is installed
    (``importlib.util.find_spec("torch")``, as many libraries do) is never executed, so
    the finder stays in ``sys.meta_path`` until torch's own module runs.
    """

    def __init__(self, name: str, on_import: Callable[[types.ModuleType], None]) -> None:
        self._name = name
        self._on_import = on_import

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != self._name:
            return None
        for finder in sys.meta_path:
            find_spec = None if finder is self else getattr(finder, "find_spec", None)
            if find_spec is None:
                continue
            spec: ModuleSpec | None = find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        exec_module = getattr(loader, "exec_module", None)
        if loader is None or exec_module is None:
            return spec

        def exec_and_hook(module: types.ModuleType) -> None:
            try:
                del loader.exec_module
            except AttributeError:
                pass
            if not self._remove():
                exec_module(module)  # hooked already, by another spec
                return
            exec_module(module)
            self._on_import(module)

        try:
            loader.exec_module = exec_and_hook  # type: ignore[method-assign]
        except (AttributeError, TypeError) as exc:
            _warn("Cannot hook the import of %s: %s", self._name, exc)
        return spec

    def _remove(self) -> bool:
        try:
            sys.meta_path.remove(self)
        except ValueError:
            return False
        return True


def _hook_torch(torch: types.ModuleType) -> None:
    """Put the hooks in (torch has just been imported); each part that fails is one WARNING."""
    global _hooks
    record = _record
    if record is None:
        return
    from .hooks import CHECKPOINT_FUNCTIONS, Hooks
    from .phases import PhaseStack

    hooks = Hooks(record, PhaseStack(record))
    _hooks = hooks
    worker._adopt(record, hooks.phases)
    for what, install in (
        ("count optimizer steps as progress", hooks.optimizer),
        ("note torch.distributed collectives", lambda: _install_collectives(hooks)),
        ("see DDP's gradient all-reduce", lambda: _install_ddp(hooks, torch)),
        ("see evaluation", lambda: hooks.evaluation(torch.nn.Module)),
        ("see checkpoints", lambda: hooks.checkpoints(torch)),
    ):
        try:
            install()
        except Exception as exc:
            _warn("Cannot %s: %s", what, exc)
    for name in CHECKPOINT_FUNCTIONS:
        if name != "torch":
            _when_imported(name, hooks.checkpoints)


def _install_collectives(hooks: Hooks) -> None:
    import torch.distributed as dist

    if not dist.is_available():
        return
    from torch.distributed import distributed_c10d

    hooks.collectives(dist, distributed_c10d)
    import torch

    hooks.waits(dist.Work, torch._C.Future)
    hooks.reducer(dist.Reducer)


def _install_ddp(hooks: Hooks, torch: types.ModuleType) -> None:
    import torch.distributed as dist

    if not dist.is_available():
        return
    from torch.nn.parallel import DistributedDataParallel

    hooks.ddp(DistributedDataParallel, torch.autograd.Variable._execution_engine)


def _when_imported(name: str, then: Callable[[types.ModuleType], None]) -> None:
    """Call ``then(module)`` once ``name`` is imported (now, if it is already)."""
    module = sys.modules.get(name)
    if module is not None:
        then(module)
    else:
        sys.meta_path.insert(0, _PostImportHook(name, then))


# --- running the script as python would --------------------------------------------------


def _run(runner: Callable[[list[str]], None], args: list[str]) -> None:
    import atexit

    atexit.register(_die_by_sigint_at_exit)
    try:
        runner(args)
    except SystemExit:
        _mark_exited()
        raise
    except KeyboardInterrupt as exc:
        # As python does: the traceback (without our frames), then, once the interpreter
        # has run its exit handlers, death by SIGINT (see _die_by_sigint_at_exit).
        _report_uncaught(exc)
        global _interrupted
        _interrupted = True
        raise SystemExit(1) from None
    except BaseException as exc:
        _report_uncaught(exc)
        raise SystemExit(1) from None
    _mark_exited()


_interrupted = False


def _die_by_sigint_at_exit() -> None:
    """Registered before the script runs, so it runs after the script's exit handlers."""
    if not _interrupted:
        return
    import signal

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)


def _mark_exited() -> None:
    record = _record
    if record is not None and record.owner == os.getpid():
        record.exited()


def _report_uncaught(exc: BaseException) -> None:
    """Print ``exc`` as the interpreter prints an uncaught exception, without our frames."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    exc.__traceback__ = tb
    sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, tb
    if sys.version_info >= (3, 12):
        sys.last_exc = exc
    sys.excepthook(type(exc), exc, tb)


def _run_script(args: list[str]) -> None:
    """Run a file (or a directory or zip file with ``__main__.py``) as ``python FILE``."""
    path = args[0]
    if os.path.isdir(path) or not _is_source_file(path):
        _run_path_entry(args)
        return
    if not _safe_path():
        sys.path[0] = os.path.dirname(os.path.realpath(path))
    filename = path if os.path.isabs(path) else os.path.join(os.getcwd(), path)
    from importlib.machinery import SourceFileLoader

    main_module = _fresh_main(
        __file__=filename, __loader__=SourceFileLoader("__main__", filename), __cached__=None
    )
    try:
        with open(filename, "rb") as source_file:
            source = source_file.read()
    except OSError as exc:
        _exit_cannot_open(path, exc)
    code = compile(source, filename, "exec", dont_inherit=True)
    sys.argv = args
    exec(code, main_module.__dict__)


def _safe_path() -> bool:
    # python -P / PYTHONSAFEPATH (3.11+): nothing is put in front of sys.path.
    return bool(getattr(sys.flags, "safe_path", False))


def _is_source_file(path: str) -> bool:
    import zipfile

    try:
        return not zipfile.is_zipfile(path)
    except OSError:
        return True


def _run_path_entry(args: list[str]) -> None:
    """A directory or zip file: python puts it first on sys.path and runs its __main__."""
    from importlib.machinery import PathFinder

    path = args[0] if os.path.isabs(args[0]) else os.path.join(os.getcwd(), args[0])
    spec = PathFinder.find_spec("__main__", [path])
    if spec is None or spec.loader is None:
        sys.stderr.write(f"{sys.executable}: can't find '__main__' module in {path!r}\n")
        raise SystemExit(1)
    if _safe_path():
        sys.path.insert(0, path)
    else:
        sys.path[0] = path
    code = spec.loader.get_code("__main__")  # type: ignore[attr-defined]
    main_module = _fresh_main(
        __file__=spec.origin,
        __loader__=spec.loader,
        __spec__=spec,
        __package__="",
        __cached__=spec.cached,
    )
    sys.argv = args
    exec(code, main_module.__dict__)


def _run_module(args: list[str]) -> None:
    """Run a module as ``python -m MODULE``, through the same runpy function python uses."""
    import runpy
    from importlib.machinery import BuiltinImporter

    # Until runpy fills it in, __main__ looks as python's own does while -m finds the module.
    _fresh_main(__loader__=BuiltinImporter)
    sys.argv = ["-m", *args[1:]]
    run_as_main = getattr(runpy, "_run_module_as_main", None)
    if run_as_main is not None:
        run_as_main(args[0], alter_argv=True)
    else:  # not in any CPython we support; the public function is nearly the same
        sys.argv[0] = args[0]
        runpy.run_module(args[0], run_name="__main__", alter_sys=True)


def _fresh_main(**attributes: object) -> types.ModuleType:
    """Install and return a new, empty ``__main__`` module (the bootstrap's stays apart)."""
    import builtins

    main_module = types.ModuleType("__main__")
    main_module.__dict__.update(
        __builtins__=builtins, __package__=None, __spec__=None, __loader__=None
    )
    main_module.__dict__.update(attributes)
    sys.modules["__main__"] = main_module
    return main_module


def _exit_cannot_open(path: str, exc: OSError) -> NoReturn:
    sys.stderr.write(
        f"{sys.executable}: can't open file {os.path.abspath(path)!r}: "
        f"[Errno {exc.errno}] {exc.strerror}\n"
    )
    raise SystemExit(2)


if __name__ == "__main__":
    # Run from the package module, not this copy: its hooks and state are the ones that the
    # worker module and a later import see.
    from elastic_healthcheck._torchrun.bootstrap import main as _main

    _main()
