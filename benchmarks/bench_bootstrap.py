"""What the worker bootstrap's hooks cost a training loop, with and without them in one run.

Usage: python benchmarks/bench_bootstrap.py [--calls N] [--steps N] [--rounds N]

The hooks are the bootstrap's own (``_hook_optimizer``, ``_note_collective``) writing a real
rank record in a temporary directory. Each contender pair runs interleaved, round by round,
and the median round is reported, because the machine is shared and noisy.

1. Per event: the optimizer step hook and the collective wrapper called on their own
   (against an empty function of the same shape: the marginal cost), then a real
   ``optimizer.step()`` (SGD, one scalar parameter) and a real gloo ``all_reduce`` of one
   element (world size 1), without and with the hook.
2. A small real training loop on CPU: a 3-layer MLP (64-256-256-10, batch 64), forward,
   backward, ``optimizer.step()`` and one ``all_reduce`` of the loss per step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch.distributed as dist
from torch.optim.optimizer import _global_optimizer_post_hooks

import torch
from elastic_healthcheck._torchrun.bootstrap import _hook_optimizer, _note_collective
from elastic_healthcheck._torchrun.record import RankRecord, create_record, record_path


class Pair:
    """Rounds of two contenders, alternating which goes first (a shared machine drifts)."""

    def __init__(self, base: str, hooked: str) -> None:
        self.names = (base, hooked)
        self.samples: tuple[list[float], list[float]] = ([], [])

    def measure(self, rounds: int, one_round: Callable[[int], float]) -> Pair:
        """``one_round(i)`` times contender ``i`` (0 base, 1 hooked): ns per event."""
        for number in range(rounds):
            order = (0, 1) if number % 2 == 0 else (1, 0)
            for index in order:
                self.samples[index].append(one_round(index))
        return self

    def show(self, title: str, unit: str = "ns", scale: float = 1.0) -> None:
        base, hooked = self.samples
        diffs = [b - a for a, b in zip(base, hooked, strict=True)]
        print(f"\n{title}")
        print(f"  {'':46} {'median':>10} {'min':>10}")
        for name, values in zip(self.names, self.samples, strict=True):
            print(
                f"  {name:46} {statistics.median(values) / scale:10.3f} "
                f"{min(values) / scale:10.3f} {unit}"
            )
        added = statistics.median(diffs)
        share = 100 * added / statistics.median(base)
        print(
            f"  {'added (median of paired differences)':46} {added / scale:10.3f} "
            f"{'':10} {unit} ({share:+.2f}%)"
        )
        added_min = min(hooked) - min(base)
        print(f"  {'added (min - min)':46} {'':10} {added_min / scale:10.3f} {unit}")


def loop_ns(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="calls per round, per event")
    parser.add_argument("--steps", type=int, default=100, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=21, help="rounds per contender")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core, so the two contenders see the same machine

    with tempfile.TemporaryDirectory() as directory:
        path = record_path(directory, 0)
        create_record(path, time.time())
        record = RankRecord(path)
        record.start(os.getpid(), 0)
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        try:
            run(record, args)
        finally:
            dist.destroy_process_group()
            record.close()


def run(record: RankRecord, args: argparse.Namespace) -> None:
    calls, rounds = args.calls, args.rounds
    print(f"torch {torch.__version__}, {rounds} rounds per contender, alternating")

    # The hook alone, against an empty function of its shape.
    handle = _hook_optimizer(record)
    hook = next(reversed(_global_optimizer_post_hooks.values()))
    handle.remove()

    def empty_hook(optimizer: object, args: object, kwargs: object) -> None:
        pass

    hooks = (lambda: empty_hook(None, (), {}), lambda: hook(None, (), {}))
    Pair("empty function (optimizer, args, kwargs)", "the bootstrap's step hook").measure(
        rounds, lambda index: loop_ns(hooks[index], calls)
    ).show(f"optimizer step hook, called on its own ({calls} calls per round)")

    parameter = torch.nn.Parameter(torch.ones(()))
    parameter.grad = torch.ones(())
    optimizer = torch.optim.SGD([parameter], lr=1e-9)
    step_calls = max(1, calls // 10)

    def steps(index: int) -> float:
        handle = _hook_optimizer(record) if index else None
        try:
            return loop_ns(optimizer.step, step_calls)
        finally:
            if handle is not None:
                handle.remove()

    Pair("optimizer.step(), no hook", "optimizer.step(), with the hook").measure(
        rounds, steps
    ).show(f"optimizer.step(), SGD on one scalar parameter ({step_calls} steps per round)")

    def nothing() -> None:
        pass

    collectives = (nothing, _note_collective(record, "all_reduce", nothing))
    Pair("empty function", "wrapped (enter, call, leave)").measure(
        rounds, lambda index: loop_ns(collectives[index], calls)
    ).show(f"collective wrapper around an empty function ({calls} calls per round)")

    original = dist.all_reduce
    tensor = torch.ones(1)
    reduces = (
        lambda: original(tensor),
        lambda: wrapped(tensor),
    )
    wrapped = _note_collective(record, "all_reduce", original)
    Pair("dist.all_reduce", "wrapped").measure(
        rounds, lambda index: loop_ns(reduces[index], step_calls)
    ).show(f"gloo all_reduce of one element, world size 1 ({step_calls} per round)")

    train(record, args.steps, rounds).show(
        f"training loop: MLP 64-256-256-10, batch 64, {args.steps} steps per round",
        unit="ms/step",
        scale=1e6,
    )


def train(record: RankRecord, steps: int, rounds: int) -> Pair:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 10),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    inputs, targets = torch.randn(64, 64), torch.randint(0, 10, (64,))
    loss_fn = torch.nn.CrossEntropyLoss()
    reduces = (dist.all_reduce, _note_collective(record, "all_reduce", dist.all_reduce))

    def loop(index: int) -> float:
        all_reduce = reduces[index]
        handle = _hook_optimizer(record) if index else None
        start = time.perf_counter_ns()
        for _ in range(steps):
            optimizer.zero_grad()
            loss = loss_fn(model(inputs), targets)
            loss.backward()
            optimizer.step()
            all_reduce(loss.detach())
        elapsed = time.perf_counter_ns() - start
        if handle is not None:
            handle.remove()
        return elapsed / steps

    loop(0)  # warm up
    return Pair("without the hooks", "with the hooks").measure(rounds, loop)


if __name__ == "__main__":
    main()
