"""What the worker bootstrap's hooks cost a training loop, with and without them in one run.

Usage: python benchmarks/bench_bootstrap.py [--calls N] [--events N] [--steps N] [--rounds N]

The hooks are the bootstrap's own, put into torch by ``_hook_torch`` as in a worker, writing
a real rank record in a temporary directory, with a real gloo process group (world size 1,
so that nothing waits for a peer). They are installed once; between rounds the benchmark
puts torch's own attributes back, or the hooks in again, so each pair of contenders runs
interleaved, round by round, on the same objects. The machine is shared and noisy: rounds
are short (milliseconds) and many, so that most run without being preempted, and the median
of the paired differences is the number to read.

1. Per optimizer step: the step post-hook called on its own (against an empty function of
   the same shape: the marginal cost), then a real ``optimizer.step()`` (SGD, one scalar
   parameter).
2. Per collective: the collective wrapper around an empty function on its own (against the
   empty function), a real gloo ``all_reduce`` of one element, and one started with
   ``async_op=True`` then waited for (``Work.wait()``).
3. Per DDP gradient sync: forward and backward of a small DDP model whose gradients are
   all-reduced in several buckets, per backward and per bucket.
4. Per evaluation forward: ``model.eval()``, then forwards of a small model.
5. A small real DDP training step on CPU: a 3-layer MLP (64-256-256-10, batch 64),
   forward, backward and ``optimizer.step()``.

Rows marked "torch alone" put in only the mechanism each hook rides on, doing nothing
(an empty step post-hook, Python wrappers that pass the call through, an empty pre-hook
on the loss's ``grad_fn`` queueing an empty engine callback, an empty forward pre-hook):
what any hook there costs, before the record is written.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch.distributed as dist
from torch.distributed import distributed_c10d
from torch.nn.parallel import DistributedDataParallel
from torch.optim.optimizer import _global_optimizer_post_hooks, register_optimizer_step_post_hook

import torch
from elastic_healthcheck._torchrun import bootstrap
from elastic_healthcheck._torchrun.hooks import Hooks
from elastic_healthcheck._torchrun.record import RankRecord, create_record, record_path

# Where _hook_torch puts the hooks: every module and class whose attributes it replaces.
HOOKED = (
    dist,
    distributed_c10d,
    dist.Work,
    torch._C.Future,
    dist.Reducer,
    DistributedDataParallel,
    torch.autograd,
    torch.nn.Module,
    torch,
)


class Switch:
    """The bootstrap's hooks, installed once, then put in and taken out of torch at will.

    Installing them replaces attributes of torch's modules and classes and adds a global
    optimizer step post-hook. The switch keeps torch's value and ours for each, so a
    contender without the hooks runs on torch exactly as it was.
    """

    def __init__(self, owners: tuple[object, ...], post_hooks: dict[int, Any]) -> None:
        self.owners = owners
        self.post_hooks = post_hooks
        self.patched: list[tuple[object, str, object, object]] = []  # owner, name, torch, ours
        self.step_hooks: dict[int, Any] = {}

    def install(self, install: Callable[[], None]) -> None:
        """Run ``install``, note what it changed, and take the hooks out again."""
        before = [dict(vars(owner)) for owner in self.owners]
        hooks_before = dict(self.post_hooks)
        install()
        for owner, was in zip(self.owners, before, strict=True):
            for name, value in vars(owner).items():
                if name in was and was[name] is not value:
                    self.patched.append((owner, name, was[name], value))
        self.step_hooks = {k: v for k, v in self.post_hooks.items() if k not in hooks_before}
        self.set(False)

    def set(self, hooked: bool) -> None:
        for owner, name, theirs, ours in self.patched:
            setattr(owner, name, ours if hooked else theirs)
        for key, hook in self.step_hooks.items():
            if hooked:
                self.post_hooks[key] = hook
            else:
                self.post_hooks.pop(key, None)

    def round(self, one_round: Callable[[int], float]) -> Callable[[int], float]:
        """``one_round`` with the hooks in torch for contender 1 only."""

        def switched(index: int) -> float:
            self.set(index == 1)
            try:
                return one_round(index)
            finally:
                self.set(False)

        return switched


class Pair:
    """Rounds of two contenders, alternating which goes first (a shared machine drifts)."""

    def __init__(self, event: str, base: str, hooked: str, relative: bool = True) -> None:
        self.event = event
        self.relative = relative  # is the added share of the base worth reading?
        self.names = (base, hooked)
        self.samples: tuple[list[float], list[float]] = ([], [])

    def measure(self, rounds: int, one_round: Callable[[int], float]) -> Pair:
        """``one_round(i)`` times contender ``i`` (0 base, 1 hooked): ns per event."""
        for number in range(rounds):
            order = (0, 1) if number % 2 == 0 else (1, 0)
            for index in order:
                self.samples[index].append(one_round(index))
        return self

    @property
    def base(self) -> float:
        return statistics.median(self.samples[0])

    @property
    def hooked(self) -> float:
        return statistics.median(self.samples[1])

    @property
    def added(self) -> float:
        """The median of the paired differences (hooked minus base, round by round)."""
        base, hooked = self.samples
        return statistics.median(b - a for a, b in zip(base, hooked, strict=True))

    def show(self, title: str, unit: str = "ns", scale: float = 1.0) -> Pair:
        base, hooked = self.samples
        print(f"\n{title}")
        print(f"  {'':46} {'median':>10} {'min':>10}")
        for name, values in zip(self.names, self.samples, strict=True):
            print(
                f"  {name:46} {statistics.median(values) / scale:10.3f} "
                f"{min(values) / scale:10.3f} {unit}"
            )
        share = 100 * self.added / self.base
        print(
            f"  {'added (median of paired differences)':46} {self.added / scale:10.3f} "
            f"{'':10} {unit} ({share:+.2f}%)"
        )
        added_min = min(hooked) - min(base)
        print(f"  {'added (min - min)':46} {'':10} {added_min / scale:10.3f} {unit}")
        return self


def loop_ns(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - start) / calls


def nothing() -> None:
    pass


def mlp(*widths: int) -> torch.nn.Sequential:
    """Linear layers of these widths with a ReLU between each two."""
    layers: list[torch.nn.Module] = []
    for inputs, outputs in zip(widths[:-1], widths[1:], strict=True):
        layers += [torch.nn.Linear(inputs, outputs), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


@contextmanager
def replaced(owner: object, name: str, value: object) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--calls", type=int, default=1_000, help="calls per round of a hook on its own"
    )
    parser.add_argument(
        "--events",
        type=int,
        default=20,
        help="optimizer steps, collectives or evaluation forwards per round",
    )
    parser.add_argument(
        "--steps", type=int, default=1, help="DDP backwards or training steps per round"
    )
    parser.add_argument("--rounds", type=int, default=1001, help="rounds per contender")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core, so the two contenders see the same machine

    with tempfile.TemporaryDirectory() as directory:
        path = record_path(directory, 0)
        create_record(path, time.time())
        record = RankRecord(path)
        record.start(os.getpid(), 0)
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        switch = Switch(HOOKED, _global_optimizer_post_hooks)
        bootstrap._record = record  # as set_up() leaves it in a worker
        switch.install(lambda: bootstrap._hook_torch(torch))
        try:
            run(switch, args)
        finally:
            switch.set(False)
            bootstrap._record = bootstrap._hooks = None
            dist.destroy_process_group()
            record.close()


def run(switch: Switch, args: argparse.Namespace) -> None:
    rounds = args.rounds
    hooks = bootstrap._hooks
    assert hooks is not None and len(switch.step_hooks) == 1
    print(
        f"torch {torch.__version__}, {rounds} rounds per contender, alternating; the hooks "
        f"replace {len(switch.patched)} attributes of torch and add "
        f"{len(switch.step_hooks)} optimizer step post-hook"
    )
    rows = [
        *per_step(switch, args),
        *per_collective(switch, hooks, args),
        *ddp_backward(switch, args),
        *per_evaluation_forward(switch, args),
        training_step(switch, args),
    ]
    print("\n| event | without | with | added (median of pairs) | added % |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        if isinstance(row, Pair):
            share = f"{100 * row.added / row.base:+.1f}%" if row.relative else ""
            print(
                f"| {row.event} | {_us(row.base)} | {_us(row.hooked)} | {_us(row.added)} "
                f"| {share} |"
            )
        else:
            event, added = row
            print(f"| {event} | | | {_us(added)} | |")


def _us(ns: float) -> str:
    return f"{ns / 1e3:.2f} us" if abs(ns) < 1e6 else f"{ns / 1e6:.3f} ms"


def per_step(switch: Switch, args: argparse.Namespace) -> list[Pair]:
    calls, events, rounds = args.calls, args.events, args.rounds
    (hook,) = switch.step_hooks.values()

    def empty_hook(optimizer: object, args: object, kwargs: object) -> None:
        pass

    hooks = (lambda: empty_hook(None, (), {}), lambda: hook(None, (), {}))
    alone = (
        Pair(
            "step post-hook on its own",
            "empty function (optimizer, args, kwargs)",
            "step hook",
            relative=False,
        )
        .measure(rounds, lambda index: loop_ns(hooks[index], calls))
        .show(f"optimizer step post-hook, called on its own ({calls} calls per round)")
    )
    parameter = torch.nn.Parameter(torch.ones(()))
    parameter.grad = torch.ones(())
    optimizer = torch.optim.SGD([parameter], lr=1e-9)
    step = (
        Pair("`optimizer.step()`, SGD on one scalar", "without the hooks", "with the hooks")
        .measure(rounds, switch.round(lambda index: loop_ns(optimizer.step, events)))
        .show(f"optimizer.step(), SGD on one scalar parameter ({events} steps per round)")
    )

    def empty_post_hook(index: int) -> float:
        handle = register_optimizer_step_post_hook(empty_hook) if index else None
        try:
            return loop_ns(optimizer.step, events)
        finally:
            if handle is not None:
                handle.remove()

    mechanism = (
        Pair("... torch alone: an empty step post-hook", "no post-hook", "an empty post-hook")
        .measure(rounds, empty_post_hook)
        .show(f"optimizer.step(), torch alone, an empty post-hook ({events} steps per round)")
    )
    return [alone, step, mechanism]


def per_collective(switch: Switch, hooks: Hooks, args: argparse.Namespace) -> list[Pair]:
    calls, events, rounds = args.calls, args.events, args.rounds
    collectives = (nothing, hooks.collective("all_reduce", nothing))
    alone = (
        Pair(
            "collective wrapper on its own",
            "empty function",
            "wrapped (enter, call, leave)",
            relative=False,
        )
        .measure(rounds, lambda index: loop_ns(collectives[index], calls))
        .show(f"collective wrapper around an empty function ({calls} calls per round)")
    )
    tensor = torch.ones(1)

    def all_reduce() -> None:
        dist.all_reduce(tensor)  # looked up at each call: the switch replaces it

    def all_reduce_async() -> None:
        work = dist.all_reduce(tensor, async_op=True)
        assert work is not None
        work.wait()

    sync = (
        Pair("gloo `all_reduce`, one element", "without the hooks", "with the hooks")
        .measure(rounds, switch.round(lambda index: loop_ns(all_reduce, events)))
        .show(f"gloo all_reduce of one element, world size 1 ({events} per round)")
    )
    asynchronous = (
        Pair("`all_reduce(async_op=True)`, `wait()`", "without the hooks", "with the hooks")
        .measure(rounds, switch.round(lambda index: loop_ns(all_reduce_async, events)))
        .show(f"gloo all_reduce(async_op=True), then work.wait() ({events} per round)")
    )
    original_all_reduce, original_wait = dist.all_reduce, dist.Work.wait

    @functools.wraps(original_all_reduce)
    def passed_all_reduce(*args: Any, **kwargs: Any) -> Any:
        return original_all_reduce(*args, **kwargs)

    def passed_wait(work: Any, *args: Any, **kwargs: Any) -> Any:
        return original_wait(work, *args, **kwargs)

    def passed_through(index: int) -> float:
        if not index:
            return loop_ns(all_reduce, events)
        with replaced(dist, "all_reduce", passed_all_reduce):
            with replaced(dist.Work, "wait", passed_wait):
                return loop_ns(all_reduce, events)

    mechanism = (
        Pair("... torch alone: two pass-through wrappers", "torch's own", "passed through")
        .measure(rounds, passed_through)
        .show(
            f"gloo all_reduce, torch alone, all_reduce and Work.wait passed through "
            f"({events} per round)"
        )
    )
    return [alone, sync, asynchronous, mechanism]


def ddp_backward(switch: Switch, args: argparse.Namespace) -> list[Pair | tuple[str, float]]:
    """DDP's gradient sync: forward (which arms the hook) and backward, per backward."""
    steps, rounds = args.steps, args.rounds
    torch.manual_seed(0)
    # Each 64x64 weight is 16 KiB: with a 10 KiB cap, every layer is a bucket of its own.
    model = DistributedDataParallel(mlp(*[64] * 9), bucket_cap_mb=0.01)
    inputs = torch.randn(64, 64)
    for _ in range(3):  # warm up; DDP rebuilds its buckets in the second forward
        model(inputs).sum().backward()
    buckets = len(model.reducer._get_zeros_like_grad_buckets())

    def sync() -> None:
        model(inputs).sum().backward()

    title = f"DDP forward + backward, MLP 8 x 64-64, batch 64, {buckets} buckets"
    pair = (
        Pair("DDP forward + backward (one gradient sync)", "without the hooks", "with the hooks")
        .measure(rounds, switch.round(lambda index: loop_ns(sync, steps)))
        .show(f"{title} ({steps} per round)", unit="us", scale=1e3)
    )
    print(f"  {'added per bucket':46} {pair.added / buckets / 1e3:10.3f} {'':10} us")
    engine = torch.autograd.Variable._execution_engine

    def queue(*_: object) -> None:
        engine.queue_callback(nothing)

    def sync_with_empty_hook() -> None:
        loss = model(inputs).sum()
        assert loss.grad_fn is not None
        handle = loss.grad_fn.register_prehook(queue)
        try:
            loss.backward()
        finally:
            handle.remove()

    contenders = (sync, sync_with_empty_hook)
    mechanism = (
        Pair("... torch alone: an empty grad_fn pre-hook", "no hook", "an empty pre-hook")
        .measure(rounds, lambda index: loop_ns(contenders[index], steps))
        .show(
            f"{title}, torch alone, an empty pre-hook on the loss's grad_fn that queues an "
            f"empty callback ({steps} per round)",
            unit="us",
            scale=1e3,
        )
    )
    return [pair, (f"... per bucket ({buckets} buckets)", pair.added / buckets), mechanism]


def per_evaluation_forward(switch: Switch, args: argparse.Namespace) -> list[Pair]:
    """Forwards of a model after ``model.eval()`` (the hook is on that model)."""
    events, rounds = args.events, args.rounds
    torch.manual_seed(0)
    model = mlp(64, 64, 10)
    inputs = torch.randn(8, 64)

    def forwards(index: int) -> float:
        model.eval()  # with the hooks: opens the evaluation, hooks the model's forward
        try:
            with torch.no_grad():
                return loop_ns(lambda: model(inputs), events)
        finally:
            model.train()  # with the hooks: ends it, unhooks the forward

    title = f"evaluation forward after model.eval(), MLP 64-64-10, batch 8 ({events} per round)"
    pair = (
        Pair("evaluation forward, MLP 64-64-10", "without the hooks", "with the hooks")
        .measure(rounds, switch.round(forwards))
        .show(title)
    )

    def empty_pre_hook(module: object, args: object) -> None:
        pass

    def forwards_with_empty_hook(index: int) -> float:
        handle = model.register_forward_pre_hook(empty_pre_hook) if index else None
        try:
            return forwards(index)
        finally:
            if handle is not None:
                handle.remove()

    mechanism = (
        Pair("... torch alone: an empty forward pre-hook", "no hook", "an empty pre-hook")
        .measure(rounds, forwards_with_empty_hook)
        .show(f"{title}, torch alone, an empty forward pre-hook")
    )
    return [pair, mechanism]


def training_step(switch: Switch, args: argparse.Namespace) -> Pair:
    steps, rounds = args.steps, args.rounds
    torch.manual_seed(0)
    model = DistributedDataParallel(mlp(64, 256, 256, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    inputs, targets = torch.randn(64, 64), torch.randint(0, 10, (64,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad()
        loss_fn(model(inputs), targets).backward()
        optimizer.step()

    for _ in range(3):  # warm up; DDP rebuilds its buckets in the second forward
        step()
    title = f"DDP training step: MLP 64-256-256-10, batch 64, {steps} steps per round"
    return (
        Pair("DDP training step, MLP 64-256-256-10", "without the hooks", "with the hooks")
        .measure(rounds, switch.round(lambda index: loop_ns(step, steps)))
        .show(title, unit="ms/step", scale=1e6)
    )


if __name__ == "__main__":
    main()
