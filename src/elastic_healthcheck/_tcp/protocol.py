"""The TCP status protocol: ask for the verdict, write its line, close. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Callable

from .._engine.protocol import BaseProtocol, Services, StateEnum, StateMachine, Transport
from ..status import HealthStatus

__all__ = ["TRANSITIONS", "TCPEvent", "TCPProtocol", "TCPState"]


class TCPState(StateEnum):
    """Where one TCP status connection is."""

    WAITING = "waiting"  # for the verdict; input is read and dropped
    HALF_CLOSED = "half-closed"  # waiting, and the client sent its last byte
    CLOSED = "closed"  # the line is written; the connection closes


class TCPEvent(StateEnum):
    """What moves a TCP status connection."""

    INPUT = "input"  # bytes from the client (HAProxy's agent-send): dropped
    EOF = "eof"  # the client will send nothing more (ncat at the end of its input)
    ANSWER = "answer"  # the line is written
    LOST = "lost"  # the transport closed


S, E = TCPState, TCPEvent
TRANSITIONS: dict[tuple[TCPState, TCPEvent], TCPState] = {
    (S.WAITING, E.INPUT): S.WAITING,
    (S.WAITING, E.EOF): S.HALF_CLOSED,
    (S.WAITING, E.ANSWER): S.CLOSED,
    (S.WAITING, E.LOST): S.CLOSED,
    (S.HALF_CLOSED, E.ANSWER): S.CLOSED,
    (S.HALF_CLOSED, E.LOST): S.CLOSED,
    (S.CLOSED, E.LOST): S.CLOSED,
}
del S, E


class TCPProtocol(BaseProtocol):
    """One TCP status connection: ask for the verdict, write its line, close."""

    def __init__(self, services: Services, render: Callable[[HealthStatus], bytes]) -> None:
        self._services = services
        self._render = render
        self._machine = StateMachine(TRANSITIONS, TCPState.WAITING)
        self._got_input = False

    @property
    def state(self) -> TCPState:
        return self._machine.state

    def connection_made(self, transport: Transport) -> None:
        super().connection_made(transport)
        self._services.request_status(self)

    def data_received(self, data: bytes) -> None:
        if self._machine.state is TCPState.WAITING:
            self._machine.fire(TCPEvent.INPUT)
            self._got_input = True  # so the close will be graceful

    def eof_received(self) -> bool:
        if self._machine.state is TCPState.WAITING:
            self._machine.fire(TCPEvent.EOF)
            return True  # the client still wants its line
        return False

    def status_received(self, status: HealthStatus) -> None:
        self._machine.fire(TCPEvent.ANSWER)
        self._services.count_probe(status)
        self.transport.write(self._render(status))
        # Input seen: the client may send more, linger. None seen: look whether some
        # arrived since the loop last read (the line must not be lost to a reset).
        self.transport.close(linger=True if self._got_input else None)

    def connection_lost(self) -> None:
        self._machine.fire(TCPEvent.LOST)
