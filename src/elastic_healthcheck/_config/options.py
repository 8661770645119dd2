"""Typed options for ``serve`` and the torch integration, read once from every source.

:func:`serve_options` and :func:`torchrun_options` turn command-line flags, ``install()``
arguments and ``ELASTIC_HEALTHCHECK_*`` variables into one frozen value each, through the
table in :mod:`.settings` (argument > variable > default) and the server kinds in
:mod:`.kinds`: the kind is resolved, the server's options from the environment parsed, and
every variable under ``ELASTIC_HEALTHCHECK_`` checked, before anything starts::

    >>> options = torchrun_options(arguments={"timeout": 5}, environ={})
    >>> options.kind, options.timeout, options.startup_timeout, options.on_hang
    ('http', 5.0, 1800.0, 'report')

Every mistake is one :class:`~.settings.ConfigurationError` with a one-line message, which
the CLI prints and exits 2 on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from . import kinds
from .settings import SETTINGS, ConfigurationError, read

__all__ = ["ServeOptions", "TorchrunOptions", "serve_options", "torchrun_options"]

# install()'s keyword arguments that the settings table reads.
_ARGUMENTS = frozenset(s.name for s in SETTINGS if s.command == "torchrun" and s.argument)


@dataclasses.dataclass(frozen=True)
class TorchrunOptions:
    """What ``elastic-healthcheck torchrun`` and ``torchelastic.install()`` were asked for.

    Attributes:
        kind: The server kind's name (``http`` unless asked otherwise).
        kind_source: The flag, argument or variable the kind came from.
        port: Listen at once on this port; ``None``: when the agent asks for a server.
        timeout: Seconds without progress before a rank is stalled; ``None``: what torch
            passes (60).
        startup_timeout: Seconds from a worker group's spawn during which ranks with no
            progress yet count as starting.
        phase_timeout: Seconds a rank may stay inside an evaluation or checkpoint phase
            without a sign of life.
        on_hang: ``report`` or ``restart``.
        debug: Serve ``GET /debug/ranks``.
        bootstrap: Start workers through the bootstrap.
        fresh_store: Give the workers a new store at every rendezvous round.
        plugin: Plain ``torchrun`` serves health checks when this package is installed
            (``ELASTIC_HEALTHCHECK_TORCHRUN=0`` turns that off).
        server_options: Keyword arguments for the server (``host``, ``debug`` when on, and
            whatever else ``install()`` was given).
    """

    kind: str
    kind_source: str
    port: int | None
    timeout: float | None
    startup_timeout: float
    phase_timeout: float
    on_hang: str
    debug: bool
    bootstrap: bool
    fresh_store: bool
    plugin: bool
    server_options: Mapping[str, object]


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    """What ``elastic-healthcheck serve`` was asked for.

    Attributes:
        kind: The server kind's name; ``kind_source`` the flag or variable it came from.
        kind_source: Where the kind came from, for messages.
        port: The port to listen on.
        timeout: Seconds without progress before dead.
        heartbeat_file: Liveness is this file's modification time; ``None``: the clock.
        server_options: Keyword arguments for the server (``host``, ``callback_timeout``).
    """

    kind: str
    kind_source: str
    port: int
    timeout: float
    heartbeat_file: str | None
    server_options: Mapping[str, object]


def torchrun_options(
    *,
    arguments: Mapping[str, object] | None = None,
    flags: Mapping[str, object] | None = None,
    environ: Mapping[str, str],
) -> TorchrunOptions:
    """The torch integration's options, from ``install()`` arguments or flags, and variables.

    Args:
        arguments: ``install()``'s keyword arguments; ``None`` values are not given.
            Names outside the settings table are the server's own options.
        flags: The ``--health-*`` flags as given (text; ``True`` for a flag without one).
        environ: The environment.

    Returns:
        The options. The kind is resolved and every server option and variable checked;
        what only building the server can check (a value its class rejects) is not.

    Raises:
        ConfigurationError: Any value, from any source, cannot be used.
    """
    arguments = dict(arguments or {})
    values = read("torchrun", flags=flags, arguments=arguments, environ=environ)
    # What is not a setting of the table is the server's own option (install()'s
    # **options); a server that does not take it says so.
    server = {name: value for name, value in arguments.items() if name not in _ARGUMENTS}
    if values["host"] is not None:
        server["host"] = values["host"]
    if values["debug"]:
        server["debug"] = True
    given: str | None = None
    if flags and flags.get("--health-kind") is not None:
        given = "--health-kind"
    elif arguments.get("kind") is not None:
        given = "kind"
    kind, kind_source = _kind(values["kind"], given, environ, "kind")
    port = values["port"]
    timeout = values["timeout"]
    _check_server(kind, kind_source, server, environ)
    return TorchrunOptions(
        kind=kind,
        kind_source=kind_source,
        port=port if isinstance(port, int) else None,
        timeout=timeout if isinstance(timeout, float) else None,
        startup_timeout=_float(values["startup_timeout"]),
        phase_timeout=_float(values["phase_timeout"]),
        on_hang=str(values["on_hang"]),
        debug=values["debug"] is True,
        bootstrap=values["bootstrap"] is True,
        fresh_store=values["fresh_store"] is True,
        plugin=values["plugin"] is True,
        server_options=server,
    )


def serve_options(*, flags: Mapping[str, object], environ: Mapping[str, str]) -> ServeOptions:
    """``serve``'s options, from its flags and variables.

    Raises:
        ConfigurationError: A value cannot be used, or the kind is torch's no-op, which
            serves nothing.
    """
    values = read("serve", flags=flags, environ=environ)
    given = "--kind" if flags.get("--kind") is not None else None
    kind, kind_source = _kind(values["kind"], given, environ, "--kind")
    server: dict[str, object] = {}
    for name in ("host", "callback_timeout"):
        if values[name] is not None:
            server[name] = values[name]
    cls = _check_server(kind, kind_source, server, environ)
    if cls is _base():
        shown = f"{kind_source}={kind}" if kind_source == kinds.ENV_SERVER else f"--kind {kind}"
        raise ConfigurationError(
            f"{shown} is torch's no-op server, which serves nothing;"
            " choose http, tcp or a plugin's kind"
        )
    port = values["port"]
    heartbeat_file = values["heartbeat_file"]
    assert isinstance(port, int)
    return ServeOptions(
        kind=kind,
        kind_source=kind_source,
        port=port,
        timeout=_float(values["timeout"]),
        heartbeat_file=heartbeat_file if isinstance(heartbeat_file, str) else None,
        server_options=server,
    )


def _kind(
    value: object, given: str | None, environ: Mapping[str, str], default_source: str
) -> tuple[str, str]:
    """The kind's name and where it came from: the flag or argument, else the variable."""
    kind = str(value).strip()
    if given is not None:
        return kind, given
    if environ.get(kinds.ENV_SERVER, "").strip():
        return kind, kinds.ENV_SERVER
    return kind, default_source


def _check_server(
    kind: str, source: str, server: Mapping[str, object], environ: Mapping[str, str]
) -> type:
    """Resolve the kind and check its options and the environment, building nothing."""
    cls = kinds.resolve_kind(kind, source=source)
    described = f"health check server kind {kind!r}"
    if source.startswith(kinds.ENV_PREFIX):
        described += f" (from {source})"
    kinds.server_options(cls, kind, described, server, environ)
    return cls


def _base() -> type:
    return kinds.resolve_kind(kinds.DEFAULT_KIND)


def _float(value: object) -> float:
    assert isinstance(value, float)
    return value
