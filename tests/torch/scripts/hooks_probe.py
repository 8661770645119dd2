"""Runs one scenario with the bootstrap's hooks in torch, printing the record as it goes.

Usage: python hooks_probe.py SCENARIO RECORD_DIR. A world of one gloo rank (no peers to
wait for), so that each hook's effect on the record is seen deterministically. Prints one
JSON line per snapshot: {"label": ..., <the record's fields>}.
"""

import json
import os
import sys
import threading
import time
from typing import Any

from elastic_healthcheck._torchrun import bootstrap
from elastic_healthcheck._torchrun.record import RankRecord, create_record, read_record, record_path


def show(label, directory):
    snapshot = read_record(record_path(directory, 0))
    assert snapshot is not None
    fields = {name: getattr(snapshot, name) for name in snapshot.__slots__}
    print(json.dumps({"label": label, **fields}), flush=True)


def main():
    scenario, directory = sys.argv[1], sys.argv[2]
    create_record(record_path(directory, 0), time.time())
    bootstrap._record = RankRecord(record_path(directory, 0))
    import torch.distributed as dist

    import torch  # the hooks go in now, as the bootstrap's import hook would put them

    bootstrap._hook_torch(torch)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["PROBE_PORT"])
    dist.init_process_group("gloo", rank=0, world_size=1)
    show("initialized", directory)
    SCENARIOS[scenario](torch, dist, directory)
    dist.destroy_process_group()


def collectives(torch, dist, directory):
    tensor = torch.ones(4)
    dist.all_reduce(tensor)
    show("after all_reduce", directory)
    work = dist.all_reduce(tensor, async_op=True)
    show("after an async all_reduce", directory)
    original = torch._C._distributed_c10d.Work.wait

    def wait_and_show(self, *args, **kwargs):
        show("inside its wait", directory)
        return original(self, *args, **kwargs)

    # The show() goes in under a second layer of the bootstrap's own wrapper, as torch's
    # own wait is under the first.
    torch._C._distributed_c10d.Work.wait = wait_and_show
    hooks = bootstrap._hooks
    assert hooks is not None
    hooks.waits(torch._C._distributed_c10d.Work, torch._C.Future)
    work.wait()
    torch._C._distributed_c10d.Work.wait = original
    show("after its wait", directory)
    thread = threading.Thread(target=dist.all_reduce, args=(torch.ones(4),))
    thread.start()
    thread.join()
    show("after an all_reduce on another thread", directory)


def evaluation(torch, dist, directory):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.eval()
    show("after model.eval()", directory)
    with torch.no_grad():
        model(torch.ones(2, 4))
        model(torch.ones(2, 4))
    show("after two forwards", directory)
    model.train()
    show("after model.train()", directory)
    model.eval()
    model(torch.ones(2, 4)).sum()
    model.train()
    model(torch.ones(2, 4)).sum().backward()
    model.eval()  # a GAN's frozen part, say: the next step ends the evaluation
    optimizer.step()
    show("after an optimizer step", directory)


def checkpoints(torch, dist, directory):
    import io

    import torch.distributed.checkpoint as dcp

    class Watching(io.BytesIO):
        def write(self, data):
            if not getattr(self, "seen", False):
                self.seen = True
                show("inside torch.save", directory)
            return super().write(data)

    torch.save({"x": torch.ones(2)}, Watching())
    show("after torch.save", directory)
    state = {"x": torch.ones(2)}
    dcp.save(state, checkpoint_id=os.path.join(directory, "dcp"))
    show("after dcp.save", directory)
    release = threading.Event()

    class Slow(dcp.FileSystemWriter):
        def write_data(self, plan, planner):
            release.wait(30)
            return super().write_data(plan, planner)

    future: Any = dcp.async_save(state, storage_writer=Slow(os.path.join(directory, "async")))
    show("while async_save goes on", directory)
    release.set()
    future.result(timeout=30)  # a concurrent.futures.Future on gloo
    deadline = time.monotonic() + 10
    while getattr(read_record(record_path(directory, 0)), "phase", None) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.01)
    show("after async_save is done", directory)


def named(torch, dist, directory):
    from elastic_healthcheck.worker import phase

    with phase("upload", deadline=900):
        show("inside phase(upload)", directory)
        with phase("verify"):
            show("inside a nested phase", directory)
        show("back in upload", directory)
    show("after the phase", directory)


def ddp(torch, dist, directory):
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
    model(torch.ones(2, 4)).sum().backward()
    model(torch.ones(2, 4)).sum().backward()  # its buckets are rebuilt in this forward
    show("after two steps", directory)
    model(torch.ones(2, 4)).sum().backward()
    show("after a backward", directory)
    with model.no_sync():
        model(torch.ones(2, 4)).sum().backward()
    show("after a backward under no_sync()", directory)


SCENARIOS = {
    "collectives": collectives,
    "evaluation": evaluation,
    "checkpoints": checkpoints,
    "named": named,
    "ddp": ddp,
}

if __name__ == "__main__":
    main()
