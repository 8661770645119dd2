"""The ``elastic-healthcheck`` command: ``serve`` a sidecar, ``probe`` a fleet.

Exit codes: 0 success (every target alive); 1 a target is not alive, or the server
could not start; 2 a usage error (Docker's HEALTHCHECK reserves 2, so ``probe`` never
uses it for a verdict). Mistakes print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

TYPE_CHECKING = False  # typing costs 2 ms at start-up, and probe starts every few seconds
if TYPE_CHECKING:
    from typing import Any, NoReturn

__all__ = ["main"]

PROG = "elastic-healthcheck"


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


# The longest probe timeout: a day. A longer one is surely a typo (milliseconds?), and the
# probe has to leave before an orchestrator's own timeout anyway.
MAX_PROBE_TIMEOUT = 86400.0


def _port(text: str) -> int:
    # isdigit() alone accepts "²" (which int() refuses) and full-width digits (which it reads).
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: expected 0-65535")
    return int(text)


def _seconds(text: str, allow_zero: bool = True) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: expected seconds {bound}")
    return value


def _positive_seconds(text: str) -> float:
    return _seconds(text, allow_zero=False)


def _probe_seconds(text: str) -> float:
    value = _positive_seconds(text)
    if value > MAX_PROBE_TIMEOUT:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: expected seconds > 0, at most {MAX_PROBE_TIMEOUT:g}"
        )
    return value


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
    serve.add_argument(
        "--kind", default="http", help="server kind: http, tcp, or a plugin's name (default: http)"
    )
    serve.add_argument(
        "--host",
        default=None,
        help="address to listen on (default: every interface, IPv6 and IPv4)",
    )
    serve.add_argument(
        "--port", type=_port, default=8080, help="port to listen on; 0 picks one (default: 8080)"
    )
    serve.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=60.0,
        help="seconds without progress before dead (default: 60)",
    )
    serve.add_argument(
        "--callback-timeout",
        type=_positive_seconds,
        default=None,
        metavar="SECONDS",
        help="seconds a probe waits for liveness before answering unknown (default: 0.5)",
    )
    serve.add_argument(
        "--heartbeat-file",
        metavar="PATH",
        help="liveness is this file's modification time (touched by the trainer's HeartbeatFile)",
    )

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
    probe.add_argument(
        "--timeout",
        type=_probe_seconds,
        default=1.0,
        help="seconds per target, at most 86400 (default: 1, as kubelet)",
    )
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
        usage=f"{PROG} torchrun [--health-port PORT] [--health-host HOST] [--health-kind KIND] "
        "[--health-timeout SECONDS] [--health-startup-timeout SECONDS] "
        "[--health-on-hang {report,restart}] [--health-debug] [--health-no-bootstrap] "
        "TORCHRUN_ARGUMENTS ...",
        description=(
            "Run torchrun with its arguments as given, exit codes and signals included, while "
            "its elastic agent serves health checks on one listener kept across restarts "
            "(see elastic_healthcheck.torchelastic). The --health-* options come first; "
            "everything after them goes to torchrun (see torchrun --help). Workers start "
            "through a bootstrap that counts optimizer steps as progress and notes "
            "collectives; elastic_healthcheck.worker.beat() reports progress too."
        ),
    )
    _add_torchrun_options(torchrun)
    return parser


def _add_torchrun_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--health-port",
        type=_port,
        metavar="PORT",
        help="serve on this port (sets TORCHELASTIC_HEALTH_CHECK_PORT; default: that variable)",
    )
    parser.add_argument(
        "--health-host", metavar="HOST", help="address to listen on (default: every interface)"
    )
    parser.add_argument("--health-kind", metavar="KIND", help="server kind (default: http)")
    parser.add_argument(
        "--health-timeout",
        type=_positive_seconds,
        metavar="SECONDS",
        help="seconds without progress before dead (default: the 60 torch passes)",
    )
    parser.add_argument(
        "--health-startup-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="seconds from a worker group's start during which ranks that have made no "
        "progress yet count as starting (default: 1800)",
    )
    parser.add_argument(
        "--health-on-hang",
        choices=("report", "restart"),
        help="report: answer 503 and log the hung ranks' stacks (default); restart: also "
        "end the hung worker group so that torchrun restarts it (counts against --max-restarts)",
    )
    parser.add_argument(
        "--health-debug",
        action="store_true",
        default=None,
        help="serve the latest stacks of stalled ranks on GET /debug/ranks (off: 404)",
    )
    parser.add_argument(
        "--health-no-bootstrap",
        dest="health_bootstrap",
        action="store_false",
        default=None,
        help="start workers as plain torchrun does: progress then comes only from beat()",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["torchrun"]:
        return _torchrun(arguments[1:])
    args = build_parser().parse_args(arguments)
    if args.command == "serve":
        problem = _check_log_level()
        if problem:
            print(f"{PROG} serve: error: {problem}", file=sys.stderr)
            return 2
    if args.command == "probe":
        return _probe(args)
    return _serve(args)


_TORCHRUN_OPTIONS = (
    "--health-port",
    "--health-host",
    "--health-kind",
    "--health-timeout",
    "--health-startup-timeout",
    "--health-on-hang",
)
_TORCHRUN_FLAGS = ("--health-debug", "--health-no-bootstrap")


def _check_log_level() -> str | None:
    """What is wrong with ``LOGLEVEL``, if anything (every logger would raise on it)."""
    from ..logging import get_logger

    try:
        get_logger(PROG)
    except ValueError as exc:
        return str(exc)
    return None


def _check_torchrun_options(options: argparse.Namespace, server_options: dict[str, object]) -> None:
    """Build (never start) the server the options describe: a mistake shows before training.

    Raises:
        ValueError: The kind, an option, or an ``ELASTIC_HEALTHCHECK_*`` variable is wrong.
    """
    import os

    from .._config.kinds import ENV_SERVER, create_server, resolve_kind
    from ..torchelastic import DEFAULT_KIND

    kind, source = options.health_kind, "--health-kind"
    if kind is None:
        kind, source = os.environ.get(ENV_SERVER, "").strip() or DEFAULT_KIND, ENV_SERVER
    resolve_kind(kind, source=source)
    timeout = 60.0 if options.health_timeout is None else options.health_timeout
    port = 0 if options.health_port is None else options.health_port
    server = create_server(_now, port, timeout, kind=kind, options=server_options)  # type: ignore[arg-type]
    server.stop()  # never started: nothing to free, but a plugin may hold something


def _torchrun(arguments: list[str]) -> int:
    """Our --health-* options (first), then torchrun with everything else, verbatim."""
    ours: list[str] = []
    rest = arguments
    while rest:
        option = rest[0].split("=", 1)[0]
        if rest[0] in ("-h", "--help") and not ours:
            build_parser().parse_args(["torchrun", "--help"])
        if option not in _TORCHRUN_OPTIONS + _TORCHRUN_FLAGS:
            break
        take = 1 if "=" in rest[0] or option in _TORCHRUN_FLAGS else 2
        ours, rest = ours + rest[:take], rest[take:]
    parser = _Parser(prog=f"{PROG} torchrun", allow_abbrev=False)
    _add_torchrun_options(parser)
    options = parser.parse_args(ours)
    if rest[:1] == ["--"]:
        rest = rest[1:]

    server_options: dict[str, Any] = {}
    if options.health_host is not None:
        server_options["host"] = options.health_host
    if options.health_debug:
        server_options["debug"] = True
    # Every mistake is a usage error, found before torch is imported or training starts;
    # only what happens at run time (a port in use) is logged and lets training go on.
    problem = _check_log_level()
    if problem is None:
        try:
            _check_torchrun_options(options, server_options)
        except (TypeError, ValueError) as exc:
            problem = str(exc)
    if problem is not None:
        print(f"{PROG} torchrun: error: {problem}", file=sys.stderr)
        return 2

    from .. import torchelastic

    try:
        integration = torchelastic.install(
            kind=options.health_kind,
            port=options.health_port,
            timeout=options.health_timeout,
            startup_timeout=options.health_startup_timeout,
            bootstrap=options.health_bootstrap,
            on_hang=options.health_on_hang,
            **server_options,
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
            where = getattr(server, "url", None) or f"port {getattr(server, 'port', '?')}"
            print(f"{PROG}: health checks for the elastic agent on {where}", file=sys.stderr)
        from torch.distributed import run as torch_run

        # torchrun's own main, so arguments, exit codes and signals are exactly its own.
        torch_run.main(rest)
    return 0


def _probe(args: argparse.Namespace) -> int:
    from .probe import TargetError, parse_target, printable, probe

    try:
        targets = [parse_target(text) for text in args.targets]
    except TargetError as exc:
        print(f"{PROG} probe: error: {exc}", file=sys.stderr)
        return 2
    results = probe(targets, timeout=args.timeout)
    if args.json:
        import json

        print(
            json.dumps(
                {"alive": all(r.alive for r in results), "results": [r.to_dict() for r in results]}
            )
        )
    elif not args.quiet:
        rows = [("TARGET", "VERDICT", "AGE", "LATENCY", "REASON")]
        for r in results:
            age = "-" if r.age is None else f"{r.age:.1f}s"
            reason = printable(r.reason or "")  # a server's text must not drive the terminal
            rows.append((r.target, r.verdict, age, f"{r.latency * 1000:.1f}ms", reason))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            print("  ".join([*cells, row[4]]).rstrip())
    return 0 if all(r.alive for r in results) else 1


def _serve(args: argparse.Namespace) -> int:
    import os
    import signal
    import threading

    from .._config.kinds import ConfigurationError, create_server, resolve_kind
    from ..progress import HeartbeatFileReader

    try:
        server_class = resolve_kind(args.kind, source="--kind")
    except ConfigurationError as exc:
        print(f"{PROG} serve: error: {exc}", file=sys.stderr)
        return 2
    from ..health_check_server import HealthCheckServer

    if server_class is HealthCheckServer:
        print(
            f"{PROG} serve: error: --kind {args.kind} is torch's no-op server, which serves"
            " nothing; choose http, tcp or a plugin's kind",
            file=sys.stderr,
        )
        return 2
    if args.heartbeat_file and os.path.isdir(args.heartbeat_file):
        print(
            f"{PROG} serve: error: --heartbeat-file {args.heartbeat_file} is a directory;"
            " name the file that the trainer's HeartbeatFile touches",
            file=sys.stderr,
        )
        return 2
    callback = HeartbeatFileReader(args.heartbeat_file) if args.heartbeat_file else _now
    options: dict[str, object] = {}
    if args.host is not None:
        options["host"] = args.host
    if args.callback_timeout is not None:
        options["callback_timeout"] = args.callback_timeout
    try:
        # The one builder: ELASTIC_HEALTHCHECK_<OPTION> variables count here as in
        # create_healthcheck_server and under torchrun. torch annotates the callback and
        # timeout as int; ours take floats as well.
        server = create_server(
            callback,  # type: ignore[arg-type]
            args.port,
            args.timeout,
            kind=args.kind,
            options=options,
            kind_source="--kind",
        )
    except (TypeError, ValueError) as exc:  # ConfigurationError is a ValueError
        print(f"{PROG} serve: error: {exc}", file=sys.stderr)
        return 2

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
        where, note = _where(server, args.port)
        source = (
            f"heartbeat file {args.heartbeat_file}"
            if args.heartbeat_file
            else "this process's clock"
        )
        print(
            f"Serving {args.kind} health checks on {where} ({note}liveness: {source});"
            " Ctrl-C to stop",
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
    addresses = getattr(server, "addresses", None)
    if not addresses:
        return f"port {getattr(server, 'port', port)}", ""
    from .._tcp.server import TCPHealthCheckServer

    shown = []
    wildcard = False
    for host, bound in addresses:
        wildcard = wildcard or host in ("::", "0.0.0.0", "")
        authority = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        if hasattr(server, "url"):
            shown.append(f"http://{authority}/healthz")
        elif isinstance(server, TCPHealthCheckServer):
            shown.append(f"tcp://{authority}")
        else:
            shown.append(authority)
    return " and ".join(shown), "every interface; " if wildcard else ""


def _now() -> float:
    import time

    return time.time()
