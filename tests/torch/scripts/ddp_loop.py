"""The loop most people run, as they write it: DDP, a DataLoader, evaluation, checkpoints.

A plain ``dist.init_process_group("gloo")`` (env://, torch's defaults), a small model in
DistributedDataParallel, a DataLoader with a worker process, SGD; every EVAL_EVERY steps an
evaluation, every SAVE_EVERY steps a checkpoint. It never imports elastic_healthcheck.
Knobs (RANK_X means "global rank X"; everything optional):

STEPS=N (default 30)            STEP_SECONDS=S (sleep per step, default 0.05)
HANG_RANK=X HANG_STEP=N HANG_WHERE=forward|backward|loader|stop
                                rank X blocks forever there at step N (first attempt only);
                                stop: it stops itself with SIGSTOP, as a frozen process
CRASH_RANK=X CRASH_STEP=N       rank X exits with status 3 at step N (first attempt only)
LOAD_RANK=X LOAD_SECONDS=S [LOAD_ATTEMPT=A]
                                rank X loads data for S s before its first step (on attempt
                                A only, if given)
EVAL_EVERY=N EVAL_SECONDS=S EVAL_WHO=all|rank0|cycle EVAL_COLLECTIVE=1
                                evaluate for S s: forwards under model.eval() on every rank,
                                or on rank 0 alone while the others wait in barrier();
                                with EVAL_COLLECTIVE=1, all_reduce the evaluation loss;
                                cycle: all, rank0, all with the all_reduce, in turn
SAVE_EVERY=N SAVE_SECONDS=S SAVE_HOW=torch|dcp|cycle
                                rank 0 torch.save()s (others wait in barrier), or every rank
                                dcp.save()s, to storage that takes S s; cycle: in turn
PARAMS_OUT=PATH                 rank 0 saves the final parameters there
STUCK_SAVE_STEP=N               at step N, rank 0's torch.save never returns
FSDP=1                          the model in fully_shard (FSDP2) instead of DDP
Prints "HANG <epoch seconds>" when it hangs, "STEPPING <t> attempt=A" after its first
step, "EVAL <start> <end>" and "SAVE <start> <end>" around each phase, "DONE rank=R".
"""

import os
import signal
import sys
import tempfile
import time
from typing import Any

import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

import torch

rank_env = int(os.environ["RANK"])
attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def knob(name, default=None, kind=int):
    value = os.environ.get(name)
    return kind(value) if value is not None else default


def hang_here(where, step):
    return (
        knob("HANG_RANK") == rank_env
        and knob("HANG_STEP") == step
        and os.environ.get("HANG_WHERE", "forward") == where
        and attempt == 0
    )


def stuck_forever():
    print(f"HANG {time.time()}", flush=True)
    if os.environ.get("HANG_WHERE") == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    while True:
        time.sleep(1)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(8, 16),
            torch.nn.BatchNorm1d(16),
            torch.nn.ReLU(),
            torch.nn.Linear(16, 1),
        )
        self.step = 0

    def forward(self, x):
        if self.training and hang_here("forward", self.step):
            stuck_forever()
        out = self.body(x)
        if self.training and os.environ.get("HANG_WHERE") == "backward":
            out = StuckInBackward.apply(out, self.step)
        return out


class StuckInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, step):
        ctx.step = step
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        if hang_here("backward", ctx.step):
            stuck_forever()
        return grad, None


class Samples(TensorDataset):
    """Rank HANG_RANK's DataLoader worker never returns the batch of step HANG_STEP."""

    def __getitem__(self, index):
        if hang_here("loader", index // 4):
            stuck_forever()
        return super().__getitem__(index)


class SlowFile:
    """A checkpoint file on storage that takes ``seconds`` to write (None: forever)."""

    def __init__(self, path, seconds):
        self._file = open(path, "wb")
        self._delay = seconds

    def write(self, data):
        if self._delay is None:
            stuck_forever()
        time.sleep(self._delay)
        self._delay = 0.0
        return self._file.write(data)

    def flush(self):
        self._file.flush()

    def close(self):
        self._file.close()


SAVES: list[str] = []
EVALS: list[str] = []


def save(model, step, seconds):
    start = time.time()
    how = os.environ.get("SAVE_HOW", "torch")
    if how == "cycle":
        how = ("torch", "dcp")[len(SAVES) % 2]
    SAVES.append(how)
    directory = os.path.join(tempfile.gettempdir(), f"ddp-loop-{os.getppid()}")
    os.makedirs(directory, exist_ok=True)
    if how == "dcp":
        import torch.distributed.checkpoint as dcp

        class SlowWriter(dcp.FileSystemWriter):
            def write_data(self, plan, planner):
                time.sleep(seconds)
                return super().write_data(plan, planner)

        dcp.save({"model": model.state_dict()}, storage_writer=SlowWriter(f"{directory}/{step}"))
    elif rank_env == 0:
        stuck = knob("STUCK_SAVE_STEP") == step
        target: Any = SlowFile(f"{directory}/{step}.pt", None if stuck else seconds)
        torch.save(model.state_dict(), target)
        target.close()
    if how != "dcp":
        dist.barrier()
    print(f"SAVE {start} {time.time()}", flush=True)


def evaluate(model, seconds):
    start = time.time()
    who = os.environ.get("EVAL_WHO", "all")
    collective = os.environ.get("EVAL_COLLECTIVE") == "1"
    if who == "cycle":
        who, collective = (("all", False), ("rank0", False), ("all", True))[len(EVALS) % 3]
    EVALS.append(who)
    net = model.module if hasattr(model, "module") else model
    if who == "all" or rank_env == 0:
        model.eval()
        with torch.no_grad():
            total = torch.zeros(1)
            while time.time() - start < seconds:
                total += net(torch.randn(4, 8)).sum()
                time.sleep(0.2)
            if collective and who == "all":
                dist.all_reduce(total)
        model.train()
    if who != "all":
        dist.barrier()
    print(f"EVAL {start} {time.time()}", flush=True)


def main():
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    net: Any = Net()
    model: Any
    if os.environ.get("FSDP") == "1":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        for layer in net:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        model = fully_shard(net, mesh=mesh)
    else:
        model = torch.nn.parallel.DistributedDataParallel(net)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    data = Samples(torch.randn(4096, 8), torch.randn(4096, 1))
    loader = DataLoader(data, batch_size=4, num_workers=1)
    if knob("LOAD_RANK") == rank_env and knob("LOAD_ATTEMPT", attempt) == attempt:
        if knob("LOAD_ATTEMPT") is not None:
            print(f"HANG {time.time()}", flush=True)
        time.sleep(knob("LOAD_SECONDS", 5.0, float))
    steps = knob("STEPS", 30)
    batches = iter(loader)
    for step in range(steps):
        x, y = next(batches)
        if knob("CRASH_RANK") == rank_env and knob("CRASH_STEP") == step and attempt == 0:
            sys.exit(3)
        if hang_here("stop", step):
            stuck_forever()
        if getattr(model, "module", None) is not None:
            model.module.step = step
        elif os.environ.get("FSDP") == "1" and hang_here("forward", step):
            stuck_forever()
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 0:
            print(f"STEPPING {time.time()} attempt={attempt}", flush=True)
        every = knob("EVAL_EVERY")
        if every and step % every == every - 1:
            evaluate(model, knob("EVAL_SECONDS", 1.0, float))
        every = knob("SAVE_EVERY")
        if every and step % every == every - 1 or knob("STUCK_SAVE_STEP") == step:
            save(model, step, knob("SAVE_SECONDS", 1.0, float))
        time.sleep(knob("STEP_SECONDS", 0.05, float))
    if os.environ.get("PARAMS_OUT") and rank_env == 0:
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()},
                   os.environ["PARAMS_OUT"])  # fmt: skip
    dist.destroy_process_group()
    print(f"DONE rank={rank_env} attempt={attempt}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
