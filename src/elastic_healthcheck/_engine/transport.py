"""The connection transport: owns one client socket, feeds its protocol, sends its answers.

A :class:`SocketTransport` is what a protocol's :class:`~._protocol.Transport` is on a
real socket (CPython's ``_SelectorSocketTransport`` is the model). It reads when the
socket is readable and hands the bytes to the protocol; it sends what the protocol
writes, now or when the client reads; it closes gracefully; and it runs every protocol
step guarded, so whatever goes wrong in one connection, only that client pays.

Closing is graceful: once everything written is sent, the socket is closed at once,
unless the client may still be sending (the protocol says so, or unread input is
waiting), in which case we half-close and read to the end, so that the client's unread
input cannot turn our close into a reset that destroys the answer (RFC 9112 section 9.6).
"""

from __future__ import annotations

import selectors
import socket
from collections.abc import Callable

from ..logging import get_logger
from .loop import Loop
from .protocol import BaseProtocol

log = get_logger("elastic_healthcheck.server")  # the public name operators filter on

__all__ = ["LINGER_TIMEOUT", "RECV_SIZE", "SocketTransport"]

CLIENT_ERROR = "Error serving a health check client (%s); closing its connection"

# Seconds to keep reading (and discarding) after a graceful half-close before closing.
LINGER_TIMEOUT = 2.0

RECV_SIZE = 65536

_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE

# The protocol of a closed transport: whatever still reaches it does nothing.
_GONE = BaseProtocol()


class SocketTransport:
    """One client connection on the loop.

    Args:
        loop: The loop this connection lives on (its thread is the only caller).
        sock: The connected socket, non-blocking.
        protocol: What speaks on it.
        write_timeout: Seconds a client that does not read has to take what is written
            once the protocol has closed.
        on_closed: Told when the connection is closed (the server forgets it).
    """

    __slots__ = (
        "_loop",
        "_sock",
        "protocol",
        "_outbuf",
        "_events",
        "_reading",
        "_eof",
        "_closing",
        "_linger",
        "_peek",
        "_lingering",
        "closed",
        "_write_timeout",
        "_on_closed",
        "__weakref__",
    )

    def __init__(
        self,
        loop: Loop,
        sock: socket.socket,
        protocol: BaseProtocol,
        write_timeout: float,
        on_closed: Callable[[SocketTransport], None],
    ) -> None:
        self._loop = loop
        self._sock = sock
        self.protocol = protocol
        self._outbuf = b""
        self._events = 0  # what the selector watches for us
        self._reading = True  # the protocol wants input
        self._eof = False  # the client sent its last byte
        self._closing = False  # the protocol closed: send what is left, then close
        self._linger = False
        self._peek = False  # look for unread input at the close
        self._lingering = False
        self.closed = False
        self._write_timeout = write_timeout
        self._on_closed = on_closed

    def start(self) -> None:
        """Introduce the protocol, then read at once: probers send with the handshake's ACK."""
        self._update_events()
        self.step(self.protocol.connection_made, self)
        if not self.closed and self._reading and not self._closing:
            self.step(self._read)

    def step(self, method: Callable[..., object], *args: object) -> None:
        """Run one step for this client; whatever goes wrong, only this client pays."""
        try:
            method(*args)
        except Exception as exc:
            # Nothing a client sends may kill the loop: drop that client, keep serving.
            self._loop.report(exc, getattr(method, "__name__", "step"), CLIENT_ERROR)
            self.abort()

    # -- the Transport interface, for the protocol ----------------------------------------

    def write(self, data: bytes) -> None:
        if self.closed or self._closing or not data:
            return
        if not self._outbuf:
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.abort()
                return
            data = data[sent:]
            if not data:
                return
        self._outbuf += data
        self._update_events()

    def get_write_buffer_size(self) -> int:
        """Bytes written and not yet sent (the client is not reading)."""
        return len(self._outbuf)

    def close(self, *, linger: bool | None = False) -> None:
        if linger is None:
            self._peek = True
        else:
            self._linger = self._linger or linger
        if self.closed or self._closing:
            return
        self._closing = True
        if self._outbuf:
            self._loop.timers.arm(self, self._write_timeout, self.abort)
            self._update_events()
        else:
            self._finish()

    def abort(self) -> None:
        """Close now, dropping whatever is not sent. Idempotent, step by step (an
        interrupted call is finished by the next)."""
        lost = not self.closed
        self.closed = True
        self._loop.timers.cancel(self)
        if self._events:
            self._loop.unregister(self._sock)
            self._events = 0
        self._sock.close()
        self._on_closed(self)
        if lost:
            self.step(self.protocol.connection_lost)
        # The protocol keeps its transport (its late calls are no-ops); this side lets go,
        # so that no reference cycle is left for the collector (see __call__).
        self.protocol = _GONE

    def shed_order(self) -> int | None:
        """How readily this connection may be closed to make room (see the protocol's)."""
        if self.closed or self._closing or self._outbuf:
            return None  # an answer is being sent
        return self.protocol.shed_order()

    def forget(self) -> None:
        """Close the socket, touching nothing else: the loop is over (stop, or a fork)."""
        self.closed = True
        self._sock.close()

    def pause_reading(self) -> None:
        self._reading = False
        self._update_events()

    def resume_reading(self) -> None:
        self._reading = True
        self._update_events()

    def set_timeout(self, seconds: float | None) -> None:
        if self.closed or self._closing:
            return
        if seconds is None:
            self._loop.timers.cancel(self)
        else:
            self._loop.timers.arm(self, seconds, self._timed_out)

    # -- the loop's side ---------------------------------------------------------------

    def _timed_out(self) -> None:
        self.step(self.protocol.timeout)

    def __call__(self, events: int) -> None:
        """The loop's handler: the transport itself, not a bound method of it, which would
        make a reference cycle per connection. Cycles are freed only by the cycle
        collector, whose full runs stalled the loop for 100 ms and more under thousands
        of slow clients; without them a closed connection is freed at once."""
        try:
            if events & _WRITE:
                self._flush()
            if events & _READ and not self.closed:
                self._read()
        except Exception as exc:  # as step(), inlined: this is every request's path
            self._loop.report(exc, "I/O", CLIENT_ERROR)
            self.abort()

    def _read(self) -> None:
        try:
            data = self._sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.abort()
            return
        if not data:
            self._eof = True
            if self._lingering:
                self.abort()  # the client read our answer and closed: done
                return
            self._update_events()  # nothing more to read: stop watching for it
            if not self._closing and not self.protocol.eof_received():
                self.close()
            return
        if self._closing:
            self._linger = True  # the client still sends: close gracefully
            return
        self.protocol.data_received(data)

    def _flush(self) -> None:
        try:
            sent = self._sock.send(self._outbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.abort()
            return
        self._outbuf = self._outbuf[sent:]
        if self._outbuf:
            return
        self._update_events()
        if self._closing:
            self._finish()
        else:
            self.protocol.resume_writing()

    def _finish(self) -> None:
        """Everything is sent after close(): close, or half-close and read to the end."""
        if self._eof or not (self._linger or (self._peek and self._input_waiting())):
            self.abort()
            return
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.abort()
            return
        self._lingering = True
        self._loop.timers.arm(self, LINGER_TIMEOUT, self.abort)
        self._update_events()

    def _input_waiting(self) -> bool:
        try:
            return bool(self._sock.recv(1, socket.MSG_PEEK))
        except OSError:  # nothing there (BlockingIOError), or reset
            return False

    def _update_events(self) -> None:
        want = 0
        if not self.closed:
            if self._lingering or (self._reading and not self._eof and not self._closing):
                want = _READ
            if self._outbuf:
                want |= _WRITE
        if want == self._events:
            return
        if self._events == 0:
            self._loop.register(self._sock, want, self)
        elif want == 0:
            self._loop.unregister(self._sock)
        else:
            self._loop.modify(self._sock, want, self)
        self._events = want
