"""A real (tiny) data-parallel training loop for torchrun: gloo, a Linear model, SGD.

Each step: forward, backward, an all_reduce of the gradients (a Python-level
torch.distributed collective, as a hand-rolled data-parallel loop does), optimizer.step().
Progress is reported by nothing but optimizer.step(), as in a user's script. Knobs, all
optional (RANK_X means "local rank X"):

STEPS=N            steps to run (default 40); STEP_SECONDS=S sleep per step (default 0.05)
LOAD_RANK=X LOAD_SECONDS=S   rank X "loads data" for S seconds before its first step
NEVER_START_RANK=X           rank X blocks forever before its first step
HANG_RANK=X HANG_STEP=N      rank X blocks forever in compute at step N (first attempt
                             only with HANG_ATTEMPTS=first; on every attempt by default)
CRASH_RANK=X CRASH_STEP=N       rank X exits with status 3 at step N of the first attempt
Prints "HANG <epoch seconds>" on stdout when it hangs, "STEPPING <epoch seconds>" once its
first step has completed (on every attempt), "DONE" when it finishes.
"""

import os
import sys
import time

import torch.distributed as dist

import torch

rank = int(os.environ["LOCAL_RANK"])
attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
steps = int(os.environ.get("STEPS", "40"))
pause = float(os.environ.get("STEP_SECONDS", "0.05"))


def knob(name):
    value = os.environ.get(name)
    return int(value) if value is not None else None


def stuck_in_compute():
    """Where a hung rank sits: a long computation that never ends."""
    print(f"HANG {time.time()}", flush=True)
    while True:
        time.sleep(1)


def loading_data(seconds):
    time.sleep(seconds)


dist.init_process_group("gloo")  # env://, as users write it
torch.manual_seed(0)
model = torch.nn.Linear(8, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
data = torch.randn(16, 8)

if knob("NEVER_START_RANK") == rank:
    print(f"HANG {time.time()}", flush=True)
    while True:
        time.sleep(1)
if knob("LOAD_RANK") == rank:
    loading_data(float(os.environ.get("LOAD_SECONDS", "5")))

hang_first_only = os.environ.get("HANG_ATTEMPTS") == "first"
for step in range(steps):
    if step == 1:
        print(f"STEPPING {time.time()} attempt={attempt}", flush=True)
    if knob("CRASH_RANK") == rank and step == knob("CRASH_STEP") and attempt == 0:
        sys.exit(3)  # a plain failure on the first attempt, for comparison
    if knob("HANG_RANK") == rank and step == knob("HANG_STEP"):
        if not hang_first_only or attempt == 0:
            stuck_in_compute()
    loss = model(data).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    for parameter in model.parameters():
        dist.all_reduce(parameter.grad)
    optimizer.step()
    time.sleep(pause)

dist.destroy_process_group()
print(f"DONE rank={rank} attempt={attempt}", flush=True)
sys.exit(0)
