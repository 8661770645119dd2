"""The worker bootstrap: a script runs through it exactly as under plain python, and its
optimizer steps, collectives and stacks reach the rank's record.

Each comparison runs the same script twice, as ``python ARGS`` and as
``python -m elastic_healthcheck._torchrun.bootstrap ARGS``, and compares exit code, stdout
and stderr.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import elastic_healthcheck
from elastic_healthcheck._torchrun.record import (
    ENV_DIR,
    ENV_LOCAL_RANK,
    ENV_STACK_SIGNAL,
    FLAG_BOOTSTRAP,
    FLAG_EXITED,
    FLAG_STACKS,
    create_record,
    read_record,
    record_path,
    stack_path,
)

pytestmark = pytest.mark.torch

# Where the package under test was imported from (src/, or the installed wheel in CI).
SRC = str(Path(elastic_healthcheck.__file__).resolve().parents[1])
BOOTSTRAP = ["-m", "elastic_healthcheck._torchrun.bootstrap"]
DEADLINE = 120.0  # seconds for one subprocess; torch imports slowly on a loaded machine


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELASTIC_HEALTHCHECK_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env or environment(),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )


def normalized(text: str) -> str:
    # multiprocessing's resource tracker may warn of a "leaked semaphore" when it outlives
    # a spawn context's last user by a hair; it does so under plain python too, by timing
    # alone (seen once in hundreds of runs on a loaded machine), so it is not compared.
    text = re.sub(r"^.*resource_tracker.*\n(  warnings\.warn\(.*\n)?", "", text, flags=re.M)
    return re.sub(r"0x[0-9a-f]+", "0x?", text)


def assert_same_as_python(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    plain = run(args, cwd)
    through = run([*BOOTSTRAP, *args], cwd)
    assert (through.returncode, normalized(through.stdout), normalized(through.stderr)) == (
        plain.returncode,
        normalized(plain.stdout),
        normalized(plain.stderr),
    )
    return plain


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


SHOW_MAIN = textwrap.dedent(
    """
    import os, pickle, sys
    import __main__

    class Point:
        def __init__(self, x):
            self.x = x

    def show():
        print("argv", sys.argv)
        print("path0", sys.path[0])
        print("name", __name__, "main is me", sys.modules["__main__"].__dict__ is globals())
        print("file", __main__.__file__ if hasattr(__main__, "__file__") else None)
        print("spec", __main__.__spec__ and __main__.__spec__.name)
        print("package", repr(__main__.__package__), "cached", getattr(__main__, "__cached__", "-"))
        print("loader", type(__main__.__loader__).__name__)
        print("builtins", type(__builtins__).__name__)
        data = pickle.dumps(Point(7))
        print("pickled", b"__main__" in data, pickle.loads(data).x)
    """
)


def test_script_sees_argv_path_main_file_and_pickles_as_under_python(tmp_path):
    write(tmp_path / "app" / "show.py", SHOW_MAIN + "\nshow()\n")
    out = assert_same_as_python(["app/show.py", "--lr", "0.1", "-m", "x"], tmp_path)
    assert "argv ['app/show.py', '--lr', '0.1', '-m', 'x']" in out.stdout
    assert f"path0 {tmp_path / 'app'}" in out.stdout
    assert "main is me True" in out.stdout
    assert "pickled True 7" in out.stdout


def test_script_given_by_absolute_path_runs_as_under_python(tmp_path):
    script = write(tmp_path / "app" / "show.py", SHOW_MAIN + "\nshow()\n")
    out = assert_same_as_python([str(script)], tmp_path)
    assert f"file {script}" in out.stdout


def test_module_runs_as_under_python_m(tmp_path):
    write(tmp_path / "tool.py", SHOW_MAIN + "\nif __name__ == '__main__':\n    show()\n")
    out = assert_same_as_python(["-m", "tool", "a", "b"], tmp_path)
    assert f"argv ['{tmp_path / 'tool.py'}', 'a', 'b']" in out.stdout
    assert "spec tool" in out.stdout
    assert f"path0 {tmp_path}" in out.stdout


def test_package_main_runs_as_under_python_m(tmp_path):
    write(tmp_path / "kit" / "__init__.py", "")
    write(tmp_path / "kit" / "__main__.py", SHOW_MAIN + "\nshow()\n")
    out = assert_same_as_python(["-m", "kit", "go"], tmp_path)
    assert "spec kit.__main__" in out.stdout
    assert "package 'kit'" in out.stdout


def test_directory_with_main_runs_as_under_python(tmp_path):
    write(tmp_path / "bundle" / "__main__.py", SHOW_MAIN + "\nshow()\n")
    out = assert_same_as_python(["bundle", "x"], tmp_path)
    assert "argv ['bundle', 'x']" in out.stdout and "spec __main__" in out.stdout


def test_missing_module_and_missing_script_fail_as_under_python(tmp_path):
    assert assert_same_as_python(["-m", "no_such_module"], tmp_path).returncode == 1
    assert assert_same_as_python(["no_such_script.py"], tmp_path).returncode == 2


def test_uncaught_exception_prints_the_same_traceback_and_exits_1(tmp_path):
    write(
        tmp_path / "fail.py",
        """
        def inner():
            raise ValueError("no convergence")

        try:
            inner()
        except ValueError as exc:
            raise RuntimeError("training failed") from exc
        """,
    )
    out = assert_same_as_python(["fail.py"], tmp_path)
    assert out.returncode == 1
    assert "bootstrap" not in out.stderr and "runpy" not in out.stderr
    assert "RuntimeError: training failed" in out.stderr


def test_uncaught_exception_in_module_prints_the_same_traceback(tmp_path):
    write(tmp_path / "failmod.py", "import sys\nprint('before')\n{}['missing']\n")
    out = assert_same_as_python(["-m", "failmod"], tmp_path)
    assert out.returncode == 1 and "KeyError: 'missing'" in out.stderr
    assert "bootstrap" not in out.stderr


def test_ctrl_c_prints_the_same_traceback_and_ends_by_sigint_after_the_exit_handlers(tmp_path):
    """A worker interrupted by Ctrl-C: the traceback shows the script alone, as under python,
    the script's exit handlers run, and the process ends by SIGINT as python's does."""
    write(
        tmp_path / "interrupted.py",
        """
        import atexit, os, signal

        atexit.register(print, "exit handler ran", flush=True)

        def train():
            os.kill(os.getpid(), signal.SIGINT)

        train()
        """,
    )
    out = assert_same_as_python(["interrupted.py"], tmp_path)
    assert out.returncode == -signal.SIGINT
    assert "KeyboardInterrupt" in out.stderr and "in train" in out.stderr
    assert "bootstrap" not in out.stderr and "runpy" not in out.stderr
    assert out.stdout == "exit handler ran\n"


@pytest.mark.parametrize(
    ("call", "code"), [("sys.exit(3)", 3), ("sys.exit('bye')", 1), ("sys.exit()", 0)]
)
def test_system_exit_passes_through(tmp_path, call, code):
    write(tmp_path / "leave.py", f"import atexit, sys\natexit.register(print, 'atexit')\n{call}\n")
    assert assert_same_as_python(["leave.py"], tmp_path).returncode == code


DATALOADER = """
    import sys
    import torch
    from torch.utils.data import DataLoader, Dataset

    class Squares(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, index):
            return torch.tensor(index * index)

    if __name__ == "__main__":
        loader = DataLoader(
            Squares(), batch_size=2, num_workers=2, multiprocessing_context=sys.argv[1]
        )
        print(sorted(int(x) for batch in loader for x in batch))
"""


@pytest.mark.parametrize("context", ["spawn", "fork"])
def test_dataloader_workers_run_as_under_python(tmp_path, context):
    """The dataset class is defined in the script: spawn workers must re-import it."""
    write(tmp_path / "load.py", DATALOADER)
    out = assert_same_as_python(["load.py", context], tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{sorted(i * i for i in range(8))}\n"


# --- the record ----------------------------------------------------------------------------


def rank_environment(directory: Path, local_rank: int = 0, **extra: str) -> dict[str, str]:
    return environment(
        **{
            ENV_DIR: str(directory),
            ENV_LOCAL_RANK: str(local_rank),
            ENV_STACK_SIGNAL: str(int(signal.SIGUSR1)),
            "RANK": "5",
            **extra,
        }
    )


def new_record(directory: Path, local_rank: int = 0) -> str:
    path = record_path(str(directory), local_rank)
    create_record(path, time.time())
    return path


TRAIN = """
    import os, sys
    import torch

    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(int(sys.argv[1])):
        optimizer.zero_grad()
        model(torch.ones(2, 4)).sum().backward()
        optimizer.step()
    print(os.getpid())
"""


def test_optimizer_steps_count_as_progress_and_the_end_marks_exited(tmp_path):
    path = new_record(tmp_path)
    write(tmp_path / "train.py", TRAIN)
    before = time.time()
    out = run([*BOOTSTRAP, "train.py", "7"], tmp_path, rank_environment(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    record = read_record(path)
    assert record is not None
    assert record.pid == int(out.stdout)
    assert record.global_rank == 5
    assert record.steps == 7
    assert record.progress_time >= before
    assert record.flags == FLAG_BOOTSTRAP | FLAG_STACKS | FLAG_EXITED


def test_steps_count_when_a_library_asked_find_spec_for_torch_first(tmp_path):
    """Libraries probe with importlib.util.find_spec("torch") before importing it."""
    path = new_record(tmp_path)
    write(tmp_path / "train.py", "import importlib.util\nimportlib.util.find_spec('torch')\n")
    with open(tmp_path / "train.py", "a") as script:
        script.write(textwrap.dedent(TRAIN))
    out = run([*BOOTSTRAP, "train.py", "3"], tmp_path, rank_environment(tmp_path))
    assert out.returncode == 0, out.stderr
    record = read_record(path)
    assert record is not None and record.steps == 3


def test_the_bootstrap_does_not_import_torch(tmp_path):
    new_record(tmp_path)
    write(tmp_path / "lazy.py", "import sys\nprint('torch' in sys.modules)\n")
    out = run([*BOOTSTRAP, "lazy.py"], tmp_path, rank_environment(tmp_path))
    assert (out.returncode, out.stdout, out.stderr) == (0, "False\n", "")


def test_a_crashed_script_is_not_marked_exited(tmp_path):
    path = new_record(tmp_path)
    write(tmp_path / "crash.py", "raise SystemError('lost')\n")
    out = run([*BOOTSTRAP, "crash.py"], tmp_path, rank_environment(tmp_path))
    assert out.returncode == 1
    record = read_record(path)
    assert record is not None and record.pid != 0
    assert record.flags == FLAG_BOOTSTRAP | FLAG_STACKS


def test_system_exit_marks_exited_and_keeps_its_code(tmp_path):
    path = new_record(tmp_path)
    write(tmp_path / "leave.py", "import sys\nsys.exit(3)\n")
    out = run([*BOOTSTRAP, "leave.py"], tmp_path, rank_environment(tmp_path))
    assert out.returncode == 3
    record = read_record(path)
    assert record is not None and record.flags == FLAG_BOOTSTRAP | FLAG_STACKS | FLAG_EXITED


def test_beat_shares_the_bootstrap_record(tmp_path):
    path = new_record(tmp_path)
    write(
        tmp_path / "beats.py",
        """
        from elastic_healthcheck.worker import beat
        for _ in range(4):
            beat()
        """,
    )
    out = run([*BOOTSTRAP, "beats.py"], tmp_path, rank_environment(tmp_path))
    assert out.returncode == 0, out.stderr
    record = read_record(path)
    assert record is not None and record.steps == 4
    assert record.flags == FLAG_BOOTSTRAP | FLAG_STACKS | FLAG_EXITED


COLLECTIVES = """
    import os, sys
    import torch
    import torch.distributed as dist
    from elastic_healthcheck._torchrun.record import (
        ENV_DIR,
        ENV_LOCAL_RANK,
        read_record,
        record_path,
    )

    path = record_path(os.environ[ENV_DIR], os.environ[ENV_LOCAL_RANK])
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    start = read_record(path)
    tensor = torch.ones(3)
    dist.all_reduce(tensor)
    after_reduce = read_record(path)
    gathered = [None]
    dist.all_gather_object(gathered, {"rank": 0})
    after_gather = read_record(path)
    dist.distributed_c10d.broadcast(tensor, src=0)
    after_broadcast = read_record(path)
    dist.destroy_process_group()
    print(after_reduce.entered - start.entered, after_reduce.depth)
    print(after_gather.entered - start.entered, after_gather.depth, gathered)
    print(after_broadcast.entered - start.entered, after_broadcast.in_collective)
    print(dist.all_reduce is dist.distributed_c10d.all_reduce, dist.all_reduce.__name__)
"""


def test_collectives_are_noted_once_each_and_nested_ones_not_at_all(tmp_path):
    """all_gather_object runs all_gather inside: it counts once."""
    new_record(tmp_path)
    write(tmp_path / "coll.py", COLLECTIVES)
    out = run([*BOOTSTRAP, "coll.py"], tmp_path, rank_environment(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "1 0",
        "2 0 [{'rank': 0}]",
        "3 False",
        "True all_reduce",
    ]


FORKS = """
    import os, sys
    import torch
    from elastic_healthcheck.worker import beat

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    optimizer.step()
    pid = os.fork()
    if pid == 0:
        for _ in range(5):
            optimizer.step()
            beat()
        os._exit(0)
    os.waitpid(pid, 0)
    from elastic_healthcheck._torchrun.record import (
        ENV_DIR,
        ENV_LOCAL_RANK,
        read_record,
        record_path,
    )

    record = read_record(record_path(os.environ[ENV_DIR], os.environ[ENV_LOCAL_RANK]))
    print(record.steps, record.pid == os.getpid())
    optimizer.step()
"""


def test_a_forked_child_never_writes_the_record(tmp_path):
    path = new_record(tmp_path)
    write(tmp_path / "forks.py", FORKS)
    out = run([*BOOTSTRAP, "forks.py"], tmp_path, rank_environment(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout == "1 True\n"  # after the child's ten events, only the parent's step
    record = read_record(path)
    assert record is not None and record.steps == 2


def test_a_spawned_child_never_writes_the_record(tmp_path):
    """A spawn child has the same environment, and the record names its owner."""
    path = new_record(tmp_path)
    write(
        tmp_path / "spawns.py",
        """
        import multiprocessing
        from elastic_healthcheck.worker import beat

        def child():
            for _ in range(5):
                beat()

        if __name__ == "__main__":
            beat()
            process = multiprocessing.get_context("spawn").Process(target=child)
            process.start()
            process.join()
            print(process.exitcode)
        """,
    )
    out = run([*BOOTSTRAP, "spawns.py"], tmp_path, rank_environment(tmp_path))
    assert (out.returncode, out.stdout, out.stderr) == (0, "0\n", "")
    record = read_record(path)
    assert record is not None and record.steps == 1


def test_set_up_failures_are_one_warning_and_the_script_runs(tmp_path):
    write(tmp_path / "hello.py", "print('trained')\n")
    missing = run([*BOOTSTRAP, "hello.py"], tmp_path, rank_environment(tmp_path / "nowhere"))
    assert missing.returncode == 0 and missing.stdout == "trained\n"
    assert len(missing.stderr.splitlines()) == 1
    assert "Cannot report progress for local rank 0" in missing.stderr

    new_record(tmp_path)
    bad_signal = run(
        [*BOOTSTRAP, "hello.py"], tmp_path, rank_environment(tmp_path, 0, **{ENV_STACK_SIGNAL: "x"})
    )
    assert bad_signal.returncode == 0 and bad_signal.stdout == "trained\n"
    assert len(bad_signal.stderr.splitlines()) == 1
    assert "Cannot dump the stacks of local rank 0" in bad_signal.stderr
    record = read_record(record_path(str(tmp_path), 0))
    assert record is not None
    assert record.flags == FLAG_BOOTSTRAP | FLAG_EXITED  # never signal this one


def test_a_bad_loglevel_does_not_stop_the_warning_or_the_script(tmp_path):
    env = rank_environment(tmp_path / "nowhere", LOGLEVEL="LOUD")
    write(tmp_path / "hello.py", "print('trained')\n")
    out = run([*BOOTSTRAP, "hello.py"], tmp_path, env)
    assert (out.returncode, out.stdout) == (0, "trained\n")
    assert "Cannot report progress for local rank 0" in out.stderr


def test_outside_the_integration_the_bootstrap_only_runs_the_script(tmp_path):
    write(tmp_path / "hello.py", "import sys\nprint('torch' in sys.modules)\n")
    out = run([*BOOTSTRAP, "hello.py"], tmp_path)
    assert (out.returncode, out.stdout, out.stderr) == (0, "False\n", "")


def test_bad_command_line_is_one_line_and_exit_2(tmp_path):
    out = run(BOOTSTRAP, tmp_path)
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1
    assert out.stderr.startswith("usage:")


# --- a hung rank ---------------------------------------------------------------------------

HUNG_RANK = """
    import os, sys, threading
    import torch
    import torch.distributed as dist

    def helper_thread_waits():
        threading.Event().wait()

    threading.Thread(target=helper_thread_waits, daemon=True).start()
    rank = int(sys.argv[2])
    dist.init_process_group("gloo", store=dist.FileStore(sys.argv[1], 2), rank=rank, world_size=2)
    print("joined", flush=True)
    if rank == 0:
        dist.all_reduce(torch.ones(2))  # rank 1 never comes
    else:
        sys.stdin.read()  # blocks until the test closes stdin
"""


def wait_until(predicate, what: str, deadline: float = DEADLINE):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_rank_hung_in_a_collective_shows_it_and_dumps_all_stacks_on_the_signal(tmp_path):
    path = new_record(tmp_path)
    script = write(tmp_path / "hung.py", HUNG_RANK)
    store = str(tmp_path / "store")
    env = rank_environment(tmp_path, GLOO_SOCKET_IFNAME="lo")
    peer_env = environment(GLOO_SOCKET_IFNAME="lo")
    processes = [
        subprocess.Popen(
            [sys.executable, *BOOTSTRAP, str(script), store, "0"],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ),
        subprocess.Popen(
            [sys.executable, str(script), store, "1"],
            cwd=tmp_path,
            env=peer_env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ),
    ]
    try:

        def inside():
            record = read_record(path)  # past init_process_group (a collective too)
            return record if record is not None and record.collective == "all_reduce" else None

        record = wait_until(inside, "rank 0 to enter all_reduce")
        assert record.collective == "all_reduce"
        assert record.pid == processes[0].pid
        assert record.flags & FLAG_STACKS
        stacks = Path(stack_path(str(tmp_path), 0))
        processes[0].send_signal(signal.SIGUSR1)

        seen: list[str] = []

        def dumped() -> str | None:
            # The handler writes thread by thread: done once both threads are in and the
            # file has stopped growing between two polls.
            text = stacks.read_text() if stacks.exists() else ""
            settled = bool(seen) and seen[-1] == text
            seen.append(text)
            complete = all(part in text for part in ("helper_thread_waits", "all_reduce"))
            return text if complete and settled else None

        text = wait_until(dumped, "the stack dump")
        assert "Current thread" in text  # all threads, the signalled one marked
        assert "all_reduce" in text and "hung.py" in text
        assert processes[0].poll() is None  # the dump does not end the rank
    finally:
        for process in processes:
            process.kill()
            process.communicate(timeout=DEADLINE)
