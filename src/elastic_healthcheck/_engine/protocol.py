"""What a protocol may ask of the engine, and connection states as data. No I/O here.

A protocol (HTTP, TCP) is an object that receives bytes and events and answers through
a :class:`Transport` (send, close, stop reading, a deadline) and the server's
:class:`Services` (a verdict, a debug text): it never sees a socket, a selector or a
thread, so it is tested with a fake transport and no sockets at all. The shape is
CPython's asyncio protocol/transport split (``Lib/asyncio/selector_events.py``).

Each protocol writes its connection states as an enum and one transition table,
``{(state, event): next_state}``, driven through a :class:`StateMachine`: an event the
table does not list raises :class:`ProtocolStateError` at once (python-hyper/h11
``h11/_state.py`` is the model).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Generic, Protocol, TypeVar

from ..status import HealthStatus

__all__ = [
    "BaseProtocol",
    "ProtocolStateError",
    "Services",
    "StateEnum",
    "StateMachine",
    "Transport",
]

S = TypeVar("S", bound=enum.Enum)
E = TypeVar("E", bound=enum.Enum)


class StateEnum(enum.Enum):
    """An enum of states or events, hashed by identity: members are singletons, and
    ``Enum.__hash__`` (Python code) would cost each transition two calls."""

    __hash__ = object.__hash__


class ProtocolStateError(RuntimeError):
    """An event that the transition table does not allow in the current state (a bug)."""


class StateMachine(Generic[S, E]):
    """One connection's state, moved only by the events its table lists.

    >>> class St(enum.Enum):
    ...     OPEN = 1
    ...     CLOSED = 2
    >>> class Ev(enum.Enum):
    ...     CLOSE = 1
    >>> machine = StateMachine({(St.OPEN, Ev.CLOSE): St.CLOSED}, St.OPEN)
    >>> machine.fire(Ev.CLOSE)
    <St.CLOSED: 2>
    """

    __slots__ = ("state", "_table")

    def __init__(self, table: Mapping[tuple[S, E], S], initial: S) -> None:
        self._table = table
        self.state = initial

    def fire(self, event: E) -> S:
        """Move to the state the table names for ``event``; return it.

        Raises:
            ProtocolStateError: The table has no entry for (state, event).
        """
        try:
            self.state = self._table[self.state, event]
        except KeyError:
            raise ProtocolStateError(f"{event} is not allowed in {self.state}") from None
        return self.state


class Transport(Protocol):
    """The engine's side of one connection, as a protocol sees it."""

    def write(self, data: bytes) -> None:
        """Send ``data`` (now, or as soon as the client reads)."""

    def close(self, *, linger: bool | None = False) -> None:
        """Close once everything written is sent.

        ``linger``: the client may still be sending (a rejected request): half-close
        and read to the end first, so that unread input cannot turn the close into a
        reset that destroys the answer (RFC 9112 section 9.6). ``None``: look whether
        input is waiting unread (one more system call), and linger if so.
        """

    def abort(self) -> None:
        """Close now, dropping whatever is not sent yet."""

    def get_write_buffer_size(self) -> int:
        """Bytes written and not sent yet: the client is slow to read (see ``resume_writing``)."""
        return 0

    def pause_reading(self) -> None:
        """Stop reading; the client's bytes wait in the kernel (TCP flow control)."""

    def resume_reading(self) -> None:
        """Read again after :meth:`pause_reading`."""

    def set_timeout(self, seconds: float | None) -> None:
        """Call the protocol's :meth:`BaseProtocol.timeout` in ``seconds``; ``None`` cancels."""


class Services(Protocol):
    """What the server does for its protocols: verdicts and texts computed off the I/O thread."""

    def request_status(self, protocol: BaseProtocol) -> None:
        """Deliver a fresh verdict to ``protocol.status_received`` (at once, or later)."""

    def request_text(self, protocol: BaseProtocol, name: str) -> None:
        """Deliver ``debug_text(name)`` to ``protocol.text_received`` (at once, or later)."""

    def count_probe(self, status: HealthStatus) -> None:
        """Count one answered probe by its verdict (for ``/metrics``)."""


class BaseProtocol:
    """A protocol that does nothing: every event a connection can see, as a method."""

    transport: Transport

    def connection_made(self, transport: Transport) -> None:
        """A client connected; ``transport`` is how to answer it."""
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        """Bytes from the client (never empty)."""

    def eof_received(self) -> bool:
        """The client will send nothing more.

        Returns:
            ``True`` to keep the connection for an answer still to come (the protocol
            closes it later); ``False`` to have the transport close it now.
        """
        return False

    def shed_order(self) -> int | None:
        """Whether closing the connection now to make room for another loses anything.

        Returns:
            ``0``: nothing is owed nor under way (idle, closed first); ``1``: a request
            is arriving, incomplete (a slow client, closed next); ``None``: an answer
            is owed, never closed for room.
        """
        return None

    def timeout(self) -> None:
        """The deadline set with :meth:`Transport.set_timeout` passed."""
        self.transport.close()

    def status_received(self, status: HealthStatus) -> None:
        """The verdict asked for with :meth:`Services.request_status`."""

    def text_received(self, text: str | None, error: str | None) -> None:
        """The text asked for with :meth:`Services.request_text`.

        ``text`` is ``None`` when there is none; ``error`` says why there is no answer
        (the call raised, or did not return within the callback deadline).
        """

    def resume_writing(self) -> None:
        """Everything written is sent now (after ``get_write_buffer_size()`` was not 0)."""

    def connection_lost(self) -> None:
        """The connection is closed; no more events will come."""


# A factory the server calls once per accepted connection.
ProtocolFactory = Callable[[], BaseProtocol]


# Where users import them from (their home here stays private).
BaseProtocol.__module__ = Transport.__module__ = Services.__module__ = "elastic_healthcheck"
