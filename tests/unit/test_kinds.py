"""Choosing a server without changing code: kinds, plugins and options from the environment.

No server is started here; constructing one opens no socket.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from elastic_healthcheck import create_server
from elastic_healthcheck._config import kinds as _kinds
from elastic_healthcheck._config.kinds import (
    BUILTIN_KINDS,
    ENV_PREFIX,
    RESERVED_ENV,
    ConfigurationError,
    available_kinds,
    build_server,
    resolve_kind,
)
from elastic_healthcheck._http.server import HTTPHealthCheckServer
from elastic_healthcheck._tcp.server import TCPHealthCheckServer
from elastic_healthcheck.health_check_server import HealthCheckServer, create_healthcheck_server

SERVER = "ELASTIC_HEALTHCHECK_SERVER"


def alive() -> int:
    return 0


class OptionsServer(HealthCheckServer):
    """One keyword-only option per type the environment can set, plus one it cannot."""

    def __init__(
        self,
        alive_callback,
        port,
        timeout,
        *,
        flag: bool = False,
        count: int = 1,
        ratio: float = 0.5,
        interval: float = 1,
        label: str = "label",
        note: str | None = None,
        limit: int | None = None,
        modes: tuple[str, ...] = (),
    ) -> None:
        super().__init__(alive_callback, port, timeout)
        self.options = {
            "flag": flag,
            "count": count,
            "ratio": ratio,
            "interval": interval,
            "label": label,
            "note": note,
            "limit": limit,
            "modes": modes,
        }


class PassThroughServer(HealthCheckServer):
    """Takes any keyword argument."""

    def __init__(self, alive_callback, port, timeout, **extra: object) -> None:
        super().__init__(alive_callback, port, timeout)
        self.extra = extra


class NotAServer:
    def __init__(self, alive_callback, port, timeout) -> None:
        pass


OPTIONS_SERVER = f"{__name__}:OptionsServer"


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    """No variable of ours from the outer environment, and a fresh cache of kinds."""
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    monkeypatch.setattr(_kinds, "_resolved", {})


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A real installed distribution registering the kind ``demo`` (and trying ``http``)."""
    package = tmp_path / "eh_plugin_demo"
    package.mkdir()
    (package / "__init__.py").write_text(
        textwrap.dedent(
            """
            from elastic_healthcheck import HealthCheckServer


            class DemoServer(HealthCheckServer):
                def __init__(self, alive_callback, port, timeout, *, greeting="hello"):
                    super().__init__(alive_callback, port, timeout)
                    self.greeting = greeting
            """
        )
    )
    info = tmp_path / "eh_plugin_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: eh_plugin_demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[elastic_healthcheck.servers]\n"
        "demo = eh_plugin_demo:DemoServer\n"
        "http = eh_plugin_demo:DemoServer\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    # Only this distribution's kinds: another installed plugin (the docs' UDP example,
    # say) must not change what these tests see.
    real_entry_points = importlib.metadata.entry_points

    def only_the_demo(*, group: str) -> importlib.metadata.EntryPoints:
        found: importlib.metadata.EntryPoints = real_entry_points(group=group)
        return importlib.metadata.EntryPoints(
            ep for ep in found if ep.dist is not None and ep.dist.name == "eh_plugin_demo"
        )

    monkeypatch.setattr(importlib.metadata, "entry_points", only_the_demo)
    yield
    sys.modules.pop("eh_plugin_demo", None)


def clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}


def modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    script = f"import sys\n{code}\nprint('\\n'.join(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=clean_environ(),
        capture_output=True,
        text=True,
        check=True,
    )
    return set(result.stdout.split())


HEAVY = {
    "elastic_healthcheck._http.server",
    "elastic_healthcheck._tcp.server",
    "socket",
    "importlib.metadata",
    "inspect",
}


# -- the default: torch's no-op --------------------------------------------------------


def test_default_is_torchs_noop_server():
    assert type(create_healthcheck_server(alive, 29500, 60)) is HealthCheckServer


def test_default_logs_what_torch_logs(caplog):
    module = "elastic_healthcheck.health_check_server"
    caplog.set_level(logging.DEBUG, logger=module)
    server = create_healthcheck_server(alive_callback=alive, port=0, timeout=60)
    server.start()
    server.stop()
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        (module, logging.WARNING, "No health check server started"),
        (module, logging.INFO, "Stopping noop health check server."),
    ]


def test_blank_server_variable_means_the_default(monkeypatch):
    monkeypatch.setenv(SERVER, "  ")
    assert type(create_healthcheck_server(alive, 0, 60)) is HealthCheckServer


@pytest.mark.parametrize("kind", [None, "http", "tcp"])
def test_blank_option_variable_is_unset_for_every_kind(monkeypatch, kind):
    """Even for noop, which takes no options: a blank variable is not a typo to report."""
    monkeypatch.setenv("ELASTIC_HEALTHCHECK_HOST", "")
    monkeypatch.setenv("ELASTIC_HEALTHCHECK_HSOT", "  ")
    server = create_server(alive, 0, 60, kind=kind)
    assert isinstance(server, HealthCheckServer)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"max_connections": 0}, id="value-error"),
        pytest.param({"callback_timeout": "soon"}, id="type-error"),
        pytest.param({"client_timeout": -1.0}, id="negative"),
    ],
)
def test_keyword_option_the_server_rejects_is_a_configuration_error(options):
    with pytest.raises(ConfigurationError, match="health check server kind 'http' rejected its"):
        create_server(alive, 0, 60, kind="http", **options)


def test_import_loads_no_server_and_no_introspection():
    assert not modules_after("import elastic_healthcheck") & HEAVY


def test_default_factory_call_loads_no_server_and_no_introspection():
    code = "import elastic_healthcheck as eh\neh.create_healthcheck_server(int, 0, 60)"
    assert not modules_after(code) & HEAVY


def test_factory_without_our_variables_never_imports_the_registry():
    """DESIGN: the mirrored factory keeps torch's shape; only the environment reaches kinds."""
    code = "import elastic_healthcheck as eh\neh.create_healthcheck_server(int, 0, 60)"
    loaded = modules_after(code)
    assert "elastic_healthcheck.health_check_server" in loaded
    assert not {m for m in loaded if m.startswith("elastic_healthcheck._config")}


# -- choosing a kind ---------------------------------------------------------------------


def test_server_variable_selects_http(monkeypatch):
    monkeypatch.setenv(SERVER, "http")
    assert type(create_healthcheck_server(alive, 0, 60)) is HTTPHealthCheckServer


def test_server_variable_selects_tcp(monkeypatch):
    monkeypatch.setenv(SERVER, "tcp")
    assert type(create_healthcheck_server(alive, 0, 60)) is TCPHealthCheckServer


def test_server_variable_value_is_stripped(monkeypatch):
    monkeypatch.setenv(SERVER, " http\n")
    assert type(create_healthcheck_server(alive, 0, 60)) is HTTPHealthCheckServer


def test_kind_argument_overrides_server_variable(monkeypatch):
    monkeypatch.setenv(SERVER, "http")
    assert type(create_server(alive, 0, 60, kind="noop")) is HealthCheckServer


def test_kind_argument_selects_http():
    assert type(create_server(alive, 0, 60, kind="http")) is HTTPHealthCheckServer


def test_module_class_form_as_argument():
    assert type(create_server(alive, 0, 60, kind=OPTIONS_SERVER)) is OptionsServer


def test_module_class_form_from_environment(monkeypatch):
    monkeypatch.setenv(SERVER, OPTIONS_SERVER)
    assert type(create_healthcheck_server(alive, 0, 60)) is OptionsServer


def test_server_gets_torchs_three_arguments():
    server = create_server(alive, 29500, 60, kind="http")
    assert (server.alive_callback, server._port, server._timeout) == (alive, 29500, 60)


def test_kind_must_be_a_string():
    with pytest.raises(TypeError, match="kind must be a str, not type"):
        create_server(alive, 0, 60, kind=OptionsServer)  # type: ignore[arg-type]


def test_builtin_kinds_are_import_strings():
    assert BUILTIN_KINDS == {
        "noop": "elastic_healthcheck.health_check_server:HealthCheckServer",
        "http": "elastic_healthcheck._http.server:HTTPHealthCheckServer",
        "tcp": "elastic_healthcheck._tcp.server:TCPHealthCheckServer",
    }


def test_resolve_kind_returns_the_class():
    assert resolve_kind("http") is HTTPHealthCheckServer


# -- plugins: entry points of installed distributions -------------------------------------


def test_entry_point_kind_as_argument(plugin):
    server = create_server(alive, 0, 60, kind="demo")
    assert type(server).__module__ == "eh_plugin_demo"
    assert type(server).__name__ == "DemoServer"


def test_entry_point_kind_from_environment(plugin, monkeypatch):
    monkeypatch.setenv(SERVER, "demo")
    assert type(create_healthcheck_server(alive, 0, 60)).__name__ == "DemoServer"


def test_entry_point_kind_takes_options_from_environment(plugin, monkeypatch):
    monkeypatch.setenv(SERVER, "demo")
    monkeypatch.setenv("ELASTIC_HEALTHCHECK_GREETING", "hi")
    assert create_healthcheck_server(alive, 0, 60).greeting == "hi"  # type: ignore[attr-defined]


def test_available_kinds_lists_builtins_then_entry_points(plugin):
    assert available_kinds() == {**BUILTIN_KINDS, "demo": "eh_plugin_demo:DemoServer"}


def test_another_installed_plugin_does_not_change_what_these_tests_see(plugin, tmp_path_factory):
    """The docs' UDP plugin, installed next to the package, leaves these tests' kinds alone."""
    elsewhere = tmp_path_factory.mktemp("site")
    info = elsewhere / "acme_healthcheck_udp-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: acme-healthcheck-udp\nVersion: 0.1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[elastic_healthcheck.servers]\nudp = acme_healthcheck_udp:UDPHealthCheckServer\n"
    )
    sys.path.append(str(elsewhere))
    try:
        assert "udp" in {
            ep.name for ep in importlib.metadata.distribution("acme-healthcheck-udp").entry_points
        }
        assert available_kinds() == {**BUILTIN_KINDS, "demo": "eh_plugin_demo:DemoServer"}
    finally:
        sys.path.remove(str(elsewhere))


def test_builtin_name_wins_over_entry_point_of_same_name(plugin):
    assert resolve_kind("http") is HTTPHealthCheckServer


def test_entry_point_resolution_is_cached(plugin, monkeypatch):
    first = resolve_kind("demo")

    def no_scan(**kwargs):
        raise AssertionError("entry points scanned again")

    monkeypatch.setattr(importlib.metadata, "entry_points", no_scan)
    assert resolve_kind("demo") is first


def test_failed_resolution_is_not_cached(plugin, tmp_path):
    (tmp_path / "eh_plugin_demo" / "__init__.py").write_text(
        "raise RuntimeError('half-installed')\n"
    )
    with pytest.raises(ConfigurationError):
        resolve_kind("demo")
    (tmp_path / "eh_plugin_demo" / "__init__.py").write_text(
        "from elastic_healthcheck import HealthCheckServer as DemoServer\n"
    )
    assert resolve_kind("demo") is HealthCheckServer


# -- options from the environment -----------------------------------------------------------

PARSED = [
    ("FLAG", "1", "flag", True),
    ("FLAG", "0", "flag", False),
    ("FLAG", "TRUE", "flag", True),
    ("FLAG", "false", "flag", False),
    ("FLAG", "Yes", "flag", True),
    ("FLAG", "no", "flag", False),
    ("FLAG", "on", "flag", True),
    ("FLAG", "OFF", "flag", False),
    ("COUNT", "42", "count", 42),
    ("COUNT", " 7 ", "count", 7),
    ("RATIO", "0.25", "ratio", 0.25),
    ("RATIO", "2", "ratio", 2.0),
    ("INTERVAL", "0.5", "interval", 0.5),  # `float = 1`: the annotation says float
    ("LABEL", "text", "label", "text"),
    ("NOTE", "text", "note", "text"),  # a None default: str
    ("LIMIT", "9", "limit", 9),  # a None default, annotated `int | None`: int
]


@pytest.mark.parametrize(("suffix", "raw", "name", "value"), PARSED)
def test_environment_option_is_parsed_by_its_type(monkeypatch, suffix, raw, name, value):
    monkeypatch.setenv(ENV_PREFIX + suffix, raw)
    server = create_server(alive, 0, 60, kind=OPTIONS_SERVER)
    assert server.options[name] == value  # type: ignore[attr-defined]
    assert type(server.options[name]) is type(value)  # type: ignore[attr-defined]


BAD = [
    ("FLAG", "maybe", "0 or 1 (nor true, false, yes, no, on or off)"),
    ("FLAG", "2", "0 or 1 (nor true, false, yes, no, on or off)"),
    ("COUNT", "4.5", "an int"),
    ("COUNT", "ten", "an int"),
    ("RATIO", "fast", "a float"),
    ("LIMIT", "none", "an int"),
]


@pytest.mark.parametrize(("suffix", "raw", "expected"), BAD)
def test_bad_environment_value_names_variable_and_type(monkeypatch, suffix, raw, expected):
    monkeypatch.setenv(ENV_PREFIX + suffix, raw)
    with pytest.raises(ConfigurationError) as info:
        create_server(alive, 0, 60, kind=OPTIONS_SERVER)
    assert str(info.value).startswith(f"{ENV_PREFIX}{suffix}={raw!r} is not {expected} (option ")


def test_environment_options_reach_the_http_server(monkeypatch):
    monkeypatch.setenv(SERVER, "http")
    monkeypatch.setenv("ELASTIC_HEALTHCHECK_HOST", "127.0.0.1")
    monkeypatch.setenv("ELASTIC_HEALTHCHECK_CALLBACK_TIMEOUT", "0.25")
    monkeypatch.setenv("ELASTIC_HEALTHCHECK_CLIENT_TIMEOUT", "3")
    monkeypatch.setenv("ELASTIC_HEALTHCHECK_MAX_CONNECTIONS", "16")
    server = create_healthcheck_server(alive, 0, 60)
    assert server._host == "127.0.0.1"  # type: ignore[attr-defined]
    assert server._callback_timeout == 0.25  # type: ignore[attr-defined]
    assert server._client_timeout == 3.0  # type: ignore[attr-defined]
    assert server._max_connections == 16  # type: ignore[attr-defined]


def test_tcp_takes_its_own_options_from_environment(monkeypatch):
    monkeypatch.setenv(SERVER, "tcp")
    monkeypatch.setenv("ELASTIC_HEALTHCHECK_REFUSE_WHILE_DEAD", "yes")
    monkeypatch.setenv("ELASTIC_HEALTHCHECK_RECHECK_INTERVAL", "0.5")
    server = create_healthcheck_server(alive, 0, 60)
    assert type(server) is TCPHealthCheckServer
    assert server._refuse_while_dead is True
    assert server._recheck_interval == 0.5


def test_keyword_argument_overrides_environment(monkeypatch):
    monkeypatch.setenv("ELASTIC_HEALTHCHECK_COUNT", "5")
    server = create_server(alive, 0, 60, kind=OPTIONS_SERVER, count=9)
    assert server.options["count"] == 9  # type: ignore[attr-defined]


def test_overridden_environment_value_is_not_parsed(monkeypatch):
    monkeypatch.setenv("ELASTIC_HEALTHCHECK_COUNT", "not a number")
    server = create_server(alive, 0, 60, kind=OPTIONS_SERVER, count=9)
    assert server.options["count"] == 9  # type: ignore[attr-defined]


def test_blank_environment_option_means_the_default(monkeypatch):
    monkeypatch.setenv("ELASTIC_HEALTHCHECK_COUNT", "")
    server = create_server(alive, 0, 60, kind=OPTIONS_SERVER)
    assert server.options["count"] == 1  # type: ignore[attr-defined]


def test_option_of_other_type_cannot_come_from_environment(monkeypatch):
    monkeypatch.setenv("ELASTIC_HEALTHCHECK_MODES", "a,b")
    with pytest.raises(ConfigurationError, match="^ELASTIC_HEALTHCHECK_MODES cannot be set from"):
        create_server(alive, 0, 60, kind=OPTIONS_SERVER)


def test_value_rejected_by_the_class_names_the_variable(monkeypatch):
    monkeypatch.setenv(SERVER, "http")
    monkeypatch.setenv("ELASTIC_HEALTHCHECK_MAX_CONNECTIONS", "0")
    with pytest.raises(ConfigurationError) as info:
        create_healthcheck_server(alive, 0, 60)
    assert str(info.value) == (
        "health check server kind 'http' (from ELASTIC_HEALTHCHECK_SERVER) rejected its options"
        " from the environment (ELASTIC_HEALTHCHECK_MAX_CONNECTIONS='0'):"
        " max_connections must be at least 1, not 0"
    )
    assert type(info.value.__cause__) is ValueError


def test_environment_is_read_from_the_mapping_given():
    environ = {SERVER: OPTIONS_SERVER, "ELASTIC_HEALTHCHECK_COUNT": "3"}
    server = build_server(alive, 0, 60, environ=environ)
    assert server.options["count"] == 3  # type: ignore[attr-defined]


# -- unknown options -------------------------------------------------------------------------


def test_unknown_environment_option_is_an_error(monkeypatch):
    monkeypatch.setenv(SERVER, "http")
    monkeypatch.setenv("ELASTIC_HEALTHCHECK_HSOT", "127.0.0.1")
    with pytest.raises(ConfigurationError) as info:
        create_healthcheck_server(alive, 0, 60)
    assert str(info.value) == (
        "ELASTIC_HEALTHCHECK_HSOT is not a variable elastic-healthcheck reads:"
        " did you mean ELASTIC_HEALTHCHECK_HOST? (health check server kind 'http'"
        " (from ELASTIC_HEALTHCHECK_SERVER) takes"
        " ELASTIC_HEALTHCHECK_CALLBACK_TIMEOUT, ELASTIC_HEALTHCHECK_CLIENT_TIMEOUT,"
        " ELASTIC_HEALTHCHECK_DEBUG, ELASTIC_HEALTHCHECK_HOST,"
        " ELASTIC_HEALTHCHECK_MAX_CONNECTIONS)"
    )


def test_a_mistyped_torchrun_variable_is_an_error_naming_the_right_one(monkeypatch):
    """The torchrun variables are known by name, not by prefix: a typo is caught."""
    monkeypatch.setenv("ELASTIC_HEALTHCHECK_TORCHRUN_TIMOUT", "5")
    with pytest.raises(ConfigurationError) as info:
        create_server(alive, 0, 60, kind="http")
    assert str(info.value).startswith(
        "ELASTIC_HEALTHCHECK_TORCHRUN_TIMOUT is not a variable elastic-healthcheck reads:"
        " did you mean ELASTIC_HEALTHCHECK_TORCHRUN_TIMEOUT? ("
    )


def test_every_unknown_environment_option_is_named_at_once(monkeypatch):
    monkeypatch.setenv("ELASTIC_HEALTHCHECK_HSOT", "x")
    monkeypatch.setenv("ELASTIC_HEALTHCHECK_PROT", "x")
    monkeypatch.setenv("ELASTIC_HEALTHCHECK_QQQQQQQQ", "x")
    with pytest.raises(ConfigurationError) as info:
        create_server(alive, 0, 60, kind="http")
    assert str(info.value).startswith(
        "ELASTIC_HEALTHCHECK_HSOT, ELASTIC_HEALTHCHECK_PROT, ELASTIC_HEALTHCHECK_QQQQQQQQ"
        " are not variables elastic-healthcheck reads: did you mean"
        " ELASTIC_HEALTHCHECK_HOST (for ELASTIC_HEALTHCHECK_HSOT),"
        " ELASTIC_HEALTHCHECK_PORT (for ELASTIC_HEALTHCHECK_PROT)? ("
    )


def test_an_option_of_another_kind_names_the_kind_s_options(monkeypatch):
    monkeypatch.setenv("ELASTIC_HEALTHCHECK_AGENT_CHECK", "1")
    with pytest.raises(ConfigurationError) as info:
        create_server(alive, 0, 60, kind="http")
    assert str(info.value) == (
        "ELASTIC_HEALTHCHECK_AGENT_CHECK is not an option of health check server kind 'http';"
        " its options are ELASTIC_HEALTHCHECK_CALLBACK_TIMEOUT,"
        " ELASTIC_HEALTHCHECK_CLIENT_TIMEOUT, ELASTIC_HEALTHCHECK_DEBUG,"
        " ELASTIC_HEALTHCHECK_HOST, ELASTIC_HEALTHCHECK_MAX_CONNECTIONS"
    )


def test_environment_option_with_default_noop_is_an_error(monkeypatch):
    """Options without a kind: ELASTIC_HEALTHCHECK_SERVER was probably forgotten."""
    monkeypatch.setenv("ELASTIC_HEALTHCHECK_HOST", "127.0.0.1")
    with pytest.raises(ConfigurationError) as info:
        create_healthcheck_server(alive, 0, 60)
    assert str(info.value).startswith(
        "ELASTIC_HEALTHCHECK_HOST is not an option of health check server kind 'noop'"
        " (the default: ELASTIC_HEALTHCHECK_SERVER is not set); it takes none;"
        " choose a kind with ELASTIC_HEALTHCHECK_SERVER (accepted: noop, http, tcp"
    )


@pytest.mark.parametrize(
    "key",
    [
        "ELASTIC_HEALTHCHECK_PORT",
        "ELASTIC_HEALTHCHECK_TORCHRUN",
        "ELASTIC_HEALTHCHECK_TORCHRUN_TIMEOUT",
        "ELASTIC_HEALTHCHECK_TORCHRUN_PHASE_TIMEOUT",
        "ELASTIC_HEALTHCHECK_WORKER_ANYTHING",
    ],
)
def test_variables_read_elsewhere_are_not_options(monkeypatch, key):
    monkeypatch.setenv(key, "29500")
    assert type(create_healthcheck_server(alive, 0, 60)) is HealthCheckServer


def test_reserved_variables_are_those_the_settings_read_and_the_workers():
    assert RESERVED_ENV == (
        "ELASTIC_HEALTHCHECK_PORT",
        "ELASTIC_HEALTHCHECK_SERVER",
        "ELASTIC_HEALTHCHECK_TORCHRUN",
        "ELASTIC_HEALTHCHECK_TORCHRUN_BOOTSTRAP",
        "ELASTIC_HEALTHCHECK_TORCHRUN_FRESH_STORE",
        "ELASTIC_HEALTHCHECK_TORCHRUN_ON_HANG",
        "ELASTIC_HEALTHCHECK_TORCHRUN_PHASE_TIMEOUT",
        "ELASTIC_HEALTHCHECK_TORCHRUN_STARTUP_TIMEOUT",
        "ELASTIC_HEALTHCHECK_TORCHRUN_TIMEOUT",
        "ELASTIC_HEALTHCHECK_WORKER_",
    )


def test_explicit_option_for_noop_is_an_error():
    with pytest.raises(ConfigurationError) as info:
        create_server(alive, 0, 60, host="127.0.0.1")
    assert str(info.value) == (
        "unexpected option 'host' for health check server kind 'noop'"
        " (the default: ELASTIC_HEALTHCHECK_SERVER is not set); it takes: no options"
    )


def test_unknown_explicit_option_is_an_error():
    with pytest.raises(ConfigurationError) as info:
        create_server(alive, 0, 60, kind="http", hsot="127.0.0.1")
    assert str(info.value) == (
        "unexpected option 'hsot' for health check server kind 'http';"
        " it takes: callback_timeout, client_timeout, debug, host, max_connections"
    )


def test_class_taking_any_keyword_gets_explicit_options():
    kind = f"{__name__}:PassThroughServer"
    server = create_server(alive, 0, 60, kind=kind, anything=1)
    assert server.extra == {"anything": 1}  # type: ignore[attr-defined]


# -- kinds that cannot be used ------------------------------------------------------------------


def test_unknown_kind_from_environment_lists_accepted_names(plugin, monkeypatch):
    monkeypatch.setenv(SERVER, "htp")
    with pytest.raises(ConfigurationError) as info:
        create_healthcheck_server(alive, 0, 60)
    assert str(info.value) == (
        "ELASTIC_HEALTHCHECK_SERVER='htp' is not a known health check server kind"
        " (accepted: noop, http, tcp, demo, or package.module:ClassName)"
    )


def test_unknown_kind_argument_names_the_argument():
    with pytest.raises(ConfigurationError, match=r"^kind='htp' is not a known"):
        create_server(alive, 0, 60, kind="htp")


def test_configuration_error_is_a_value_error():
    with pytest.raises(ValueError):
        create_server(alive, 0, 60, kind="htp")


def test_missing_module_keeps_the_cause(monkeypatch):
    monkeypatch.setenv(SERVER, "eh_no_such_module:Server")
    with pytest.raises(ConfigurationError) as info:
        create_healthcheck_server(alive, 0, 60)
    assert str(info.value).startswith(
        "ELASTIC_HEALTHCHECK_SERVER='eh_no_such_module:Server' cannot be imported:"
        " ModuleNotFoundError: No module named 'eh_no_such_module' (accepted: noop, http, tcp"
    )
    assert type(info.value.__cause__) is ModuleNotFoundError


def test_module_failing_on_import_keeps_the_cause(tmp_path, monkeypatch):
    (tmp_path / "eh_broken_server.py").write_text("raise RuntimeError('no GPU here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigurationError, match="RuntimeError: no GPU here") as info:
        create_server(alive, 0, 60, kind="eh_broken_server:Server")
    assert type(info.value.__cause__) is RuntimeError


def test_missing_class_keeps_the_cause():
    with pytest.raises(ConfigurationError, match="has no attribute 'NoSuchServer'") as info:
        create_server(alive, 0, 60, kind=f"{__name__}:NoSuchServer")
    assert type(info.value.__cause__) is AttributeError


def test_builtin_kind_that_cannot_be_imported_names_its_target(monkeypatch):
    monkeypatch.setitem(BUILTIN_KINDS, "tcp", "eh_no_such_module:TCPHealthCheckServer")
    with pytest.raises(ConfigurationError) as info:
        create_server(alive, 0, 60, kind="tcp")
    assert str(info.value).startswith(
        "kind='tcp' (eh_no_such_module:TCPHealthCheckServer) cannot be imported:"
    )


@pytest.mark.parametrize("target", [f"{__name__}:NotAServer", f"{__name__}:alive"])
def test_object_that_is_not_a_server_class_is_rejected(target):
    with pytest.raises(ConfigurationError, match="is not a HealthCheckServer subclass but"):
        create_server(alive, 0, 60, kind=target)


@pytest.mark.parametrize("target", ["json:", ":Server", "json:a:b", "json-x:Server"])
def test_malformed_target_is_rejected(target):
    with pytest.raises(ConfigurationError, match="is not of the form package.module:ClassName"):
        resolve_kind(target)


def test_create_server_is_public_and_builds_the_kind_named():
    import elastic_healthcheck

    assert elastic_healthcheck.create_server is create_server
    assert create_server.__module__ == "elastic_healthcheck"
    server = create_server(alive, 0, 60, kind="tcp", host="127.0.0.1")
    assert type(server) is TCPHealthCheckServer
