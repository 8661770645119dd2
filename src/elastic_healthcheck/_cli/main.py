"""The ``elastic-healthcheck`` command: ``serve`` a sidecar, ``probe`` a fleet.

Exit codes: 0 success (every target alive); 1 a target is not alive, or the server
could not start; 2 a usage error (Docker's HEALTHCHECK reserves 2, so ``probe`` never
uses it for a verdict). Mistakes print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

TYPE_CHECKING = False  # typing costs 2 ms at start-up, and probe starts every few seconds
if TYPE_CHECKING:
    from typing import NoReturn

    from .._config.options import TorchrunOptions
    from .._config.settings import Setting
    from ..health_check_server import HealthCheckServer
    from .probe import ProbeResult

__all__ = ["main"]

PROG = "elastic-healthcheck"


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_settings(parser: argparse.ArgumentParser, command: str) -> None:
    """The command's flags, from the settings table: each read as text, parsed by its row.

    Parsing happens in one place (``_config.settings``), with the same rule and message
    for a flag as for its variable and its ``install()`` argument.
    """
    from .._config.settings import SETTINGS

    for row in SETTINGS:
        if row.command != command or row.flag is None:
            continue
        if row.flag_value is not None:  # a switch: giving it sets the row's value
            parser.add_argument(
                row.flag, dest=row.name, action="store_const", const=True, help=_help(row)
            )
        else:
            parser.add_argument(row.flag, dest=row.name, metavar=row.metavar, help=_help(row))


def _help(row: Setting) -> str:
    """``--help``'s line for a row: its meaning, default and variable."""
    meaning = row.meaning.replace("`", "")
    if row.flag_value is not None:
        value = "1" if row.flag_value is True else "0"
        return f"{meaning} ({row.variable}={value} does the same)"
    if row.fallback:  # no default of its own: the variable, else torch's
        return f"{meaning} (variable {row.variable}, else {row.fallback})"
    also = f"; variable {row.variable}" if row.variable else ""
    return f"{meaning} (default: {row.shown}{also})"


def _flags(args: argparse.Namespace, command: str) -> dict[str, object]:
    """Flag -> what was given (``None``: not given), for the settings table to read."""
    from .._config.settings import SETTINGS

    return {
        row.flag: getattr(args, row.name)
        for row in SETTINGS
        if row.command == command and row.flag is not None
    }


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(
        prog=PROG,
        description="A real health-check server for PyTorch elastic, and a probe for it.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    serve = commands.add_parser(
        "serve",
        help="run a health-check server in the foreground (a sidecar)",
        description=(
            "Serve health checks until SIGINT or SIGTERM. Liveness comes from a heartbeat "
            "file's modification time, or, with no source, from this process's clock "
            "(always alive: a quick way to see it work)."
        ),
    )
    _add_settings(serve, "serve")

    probe = commands.add_parser(
        "probe",
        help="probe health-check servers; exit 0 if every one is alive",
        description=(
            "Probe every TARGET at once: host:port or [v6addr]:port (HTTP, /healthz), "
            "http://host[:port][/path], or tcp://host:port (the TCP status server). "
            "Exit 0 when every target is alive, 1 otherwise, 2 for a usage error."
        ),
    )
    probe.add_argument("targets", nargs="+", metavar="TARGET")
    _add_settings(probe, "probe")
    probe.add_argument(
        "--json", action="store_true", help="print one JSON document instead of lines"
    )
    probe.add_argument(
        "-q", "--quiet", action="store_true", help="print nothing; the exit status says it all"
    )

    torchrun = commands.add_parser(
        "torchrun",
        help="torchrun, with a real health-check server for its elastic agent",
        allow_abbrev=False,
        usage=f"{PROG} torchrun {_torchrun_usage()} TORCHRUN_ARGUMENTS ...",
        description=(
            "Run torchrun with its arguments as given, exit codes and signals included, while "
            "its elastic agent serves health checks on one listener kept across restarts "
            "(see elastic_healthcheck.torchelastic). The --health-* options come first; "
            "everything after them goes to torchrun (see torchrun --help). Workers start "
            "through a bootstrap that counts optimizer steps as progress and notes "
            "collectives; elastic_healthcheck.worker.beat() reports progress too."
        ),
    )
    _add_settings(torchrun, "torchrun")
    return parser


def _torchrun_flags() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """torchrun's flags that take a value, and those that do not."""
    from .._config.settings import SETTINGS

    rows = [row for row in SETTINGS if row.command == "torchrun" and row.flag is not None]
    with_value = tuple(row.flag for row in rows if row.flag and row.flag_value is None)
    without = tuple(row.flag for row in rows if row.flag and row.flag_value is not None)
    return with_value, without


def _torchrun_usage() -> str:
    from .._config.settings import SETTINGS

    return " ".join(
        f"[{row.flag}]" if row.flag_value is not None else f"[{row.flag} {row.metavar}]"
        for row in SETTINGS
        if row.command == "torchrun" and row.flag is not None
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["torchrun"]:
        return _torchrun(arguments[1:])  # torchrun's own signal handling, untouched
    try:
        args = build_parser().parse_args(arguments)
        if args.command == "probe":
            return _probe(args)
        problem = _check_log_level()
        if problem:
            print(f"{PROG} serve: error: {problem}", file=sys.stderr)
            return 2
        return _serve(args)
    except KeyboardInterrupt:
        # Ctrl-C before serve's handler is in, or during a probe: the user knows why.
        return 130  # 128 + SIGINT, what a shell reports for a command ended by Ctrl-C


def _check_log_level() -> str | None:
    """What is wrong with ``LOGLEVEL``, if anything (every logger would raise on it)."""
    from ..logging import get_logger

    try:
        get_logger(PROG)
    except ValueError as exc:
        return str(exc)
    return None


def _check_server(options: TorchrunOptions) -> None:
    """Build (never start) the server the options describe: a value its class rejects
    (``max_connections=0``) shows before training.

    Raises:
        ValueError: The class rejects an option.
    """
    from .._config.kinds import build_server

    timeout = 60.0 if options.timeout is None else options.timeout
    port = 0 if options.port is None else options.port
    server = build_server(
        _now,  # type: ignore[arg-type]  # torch annotates int; ours take floats as well
        port,
        timeout,  # type: ignore[arg-type]
        kind=options.kind,
        options=options.server_options,
        kind_source=options.kind_source,
    )
    server.stop()  # never started: nothing to free, but a plugin may hold something


def _split_torchrun(arguments: list[str]) -> tuple[list[str], list[str]]:
    """Our --health-* options (first), and everything after them for torchrun, verbatim."""
    with_value, without = _torchrun_flags()
    ours: list[str] = []
    rest = arguments
    while rest:
        option = rest[0].split("=", 1)[0]
        if rest[0] in ("-h", "--help") and not ours:
            build_parser().parse_args(["torchrun", "--help"])
        if option not in with_value + without:
            break
        take = 1 if "=" in rest[0] or option in without else 2
        ours, rest = ours + rest[:take], rest[take:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    return ours, rest


def _misplaced_health_option(rest: list[str]) -> str | None:
    """What is wrong with a ``--health-*`` option among torchrun's own, if one is there.

    torch's parser finds the training script; a ``--health-*`` it does not know, before
    the script, is ours misplaced (after torchrun's options) or mistyped. After the
    script it is the script's own argument.
    """
    if not any(arg.startswith("--health") for arg in rest):
        return None
    try:
        from torch.distributed.run import get_args_parser

        _, unknown = get_args_parser().parse_known_args(rest)
    except (ImportError, SystemExit):  # no torch (said later), or torch's own usage error
        return None
    for arg in unknown:
        option = arg.split("=", 1)[0]
        if not option.startswith("--health"):
            continue
        with_value, without = _torchrun_flags()
        known = with_value + without
        if option in known:
            return (
                f"{option} must come before torchrun's own arguments: "
                f"{PROG} torchrun [--health-* options] [torchrun options] SCRIPT"
            )
        from difflib import get_close_matches

        close = get_close_matches(option, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"unknown option {option}{hint}; health options come first, before torchrun's"
    return None


def _torchrun(arguments: list[str]) -> int:
    """Our --health-* options (first), then torchrun with everything else, verbatim."""
    import os

    from .._config.options import torchrun_options

    ours, rest = _split_torchrun(arguments)
    misplaced = _misplaced_health_option(rest)
    if misplaced is not None:
        print(f"{PROG} torchrun: error: {misplaced}", file=sys.stderr)
        return 2
    parser = _Parser(prog=f"{PROG} torchrun", allow_abbrev=False)
    _add_settings(parser, "torchrun")
    flags = _flags(parser.parse_args(ours), "torchrun")
    # Every mistake is a usage error, found before torch is imported or training starts;
    # only what happens at run time (a port in use) is logged and lets training go on.
    problem = _check_log_level()
    if problem is None:
        try:
            options = torchrun_options(flags=flags, environ=os.environ)
            _check_server(options)
        except (TypeError, ValueError) as exc:  # ConfigurationError is a ValueError
            problem = str(exc)
    if problem is not None:
        print(f"{PROG} torchrun: error: {problem}", file=sys.stderr)
        return 2

    from .. import torchelastic

    try:
        integration = torchelastic.install(
            kind=options.kind,
            port=options.port,
            timeout=options.timeout,
            startup_timeout=options.startup_timeout,
            phase_timeout=options.phase_timeout,
            bootstrap=options.bootstrap,
            on_hang=options.on_hang,
            fresh_store=options.fresh_store,
            **options.server_options,
        )
    except ImportError as exc:  # no torch: the message names the extra to install
        print(f"{PROG} torchrun: error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"{PROG} torchrun: error: {exc}", file=sys.stderr)
        return 2
    with integration:
        server = integration.server
        if server is not None:
            where, note = _where(server, options.port or 0)
            print(
                f"{PROG}: health checks for the elastic agent on {where}"
                + (f" ({note.rstrip('; ')})" if note else ""),
                file=sys.stderr,
            )
        elif options.port is None:
            print(
                f"{PROG} torchrun: no health port (--health-port, or torch's "
                "TORCHELASTIC_HEALTH_CHECK_PORT): training goes on without a health check",
                file=sys.stderr,
            )
        from torch.distributed import run as torch_run

        # torchrun's own main, so arguments, exit codes and signals are exactly its own.
        torch_run.main(rest)
    return 0


def _probe(args: argparse.Namespace) -> int:
    import os

    from .._config.settings import ConfigurationError, read
    from .probe import TargetError, parse_target, probe

    try:
        timeout = read("probe", flags=_flags(args, "probe"), environ=os.environ)["timeout"]
        targets = [parse_target(text) for text in args.targets]
    except (ConfigurationError, TargetError) as exc:
        print(f"{PROG} probe: error: {exc}", file=sys.stderr)
        return 2
    assert isinstance(timeout, float)
    results = probe(targets, timeout=timeout)
    status = 0 if all(r.alive for r in results) else 1
    try:
        _print_results(args, results)
        sys.stdout.flush()  # here, where a closed pipe can be handled, not at exit
    except BrokenPipeError:
        # `probe ... | head`: the reader has all it wanted. Point stdout at /dev/null so
        # that the interpreter's own flush at exit does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return status


def _print_results(args: argparse.Namespace, results: list[ProbeResult]) -> None:
    if args.json:
        import json

        print(
            json.dumps(
                {"alive": all(r.alive for r in results), "results": [r.to_dict() for r in results]}
            )
        )
        return
    if args.quiet:
        return
    from .probe import printable

    rows = [("TARGET", "VERDICT", "AGE", "LATENCY", "REASON")]
    for r in results:
        age = "-" if r.age is None else f"{r.age:.1f}s"
        reason = printable(r.reason or "")  # a server's text must not drive the terminal
        rows.append((r.target, r.verdict, age, f"{r.latency * 1000:.1f}ms", reason))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[4]]).rstrip())


def _serve(args: argparse.Namespace) -> int:
    import os

    from .._config.kinds import build_server
    from .._config.options import serve_options
    from ..progress import HeartbeatFileReader

    try:
        options = serve_options(flags=_flags(args, "serve"), environ=os.environ)
    except ValueError as exc:  # ConfigurationError is a ValueError
        print(f"{PROG} serve: error: {exc}", file=sys.stderr)
        return 2
    path = options.heartbeat_file
    if path is not None:
        problem = _check_heartbeat_file(path)
        if problem:
            print(f"{PROG} serve: error: {problem}", file=sys.stderr)
            return 2
    callback = HeartbeatFileReader(path) if path else _now
    try:
        # The one builder: ELASTIC_HEALTHCHECK_<OPTION> variables count here as in
        # create_healthcheck_server and under torchrun. torch annotates the callback and
        # timeout as int; ours take floats as well.
        server = build_server(
            callback,  # type: ignore[arg-type]
            options.port,
            options.timeout,  # type: ignore[arg-type]
            kind=options.kind,
            options=options.server_options,
            kind_source=options.kind_source,
        )
    except (TypeError, ValueError) as exc:  # ConfigurationError is a ValueError
        print(f"{PROG} serve: error: {exc}", file=sys.stderr)
        return 2
    source = f"heartbeat file {path}" if path else "this process's clock"
    return _run(server, options.kind, options.port, source)


def _check_heartbeat_file(path: str) -> str | None:
    """A usage error in ``--heartbeat-file``, or None; warns of a directory not there (yet)."""
    import os

    if os.path.isdir(path):
        return (
            f"--heartbeat-file {path} is a directory;"
            " name the file that the trainer's HeartbeatFile touches"
        )
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        # The trainer may create it later, so this is no error; but a typo would answer
        # "unknown" forever, so say it now.
        print(
            f"{PROG} serve: warning: the heartbeat file's directory {directory} does not"
            " exist (yet); the verdict is unknown until the trainer creates the file",
            file=sys.stderr,
            flush=True,
        )
    return None


def _run(server: HealthCheckServer, kind: str, port: int, source: str) -> int:
    """Serve until SIGINT or SIGTERM; 0 then, 1 if the server cannot start."""
    import signal
    import threading

    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            server.start()
        except OSError as exc:
            print(f"{PROG} serve: error: {exc}", file=sys.stderr)
            return 1
        where, note = _where(server, port)
        print(
            f"Serving {kind} health checks on {where} ({note}liveness: {source}); Ctrl-C to stop",
            flush=True,
        )
        stop.wait()  # a signal handler sets it; lock waits are interruptible on POSIX
        return 0
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _where(server: object, port: int) -> tuple[str, str]:
    """Where ``server`` listens, as probe targets, and a note for a wildcard address."""
    from .._config.settings import where_served

    return where_served(server, port)


def _now() -> float:
    import time

    return time.time()
