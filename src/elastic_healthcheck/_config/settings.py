"""Settings: every flag, argument and ``ELASTIC_HEALTHCHECK_*`` variable, in one table.

:data:`SETTINGS` lists what each command reads and from where: its command-line flag, its
argument (``install(timeout=...)``), its environment variable and its default. :func:`read`
applies the one precedence rule to any of them::

    flag or argument  >  variable  >  fallback variable (torch's own)  >  default

A variable that is set but blank counts as unset. Each value goes through its
:class:`ValueType`, which parses text (a flag, a variable) and checks a Python value (an
argument) with the same rule and the same message: ``SOURCE=VALUE is not WHAT``, naming
the flag, argument or variable it came from (a port: ``invalid port VALUE from SOURCE``).
Every mistake is one :class:`ConfigurationError`, a ``ValueError``.

Cheap on purpose: ``probe`` reads its timeout through here, and Docker starts it every few
seconds. No dataclasses, no typing, no inspect.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = [
    "DEFAULT_PHASE_TIMEOUT",
    "DEFAULT_STARTUP_TIMEOUT",
    "ENV_PREFIX",
    "ENV_SERVER",
    "MAX_PROBE_TIMEOUT",
    "ON_HANG",
    "RESERVED_ENV",
    "SETTINGS",
    "TORCH_PORT",
    "ConfigurationError",
    "Setting",
    "ValueType",
    "authority",
    "nearest",
    "where_served",
    "parse_variable",
    "read",
    "setting",
]

ENV_PREFIX = "ELASTIC_HEALTHCHECK_"
ENV_SERVER = ENV_PREFIX + "SERVER"
ENV_HOST = ENV_PREFIX + "HOST"
ENV_PORT = ENV_PREFIX + "PORT"
# torch's own variable: its elastic agent builds a health-check server when it is set.
TORCH_PORT = "TORCHELASTIC_HEALTH_CHECK_PORT"
# Set by the torch integration in each worker's environment: never the user's to set.
WORKER_PREFIX = ENV_PREFIX + "WORKER_"


class ConfigurationError(ValueError):
    """A setting, from a flag, an argument or the environment, cannot be used.

    The message is one line: it names where the value came from (the flag, the argument or
    the environment variable) and what would have been accepted. A failed import is kept
    as ``__cause__``.
    """


# Raised by the public package as elastic_healthcheck.ConfigurationError: tracebacks and
# pickles name the public home, not this private module.
ConfigurationError.__module__ = "elastic_healthcheck"


class ValueType:
    """How a setting's text becomes a value, and how a Python value is checked.

    Subclasses override :meth:`parse` (text from a flag or variable, stripped) and
    :meth:`check` (a Python value from an argument); both return the value or raise
    :class:`ConfigurationError` saying ``SOURCE=VALUE is not`` :attr:`expected`.
    """

    expected = "a value"
    metavar = "VALUE"

    def parse(self, text: str, source: str) -> object:
        return text

    def check(self, value: object, source: str) -> object:
        return value

    def error(self, source: str, value: object) -> ConfigurationError:
        return ConfigurationError(f"{source}={value!r} is not {self.expected}")


class Seconds(ValueType):
    """A finite duration in seconds: ``>= 0``, or ``> 0`` when ``positive``; at most ``at_most``."""

    def __init__(self, *, positive: bool, at_most: float | None = None) -> None:
        self.positive = positive
        self.at_most = at_most
        bound = "> 0" if positive else ">= 0"
        if at_most is not None:
            bound += f" and at most {at_most:g}"
        self.expected = f"a number of seconds {bound}"
        self.metavar = "SECONDS"

    def parse(self, text: str, source: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise self.error(source, text) from None
        return self._bounded(value, source, text)

    def check(self, value: object, source: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(source, value)
        return self._bounded(float(value), source, value)

    def _bounded(self, value: float, source: str, shown: object) -> float:
        if (
            not math.isfinite(value)
            or value < 0
            or (value == 0 and self.positive)
            or (self.at_most is not None and value > self.at_most)
        ):
            raise self.error(source, shown)
        return value


class Port(ValueType):
    """A TCP port, 0 to 65535 (0: the system picks one)."""

    expected = "a port number (0 to 65535)"
    metavar = "PORT"

    def error(self, source: str, value: object) -> ConfigurationError:
        # Worded as argparse words it, which the command line has always printed.
        return ConfigurationError(f"invalid port {value!r} from {source}: expected 0 to 65535")

    def parse(self, text: str, source: str) -> int:
        # isdigit() alone accepts "²" (which int() refuses) and full-width digits (which it reads).
        if not (text.isascii() and text.isdigit()) or int(text) > 65535:
            raise self.error(source, text)
        return int(text)

    def check(self, value: object, source: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
            raise self.error(source, value)
        return value


_BOOLS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


class Flag(ValueType):
    """On or off: ``1``/``0``, ``true``/``false``, ``yes``/``no``, ``on``/``off``, any case."""

    expected = "0 or 1 (nor true, false, yes, no, on or off)"

    def parse(self, text: str, source: str) -> bool:
        try:
            return _BOOLS[text.lower()]
        except KeyError:
            raise self.error(source, text) from None

    def check(self, value: object, source: str) -> bool:
        if not isinstance(value, bool):
            raise ConfigurationError(f"{source}={value!r} is not True or False")
        return value


class Choice(ValueType):
    """One of a few words."""

    def __init__(self, *choices: str) -> None:
        self.choices = choices
        self.expected = f"one of {', '.join(choices)}"
        self.metavar = "{" + ",".join(choices) + "}"

    def parse(self, text: str, source: str) -> str:
        return self.check(text, source)

    def check(self, value: object, source: str) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise self.error(source, value)
        return value


class Text(ValueType):
    """A non-empty string (a kind's name, a path)."""

    expected = "a non-empty string"

    def check(self, value: object, source: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(source, value)
        return value


class Host(ValueType):
    """An address or name to listen on; ``[v6addr]`` is accepted as ``probe`` accepts it."""

    expected = "an address or host name"
    metavar = "HOST"

    def parse(self, text: str, source: str) -> str:
        return self.check(text, source)

    def check(self, value: object, source: str) -> str:
        if not isinstance(value, str):
            raise self.error(source, value)
        host = value.strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]  # a URL's brackets around an IPv6 address: not part of it
        if not host or any(c in host for c in "[]/ "):
            raise self.error(source, value)
        return host


class Setting:
    """One row of :data:`SETTINGS`: a value a command reads, and every place it may come from.

    Attributes:
        command: ``serve``, ``probe``, ``torchrun`` (the CLI's command and ``install()``).
        name: The value's name (the ``install()`` argument, where there is one).
        type: Its :class:`ValueType`.
        default: Used when no source sets it (``None``: decided elsewhere, said in ``shown``).
        flag: The command-line flag, or ``None``.
        variable: The environment variable, or ``None``.
        argument: Whether ``install()`` takes it as a keyword argument.
        flag_value: For a flag that takes no value: what giving it sets.
        fallback: A variable read when ``variable`` is not set (torch's own).
        server_option: Whether it is also an option of the server kinds (``host=``), so the
            kinds read its variable through this row too.
        shown: The default as the documents show it.
        metavar: What ``--help`` calls the flag's value.
        meaning: One line for ``--help`` and the documents.
    """

    __slots__ = (
        "argument",
        "command",
        "default",
        "fallback",
        "flag",
        "flag_value",
        "meaning",
        "metavar",
        "name",
        "server_option",
        "shown",
        "type",
        "variable",
    )

    def __init__(
        self,
        command: str,
        name: str,
        type: ValueType,
        default: object,
        meaning: str,
        *,
        flag: str | None = None,
        variable: str | None = None,
        argument: bool = False,
        flag_value: object = None,
        fallback: str | None = None,
        server_option: bool = False,
        shown: str | None = None,
        metavar: str | None = None,
    ) -> None:
        self.command = command
        self.name = name
        self.type = type
        self.default = default
        self.meaning = meaning
        self.flag = flag
        self.variable = variable
        self.argument = argument
        self.flag_value = flag_value
        self.fallback = fallback
        self.server_option = server_option
        self.shown = shown if shown is not None else _shown(default)
        self.metavar = metavar or type.metavar

    def __repr__(self) -> str:
        return f"Setting({self.command!r}, {self.name!r})"


def _shown(default: object) -> str:
    if default is None:
        return "none"
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


_POSITIVE = Seconds(positive=True)
_NON_NEGATIVE = Seconds(positive=False)
_KIND = Text()
_HOST = Host()
_PORT = Port()
_FLAG = Flag()
_TORCHRUN = ENV_PREFIX + "TORCHRUN"

# The longest probe timeout: a day. A longer one is surely a typo (milliseconds?), and the
# probe has to leave before an orchestrator's own timeout anyway.
MAX_PROBE_TIMEOUT = 86400.0

# From a worker group's spawn, how long ranks may go without their first progress. It
# covers importing torch, the process group's own rendezvous, loading data and the first
# step of a large job: torch's own default timeout for init_process_group (and its first
# collectives on gloo) is 30 minutes, so a first step that takes longer fails there anyway.
DEFAULT_STARTUP_TIMEOUT = 1800.0
# How long a rank may stay inside an evaluation or checkpoint phase without a sign of life:
# the same 30 minutes, for the same reason (a collective inside it gives up by then).
DEFAULT_PHASE_TIMEOUT = 1800.0
ON_HANG = ("report", "restart")

SETTINGS: tuple[Setting, ...] = (
    # serve: a sidecar.
    Setting(
        "serve", "kind", _KIND, "http",
        "`http`, `tcp` or a plugin's kind (not `noop`, which serves nothing)",
        flag="--kind", variable=ENV_SERVER, metavar="KIND",
    ),
    Setting(
        "serve", "host", _HOST, None, "address to listen on; `[v6addr]` works too",
        flag="--host", variable=ENV_HOST, server_option=True, shown="every interface",
    ),
    Setting(
        "serve", "port", _PORT, 8080, "port to listen on, 0-65535; 0 picks one",
        flag="--port", variable=ENV_PORT,
    ),
    Setting(
        "serve", "timeout", _POSITIVE, 60.0, "seconds without progress before dead; > 0",
        flag="--timeout",
    ),
    Setting(
        "serve", "callback_timeout", _POSITIVE, None,
        "seconds a probe waits for liveness before answering unknown; > 0",
        flag="--callback-timeout", variable=ENV_PREFIX + "CALLBACK_TIMEOUT", server_option=True,
        shown="0.5",
    ),
    Setting(
        "serve", "heartbeat_file", Text(), None, "liveness is this file's modification time",
        flag="--heartbeat-file", shown="none: the clock", metavar="PATH",
    ),
    # probe: a client.
    Setting(
        "probe", "timeout", Seconds(positive=True, at_most=MAX_PROBE_TIMEOUT), 1.0,
        "seconds per target; > 0 and at most 86400",
        flag="--timeout",
    ),
    # torchrun and install(): the agent's health server.
    Setting(
        "torchrun", "kind", _KIND, "http", "server kind",
        flag="--health-kind", variable=ENV_SERVER, argument=True, metavar="KIND",
    ),
    Setting(
        "torchrun", "host", _HOST, None, "address to listen on",
        flag="--health-host", variable=ENV_HOST, argument=True, server_option=True,
        shown="every interface",
    ),
    Setting(
        "torchrun", "port", _PORT, None,
        "serve on this port, at once (else when the agent asks for a server)",
        flag="--health-port", variable=ENV_PORT, argument=True, fallback=TORCH_PORT,
        shown=TORCH_PORT,
    ),
    Setting(
        "torchrun", "timeout", _POSITIVE, None, "seconds without progress before dead; > 0",
        flag="--health-timeout", variable=ENV_PREFIX + "TORCHRUN_TIMEOUT", argument=True,
        shown="60",
    ),
    Setting(
        "torchrun", "startup_timeout", _NON_NEGATIVE, DEFAULT_STARTUP_TIMEOUT,
        "seconds from a worker group's spawn during which ranks with no progress yet count"
        " as starting",
        flag="--health-startup-timeout", variable=ENV_PREFIX + "TORCHRUN_STARTUP_TIMEOUT",
        argument=True,
    ),
    Setting(
        "torchrun", "phase_timeout", _POSITIVE, DEFAULT_PHASE_TIMEOUT,
        "seconds a rank may stay inside an evaluation, a checkpoint or a named phase without"
        " a sign of life",
        flag="--health-phase-timeout", variable=ENV_PREFIX + "TORCHRUN_PHASE_TIMEOUT",
        argument=True,
    ),
    Setting(
        "torchrun", "on_hang", Choice(*ON_HANG), "report",
        "`report`: 503 and the hung ranks' stacks in the log; `restart`: also end the hung"
        " worker group so torchrun restarts it",
        flag="--health-on-hang", variable=ENV_PREFIX + "TORCHRUN_ON_HANG", argument=True,
    ),
    Setting(
        "torchrun", "debug", _FLAG, False,
        "serve the stalled ranks' latest stacks on `GET /debug/ranks` (404 without it)",
        flag="--health-debug", flag_value=True, variable=ENV_PREFIX + "DEBUG", argument=True,
        server_option=True,
    ),
    Setting(
        "torchrun", "bootstrap", _FLAG, True,
        "start workers as plain torchrun does, without the bootstrap (progress then comes"
        " only from `beat()`)",
        flag="--health-no-bootstrap", flag_value=False, variable=ENV_PREFIX + "TORCHRUN_BOOTSTRAP",
        argument=True, shown="bootstrap on",
    ),
    Setting(
        "torchrun", "fresh_store", _FLAG, True,
        "a new store for the workers at every rendezvous round (every node of a job must"
        " agree); `0` keeps torch's one store",
        variable=ENV_PREFIX + "TORCHRUN_FRESH_STORE", argument=True,
    ),
    Setting(
        "torchrun", "plugin", _FLAG, True,
        "`0` keeps plain `torchrun` from serving health checks when this package is installed",
        variable=_TORCHRUN,
    ),
)  # fmt: skip

# Variables under ENV_PREFIX that are read, but are no option of a server kind; and the
# prefix set for workers. Every other variable under ENV_PREFIX must be an option of the
# chosen kind, or it is a mistake (a typo cannot go unnoticed). An entry ending in "_"
# reserves every name that starts with it.
RESERVED_ENV: tuple[str, ...] = (
    *sorted({s.variable for s in SETTINGS if s.variable and not s.server_option}),
    WORKER_PREFIX,
)


def setting(command: str, name: str) -> Setting:
    """The row of :data:`SETTINGS` for ``command``'s ``name``.

    Raises:
        KeyError: There is none.
    """
    for row in SETTINGS:
        if row.command == command and row.name == name:
            return row
    raise KeyError((command, name))


def read(
    command: str,
    *,
    flags: Mapping[str, object] | None = None,
    arguments: Mapping[str, object] | None = None,
    environ: Mapping[str, str],
) -> dict[str, object]:
    """Every setting of ``command``, from its flags or arguments, variables and defaults.

    >>> read("serve", flags={"--port": "9000"}, environ={"ELASTIC_HEALTHCHECK_PORT": "1"})["port"]
    9000
    >>> read("serve", environ={"ELASTIC_HEALTHCHECK_PORT": " 7000 "})["port"]
    7000

    Args:
        command: ``serve``, ``probe`` or ``torchrun``.
        flags: Flag -> its text as given (or, for a flag that takes no value, anything
            but ``None`` when it was given); ``None`` or absent: not given.
        arguments: Name -> a Python value (``install()``'s); ``None``: not given.
        environ: The environment to read.

    Returns:
        Name -> value, for every setting of the command.

    Raises:
        ConfigurationError: A value cannot be used; the message names its source.
    """
    flags = flags or {}
    arguments = arguments or {}
    values: dict[str, object] = {}
    for row in SETTINGS:
        if row.command != command:
            continue
        given = flags.get(row.flag) if row.flag else None
        if given is not None:
            if row.flag_value is not None:
                values[row.name] = row.flag_value
            else:
                assert row.flag is not None and isinstance(given, str)
                values[row.name] = row.type.parse(given, row.flag)
            continue
        argument = arguments.get(row.name) if row.argument else None
        if argument is not None:
            values[row.name] = row.type.check(argument, row.name)
            continue
        values[row.name] = _from_environment(row, environ)
    return values


def _from_environment(row: Setting, environ: Mapping[str, str]) -> object:
    for variable in (row.variable, row.fallback):
        if variable is None:
            continue
        text = environ.get(variable, "").strip()
        if text:  # a blank variable counts as unset
            return row.type.parse(text, variable)
    return row.default


def parse_variable(variable: str, text: str) -> tuple[bool, object]:
    """Parse a server option's variable as its row of :data:`SETTINGS` says, if it has one.

    Returns:
        ``(True, value)`` when a row reads ``variable``; ``(False, None)`` otherwise.
    """
    for row in SETTINGS:
        if row.variable == variable and row.server_option:
            return True, row.type.parse(text.strip(), variable)
    return False, None


def authority(host: str, port: int | None = None) -> str:
    """``host:port`` as a URL writes it: an IPv6 address in brackets.

    >>> authority("::1", 8080), authority("127.0.0.1", 8080), authority("fd00::1")
    ('[::1]:8080', '127.0.0.1:8080', '[fd00::1]')
    """
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def where_served(server: object, port: int = 0) -> tuple[str, str]:
    """Where ``server`` listens, as probe targets, and ``"every interface; "`` or ``""``.

    A server built on the engine says it (``endpoints``); another kind gets its port.
    """
    endpoints = getattr(server, "endpoints", None)
    if not endpoints:
        return f"port {getattr(server, 'port', port)}", ""
    wildcard = any(host in ("::", "0.0.0.0", "") for host, _ in getattr(server, "addresses", []))
    return " and ".join(endpoints), "every interface; " if wildcard else ""


def nearest(name: str, known: list[str]) -> str | None:
    """The known name closest to ``name`` (a likely typo's intent), if any is close.

    Names are compared without their shared ``ELASTIC_HEALTHCHECK_`` prefix, which would
    make every name look close to every other.

    >>> nearest("ELASTIC_HEALTHCHECK_HSOT", ["ELASTIC_HEALTHCHECK_HOST", "ELASTIC_HEALTHCHECK_TCP"])
    'ELASTIC_HEALTHCHECK_HOST'
    >>> nearest("ELASTIC_HEALTHCHECK_ZZZZ", ["ELASTIC_HEALTHCHECK_HOST"]) is None
    True
    """
    import difflib

    def bare(text: str) -> str:
        return text[len(ENV_PREFIX) :] if text.startswith(ENV_PREFIX) else text

    by_bare = {bare(candidate): candidate for candidate in known}
    matches = difflib.get_close_matches(bare(name), list(by_bare), n=1, cutoff=0.6)
    return by_bare[matches[0]] if matches else None
