"""Every table of statuses, fields, metrics, options, variables, flags and exit codes in
the documents is compared with what the code does, on real loopback servers where the
table is about a server.

A table is recognised by its header row. Each checker must find at least one table, so
renaming a header cannot switch a check off unnoticed; a row a checker does not know
fails, so a new row needs a new check.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import inspect
import json
import math
import re
import socket
import time
from collections.abc import Callable

import pytest

import elastic_healthcheck
from elastic_healthcheck import HTTPHealthCheckServer, Verdict, check_liveness
from elastic_healthcheck._cli.main import build_parser, main
from elastic_healthcheck._cli.probe import parse_target, probe
from elastic_healthcheck._config.kinds import BUILTIN_KINDS, ENV_PREFIX, _options, resolve_kind
from elastic_healthcheck._config.settings import SETTINGS

from . import test_examples
from .markdown import ROOT, Table, code_spans, documents, tables

ALL_TABLES = [table for path in documents() for table in tables(path)]


def _tables(*header: str) -> list[Table]:
    found = [t for t in ALL_TABLES if t.header == header]
    assert found, f"no table with the header {' | '.join(header)} in {documents()}"
    return found


def _span(cell: str) -> str:
    spans = code_spans(cell)
    assert spans, f"expected a `code` span in {cell!r}"
    return spans[0]


def _exchange(port: int, request: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``request``, read until the server closes; the status, headers and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), headers, body


def _get(path: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}\r\n".encode()


@pytest.fixture
def servers():
    # A generous callback deadline: these tests read the tables, and on a loaded machine
    # the default 0.5 s could turn an alive answer into "unknown".
    alive = HTTPHealthCheckServer(
        lambda: int(time.time()), 0, 60, host="127.0.0.1", client_timeout=0.5, callback_timeout=5
    )
    dead = HTTPHealthCheckServer(lambda: 0, 0, 60, host="127.0.0.1", callback_timeout=5)
    alive.start()
    dead.start()
    try:
        yield alive.port, dead.port
    finally:
        alive.stop()
        dead.stop()


# -- the HTTP server -----------------------------------------------------------------------


def test_request_table(servers):
    alive, dead = servers
    (table,) = _tables("request", "answer")
    checked = set()
    for request, answer in table.rows:
        if request == "`GET /healthz`, `GET /livez`":
            assert "`200` alive" in answer and "`503` dead or unknown" in answer
            for path in (span.split(" ", 1)[1] for span in code_spans(request)):
                status, headers, body = _exchange(alive, _get(path))
                assert status == 200 and json.loads(body)["status"] == "alive"
                assert headers["content-type"].startswith("application/json")
                assert _exchange(dead, _get(path))[0] == 503
                assert _exchange(alive, _get(path + "?verbose=1"))[0] == 200  # query ignored
        elif request == "`GET /metrics`":
            status, headers, _ = _exchange(alive, _get("/metrics"))
            assert status == 200
            assert headers["content-type"] == next(s for s in code_spans(answer) if "/" in s)
        elif request == "`HEAD` on the above":
            for path in ("/healthz", "/livez", "/metrics"):
                get_status, get_headers, body = _exchange(alive, _get(path))
                status, headers, head_body = _exchange(alive, _get(path, "HEAD"))
                assert (status, head_body) == (get_status, b"")
                if path != "/metrics":  # the metrics' values (counters) change between calls
                    assert headers["content-length"] == get_headers["content-length"]
        elif request == "`OPTIONS`":
            status, headers, _ = _exchange(alive, _get("/healthz", "OPTIONS"))
            allow = next(s for s in code_spans(answer) if s.startswith("Allow: "))
            assert (status, headers["allow"]) == (int(_span(answer)), allow[len("Allow: ") :])
        elif request == "any other method":
            allow = next(s for s in code_spans(answer) if s.startswith("Allow: "))
            for method in ("DELETE", "POST", "PUT", "PATCH"):
                status, headers, _ = _exchange(alive, _get("/healthz", method))
                assert (status, headers["allow"]) == (405, allow[len("Allow: ") :])
            assert "`413` if it sends a body" in answer
            for method in ("POST", "PUT"):
                request_bytes = _get("/healthz", method, "Content-Length: 2\r\n") + b"{}"
                assert _exchange(alive, request_bytes)[0] == 413
        elif request == "any other path":
            assert _exchange(alive, _get("/nope"))[0] == int(_span(answer))
        elif request == "a malformed request":
            _check_malformed(alive, answer)
        else:
            pytest.fail(f"{table.where}: no check for the row {request!r}")
        checked.add(request)
    assert len(checked) == 7, checked


MALFORMED: dict[int, list[bytes]] = {
    400: [b"GET /healthz HTTP/1.1\r\n\r\n", b"\x16\x03\x01 garbage\r\n\r\n"],  # no Host; TLS
    408: [b"GET /healthz HTTP/1.1\r\nHost: t\r\n"],  # the head never ends
    413: [_get("/healthz", extra="Content-Length: 5\r\n") + b"hello"],
    414: [b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n"],
    431: [b"GET /healthz HTTP/1.1\r\nHost: t\r\nX: " + b"a" * 9000 + b"\r\n\r\n"],
    501: [_get("/healthz", "POST", "Transfer-Encoding: chunked\r\n") + b"0\r\n\r\n"],
    505: [b"GET /healthz HTTP/2.0\r\nHost: t\r\n\r\n"],
}


def _check_malformed(port: int, answer: str) -> None:
    documented = {int(code) for code in re.findall(r"`(\d{3})`", answer)}
    assert documented == set(MALFORMED), answer
    for code, requests in MALFORMED.items():
        for request in requests:
            status = _exchange(port, request)[0]
            # Over 8 KiB in the request line may be answered 431 as well (one cap for the head).
            assert status in ({414, 431} if code == 414 else {code}), (code, request[:40])
    # The paragraph under the table: a silent client is closed after client_timeout (0.5 s
    # here), with no answer.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        started = time.monotonic()
        assert sock.recv(100) == b""
        assert 0.4 < time.monotonic() - started < 4


def test_headers_every_response_has(servers):
    """The sentence under the request table names the headers of every response."""
    alive, _ = servers
    page = (ROOT / "docs" / "http.md").read_text(encoding="utf-8")
    match = re.search(r"Every response has (.*?)\.\s", page, re.DOTALL)
    assert match is not None
    sentence = " ".join(match.group(1).split())
    named = code_spans(sentence)
    assert named[:4] == [
        "Content-Length",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
        "Date",
    ], sentence
    assert sentence.endswith("and no `Server` banner")
    requests = [_get("/healthz"), _get("/metrics"), _get("/nope"), _get("/healthz", "DELETE")]
    requests.append(b"GET /healthz HTTP/1.1\r\n\r\n")  # a 400
    for request in requests:
        _, headers, body = _exchange(alive, request)
        assert int(headers["content-length"]) == len(body)
        assert headers["cache-control"] == "no-store"
        assert headers["x-content-type-options"] == "nosniff"
        assert "date" in headers and "server" not in headers


def test_json_field_table(servers):
    alive, _ = servers
    (table,) = _tables("json field", "meaning")
    _, _, body = _exchange(alive, _get("/healthz"))
    assert [_span(row[0]) for row in table.rows] == list(json.loads(body))


def test_metric_table(servers):
    alive, _ = servers
    _exchange(alive, _get("/healthz"))  # so that the probe counter has a sample
    (table,) = _tables("metric", "type", "meaning")
    _, _, body = _exchange(alive, _get("/metrics"))
    text = body.decode()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    documented = {}
    for metric, kind, _ in table.rows:
        name, _, labels = _span(metric).partition("{")
        documented[name] = kind
        for label, values in re.findall(r'(\w+)="([^"]+)"', labels):
            for value in values.split("|"):
                assert f'{name}{{{label}="{value}"}}' in text, (name, label, value)
        if labels and "..." in labels:
            label = labels.split("=", 1)[0]
            assert re.search(rf"^{name}{{{label}=", text, re.MULTILINE), name
    assert documented == types


def test_option_table():
    (table,) = _tables("option", "default", "meaning")
    parameters = inspect.signature(HTTPHealthCheckServer).parameters.values()
    options = {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}
    documented = {_span(name): ast.literal_eval(_span(default)) for name, default, _ in table.rows}
    assert documented == options


# -- the liveness rule ---------------------------------------------------------------------

NOW = 1_700_000_000.0


def _raise() -> float:
    raise ValueError("no progress")


LIVENESS: dict[str, Callable[[float], object]] = {
    "returned epoch seconds, `age <= timeout`": lambda now: now - 30,
    "returned epoch seconds, `age > timeout`": lambda now: now - 90,
    "returned a time up to 300 s in the future": lambda now: now + 100,
    "returned a time more than 300 s in the future": lambda now: now + 600,
    "returned 100 times the clock or more": lambda now: now * 1000,
    "returned `None`, a string, `True`/`False`, ...": lambda now: None,
    "returned NaN or an infinity": lambda now: math.nan,
    "raised an exception": lambda now: _raise(),
    "raised an `OSError` about a file": lambda now: _missing_file(),
}


def _missing_file() -> float:
    raise FileNotFoundError(2, "No such file or directory", "/run/health/progress")


def _live(returns: Callable[[float], object]) -> Callable[[], int]:
    def callback() -> int:
        return returns(time.time())  # type: ignore[return-value]  # whatever the row returns

    return callback


def test_liveness_table():
    """Each row's verdict and reason, from the rule itself and from a real server."""
    (table,) = _tables("the callback...", "verdict", "reason")
    assert [row[0] for row in table.rows] == list(LIVENESS)
    for row, verdict_cell, reason_cell in table.rows:
        returns = LIVENESS[row]
        status = check_liveness(functools.partial(returns, NOW), timeout=60, clock=lambda: NOW)
        verdict = verdict_cell.split(",")[0].strip()
        reason = _span(reason_cell)
        assert status.verdict.value == verdict, row
        assert status.reason == (None if reason == "None" else reason), row
        if "age 0" in verdict_cell:
            assert status.age == 0.0
        server = HTTPHealthCheckServer(_live(returns), 0, 60, host="127.0.0.1", callback_timeout=5)
        with server:
            code, _, body = _exchange(server.port, _get("/healthz"))
        answer = json.loads(body)
        assert (code, answer["status"]) == (200 if verdict == "alive" else 503, verdict), row
        shape = re.compile(r"[\d.e+]+")
        assert shape.sub("N", str(answer["reason"])) == shape.sub("N", str(status.reason))


# -- the command line ----------------------------------------------------------------------


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_cli_flag_table():
    """Every flag of every command is documented, with the default the settings table has."""
    (table,) = _tables("command", "flag", "default", "meaning")
    documented: dict[tuple[str, frozenset[str]], str] = {}
    for command, flag, default, _ in table.rows:
        names = frozenset(span.split(" ")[0] for span in code_spans(flag))
        documented[_span(command), names] = default
    real: dict[tuple[str, frozenset[str]], argparse.Action] = {}
    for command, sub in _subparsers(build_parser()).items():
        for action in sub._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                real[command, frozenset(action.option_strings)] = action
    assert set(documented) == set(real)
    rows = {(row.command, row.flag): row for row in SETTINGS if row.flag is not None}
    for (command, names), default in documented.items():
        row = rows.get((command, next(iter(names))))
        if row is None:  # a flag outside the table: an output switch, off by default
            assert default == "off", (command, names)
            continue
        spans = code_spans(default)
        shown = spans[0] if spans else default
        assert shown == row.shown, (command, names, shown, row.shown)


def test_exit_status_table(servers, capsys):
    alive, _ = servers
    (table,) = _tables("exit status", "meaning")
    assert [int(_span(row[0])) for row in table.rows] == [0, 1, 2]
    assert main(["probe", f"127.0.0.1:{alive}"]) == 0
    assert main(["probe", "127.0.0.1:1"]) == 1  # refused
    with socket.create_server(("127.0.0.1", 0)) as taken:
        assert main(["serve", "--host", "127.0.0.1", "--port", str(taken.getsockname()[1])]) == 1
    assert main(["probe", "--timeout", "soon", "127.0.0.1:1"]) == 2
    with pytest.raises(SystemExit) as usage:  # argparse's own mistakes: the same status
        main(["probe"])
    assert usage.value.code == 2
    capsys.readouterr()


def test_probe_result_field_table(servers):
    alive, _ = servers
    (table,) = _tables("result field", "meaning")
    (result,) = probe([parse_target(f"127.0.0.1:{alive}")], timeout=5)
    assert [_span(row[0]) for row in table.rows] == list(result.to_dict())


# -- server kinds, the API, the docs' own conventions ---------------------------------------


def test_kind_table():
    (table,) = _tables("kind", "server")
    builtin = {}
    for kind, server in table.rows:
        spans = code_spans(kind)
        if spans and ":" not in spans[0]:
            builtin[spans[0]] = _span(server)
    assert set(builtin) == set(BUILTIN_KINDS)
    for name, shown in builtin.items():
        assert resolve_kind(name).__name__ == shown


def test_environment_variable_table():
    (table,) = _tables("variable", "kinds", "type", "default")
    for kind in ("http", "tcp"):
        option_types, _ = _options(resolve_kind(kind))
        parameters = inspect.signature(resolve_kind(kind)).parameters
        documented = {}
        for variable, kinds, type_cell, default in table.rows:
            if f"`{kind}`" in kinds:
                documented[_span(variable)] = (type_cell.split(",")[0], default)
        assert set(documented) == {ENV_PREFIX + name.upper() for name in option_types}
        for name, option_type in option_types.items():
            assert option_type is not None
            type_name, default = documented[ENV_PREFIX + name.upper()]
            assert type_name == option_type.__name__, name
            value = parameters[name].default
            spans = code_spans(default)
            shown = spans[0].lower() if spans else None
            if value is None:
                assert shown is None, name  # described in words ("every interface")
            elif isinstance(value, bool):
                assert shown == str(value).lower(), name
            else:
                assert shown is not None and ast.literal_eval(shown) == value, name


def test_api_reference_table():
    """Every name in the API reference can be imported as shown."""
    (table,) = _tables("name", "what it is")
    for row in table.rows:
        for span in code_spans(row[0]):
            name = span.split("(")[0]
            if name.startswith("."):
                module = importlib.import_module("elastic_healthcheck" + name)
                assert module is not None
            elif name.startswith("elastic_healthcheck."):
                module_name, _, attribute = name.rpartition(".")
                try:
                    module = importlib.import_module(name)
                except ImportError:
                    module = importlib.import_module(module_name)
                    assert hasattr(module, attribute), name
            else:
                assert name in elastic_healthcheck.__all__, name
                assert getattr(elastic_healthcheck, name) is not None


def test_benchmark_script_table():
    (table,) = _tables("script", "what it measures")
    scripts = {_span(row[0]) for row in table.rows}
    assert scripts == {path.name for path in (ROOT / "benchmarks").glob("bench_*.py")}


def test_stand_in_table():
    (table,) = _tables("stand-in", "what it is")
    assert [_span(row[0]) for row in table.rows] == test_examples.STAND_INS


# -- configuration: one table in the code, the same table in the docs ------------------------


def test_configuration_table_is_the_settings_table():
    """docs/configuration.md lists every setting: its variable, flag, argument and default."""
    (table,) = _tables("command", "variable", "flag", "install()", "default", "meaning")
    documented = []
    for command, variable, flag, argument, default, _ in table.rows:
        spans = code_spans(default)
        documented.append(
            (
                _span(command),
                code_spans(variable)[0] if code_spans(variable) else None,
                code_spans(flag)[0] if code_spans(flag) else None,
                code_spans(argument)[0].rstrip("=") if code_spans(argument) else None,
                spans[0] if spans else default,
            )
        )
    real = [
        (
            row.command,
            row.variable,
            row.flag,
            row.name if row.argument else None,
            row.shown,
        )
        for row in SETTINGS
    ]
    assert documented == real


def test_torchrun_option_table_agrees_with_the_settings_table():
    """docs/torchrun.md's options: each row's flag, variable, argument and default as the
    table has them (its other columns are that page's own)."""
    (table,) = _tables("flag", "variable", "install()", "default", "meaning")
    rows = {row.flag: row for row in SETTINGS if row.command == "torchrun" and row.flag}
    by_variable = {row.variable: row for row in SETTINGS if row.command == "torchrun"}
    assert table.rows
    for flag, variable, argument, default, _ in table.rows:
        if flag.strip():
            row = rows[_span(flag).split(" ")[0]]
            assert default.split(" ")[0].strip("`") in (row.shown, row.shown.split(" ")[0]), flag
        else:  # a variable with no flag of its own
            row = by_variable[_span(variable).split("=")[0]]
        assert _span(variable).split("=")[0] == row.variable, variable
        if argument.strip():
            assert _span(argument).split("=")[0] == row.name, variable


# -- deploying: the metrics a node exposes ---------------------------------------------------


def _torchrun_metrics(ranks: int) -> str:
    """/metrics of a real dead verdict with ``ranks`` local ranks: rank 1 hung in compute,
    the others waiting for it in all_reduce (as the integration builds it)."""
    from elastic_healthcheck._http.prometheus import render_metrics
    from elastic_healthcheck._torchrun.record import RankSnapshot
    from elastic_healthcheck._torchrun.verdict import group_status

    now = 1_795_600_300.0
    snapshots = {
        str(local): RankSnapshot(
            spawn_time=now - 900,
            pid=4100 + local,
            global_rank=local,
            progress_time=now - (80.25 if local == 1 else 75.5),
            steps=120,
            entered=239 if local == 1 else 240,
            depth=0 if local == 1 else 1,
            collective=None if local == 1 else "all_reduce",
            collective_since=0.0 if local == 1 else now - 75.0,
        )
        for local in range(ranks)
    }
    status = group_status(
        phase="running",
        now=now,
        timeout=60.0,
        startup_timeout=1800.0,
        group_start=now - 900,
        ranks=snapshots,
        extra={"restarts": 1, "hang_restarts": 0, "run_id": "job-42"},
    )
    return render_metrics(status, dict.fromkeys(Verdict, 1)).decode()


def test_deploy_metric_table_lists_every_family_and_label_value():
    (table,) = _tables("metric", "type", "labels", "meaning")
    text = _torchrun_metrics(2)
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    for metric, kind, labels, meaning in table.rows:
        name = _span(metric)
        assert types.get(name) == kind, name
        for label in code_spans(labels):
            assert re.search(rf"^{name}{{.*\b{label}=", text, re.MULTILINE), (name, label)
        label = (code_spans(labels) or [""])[-1]
        values = set(re.findall(rf'^{name}{{.*\b{label}="([^"]+)"', text, re.MULTILINE))
        if name.endswith(("_rank_state", "_agent_phase")):  # the row names every value
            assert set(code_spans(meaning)) == values, name


def test_deploy_series_count_is_what_a_node_exposes():
    page = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    match = re.search(
        r"A node with (\d+) local ranks exposes\s+(\d+) series: (\d+) for the verdict, (\d+)"
        r" for the agent and (\d+) per rank",
        page,
    )
    assert match is not None
    ranks, total, verdict, agent, per_rank = map(int, match.groups())

    def series(text: str) -> int:
        return sum(1 for line in text.splitlines() if line and not line.startswith("#"))

    with_ranks, without = _torchrun_metrics(ranks), _torchrun_metrics(0)
    assert series(with_ranks) == total == verdict + agent + ranks * per_rank
    assert series(_torchrun_metrics(ranks + 1)) - series(with_ranks) == per_rank
    assert series(without) == verdict + agent
