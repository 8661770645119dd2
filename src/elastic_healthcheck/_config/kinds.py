"""Server kinds: choose a health-check server by name, without changing code.

:func:`create_server` (public as ``elastic_healthcheck.create_server``) builds the server a
name stands for, with options from keyword arguments and from the environment; torch's
``create_healthcheck_server``, which keeps torch's three parameters, builds through it as
soon as an ``ELASTIC_HEALTHCHECK_*`` variable is set::

    ELASTIC_HEALTHCHECK_SERVER=http ELASTIC_HEALTHCHECK_HOST=127.0.0.1 torchrun ...

A kind is one of:

- a built-in name, :data:`BUILTIN_KINDS`: ``noop`` (torch's no-op), ``http``, ``tcp``;
- ``package.module:ClassName``, any :class:`HealthCheckServer` subclass;
- a name an installed distribution registers in the entry-point group
  :data:`ENTRY_POINT_GROUP` (``elastic_healthcheck.servers``). A built-in name wins over
  an entry point of the same name.

Precedence: the ``kind`` argument, else ``ELASTIC_HEALTHCHECK_SERVER``, else ``noop``.
Every keyword-only parameter of the chosen class's ``__init__`` is an option, settable as
``ELASTIC_HEALTHCHECK_<OPTION>``; an argument wins over the variable, the variable over
the class's default. Every other variable under the prefix, bar :data:`RESERVED_ENV`, is a
mistake and raises, so a typo cannot go unnoticed.

Kinds are strings until first use, then cached classes: this module imports no server,
and ``importlib.metadata`` and ``inspect`` only when a plugin name or an option needs them.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Mapping

from .settings import (
    ENV_PREFIX,
    ENV_SERVER,
    RESERVED_ENV,
    ConfigurationError,
    Flag,
    nearest,
    parse_variable,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..health_check_server import HealthCheckServer

__all__ = [
    "BUILTIN_KINDS",
    "DEFAULT_KIND",
    "ENTRY_POINT_GROUP",
    "ENV_PREFIX",
    "ENV_SERVER",
    "RESERVED_ENV",
    "ConfigurationError",
    "available_kinds",
    "choose_kind",
    "build_server",
    "create_server",
    "resolve_kind",
    "server_options",
]

# Torch's behaviour: a server that logs "No health check server started" and serves nothing.
DEFAULT_KIND = "noop"

# Where installed distributions register their own kinds:
# [project.entry-points."elastic_healthcheck.servers"] in their pyproject.toml.
ENTRY_POINT_GROUP = "elastic_healthcheck.servers"

# Name -> "package.module:Class", imported on first use (never at import time, so no
# import cycle with the servers, which import the base this module sits on).
BUILTIN_KINDS: dict[str, str] = {
    "noop": "elastic_healthcheck.health_check_server:HealthCheckServer",
    "http": "elastic_healthcheck._http.server:HTTPHealthCheckServer",
    "tcp": "elastic_healthcheck._tcp.server:TCPHealthCheckServer",
}

_FLAG = Flag()
_EXPECTED = {
    bool: _FLAG.expected,
    int: "an int",
    float: "a float",
    str: "a str",
}
_SIMPLE_TYPES = {"bool": bool, "int": int, "float": float, "str": str}
_TARGET = re.compile(r"\w+(?:\.\w+)*:\w+(?:\.\w+)*")

# Kind name -> class, filled on first successful resolution. Failures are not cached, so
# installing the missing package fixes the next attempt.
_resolved: dict[str, type[HealthCheckServer]] = {}


def available_kinds() -> dict[str, str]:
    """Every kind name that :func:`resolve_kind` accepts, and what it imports.

    Returns:
        Name -> ``package.module:Class``: the built-in kinds first, then the entry
        points of installed distributions, sorted. Nothing is imported.
    """
    kinds = dict(BUILTIN_KINDS)
    for name, target in sorted(_entry_point_kinds().items()):
        kinds.setdefault(name, target)
    return kinds


def resolve_kind(name: str, *, source: str = "kind") -> type[HealthCheckServer]:
    """The server class a kind name stands for, imported on first use and cached.

    >>> resolve_kind("noop").__name__
    'HealthCheckServer'

    Args:
        name: A built-in name, ``package.module:ClassName``, or an entry-point name.
        source: Where the name came from, for error messages: an argument's or an
            environment variable's name.

    Raises:
        ConfigurationError: The name is unknown, its module cannot be imported, or it
            does not name a :class:`HealthCheckServer` subclass.
    """
    if not isinstance(name, str):
        raise TypeError(f"{source} must be a str, not {type(name).__name__}")
    cls = _resolved.get(name)
    if cls is not None:
        return cls
    where = f"{source}={name!r}"
    target = BUILTIN_KINDS.get(name)
    if target is None and ":" in name:
        target = name
    elif target is None:
        target = _entry_point_kinds().get(name)
        if target is None:
            raise ConfigurationError(
                f"{where} is not a known health check server kind{_accepted()}"
            )
    cls = _load(target, where if target == name else f"{where} ({target})")
    _resolved[name] = cls
    return cls


def choose_kind(
    kind: str | None,
    environ: Mapping[str, str],
    *,
    default: str = DEFAULT_KIND,
    source: str = "kind",
) -> tuple[str, str, str]:
    """The kind to build: the argument, else ``ELASTIC_HEALTHCHECK_SERVER``, else ``default``.

    >>> choose_kind(None, {"ELASTIC_HEALTHCHECK_SERVER": " tcp "})[:2]
    ('tcp', 'ELASTIC_HEALTHCHECK_SERVER')

    Args:
        kind: The kind asked for, or ``None``.
        environ: The environment to read; a blank variable counts as unset.
        default: The kind when neither names one (``noop`` for torch's factory).
        source: What ``kind`` is called where it came from (``--kind``).

    Returns:
        The kind's name, the argument or variable it came from, and how messages
        describe it.
    """
    if kind is not None:
        described = f"health check server kind {kind!r}"
        if source.startswith(ENV_PREFIX):
            described += f" (from {source})"
        return kind, source, described
    text = environ.get(ENV_SERVER, "").strip()
    if text:
        return text, ENV_SERVER, f"health check server kind {text!r} (from {ENV_SERVER})"
    described = f"health check server kind {default!r} (the default: {ENV_SERVER} is not set)"
    return default, source, described


def create_server(
    alive_callback: Callable[[], int],
    port: int,
    timeout: int,
    *,
    kind: str | None = None,
    **options: object,
) -> HealthCheckServer:
    """Build a health check server of a kind, with options: torch's factory, configurable.

    >>> from elastic_healthcheck import create_server
    >>> server = create_server(lambda: 0, 8080, 60, kind="http", host="::1")
    >>> type(server).__name__
    'HTTPHealthCheckServer'

    Args:
        alive_callback: Returns the last progress time in epoch seconds.
        port: The port to serve on.
        timeout: Seconds of silence after which the agent is dead.
        kind: ``noop``, ``http``, ``tcp``, ``package.module:ClassName`` or a name an
            installed distribution registers in the ``elastic_healthcheck.servers``
            entry-point group. ``None`` reads ``ELASTIC_HEALTHCHECK_SERVER``, else ``noop``
            (torch's no-op, as ``create_healthcheck_server`` builds).
        options: Keyword-only options of the chosen class (``host=...``), overriding
            the ``ELASTIC_HEALTHCHECK_<OPTION>`` environment variables.

    Raises:
        ConfigurationError: (a ``ValueError``) the kind or an option, from the arguments
            or the environment, cannot be used; the message says which and what is
            accepted.
    """
    return build_server(alive_callback, port, timeout, kind=kind, options=options)


create_server.__module__ = "elastic_healthcheck"  # where users import it from


def build_server(
    alive_callback: Callable[[], int],
    port: int,
    timeout: int,
    *,
    kind: str | None = None,
    options: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
    kind_source: str = "kind",
    default_kind: str = DEFAULT_KIND,
) -> HealthCheckServer:
    """Build the server of the chosen kind, with options from arguments and environment.

    >>> type(build_server(lambda: 0, 0, 60, environ={})).__name__  # torch's no-op
    'HealthCheckServer'
    >>> server = build_server(lambda: 0, 8080, 60, kind="http", options={"host": "::1"})

    Args:
        alive_callback: Returns the last progress time in epoch seconds.
        port: The port to serve on.
        timeout: Seconds of silence after which the agent is dead.
        kind: The kind to build; ``None`` reads ``ELASTIC_HEALTHCHECK_SERVER``, and
            without it builds ``default_kind``. A blank variable counts as unset.
        options: Keyword arguments for the class, overriding the environment.
        environ: The environment to read; ``None`` means :data:`os.environ`.
        kind_source: What ``kind`` is called where it came from, for error messages
            (``--kind`` on the command line).
        default_kind: The kind when none is named (``noop``, torch's).

    This is the one way servers are built: ``create_server``, ``create_healthcheck_server``
    (when an ``ELASTIC_HEALTHCHECK_*`` variable is set), the CLI's ``serve`` and the torch
    integration all call it, so options and variables are
    honoured and checked the same way everywhere.

    Raises:
        ConfigurationError: The kind cannot be resolved, an option is unknown, or a
            value from the environment cannot be parsed or is rejected by the class.
    """
    env = os.environ if environ is None else environ
    name, source, described = choose_kind(kind, env, default=default_kind, source=kind_source)
    cls = resolve_kind(name, source=source)
    explicit = dict(options or {})
    factory: Callable[..., HealthCheckServer] = cls
    if not explicit and not _option_variables(env):  # the common case: no introspection
        return factory(alive_callback, port, timeout)
    values, from_env = server_options(cls, name, described, explicit, env)
    try:
        return factory(alive_callback, port, timeout, **values)
    except ConfigurationError:
        raise
    except (TypeError, ValueError) as exc:
        shown = ", ".join(
            [f"{key}={value!r}" for key, value in from_env.items()]
            + [f"{key}={value!r}" for key, value in explicit.items()]
        )
        where = "from the environment " if not explicit else ""
        raise ConfigurationError(
            f"{described} rejected its options {where}({shown}): {exc}"
        ) from exc


def server_options(
    cls: type[HealthCheckServer],
    kind: str,
    described: str,
    explicit: Mapping[str, object],
    environ: Mapping[str, str],
) -> tuple[dict[str, object], dict[str, str]]:
    """The options to build ``cls`` with: ``explicit``, then its ``ELASTIC_HEALTHCHECK_*``.

    Args:
        cls: The server class.
        kind: Its kind's name, and ``described``, how messages describe it.
        described: How messages describe the kind.
        explicit: Keyword arguments, which win over variables (theirs are not parsed).
        environ: The environment to read.

    Returns:
        The keyword arguments, and the variables they came from (name -> text).

    Raises:
        ConfigurationError: An argument is not an option of ``cls``, a variable under
            ``ELASTIC_HEALTHCHECK_`` is neither one of its options nor read elsewhere, or
            a variable's value cannot be parsed.
    """
    option_types, takes_any = _options(cls)
    unexpected = sorted(set(explicit) - set(option_types)) if not takes_any else []
    if unexpected:
        takes = ", ".join(sorted(option_types)) or "no options"
        raise ConfigurationError(
            f"unexpected option {', '.join(map(repr, unexpected))} for {described};"
            f" it takes: {takes}"
        )
    by_key = {ENV_PREFIX + name.upper(): name for name in option_types}
    keys = _option_variables(environ)
    unknown = [key for key in keys if key not in by_key]
    if unknown:
        raise ConfigurationError(_unknown_variables(unknown, described, sorted(by_key)))
    from_env: dict[str, str] = {}
    values: dict[str, object] = {}
    for key in keys:
        name = by_key[key]
        if name in explicit:  # an argument wins; its variable is not even parsed
            continue
        option_type = option_types[name]
        where = f"option {name} of health check server kind {kind!r}"
        if option_type is None:
            raise ConfigurationError(
                f"{key} cannot be set from the environment: {where} is not a bool, int,"
                " float or str"
            )
        values[name] = _parse(key, environ[key], option_type, where)
        from_env[key] = environ[key]
    values.update(explicit)
    return values, from_env


def _option_variables(environ: Mapping[str, str]) -> list[str]:
    """The variables that may be options: under the prefix, not reserved, not blank."""
    return sorted(
        key
        for key in environ
        if key.startswith(ENV_PREFIX) and not _is_reserved(key) and environ[key].strip()
    )


def _is_reserved(key: str) -> bool:
    return any(
        key == reserved or (reserved.endswith("_") and key.startswith(reserved))
        for reserved in RESERVED_ENV
    )


def _entry_point_kinds() -> dict[str, str]:
    # Scanning installed distributions costs milliseconds: only for names that are not
    # built in, for available_kinds(), and for error messages.
    from importlib.metadata import entry_points

    kinds: dict[str, str] = {}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        # "module:attr [extras]": extras mean nothing here.
        target = "".join(entry_point.value.partition("[")[0].split())
        kinds.setdefault(entry_point.name, target)
    return kinds


def _accepted() -> str:
    names = ", ".join(available_kinds())
    return f" (accepted: {names}, or package.module:ClassName)"


def _load(target: str, where: str) -> type[HealthCheckServer]:
    if _TARGET.fullmatch(target) is None:
        raise ConfigurationError(
            f"{where} is not of the form package.module:ClassName{_accepted()}"
        )
    module_name, _, qualname = target.partition(":")
    try:
        obj: object = importlib.import_module(module_name)
    except Exception as exc:  # whatever the module raises while importing
        raise ConfigurationError(
            f"{where} cannot be imported: {type(exc).__name__}: {exc}{_accepted()}"
        ) from exc
    for attribute in qualname.split("."):
        try:
            obj = getattr(obj, attribute)
        except AttributeError as exc:
            raise ConfigurationError(f"{where} cannot be loaded: {exc}{_accepted()}") from exc
    if not (isinstance(obj, type) and issubclass(obj, _base())):
        raise ConfigurationError(
            f"{where} is not a HealthCheckServer subclass but {obj!r}{_accepted()}"
        )
    return obj


def _base() -> type[HealthCheckServer]:
    # The base is a kind like the others ("noop"), named by a string: this module sits
    # below it (the base's factory builds through here), so it never imports it.
    module_name, _, name = BUILTIN_KINDS["noop"].partition(":")
    base: type[HealthCheckServer] = getattr(importlib.import_module(module_name), name)
    return base


def _options(cls: type[HealthCheckServer]) -> tuple[dict[str, type | None], bool]:
    """The class's options -> the type its variable parses to, and whether it takes **kwargs.

    The type is None for an option the environment cannot set.
    """
    import inspect

    option_types: dict[str, type | None] = {}
    takes_any = False
    for parameter in inspect.signature(cls).parameters.values():
        if parameter.kind is parameter.KEYWORD_ONLY:
            option_types[parameter.name] = _option_type(
                parameter.default, parameter.annotation, parameter.empty
            )
        elif parameter.kind is parameter.VAR_KEYWORD:
            takes_any = True
    return option_types, takes_any


def _option_type(default: object, annotation: object, empty: object) -> type | None:
    """The type of the default; for a default of None (or none), the annotation's, else str."""
    declared = _declared_type(annotation)
    if default is None or default is empty:
        return declared or str
    if type(default) is int and declared is float:
        return float  # `interval: float = 1`: an int is a valid float (PEP 484)
    return type(default) if type(default) in _EXPECTED else None


def _declared_type(annotation: object) -> type | None:
    """bool, int, float or str when the annotation names just that one (or it | None)."""
    members: list[object]
    if isinstance(annotation, str):  # under `from __future__ import annotations`
        words = {word.rpartition(".")[2] for word in re.split(r"[\s|\[\],]+", annotation)}
        members = [_SIMPLE_TYPES.get(word) for word in words - {"", "None", "Optional"}]
    else:
        import types
        import typing

        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
        else:
            members = [annotation]
    if len(members) == 1 and members[0] in _EXPECTED:
        member = members[0]
        assert isinstance(member, type)
        return member
    return None


def _parse(key: str, value: str, option_type: type, where: str) -> object:
    raw = value.strip()
    try:
        # A variable the settings table reads (HOST, DEBUG, CALLBACK_TIMEOUT) is parsed
        # as it says, so that `serve`, torchrun and the factory read it alike.
        known, parsed = parse_variable(key, raw)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{exc} ({where})") from None
    if known:
        return parsed
    try:
        return _FLAG.parse(raw, key) if option_type is bool else option_type(raw)
    except ValueError:  # ConfigurationError included
        raise ConfigurationError(
            f"{key}={value!r} is not {_EXPECTED[option_type]} ({where})"
        ) from None


def _unknown_variables(unknown: list[str], described: str, known: list[str]) -> str:
    """One line naming every unknown variable, with the known name each is likely meant as."""
    elsewhere = _builtin_option_variables()
    typos = [key for key in unknown if key not in elsewhere]
    if typos:
        candidates = sorted({*known, *elsewhere, *(r for r in RESERVED_ENV if r[-1] != "_")})
        guesses = {key: nearest(key, candidates) for key in typos}
        if len(typos) == 1:
            (key,) = typos
            message = f"{key} is not a variable elastic-healthcheck reads"
            hint = f"did you mean {guesses[key]}?" if guesses[key] else ""
        else:
            message = f"{', '.join(typos)} are not variables elastic-healthcheck reads"
            meant = [f"{guess} (for {key})" for key, guess in guesses.items() if guess]
            hint = f"did you mean {', '.join(meant)}?" if meant else ""
        takes = f"takes {', '.join(known)}" if known else "takes no options"
        return f"{message}{': ' + hint if hint else ''} ({described} {takes})"
    names = ", ".join(unknown)
    verb = "is not an option" if len(unknown) == 1 else "are not options"
    if known:
        return f"{names} {verb} of {described}; its options are {', '.join(known)}"
    return (
        f"{names} {verb} of {described}; it takes none; choose a kind with"
        f" {ENV_SERVER}{_accepted()}"
    )


def _builtin_option_variables() -> set[str]:
    """The variables of every built-in kind's options (for messages: imports the servers)."""
    names: set[str] = set()
    for kind in BUILTIN_KINDS:
        try:
            option_types, _ = _options(resolve_kind(kind))
        except ConfigurationError:
            continue
        names.update(ENV_PREFIX + name.upper() for name in option_types)
    return names
