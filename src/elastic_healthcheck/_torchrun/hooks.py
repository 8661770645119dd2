"""The bootstrap's hooks in torch: progress, collectives, waits, evaluation and checkpoints.

Installed once torch is imported (never by importing it here), on the training thread,
the thread that runs the script. Each hook writes one or two fields of the rank's record
and calls torch's own function with the same arguments, so results are bit-identical
with and without them (``tests/torch/test_hooks.py`` compares a DDP model's parameters).

What the hooks see, and where:

==========================================  ===========================================
the rank ...                                seen through
==========================================  ===========================================
makes progress                              torch's optimizer step post-hook
is inside a Python-level collective         ``torch.distributed`` functions, wrapped
waits for one started with ``async_op``     ``Work.wait()`` and ``Future.wait()``
waits in DDP's gradient all-reduce (C++)    a post-accumulate-grad hook on the model's
                                            parameters queues callbacks the autograd
                                            engine runs around DDP's reducer's wait
is in DDP's C++ collectives                 ``_broadcast_coalesced``,
                                            ``_verify_params_across_processes``,
                                            ``Reducer._rebuild_buckets``
evaluates                                   ``Module.train(False)`` (``model.eval()``),
                                            then each forward of that module
writes or reads a checkpoint                ``torch.save``/``load``, DCP's ``save``,
                                            ``load``, ``async_save``, ``safetensors``
==========================================  ===========================================

Collectives and waits on other threads (DCP's ``async_save`` thread) are not noted: the
record says where the training thread is. NCCL collectives return at once and complete
on the device; their host waits (``torch.cuda.synchronize``, ``Stream.synchronize``,
``Event.synchronize``, ``Tensor.item``) are noted as ``device_synchronize`` once a NCCL
process group exists and a collective is pending (not provable on CPU machines).
"""

from __future__ import annotations

import functools
import inspect
import threading
import types
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .phases import CHECKPOINT, EVALUATION, PhaseStack
from .record import COLLECTIVES, RankRecord

__all__ = ["CHECKPOINT_FUNCTIONS", "Hooks"]

# The Python-level collectives, looked up on torch.distributed (and distributed_c10d).
_PYTHON_COLLECTIVES = tuple(
    name
    for name in COLLECTIVES[1:]
    if name
    not in (
        "wait",
        "ddp_all_reduce",
        "broadcast_coalesced",
        "verify_params_across_processes",
        "rebuild_buckets",
        "device_synchronize",
    )
)
# Collectives DDP (and FSDP's init) run in C++, each behind one Python call we can wrap:
# torch.distributed.<name> -> the name noted.
_CPP_COLLECTIVES = {
    "_broadcast_coalesced": "broadcast_coalesced",
    "_verify_params_across_processes": "verify_params_across_processes",
}
# Checkpoint functions, by module: imported on first use by the script, hooked then.
CHECKPOINT_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "torch": ("save", "load"),
    "torch.distributed.checkpoint": ("save", "load", "save_state_dict", "load_state_dict"),
    "safetensors.torch": ("save_file", "load_file", "save", "load", "save_model", "load_model"),
}
_ASYNC_CHECKPOINT = {"torch.distributed.checkpoint": ("async_save",)}
_WORK_NAMES_MAX = 4096  # async Works remembered for their name; a Work never waited is forgotten


class Hooks:
    """Everything the bootstrap puts into torch for one rank."""

    def __init__(self, record: RankRecord, phases: PhaseStack) -> None:
        self.record = record
        self.phases = phases
        self._thread = threading.get_ident()  # the training thread
        self._work_names: dict[int, str] = {}
        self._eval_hooks: dict[int, list[Any]] = {}
        self._eval_depth = 0
        self._checkpoint_depth = 0
        self._nccl = False
        self._device_pending = False

    # -- progress -------------------------------------------------------------------

    def optimizer(self) -> Any:
        """Count every optimizer step as progress; it also ends an evaluation."""
        from torch.optim.optimizer import register_optimizer_step_post_hook

        progress = self.record.progress
        phases = self.phases

        def count_step(optimizer: object, args: object, kwargs: object) -> None:
            progress()
            if phases.current is not None:
                phases.pop_kind(EVALUATION)

        return register_optimizer_step_post_hook(count_step)

    # -- collectives and waits ------------------------------------------------------

    def collectives(self, dist: types.ModuleType, c10d: types.ModuleType) -> None:
        """Wrap every Python-level collective of ``dist`` and ``c10d``, once each."""
        for name in _PYTHON_COLLECTIVES:
            original = getattr(c10d, name, None)
            if original is None or not callable(original):
                continue
            wrapper = self.collective(name, original)
            setattr(c10d, name, wrapper)
            if getattr(dist, name, None) is original:
                setattr(dist, name, wrapper)
        for attribute, name in _CPP_COLLECTIVES.items():
            original = getattr(dist, attribute, None)
            if callable(original):
                setattr(dist, attribute, self.collective(name, original))
        init = getattr(dist, "init_process_group", None)
        get_backend = getattr(dist, "get_backend", None)
        if callable(init) and callable(get_backend):
            wrapper = self._after_init(init, get_backend)
            _replace(dist, "init_process_group", wrapper)
            if getattr(c10d, "init_process_group", None) is init:
                _replace(c10d, "init_process_group", wrapper)

    def _after_init(
        self, init: Callable[..., Any], get_backend: Callable[[], object]
    ) -> Callable[..., Any]:
        """``init_process_group`` (already noted as a collective), then: is it NCCL?"""
        hooks = self

        @functools.wraps(init)
        def init_process_group(*args: Any, **kwargs: Any) -> Any:
            result = init(*args, **kwargs)
            try:
                hooks._on_nccl(str(get_backend()))
            except Exception:  # a process group without a backend name: nothing to add
                pass
            return result

        return init_process_group

    def collective(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` noting its entry and exit (or, with ``async_op=True``, its start)."""
        record, hooks, training = self.record, self, self._thread
        enter, leave = record.enter, record.leave
        get_ident = threading.get_ident
        async_index = _positional_index(function, "async_op")

        @functools.wraps(function)
        def noted(*args: Any, **kwargs: Any) -> Any:
            if get_ident() != training:
                return function(*args, **kwargs)
            if kwargs.get("async_op") or (async_index is not None and len(args) > async_index
                                          and args[async_index]):  # fmt: skip
                work = function(*args, **kwargs)
                hooks._started(name, work)
                return work
            enter(name)
            try:
                return function(*args, **kwargs)
            finally:
                leave()
                hooks._device_pending = hooks._nccl

        return noted

    def _started(self, name: str, work: object) -> None:
        self.record.issue()
        self._device_pending = self._nccl
        if work is not None:
            names = self._work_names
            if len(names) >= _WORK_NAMES_MAX:
                names.clear()
            names[id(work)] = name

    def waits(self, work_class: type, future_class: type) -> None:
        """Note ``Work.wait()`` and ``Future.wait()`` on the training thread."""
        for cls in (work_class, future_class):
            original = cls.__dict__.get("wait")
            if original is not None and callable(original):
                _replace(cls, "wait", self._wait(original))

    def _wait(self, wait: Callable[..., Any]) -> Callable[..., Any]:
        record, names, training = self.record, self._work_names, self._thread
        get_ident = threading.get_ident

        @functools.wraps(wait)
        def noted_wait(self: object, *args: Any, **kwargs: Any) -> Any:
            # Inside a collective already (every synchronous one waits on its Work), or
            # another thread's: torch's own, at once.
            if record._depth or get_ident() != training:
                return wait(self, *args, **kwargs)
            record.wait(names.pop(id(self), "wait"))
            try:
                return wait(self, *args, **kwargs)
            finally:
                record.leave()

        return noted_wait

    def reducer(self, reducer_class: type) -> None:
        """Note DDP's bucket rebuild: a broadcast in C++, once, in its second forward.

        DDP calls it in every forward; it returns whether it rebuilt (and so broadcast).
        The rank is inside while it runs, and it counts as a collective only if it did.
        """
        original = reducer_class.__dict__.get("_rebuild_buckets")
        if original is None or not callable(original):
            return
        record, training = self.record, self._thread
        get_ident = threading.get_ident
        done: weakref.WeakSet[object] = weakref.WeakSet()  # rebuilt: no broadcast again

        @functools.wraps(original)
        def rebuild_buckets(reducer: object, *args: Any, **kwargs: Any) -> Any:
            if reducer in done or get_ident() != training:
                return original(reducer, *args, **kwargs)
            record.wait("rebuild_buckets")
            try:
                rebuilt = original(reducer, *args, **kwargs)
            finally:
                record.leave()
            if rebuilt:
                record.issue()
                try:
                    done.add(reducer)
                except TypeError:  # a reducer without weak references: noted each time
                    pass
            return rebuilt

        _replace(reducer_class, "_rebuild_buckets", rebuild_buckets)

    # -- DDP's gradient all-reduce --------------------------------------------------

    def ddp(self, ddp_class: type, engine: Any) -> None:
        """See a rank wait in DDP's gradient all-reduce, which runs and waits in C++.

        On a DDP model's first forward, a post-accumulate-grad hook goes on a few of its
        parameters (:data:`_DDP_WATCHED`). In a backward that synchronizes gradients,
        the first of them to fire queues a callback, which the autograd engine runs once
        every gradient is computed, before DDP's reducer (whose own callback is queued
        when its last bucket is ready, later) waits for the all-reduces; that callback
        queues another, which runs after the reducer's. Between the two, the rank waits
        for its peers. Nothing changes what DDP computes, and DDP's comm hooks stay free.
        """
        forward = ddp_class.__dict__.get("forward")
        if forward is None or not callable(forward):
            return
        hooks, syncs = self, weakref.WeakKeyDictionary[Any, _DDPSync]()

        @functools.wraps(forward)
        def ddp_forward(module: Any, *args: Any, **kwargs: Any) -> Any:
            sync = syncs.get(module)
            if sync is None:
                sync = syncs[module] = _DDPSync(hooks.record, module, engine)
            sync.reset()
            return forward(module, *args, **kwargs)

        _replace(ddp_class, "forward", ddp_forward)

    # -- evaluation -----------------------------------------------------------------

    def evaluation(self, module_class: type) -> None:
        """``model.eval()`` opens an evaluation; each forward of that model is a sign of life."""
        original = module_class.__dict__.get("train")
        if original is None or not callable(original):
            return
        hooks = self

        @functools.wraps(original)
        def train(module: Any, mode: bool = True) -> Any:
            if hooks._eval_depth or threading.get_ident() != hooks._thread:
                return original(module, mode)
            hooks._eval_depth += 1
            try:
                result = original(module, mode)
            finally:
                hooks._eval_depth -= 1
            hooks._evaluating(module, bool(mode) is False)
            return result

        _replace(module_class, "train", train)

    def _evaluating(self, module: Any, evaluating: bool) -> None:
        if evaluating:
            if not self._eval_hooks:
                self.phases.push(EVALUATION)
            for target in (module, getattr(module, "module", None)):
                if target is not None and id(target) not in self._eval_hooks:
                    handle = target.register_forward_pre_hook(self._forward_seen)
                    self._eval_hooks[id(target)] = [handle]
            return
        self.end_evaluation()

    def _forward_seen(self, module: object, args: object) -> None:
        self.record.phase_activity()

    def end_evaluation(self) -> None:
        for handles in self._eval_hooks.values():
            for handle in handles:
                handle.remove()
        self._eval_hooks.clear()
        self.phases.pop_kind(EVALUATION)

    # -- checkpoints ----------------------------------------------------------------

    def checkpoints(self, module: types.ModuleType) -> None:
        """Wrap the checkpoint functions ``module`` has (see :data:`CHECKPOINT_FUNCTIONS`)."""
        for name in CHECKPOINT_FUNCTIONS.get(module.__name__, ()):
            original = getattr(module, name, None)
            if callable(original):
                setattr(module, name, self._checkpoint(original, asynchronous=False))
        for name in _ASYNC_CHECKPOINT.get(module.__name__, ()):
            original = getattr(module, name, None)
            if callable(original):
                setattr(module, name, self._checkpoint(original, asynchronous=True))

    def _checkpoint(self, function: Callable[..., Any], asynchronous: bool) -> Callable[..., Any]:
        hooks = self

        @functools.wraps(function)
        def in_checkpoint(*args: Any, **kwargs: Any) -> Any:
            if hooks._checkpoint_depth or threading.get_ident() != hooks._thread:
                return function(*args, **kwargs)
            with hooks._checkpoint_phase():
                result = function(*args, **kwargs)
            if asynchronous:
                hooks._until_done(result)
            return result

        return in_checkpoint

    @contextmanager
    def _checkpoint_phase(self) -> Iterator[None]:
        self._checkpoint_depth += 1
        phase = self.phases.push(CHECKPOINT)
        try:
            yield
        finally:
            self._checkpoint_depth -= 1
            self.phases.pop(phase)

    def _until_done(self, result: Any) -> None:
        """An ``async_save`` goes on in the background: its checkpoint phase ends with it."""
        future = getattr(result, "upload_completion", result)  # AsyncSaveResponse, or a Future
        add_done_callback = getattr(future, "add_done_callback", None)
        done = getattr(future, "done", None)
        if not callable(add_done_callback) or (callable(done) and done()):
            return
        phase = self.phases.push(CHECKPOINT)
        add_done_callback(lambda _future: self.phases.pop(phase))

    # -- NCCL: host waits for the device --------------------------------------------

    def _on_nccl(self, backend: str) -> None:
        if "nccl" not in backend.lower() or self._nccl:
            return
        self._nccl = True
        try:
            self.device_waits(__import__("torch"))
        except Exception:  # a CUDA build without what we expect: counts still tell
            pass

    def device_waits(self, torch: Any) -> None:
        """Note host waits for the device while NCCL collectives may be pending."""
        cuda = torch.cuda
        for owner, name in (
            (cuda, "synchronize"),
            (cuda.Stream, "synchronize"),
            (cuda.Event, "synchronize"),
            (torch.Tensor, "item"),
        ):
            original = getattr(owner, name, None)
            if callable(original):
                setattr(owner, name, self.device_wait(original))

    def device_wait(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` noted as a wait for the device when a collective may be pending."""
        record, hooks, training = self.record, self, self._thread
        get_ident = threading.get_ident

        @functools.wraps(function)
        def noted(*args: Any, **kwargs: Any) -> Any:
            if not hooks._device_pending or get_ident() != training:
                return function(*args, **kwargs)
            record.wait("device_synchronize")
            try:
                return function(*args, **kwargs)
            finally:
                record.leave()
                hooks._device_pending = False

        return noted


# Parameters of a DDP model watched for their gradients, spread over the model, the last
# (usually the first to get its gradient) among them. The first to fire arms the wait;
# with find_unused_parameters one of several is likely used. Each costs a Python call
# per backward.
_DDP_WATCHED = 4


class _DDPSync:
    """One DDP model's gradient synchronization, as the rank's record sees it."""

    def __init__(self, record: RankRecord, module: Any, engine: Any) -> None:
        self._record = record
        self._engine = engine
        self._module = weakref.ref(module)
        self._queued = False
        self._open = False
        parameters = [p for p in module.parameters() if p.requires_grad]
        step = max(1, len(parameters) // _DDP_WATCHED)
        watched = {id(p): p for p in (*parameters[::step], *parameters[-1:])}
        for parameter in watched.values():
            parameter.register_post_accumulate_grad_hook(self._gradient)

    def reset(self) -> None:
        """A new forward: whatever the last backward left undone (it raised) is over."""
        self._queued = False
        if self._open:
            self._open = False
            self._record.leave()

    def _gradient(self, parameter: object) -> None:
        if self._queued:
            return
        module = self._module()
        if module is None or not getattr(module, "require_backward_grad_sync", False):
            return  # no_sync(): nothing is reduced in this backward
        self._queued = True
        self._engine.queue_callback(self._computed)

    def _computed(self) -> None:
        self._open = self._record.enter("ddp_all_reduce")
        self._engine.queue_callback(self._reduced)  # runs after the reducer's wait

    def _reduced(self) -> None:
        if self._open:
            self._open = False
            self._record.leave()


def _replace(owner: object, name: str, value: object) -> None:
    """Put ``value`` where torch has ``name`` (a module's function or a class's method)."""
    setattr(owner, name, value)


def _positional_index(function: Callable[..., Any], parameter: str) -> int | None:
    try:
        names = list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return None
    return names.index(parameter) if parameter in names else None
