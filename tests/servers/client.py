"""A minimal, strict HTTP client for tests: raw sockets, exact bytes, no library magic."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field


def NOW_CALLBACK() -> int:
    return int(time.time())


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    raw_head: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class ResponseReader:
    """Reads successive responses from one connection (pipelining, keep-alive)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed mid-response: {self.buffer!r}")
        self.buffer += chunk

    def read(self, head_only: bool = False) -> Response:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, status, reason = lines[0].split(" ", 2)
        assert version == "HTTP/1.1", lines[0]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            assert colon and name == name.strip(), f"malformed header line {line!r}"
            assert name.lower() not in headers, f"duplicate header {name}"
            headers[name.lower()] = value.strip()
        length = 0 if head_only else int(headers["content-length"])
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Response(int(status), reason, headers, body, head)


def read_response(sock: socket.socket, head_only: bool = False) -> Response:
    """Read exactly one response from ``sock``; nothing more may have arrived."""
    reader = ResponseReader(sock)
    response = reader.read(head_only)
    assert reader.buffer == b"", f"extra bytes after the response: {reader.buffer!r}"
    return response


def request(
    port: int,
    path: str = "/healthz",
    method: str = "GET",
    host: str = "127.0.0.1",
    headers: str = "Host: test\r\nConnection: close\r\n",
    version: str = "HTTP/1.1",
    timeout: float = 5.0,
) -> Response:
    """One request on a new connection, as kubelet does."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(f"{method} {path} {version}\r\n{headers}\r\n".encode("latin-1"))
        return read_response(sock, head_only=method == "HEAD")


def exchange(port: int, data: bytes, host: str = "127.0.0.1", timeout: float = 5.0) -> bytes:
    """Send raw bytes, then read until the server closes (or reset); return all it sent."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_until_closed(sock)


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
