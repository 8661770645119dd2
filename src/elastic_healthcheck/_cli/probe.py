"""The probe client: ask many health-check servers at once, each with its own deadline.

One thread, non-blocking sockets and one ``selectors`` loop, so probing 100 targets takes
about one timeout, not one per target. Only names that are not IP addresses go through
the resolver, on a few daemon threads, since ``getaddrinfo`` blocks and cannot be
cancelled: a resolver that hangs costs at most the timeout, never more. More targets than
the open-file limit allows at once are probed in turn, each with its own full timeout.

Whatever a server sends, garbage included, is that target's result (``error``, with a
reason); it never disturbs another target's result.

Kept lean on purpose: Docker runs ``elastic-healthcheck probe`` every few seconds.
"""

from __future__ import annotations

import errno
import json
import math
import os
import selectors
import socket
import time
from collections.abc import Sequence

from .._config.settings import authority

TYPE_CHECKING = False  # typing costs milliseconds at start-up, and probe starts every few seconds
if TYPE_CHECKING:
    import queue
    from collections import deque

__all__ = ["ProbeResult", "Target", "TargetError", "parse_target", "printable", "probe"]

DEFAULT_PATH = "/healthz"
MAX_RESPONSE = 64 * 1024  # our answers are a few hundred bytes; stop reading beyond this

# The longest single wait in the loop: epoll and poll take milliseconds as a C int, so a
# wait past about 24.8 days overflows (OverflowError). A target's deadline may be later.
_MAX_WAIT = 3600.0

# File descriptors kept free for everything else (the selector, the resolver's sockets,
# stdio, the interpreter's own files) when the open-file limit caps concurrent probes.
_SPARE_FDS = 32

# How much of what a server sent a reason quotes, when it is not a health-check answer.
_QUOTE = 60


class TargetError(ValueError):
    """A target that is not ``host:port``, ``[v6]:port``, ``http://...`` or ``tcp://...``."""


class Target:
    """Where to probe and how: ``scheme`` is ``http`` or ``tcp``."""

    __slots__ = ("text", "scheme", "host", "port", "path")

    def __init__(self, text: str, scheme: str, host: str, port: int, path: str) -> None:
        self.text = text
        self.scheme = scheme
        self.host = host
        self.port = port
        self.path = path

    def __repr__(self) -> str:
        return f"Target({self.text!r})"


class ProbeResult:
    """What one target answered.

    Attributes:
        target: The target as given.
        verdict: ``alive``, ``dead`` or ``unknown`` as the server said; ``error`` when there
            was no usable answer (refused, timed out, not a health-check server).
        age: Seconds since the last progress, when the server said.
        reason: The server's reason for ``unknown``, or what went wrong for ``error``.
        latency: Seconds from the start of the probe to its end.
        status: The HTTP status code, for HTTP targets that answered.
    """

    __slots__ = ("target", "verdict", "age", "reason", "latency", "status")

    def __init__(
        self,
        target: str,
        verdict: str,
        latency: float,
        age: float | None = None,
        reason: str | None = None,
        status: int | None = None,
    ) -> None:
        self.target = target
        self.verdict = verdict
        self.latency = latency
        self.age = age
        self.reason = reason
        self.status = status

    @property
    def alive(self) -> bool:
        return self.verdict == "alive"

    def to_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "verdict": self.verdict,
            "age": self.age,
            "latency": round(self.latency, 6),
            "reason": self.reason,
            "status": self.status,
        }


def parse_target(text: str) -> Target:
    """Parse ``host:port``, ``[v6addr]:port``, ``http://host[:port][/path]`` or ``tcp://host:port``.

    Raises:
        TargetError: The target is malformed; the message says how.
    """
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "http", text
        if "/" in rest:
            raise TargetError(f"{text!r}: a path needs a URL: http://{text}")
    scheme = scheme.lower()
    if scheme not in ("http", "tcp"):
        raise TargetError(f"{text!r}: unsupported scheme {scheme!r} (use http:// or tcp://)")
    authority, slash, path = rest.partition("/")
    path = slash + path if slash else DEFAULT_PATH
    if scheme == "tcp" and slash and path != "/":
        raise TargetError(f"{text!r}: a tcp:// target has no path")
    if "?" in authority or "#" in authority or "@" in authority:
        raise TargetError(f"{text!r}: expected host:port")
    if authority.startswith("["):
        host, bracket, port_text = authority[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise TargetError(f"{text!r}: expected [ipv6-address]:port")
        port_text = port_text[1:]
    else:
        host, colon, port_text = authority.rpartition(":")
        if not colon:
            host, port_text = authority, ""
        if ":" in host:
            raise TargetError(f"{text!r}: put an IPv6 address in brackets: [{authority}]")
    if not host:
        raise TargetError(f"{text!r}: no host")
    if not port_text:
        if sep and scheme == "http":
            port_text = "80"
        else:
            raise TargetError(f"{text!r}: no port (expected host:port)")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) <= 65535:
        raise TargetError(f"{text!r}: port must be a number from 1 to 65535")
    return Target(text, scheme, host, int(port_text), path)


class _Probe:
    __slots__ = (
        "target",
        "sock",
        "state",
        "sent",
        "received",
        "started",
        "request",
        "result",
        "deferred",
    )

    def __init__(self, target: Target, started: float) -> None:
        self.target = target
        self.sock: socket.socket | None = None
        self.state = "connecting"
        self.sent = 0
        self.received = b""
        self.started = started
        self.request = b""
        self.result: ProbeResult | None = None
        self.deferred = False  # started late, for want of file descriptors


def probe(targets: Sequence[Target], timeout: float = 1.0) -> list[ProbeResult]:
    """Probe every target concurrently; each gets ``timeout`` seconds from its start.

    Every target starts at once, unless there are more than the open-file limit allows
    (``ulimit -n``): then as many as fit start at once and each of the others starts as
    soon as one finishes, with its own full timeout. A name to resolve counts against its
    own targets' timeout only; IP addresses are probed while names resolve.

    Args:
        targets: What to probe, from :func:`parse_target`.
        timeout: Seconds per target, for resolving, connecting and the answer; > 0.

    Returns:
        One result per target, in the order given.
    """
    from collections import deque

    started = time.monotonic()
    probes = [_Probe(t, started) for t in targets]
    selector = selectors.DefaultSelector()
    resolver = _Resolver(probes, selector)
    ready = deque(p for p in probes if p.target.host in resolver.found)
    window = _max_open()
    active: list[_Probe] = []
    try:
        while ready or active or resolver.waiting:
            for host in resolver.answers():
                ready.extend(resolver.waiting.pop(host, []))
            window = _start(ready, active, window, resolver, selector)
            now = time.monotonic()
            _expire(active, resolver, started, timeout, now, selector)
            active = [p for p in active if p.result is None]
            if not active and not resolver.waiting:
                continue
            deadlines = [p.started + timeout for p in active]
            if resolver.waiting:
                deadlines.append(started + timeout)
            wait = min(max(min(deadlines) - now, 0.0), _MAX_WAIT)
            for key, events in selector.select(wait):
                if key.data is not None:
                    _advance(key.data, events, selector)
            active = [p for p in active if p.result is None]
    finally:
        for item in probes:
            if item.sock is not None:
                item.sock.close()
        resolver.close()
        selector.close()
    return [p.result for p in probes if p.result is not None]


def _start(
    ready: deque[_Probe],
    active: list[_Probe],
    window: int,
    resolver: _Resolver,
    selector: selectors.BaseSelector,
) -> int:
    """Start ready probes while fewer than ``window`` are active; the window, narrowed
    when the system ran out of file descriptors."""
    while ready and len(active) < window:
        item = ready.popleft()
        address = resolver.found[item.target.host]
        if isinstance(address, Exception):
            _fail(item, f"cannot resolve {item.target.host}: {_describe(address)}")
            continue
        if item.deferred:  # it waited for a file descriptor: its own full timeout
            item.started = time.monotonic()
        if not _connect(item, address, selector):  # out of file descriptors
            if not active:
                _fail(item, _describe(OSError(errno.EMFILE, os.strerror(errno.EMFILE))))
                continue
            ready.appendleft(item)  # retry once another probe has closed its socket
            window = max(1, len(active))
            break
        if item.result is None:
            active.append(item)
    for item in ready:
        item.deferred = True
    return window


def _expire(
    active: list[_Probe],
    resolver: _Resolver,
    started: float,
    timeout: float,
    now: float,
    selector: selectors.BaseSelector,
) -> None:
    """End the probes, and the name lookups, whose time is up."""
    for item in active:
        if now >= item.started + timeout:
            reason = f"timed out after {timeout:g}s while {item.state}"
            if item.state == "reading" and not item.received:
                reason += ": the server sent nothing"
            _finish(item, selector, error=reason)
    if resolver.waiting and now >= started + timeout:
        for host, waiting in resolver.waiting.items():
            for item in waiting:
                _fail(item, f"cannot resolve {host}: no answer within {timeout:g}s")
        resolver.waiting.clear()


def _max_open() -> int:
    """How many sockets may be open at once under the open-file limit."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 1 << 30
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(1, soft - _SPARE_FDS)


_Address = tuple[int, tuple[object, ...]]


class _Resolver:
    """Addresses for the targets' hosts: IP addresses at once, names on daemon threads.

    ``getaddrinfo`` blocks and cannot be cancelled, so names are looked up on a few
    daemon threads that post each answer and wake the selector through a socket pair.
    A lookup still running when the probe ends is left behind: a daemon thread does not
    keep the process from exiting (a ``ThreadPoolExecutor``'s threads would, since they
    are joined at exit, so a hung resolver would hold the command past its timeout).
    """

    def __init__(self, probes: Sequence[_Probe], selector: selectors.BaseSelector) -> None:
        self.found: dict[str, _Address | Exception] = {}
        self.waiting: dict[str, list[_Probe]] = {}  # host -> its probes, until it resolves
        names: dict[str, int] = {}
        for item in probes:
            host = item.target.host
            if host in self.found:
                continue
            if host in self.waiting:
                self.waiting[host].append(item)
                continue
            address = _ip_address(host, item.target.port)
            if address is not None:
                self.found[host] = address
            else:
                self.waiting[host] = [item]
                names[host] = item.target.port
        self._wakeup: socket.socket | None = None
        self._waker: socket.socket | None = None
        if not names:
            return
        import queue
        import threading

        self._wakeup, self._waker = socket.socketpair()
        self._wakeup.setblocking(False)
        selector.register(self._wakeup, selectors.EVENT_READ, None)
        self._answers: queue.SimpleQueue[tuple[str, _Address | Exception]] = queue.SimpleQueue()
        todo: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()
        for host, port in names.items():
            todo.put((host, port))
        for index in range(min(16, len(names))):
            thread = threading.Thread(
                target=self._lookups, args=(todo, self._waker), name=f"probe-resolver-{index}"
            )
            thread.daemon = True
            thread.start()

    def _lookups(self, todo: queue.SimpleQueue[tuple[str, int]], waker: socket.socket) -> None:
        import queue

        while True:
            try:
                host, port = todo.get_nowait()
            except queue.Empty:
                return
            answer: _Address | Exception
            try:
                info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
                answer = (int(info[0]), tuple(info[4]))
            except Exception as exc:  # gaierror, UnicodeError for a bad IDNA name, ...
                answer = exc
            self._answers.put((host, answer))
            try:
                waker.send(b"\0")
            except OSError:  # the probe is over and closed it: nobody is waiting
                pass

    def answers(self) -> list[str]:
        """The hosts resolved since the last call (their addresses are in ``found``)."""
        if self._wakeup is None:
            return []
        try:
            while self._wakeup.recv(4096):
                pass
        except OSError:  # BlockingIOError: drained
            pass
        hosts = []
        while not self._answers.empty():
            host, answer = self._answers.get_nowait()
            self.found[host] = answer
            hosts.append(host)
        return hosts

    def close(self) -> None:
        for sock in (self._wakeup, self._waker):
            if sock is not None:
                sock.close()


def _ip_address(host: str, port: int) -> _Address | None:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return family, (host, port)
    return None


def _connect(item: _Probe, address: _Address, selector: selectors.BaseSelector) -> bool:
    """Start connecting; False when there is no file descriptor left for the socket."""
    family, sockaddr = address
    sockaddr = (sockaddr[0], item.target.port, *sockaddr[2:])
    target = item.target
    if target.scheme == "http":
        host_field = authority(target.host, target.port if target.port != 80 else None)
        item.request = (
            f"GET {target.path} HTTP/1.1\r\nHost: {host_field}\r\n"
            "User-Agent: elastic-healthcheck-probe\r\nAccept: application/json\r\n"
            "Connection: close\r\n\r\n"
        ).encode("ascii", "replace")
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return False
        _fail(item, _describe(exc))
        return True
    sock.setblocking(False)
    try:
        code = sock.connect_ex(sockaddr)
    except OSError as exc:  # e.g. an IPv6 scope that names no interface
        code = exc.errno or errno.EINVAL
    if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
        sock.close()
        _fail(item, _describe(OSError(code, os.strerror(code))))
        return True
    item.sock = sock
    selector.register(sock, selectors.EVENT_WRITE, item)
    return True


def _advance(item: _Probe, events: int, selector: selectors.BaseSelector) -> None:
    sock = item.sock
    assert sock is not None
    if item.state == "connecting":
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            _finish(item, selector, error=_describe(OSError(code, os.strerror(code))))
            return
        item.state = "sending" if item.request else "reading"
        if item.state == "reading":
            # tcp://: a status server writes without being asked. Half-close to say that
            # nothing will come: ours answers all the same, while a server that waits for
            # a request (HTTP, say) sees the end of it and hangs up at once, instead of
            # keeping the probe until its timeout. No bytes are sent, so none can arrive
            # unread and turn the server's close into a reset.
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            selector.modify(sock, selectors.EVENT_READ, item)
    if item.state == "sending":
        try:
            item.sent += sock.send(item.request[item.sent :])
        except BlockingIOError:
            return
        except OSError as exc:
            _finish(item, selector, error=_describe(exc))
            return
        if item.sent == len(item.request):
            item.state = "reading"
            selector.modify(sock, selectors.EVENT_READ, item)
        return
    if item.state == "reading" and events & selectors.EVENT_READ:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            if item.received:
                _finish(item, selector)
            else:
                _finish(item, selector, error=_describe(exc))
            return
        item.received += chunk
        if not chunk or len(item.received) > MAX_RESPONSE:
            _finish(item, selector)
        elif item.target.scheme == "tcp" and b"\n" in chunk:
            _finish(item, selector)  # a status line is one line: no need to wait for the close


def _finish(item: _Probe, selector: selectors.BaseSelector, error: str | None = None) -> None:
    if item.sock is not None:
        selector.unregister(item.sock)
        item.sock.close()
    if error is not None:
        _fail(item, error)
        return
    try:
        item.result = _from_http(item) if item.target.scheme == "http" else _from_tcp(item)
    except Exception as exc:  # whatever garbage a server sent is this target's error alone
        _fail(item, f"unreadable answer ({type(exc).__name__})")


def _fail(item: _Probe, reason: str) -> None:
    item.result = ProbeResult(
        item.target.text, "error", time.monotonic() - item.started, reason=reason
    )


def _from_http(item: _Probe) -> ProbeResult:
    latency = time.monotonic() - item.started
    text = item.target.text
    head, sep, body = item.received.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    parts = status_line.split(b" ", 2)
    if not sep or len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return ProbeResult(text, "error", latency, reason=_not_ours("not an HTTP response", item))
    status = int(parts[1][:3])

    def error(reason: str) -> ProbeResult:
        return ProbeResult(text, "error", latency, reason=reason, status=status)

    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays
        return error(f"HTTP {status}, not a health-check answer")
    verdict = data.get("status") if isinstance(data, dict) else None
    if not isinstance(verdict, str) or verdict not in ("alive", "dead", "unknown"):
        return error(f"HTTP {status}, not a health-check answer")
    if (status == 200) != (verdict == "alive"):
        return error(f"HTTP {status} with {verdict!r}")
    age = _seconds(data.get("age"))
    if age is False:
        return error(f"HTTP {status}, age is not a finite number of seconds")
    reason = data.get("reason")
    return ProbeResult(
        text,
        verdict,
        latency,
        age=age,
        reason=reason if isinstance(reason, str) else None,
        status=status,
    )


def _from_tcp(item: _Probe) -> ProbeResult:
    """Parse ``alive age=3.2 timeout=60``, ``dead ...`` or ``unknown timeout=60 reason=...``."""
    latency = time.monotonic() - item.started
    text = item.target.text
    line, newline, _ = item.received.partition(b"\n")
    if line.startswith((b"up #", b"down #")):  # agent_check=True: HAProxy's word, then ours
        line = line.partition(b"#")[2]
    words = line.rstrip(b"\r").decode("ascii", "replace").split(" ")
    verdict = words[0]
    if not item.received:
        return ProbeResult(
            text, "error", latency, reason="the server closed the connection without a status line"
        )
    if not newline or verdict not in ("alive", "dead", "unknown"):
        return ProbeResult(
            text, "error", latency, reason=_not_ours("not a health-check status line", item)
        )
    age: float | None = None
    reason: str | None = None
    for index, word in enumerate(words[1:], start=1):
        key, _, value = word.partition("=")
        if key == "age":
            try:
                seconds = _seconds(float(value))
            except ValueError:
                seconds = False
            if seconds is False:
                return ProbeResult(
                    text, "error", latency, reason="age is not a finite number of seconds"
                )
            age = seconds
        elif key == "reason":
            reason = " ".join([value, *words[index + 1 :]])
            break
    return ProbeResult(text, verdict, latency, age=age, reason=reason)


def _seconds(value: object) -> float | None | bool:
    """A JSON or status-line age as float seconds; None if absent; False if not finite."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        seconds = float(value)
    except OverflowError:  # a 400-digit integer
        return False
    return seconds if math.isfinite(seconds) else False


def _not_ours(what: str, item: _Probe) -> str:
    """``what``, and the start of what the server sent, quoted safely for a terminal."""
    first = item.received.split(b"\n", 1)[0].rstrip(b"\r")
    if not first:
        return what
    quoted = printable(first[:_QUOTE].decode("utf-8", "replace"))
    more = "..." if len(first) > _QUOTE else ""
    return f"{what}: it sent '{quoted}{more}'"


def printable(text: str) -> str:
    """``text`` with every control or non-printable character escaped (``\\x1b``, ``\\r``).

    What a server sends must not drive the terminal that shows it.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return exc.strerror or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__
