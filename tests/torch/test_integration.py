"""install() against the real torch objects, without launching workers."""

from __future__ import annotations

import importlib
import json
import logging
import os
import socket
import sys
import time
from typing import Any

import pytest
from torch.distributed.elastic.agent.server import local_elastic_agent

from elastic_healthcheck import HealthCheckServer, HTTPHealthCheckServer, torchelastic
from elastic_healthcheck._torchrun import spawn
from elastic_healthcheck._torchrun.record import RankRecord, record_path
from elastic_healthcheck._torchrun.seam import TORCH_SEAM, How, TorchMismatchError

from ..servers.client import request

BOOTSTRAP = "elastic_healthcheck._torchrun.bootstrap"

# Every agent-side row of torch's seam that is replaced or wrapped: what install() patches.
PATCHED = [
    (importlib.import_module(r.module), r.name)
    for r in TORCH_SEAM
    if r.side == "agent" and r.how is not How.READ
]


def _owner_and_name(module: object, name: str) -> tuple[object, str]:
    *path, attribute = name.split(".")
    for part in path:
        module = getattr(module, part)
    return module, attribute


def _current(module: object, name: str) -> object:
    owner, attribute = _owner_and_name(module, name)
    return getattr(owner, attribute)


@pytest.fixture
def integration():
    installed = torchelastic.install(port=0, host="127.0.0.1", timeout=5)
    yield installed
    installed.uninstall()


def test_install_patches_every_row_of_the_seam_and_uninstall_restores_torch():
    assert len(PATCHED) == 9  # the agent side of the table, as docs/torchrun.md lists it
    originals = [_current(module, name) for module, name in PATCHED]
    with torchelastic.install(host="127.0.0.1") as integration:
        now = [_current(module, name) for module, name in PATCHED]
        assert all(ours is not theirs for ours, theirs in zip(now, originals, strict=True))
        assert len(integration._patches.patched) == len(PATCHED)
    assert [_current(module, name) for module, name in PATCHED] == originals


def test_the_spawn_wrapper_takes_any_call_shape(integration):
    """torch may pass start_processes' arguments by position: ours reads them either way."""
    seen: dict[str, Any] = {}

    def start_processes(name, entrypoint, args, envs, logs_specs=None):
        seen.update(entrypoint=entrypoint, args=args, envs=envs, logs_specs=logs_specs)
        return "pcontext"

    wrapped = integration._spawner.wrap(start_processes)
    envs, args = {0: {"RANK": "0"}}, {0: ("-u", "t.py")}
    assert wrapped("trainer", sys.executable, args, envs, "specs") == "pcontext"
    assert seen["args"][0] == ("-u", "-m", BOOTSTRAP, "t.py")
    assert seen["envs"][0]["ELASTIC_HEALTHCHECK_WORKER_LOCAL_RANK"] == "0"
    assert seen["logs_specs"] == "specs"
    # A call it cannot read goes to torch as it came.
    assert wrapped("trainer", sys.executable, "not-a-mapping", envs) == "pcontext"
    assert seen["args"] == "not-a-mapping"


def test_a_torch_without_the_required_internal_is_a_mismatch_and_leaves_torch_alone(
    monkeypatch,
):
    monkeypatch.delattr(local_elastic_agent, "create_healthcheck_server")
    start = _current(local_elastic_agent, "LocalElasticAgent._start_workers")
    with pytest.raises(TorchMismatchError, match="has no .*create_healthcheck_server"):
        torchelastic.install(host="127.0.0.1")
    assert _current(local_elastic_agent, "LocalElasticAgent._start_workers") is start
    monkeypatch.undo()
    with torchelastic.install(host="127.0.0.1"):  # nothing was left installed
        pass


def test_a_missing_optional_internal_is_one_warning_naming_it(monkeypatch, caplog):
    monkeypatch.delattr(local_elastic_agent.LocalElasticAgent, "_stop_workers")
    with torchelastic.install(host="127.0.0.1"):
        pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "LocalElasticAgent._stop_workers" in warnings[0]
    assert "proven torch versions" in warnings[0]


def test_install_twice_is_refused(integration):
    with pytest.raises(RuntimeError, match="installed already"):
        torchelastic.install()


def test_listens_at_install_and_answers_starting(integration):
    server = integration.server
    assert server is not None and server.is_running
    response = request(server.port)
    assert response.status == 200
    assert json.loads(response.body)["detail"] == {
        "phase": "starting",
        "restarts": 0,
        "hang_restarts": 0,
    }


def test_the_agent_factory_returns_a_view_of_the_one_server(integration):
    factory = local_elastic_agent.create_healthcheck_server
    server = integration.server
    for _ in range(3):  # the agent's stop/create/start cycle at every restart
        handle = factory(alive_callback=lambda: int(time.time()), port=server.port, timeout=60)
        assert isinstance(handle, HealthCheckServer)
        handle.start()
        assert request(server.port).status == 200
        handle.stop()
        assert integration.server is server and server.is_running
        assert request(server.port).status == 200


def test_running_follows_the_agent_callback(integration):
    handle = local_elastic_agent.create_healthcheck_server(
        alive_callback=lambda: int(time.time()) - 3600, port=integration.server.port, timeout=60
    )
    handle.start()
    integration._set_phase("running")
    status = integration.health_status()
    assert status.verdict == "dead"
    assert status.detail["phase"] == "running"
    assert "callback" in status.detail["summary"]
    handle.stop()
    assert integration.health_status().alive  # detached: the agent is between groups


def test_every_rank_of_the_group_is_judged_from_its_record(integration):
    """Ranks spawned by the (patched) start_processes count from their spawn, beat or not."""
    now = time.time()
    integration._spawn(
        lambda **kwargs: kwargs,  # what torch's start_processes gets, without processes
        {"envs": {0: {}, 1: {}, 2: {}}, "args": {0: (), 1: (), 2: ()}, "entrypoint": "/bin/true"},
    )
    integration._set_phase("running")
    for rank in ("0", "1"):
        record = RankRecord(record_path(integration.rank_dir, rank))
        record.progress()
        record.close()
    status = integration._state.verdict(
        now=time.time() + 8.0
    ).to_status()  # timeout=5: 0 and 1 stalled
    assert set(status.detail["ranks"]) == {"0", "1", "2"}
    assert [status.detail["ranks"][r]["state"] for r in "012"] == ["stalled"] * 2 + ["starting"]
    assert status.verdict == "alive"  # rank 2 is still within the startup timeout
    status = integration._state.verdict(
        now=now + torchelastic.DEFAULT_STARTUP_TIMEOUT + 1
    ).to_status()
    assert status.verdict == "dead"
    assert status.detail["suspect_ranks"] == ["2"]


def test_uninstall_frees_the_port_and_removes_the_rank_dir():
    integration = torchelastic.install(port=0, host="127.0.0.1")
    server = integration.server
    assert isinstance(server, HTTPHealthCheckServer)
    port, rank_dir = server.port, integration.rank_dir
    integration.uninstall()
    integration.uninstall()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)

    assert not os.path.exists(rank_dir)
    assert "ELASTIC_HEALTHCHECK_WORKER_DIR" not in os.environ


def test_port_in_use_is_logged_and_not_raised(caplog):
    caplog.set_level(logging.ERROR, logger="elastic_healthcheck.torchelastic")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with torchelastic.install(port=port, host="127.0.0.1") as integration:
            assert integration.server is None
            handle = local_elastic_agent.create_healthcheck_server(
                alive_callback=lambda: 0, port=port, timeout=60
            )
            handle.start()  # the agent's start(): must not raise either
            handle.stop()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and all(f"127.0.0.1:{port}" in e for e in errors)
    assert "training goes on" in errors[0]


def test_bad_timeout_variable_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("ELASTIC_HEALTHCHECK_TORCHRUN_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="ELASTIC_HEALTHCHECK_TORCHRUN_TIMEOUT='soon'"):
        torchelastic.install()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("-u", "train.py", "--lr", "1"), ("-u", "-m", BOOTSTRAP, "train.py", "--lr", "1")),
        (("-u", "-m", "pkg.train", "x"), ("-u", "-m", BOOTSTRAP, "-m", "pkg.train", "x")),
        (("train.py",), ("-m", BOOTSTRAP, "train.py")),
        (("-u", "-c", "print(1)"), ("-u", "-c", "print(1)")),  # a command string: as is
        (("-u",), ("-u",)),  # nothing to run: as is
    ],
)
def test_worker_arguments_go_through_the_bootstrap(args, expected):
    assert spawn.bootstrap_args(args) == expected


@pytest.mark.parametrize(
    ("entrypoint", "is_python"),
    [(sys.executable, True), ("/usr/bin/python3.11", True), ("/job/train.sh", False)],
)
def test_only_a_python_entrypoint_gets_the_bootstrap(entrypoint, is_python):
    """--no-python runs the script itself: it is started exactly as plain torchrun does."""
    assert spawn.is_python(entrypoint) is is_python


def test_spawned_workers_get_their_record_and_environment(integration):
    captured = {}
    integration._spawn(
        lambda **kwargs: captured.update(kwargs),
        {
            "envs": {0: {"RANK": "0"}, 1: {"RANK": "1"}},
            "args": {0: ("-u", "t.py"), 1: ("-u", "t.py")},
            "entrypoint": sys.executable,
        },
    )
    assert captured["args"][1] == ("-u", "-m", BOOTSTRAP, "t.py")
    env = captured["envs"][1]
    assert env["RANK"] == "1"
    assert env["ELASTIC_HEALTHCHECK_WORKER_LOCAL_RANK"] == "1"
    assert env["ELASTIC_HEALTHCHECK_WORKER_DIR"] == integration.rank_dir
    assert int(env["ELASTIC_HEALTHCHECK_WORKER_STACK_SIGNAL"]) > 0
    assert os.path.exists(record_path(integration.rank_dir, 1))


def test_without_the_bootstrap_workers_start_as_plain_torchrun_starts_them():
    captured = {}
    with torchelastic.install(host="127.0.0.1", bootstrap=False) as integration:
        integration._spawn(
            lambda **kwargs: captured.update(kwargs),
            {"envs": {0: {}}, "args": {0: ("-u", "t.py")}, "entrypoint": sys.executable},
        )
        assert os.path.exists(record_path(integration.rank_dir, 0))  # still accounted for
    assert captured["args"][0] == ("-u", "t.py")


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("ELASTIC_HEALTHCHECK_TORCHRUN_STARTUP_TIMEOUT", "soon", "is not a number of seconds"),
        ("ELASTIC_HEALTHCHECK_TORCHRUN_ON_HANG", "reboot", "is not one of report, restart"),
        ("ELASTIC_HEALTHCHECK_TORCHRUN_BOOTSTRAP", "maybe", "is not 0 or 1"),
    ],
)
def test_bad_torchrun_variables_are_clear_errors(monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=f"{variable}='{value}' {message}"):
        torchelastic.install()
