"""The probe client: ask many health-check servers at once, each with its own deadline.

One thread, non-blocking sockets and one ``selectors`` loop, so probing 100 targets takes
about one timeout, not one per target. Only names that are not IP addresses go through
the resolver, on a few threads, since ``getaddrinfo`` blocks.

Kept lean on purpose: Docker runs ``elastic-healthcheck probe`` every few seconds.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import socket
import time
from collections.abc import Sequence

__all__ = ["ProbeResult", "Target", "TargetError", "parse_target", "probe"]

DEFAULT_PATH = "/healthz"
MAX_RESPONSE = 64 * 1024  # our answers are a few hundred bytes; stop reading beyond this


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
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise TargetError(f"{text!r}: port must be a number from 1 to 65535")
    return Target(text, scheme, host, int(port_text), path)


class _Probe:
    __slots__ = ("target", "sock", "state", "sent", "received", "started", "request", "result")

    def __init__(self, target: Target, started: float) -> None:
        self.target = target
        self.sock: socket.socket | None = None
        self.state = "connecting"
        self.sent = 0
        self.received = b""
        self.started = started
        self.request = b""
        self.result: ProbeResult | None = None


def probe(targets: Sequence[Target], timeout: float = 1.0) -> list[ProbeResult]:
    """Probe every target concurrently; each gets ``timeout`` seconds from the start.

    Returns:
        One result per target, in the order given.
    """
    started = time.monotonic()
    deadline = started + timeout
    probes = [_Probe(t, started) for t in targets]
    addresses = _resolve([p.target for p in probes], timeout)
    selector = selectors.DefaultSelector()
    try:
        for item in probes:
            address = addresses.get(item.target.host)
            if isinstance(address, Exception):
                _fail(item, f"cannot resolve {item.target.host}: {_describe(address)}")
                continue
            assert address is not None
            _connect(item, address, selector)
        while True:
            pending = [p for p in probes if p.result is None]
            remaining = deadline - time.monotonic()
            if not pending:
                break
            if remaining <= 0:
                for item in pending:
                    _fail(item, f"timed out after {timeout:g}s while {item.state}")
                break
            for key, events in selector.select(remaining):
                _advance(key.data, events, selector)
    finally:
        for item in probes:
            if item.sock is not None:
                item.sock.close()
        selector.close()
    return [p.result for p in probes if p.result is not None]


def _resolve(
    targets: Sequence[Target], timeout: float
) -> dict[str, tuple[int, tuple[object, ...]] | Exception]:
    """Map each host to (family, sockaddr); IP addresses skip the resolver."""
    found: dict[str, tuple[int, tuple[object, ...]] | Exception] = {}
    names: list[tuple[str, int]] = []
    for target in targets:
        if target.host in found:
            continue
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                socket.inet_pton(family, target.host)
            except (OSError, ValueError):
                continue
            found[target.host] = (family, (target.host, target.port))
            break
        else:
            names.append((target.host, target.port))
    if names:
        from concurrent.futures import ThreadPoolExecutor, wait

        def lookup(host: str, port: int) -> tuple[int, tuple[object, ...]]:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            return int(info[0]), tuple(info[4])

        pool = ThreadPoolExecutor(max_workers=min(16, len(names)))
        futures = {host: pool.submit(lookup, host, port) for host, port in dict(names).items()}
        done, _ = wait(futures.values(), timeout=timeout)
        for host, future in futures.items():
            if future in done:
                error = future.exception()
                found[host] = future.result() if error is None else error  # type: ignore[assignment]
            else:
                found[host] = TimeoutError(f"no answer within {timeout:g}s")
        pool.shutdown(wait=False, cancel_futures=True)
    return found


def _connect(
    item: _Probe, address: tuple[int, tuple[object, ...]], selector: selectors.BaseSelector
) -> None:
    family, sockaddr = address
    sockaddr = (sockaddr[0], item.target.port, *sockaddr[2:])
    target = item.target
    if target.scheme == "http":
        host_field = f"[{target.host}]" if ":" in target.host else target.host
        if target.port != 80:
            host_field += f":{target.port}"
        item.request = (
            f"GET {target.path} HTTP/1.1\r\nHost: {host_field}\r\n"
            "User-Agent: elastic-healthcheck-probe\r\nAccept: application/json\r\n"
            "Connection: close\r\n\r\n"
        ).encode("ascii", "replace")
    sock = socket.socket(family, socket.SOCK_STREAM)
    item.sock = sock
    sock.setblocking(False)
    code = sock.connect_ex(sockaddr)
    if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
        _fail(item, _describe(OSError(code, os.strerror(code))))
        return
    selector.register(sock, selectors.EVENT_WRITE, item)


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


def _finish(item: _Probe, selector: selectors.BaseSelector, error: str | None = None) -> None:
    if item.sock is not None:
        selector.unregister(item.sock)
        item.sock.close()
    if error is not None:
        _fail(item, error)
    elif item.target.scheme == "http":
        item.result = _from_http(item)
    else:
        item.result = _from_tcp(item)


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
        return ProbeResult(text, "error", latency, reason="not an HTTP response")
    status = int(parts[1])
    try:
        data = json.loads(body)
        verdict = data["status"]
        if verdict not in ("alive", "dead", "unknown"):
            raise ValueError(verdict)
    except (ValueError, KeyError, TypeError):
        return ProbeResult(
            text,
            "error",
            latency,
            reason=f"HTTP {status}, not a health-check answer",
            status=status,
        )
    if (status == 200) != (verdict == "alive"):
        return ProbeResult(
            text, "error", latency, reason=f"HTTP {status} with {verdict!r}", status=status
        )
    age = data.get("age")
    reason = data.get("reason")
    return ProbeResult(
        text,
        verdict,
        latency,
        age=float(age) if isinstance(age, (int, float)) else None,
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
    words = line.decode("ascii", "replace").split(" ")
    verdict = words[0]
    if not newline or verdict not in ("alive", "dead", "unknown"):
        return ProbeResult(text, "error", latency, reason="not a health-check status line")
    age: float | None = None
    reason: str | None = None
    for index, word in enumerate(words[1:], start=1):
        key, _, value = word.partition("=")
        if key == "age":
            try:
                age = float(value)
            except ValueError:
                pass
        elif key == "reason":
            reason = " ".join([value, *words[index + 1 :]])
            break
    return ProbeResult(text, verdict, latency, age=age, reason=reason)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return exc.strerror or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__
