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
waits in DDP's gradient all-reduce (C++)    ``torch.autograd.backward``: a callback the
                                            autograd engine runs once the gradients are
                                            computed, before DDP's reducer waits
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
        self._ddp_sync_pending = False
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
            if get_ident() != training:
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

        @functools.wraps(original)
        def rebuild_buckets(reducer: object, *args: Any, **kwargs: Any) -> Any:
            if get_ident() != training:
                return original(reducer, *args, **kwargs)
            record.wait("rebuild_buckets")
            try:
                rebuilt = original(reducer, *args, **kwargs)
            finally:
                record.leave()
            if rebuilt:
                record.issue()
            return rebuilt

        _replace(reducer_class, "_rebuild_buckets", rebuild_buckets)

    # -- DDP's gradient all-reduce --------------------------------------------------

    def ddp(
        self,
        ddp_class: type,
        autograd: types.ModuleType,
        engine: Any,
        grad_enabled: Callable[[], bool],
    ) -> None:
        """See a rank wait in DDP's gradient all-reduce, which runs and waits in C++.

        A DDP forward that will synchronize gradients arms the next backward: a pre-hook
        on its root queues a callback that the autograd engine runs once every gradient
        is computed, just before DDP's reducer (whose own callback is queued later, when
        its last bucket is ready) waits for the all-reduces. From that callback until
        ``backward`` returns, the rank waits for its peers.
        """
        forward = ddp_class.__dict__.get("forward")
        backward = getattr(autograd, "backward", None)
        if forward is None or not callable(backward):
            return
        hooks = self

        @functools.wraps(forward)
        def ddp_forward(module: Any, *args: Any, **kwargs: Any) -> Any:
            result = forward(module, *args, **kwargs)
            if getattr(module, "require_backward_grad_sync", False) and grad_enabled():
                hooks._ddp_sync_pending = True
            return result

        _replace(ddp_class, "forward", ddp_forward)
        _replace(autograd, "backward", self._backward(backward, engine))

    def _backward(self, backward: Callable[..., Any], engine: Any) -> Callable[..., Any]:
        record, hooks, training = self.record, self, self._thread
        get_ident = threading.get_ident

        @functools.wraps(backward)
        def noted_backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
            if not hooks._ddp_sync_pending or get_ident() != training:
                return backward(tensors, *args, **kwargs)
            hooks._ddp_sync_pending = False
            entered = [False]

            def computed() -> None:
                entered[0] = record.enter("ddp_all_reduce")

            handle = _on_backward_start(tensors, lambda: engine.queue_callback(computed))
            try:
                return backward(tensors, *args, **kwargs)
            finally:
                if handle is not None:
                    handle.remove()
                if entered[0]:
                    record.leave()

        return noted_backward

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


def _replace(owner: object, name: str, value: object) -> None:
    """Put ``value`` where torch has ``name`` (a module's function or a class's method)."""
    setattr(owner, name, value)


def _positional_index(function: Callable[..., Any], parameter: str) -> int | None:
    try:
        names = list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return None
    return names.index(parameter) if parameter in names else None


def _on_backward_start(tensors: Any, call: Callable[[], None]) -> Any:
    """Run ``call`` when the engine starts on the first root of ``tensors`` (its handle)."""
    root = tensors
    if isinstance(root, (tuple, list)):
        root = root[0] if root else None
    grad_fn = getattr(root, "grad_fn", None)
    if grad_fn is None:
        return None

    def started(*_: Any) -> None:
        call()

    try:
        return grad_fn.register_prehook(started)
    except Exception:
        return None
