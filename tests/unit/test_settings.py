"""Configuration read once: one table, one precedence, one message per mistake, every source."""

from __future__ import annotations

import subprocess
import sys

import pytest

from elastic_healthcheck import ConfigurationError, torchelastic
from elastic_healthcheck._config.options import serve_options, torchrun_options
from elastic_healthcheck._config.settings import (
    ENV_PREFIX,
    RESERVED_ENV,
    SETTINGS,
    TORCH_PORT,
    authority,
    read,
    setting,
)
from elastic_healthcheck._torchrun.verdict import DEFAULT_PHASE_TIMEOUT

TIMEOUT = "ELASTIC_HEALTHCHECK_TORCHRUN_TIMEOUT"
PORT = "ELASTIC_HEALTHCHECK_PORT"


# -- the table ---------------------------------------------------------------------------------


def test_every_row_is_one_command_s_one_name():
    keys = [(row.command, row.name) for row in SETTINGS]
    assert len(keys) == len(set(keys))
    flags = [(row.command, row.flag) for row in SETTINGS if row.flag]
    assert len(flags) == len(set(flags))


def test_every_variable_is_under_the_prefix():
    variables = {row.variable for row in SETTINGS if row.variable}
    assert all(v.startswith(ENV_PREFIX) for v in variables)
    assert {f"{ENV_PREFIX}TORCHRUN", f"{ENV_PREFIX}TORCHRUN_PHASE_TIMEOUT", PORT} <= variables


def test_the_torch_integration_s_constants_are_the_table_s():
    """torchelastic names its variables and defaults as the table does (read once, there)."""
    assert torchelastic.ENV_PORT == TORCH_PORT == setting("torchrun", "port").fallback
    assert torchelastic.ENV_TIMEOUT == setting("torchrun", "timeout").variable
    assert torchelastic.ENV_STARTUP_TIMEOUT == setting("torchrun", "startup_timeout").variable
    assert torchelastic.ENV_BOOTSTRAP == setting("torchrun", "bootstrap").variable
    assert torchelastic.ENV_ON_HANG == setting("torchrun", "on_hang").variable
    assert torchelastic.DEFAULT_STARTUP_TIMEOUT == setting("torchrun", "startup_timeout").default
    assert torchelastic.ON_HANG == setting("torchrun", "on_hang").type.choices  # type: ignore[attr-defined]
    assert torchelastic.ENV_PHASE_TIMEOUT == setting("torchrun", "phase_timeout").variable
    assert torchelastic.ENV_FRESH_STORE == setting("torchrun", "fresh_store").variable
    assert DEFAULT_PHASE_TIMEOUT == setting("torchrun", "phase_timeout").default


def test_the_phase_timeout_and_the_plugin_switch_are_known():
    row = setting("torchrun", "phase_timeout")
    assert (row.flag, row.variable, row.argument, row.default) == (
        "--health-phase-timeout",
        "ELASTIC_HEALTHCHECK_TORCHRUN_PHASE_TIMEOUT",
        True,
        1800.0,
    )
    plugin = setting("torchrun", "plugin")
    assert (plugin.flag, plugin.variable, plugin.argument) == (
        None,
        "ELASTIC_HEALTHCHECK_TORCHRUN",
        False,
    )
    assert "ELASTIC_HEALTHCHECK_TORCHRUN" in RESERVED_ENV


# -- precedence ----------------------------------------------------------------------------------


def test_a_flag_wins_over_its_variable_and_the_variable_over_the_default():
    env = {PORT: "9001", TORCH_PORT: "9002"}
    assert read("torchrun", flags={"--health-port": "9000"}, environ=env)["port"] == 9000
    assert read("torchrun", arguments={"port": 0}, environ=env)["port"] == 0
    assert read("torchrun", environ=env)["port"] == 9001
    assert read("torchrun", environ={TORCH_PORT: "9002"})["port"] == 9002  # torch's own
    assert read("torchrun", environ={})["port"] is None  # the agent asks for one later
    assert read("serve", environ={})["port"] == 8080


def test_a_blank_variable_counts_as_unset():
    assert read("torchrun", environ={TIMEOUT: "  "})["timeout"] is None
    assert read("serve", environ={PORT: ""})["port"] == 8080


def test_an_argument_s_variable_is_not_even_parsed():
    assert read("torchrun", arguments={"timeout": 5}, environ={TIMEOUT: "soon"})["timeout"] == 5.0


# -- one message, whatever the source ---------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "arguments", "environ", "message"),
    [
        ({"--health-timeout": "0"}, {}, {}, "--health-timeout='0' is not a number of seconds > 0"),
        ({}, {"timeout": 0}, {}, "timeout=0 is not a number of seconds > 0"),
        ({}, {}, {TIMEOUT: "0"}, f"{TIMEOUT}='0' is not a number of seconds > 0"),
        ({}, {"timeout": "60"}, {}, "timeout='60' is not a number of seconds > 0"),
        ({}, {}, {TIMEOUT: "nan"}, f"{TIMEOUT}='nan' is not a number of seconds > 0"),
        ({"--health-port": "http"}, {}, {}, "invalid port 'http' from --health-port: expected"),
        ({}, {"port": 70000}, {}, "invalid port 70000 from port: expected 0 to 65535"),
        ({}, {}, {TORCH_PORT: "x"}, f"invalid port 'x' from {TORCH_PORT}"),
        ({}, {"on_hang": "reboot"}, {}, "on_hang='reboot' is not one of report, restart"),
        ({}, {"bootstrap": "no"}, {}, "bootstrap='no' is not True or False"),
        (
            {},
            {},
            {"ELASTIC_HEALTHCHECK_TORCHRUN": "maybe"},
            "ELASTIC_HEALTHCHECK_TORCHRUN='maybe' is not 0 or 1 (nor true, false, yes, no, on",
        ),
    ],
)
def test_a_mistake_is_one_line_naming_its_source(flags, arguments, environ, message):
    with pytest.raises(ConfigurationError) as info:
        torchrun_options(flags=flags, arguments=arguments, environ=environ)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_a_mistyped_variable_names_the_one_meant():
    with pytest.raises(ConfigurationError) as info:
        torchrun_options(environ={"ELASTIC_HEALTHCHECK_TORCHRUN_TIMOUT": "5"})
    assert str(info.value).startswith(
        "ELASTIC_HEALTHCHECK_TORCHRUN_TIMOUT is not a variable elastic-healthcheck reads:"
        " did you mean ELASTIC_HEALTHCHECK_TORCHRUN_TIMEOUT?"
    )


def test_install_checks_everything_before_touching_torch(monkeypatch):
    """A mistake raises at once, naming the variable: never a silently ignored typo."""
    monkeypatch.setenv("ELASTIC_HEALTHCHECK_TORCHRUN_STARTUP", "60")
    with pytest.raises(ConfigurationError, match="did you mean ELASTIC_HEALTHCHECK_TORCHRUN_"):
        torchelastic.install()


def test_workers_variables_stay_reserved():
    assert torchrun_options(environ={"ELASTIC_HEALTHCHECK_WORKER_DIR": "/tmp/x"}).kind == "http"


# -- what the options hold ------------------------------------------------------------------


def test_torchrun_defaults():
    options = torchrun_options(environ={})
    assert (options.kind, options.port, options.timeout) == ("http", None, None)
    assert (options.startup_timeout, options.phase_timeout) == (1800.0, 1800.0)
    assert (options.on_hang, options.debug, options.bootstrap, options.plugin) == (
        "report",
        False,
        True,
        True,
    )
    assert options.fresh_store is True
    assert options.server_options == {}


def test_torchrun_options_from_the_environment():
    options = torchrun_options(
        environ={
            "ELASTIC_HEALTHCHECK_SERVER": "tcp",
            "ELASTIC_HEALTHCHECK_HOST": "[::1]",
            "ELASTIC_HEALTHCHECK_TORCHRUN_PHASE_TIMEOUT": "600",
            "ELASTIC_HEALTHCHECK_TORCHRUN_BOOTSTRAP": "off",
            "ELASTIC_HEALTHCHECK_TORCHRUN": "0",
            "ELASTIC_HEALTHCHECK_TORCHRUN_ON_HANG": "restart",
        }
    )
    assert (options.kind, options.kind_source) == ("tcp", "ELASTIC_HEALTHCHECK_SERVER")
    assert options.server_options == {"host": "::1"}
    assert (options.phase_timeout, options.bootstrap, options.plugin, options.on_hang) == (
        600.0,
        False,
        False,
        "restart",
    )


def test_install_s_own_server_options_pass_through_and_are_checked():
    options = torchrun_options(arguments={"host": "127.0.0.1", "client_timeout": 2.0}, environ={})
    assert options.server_options == {"host": "127.0.0.1", "client_timeout": 2.0}
    with pytest.raises(ConfigurationError, match="unexpected option 'hsot'"):
        torchrun_options(arguments={"hsot": "127.0.0.1"}, environ={})


def test_debug_from_its_variable_reaches_the_server():
    options = torchrun_options(environ={"ELASTIC_HEALTHCHECK_DEBUG": "yes"})
    assert options.debug and options.server_options == {"debug": True}


@pytest.mark.parametrize("host", ["[::1]", " [::1] ", "::1"])
def test_serve_takes_an_ipv6_address_with_or_without_brackets(host):
    """As probe does: `serve --host '[::1]'` is no name to look up."""
    assert serve_options(flags={"--host": host}, environ={}).server_options == {"host": "::1"}


@pytest.mark.parametrize("host", ["[]", "", "[::1", "a b", "http://x"])
def test_serve_refuses_what_is_no_host(host):
    with pytest.raises(ConfigurationError, match="is not an address or host name"):
        serve_options(flags={"--host": host}, environ={})


def test_serve_honours_the_server_and_port_variables():
    options = serve_options(flags={}, environ={"ELASTIC_HEALTHCHECK_SERVER": "tcp", PORT: "9100"})
    assert (options.kind, options.port) == ("tcp", 9100)
    assert serve_options(flags={"--kind": "http"}, environ={"ELASTIC_HEALTHCHECK_SERVER": "tcp"})


def test_serve_refuses_the_no_op_kind_from_a_variable_too():
    with pytest.raises(ConfigurationError, match="^ELASTIC_HEALTHCHECK_SERVER=noop is torch's"):
        serve_options(flags={}, environ={"ELASTIC_HEALTHCHECK_SERVER": "noop"})


def test_authority_brackets_ipv6_only():
    assert authority("::", 8080) == "[::]:8080"
    assert authority("node1", 8080) == "node1:8080"


# -- public names in tracebacks ----------------------------------------------------------


def test_a_traceback_names_the_public_class():
    code = (
        "from elastic_healthcheck import create_server\n"
        "create_server(lambda: 0, 0, 60, kind='htp')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("elastic_healthcheck.ConfigurationError: kind='htp'"), last


def test_the_error_pickles_under_its_public_name():
    import pickle

    error = ConfigurationError("x")
    assert type(pickle.loads(pickle.dumps(error))) is ConfigurationError
