"""The HTTP and TCP protocols as state machines, driven by hand: no sockets, no threads."""

from __future__ import annotations

import enum
import itertools
import re

import pytest

from elastic_healthcheck._engine.protocol import BaseProtocol, ProtocolStateError, StateMachine
from elastic_healthcheck._http.protocol import (
    MAX_BUFFERED_INPUT,
    PARSED_CACHE,
    HTTPEvent,
    HTTPProtocol,
    HTTPResponses,
    HTTPState,
)
from elastic_healthcheck._http.protocol import (
    TRANSITIONS as HTTP_TRANSITIONS,
)
from elastic_healthcheck._tcp.line import status_line
from elastic_healthcheck._tcp.protocol import (
    TRANSITIONS as TCP_TRANSITIONS,
)
from elastic_healthcheck._tcp.protocol import (
    TCPEvent,
    TCPProtocol,
    TCPState,
)
from elastic_healthcheck.status import HealthStatus, Verdict

ALIVE = HealthStatus(Verdict.ALIVE, 60.0, last_progress=1.0, age=0.0)
GET = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
OPEN = "open"


class FakeTransport:
    """What a protocol sees of a connection, recorded."""

    def __init__(self) -> None:
        self.written = b""
        self.closed: object = OPEN  # else close()'s linger argument
        self.aborted = False
        self.reading = True
        self.timeout: float | None = None
        self.buffered = 0

    def write(self, data: bytes) -> None:
        assert self.closed is OPEN, "written after close"
        self.written += data

    def close(self, *, linger: bool | None = False) -> None:
        self.closed = linger

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_timeout(self, seconds: float | None) -> None:
        self.timeout = seconds


class FakeServices:
    """Verdicts and texts on demand: the test delivers them."""

    def __init__(self) -> None:
        self.status_requests: list[BaseProtocol] = []
        self.text_requests: list[tuple[BaseProtocol, str]] = []
        self.counted: list[Verdict] = []

    def request_status(self, protocol: BaseProtocol) -> None:
        self.status_requests.append(protocol)

    def request_text(self, protocol: BaseProtocol, name: str) -> None:
        self.text_requests.append((protocol, name))

    def count_probe(self, status: HealthStatus) -> None:
        self.counted.append(status.verdict)


def http(debug: bool = False) -> tuple[HTTPProtocol, FakeTransport, FakeServices]:
    services = FakeServices()
    protocol = HTTPProtocol(services, HTTPResponses(5.0, debug, lambda: dict.fromkeys(Verdict, 0)))
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, transport, services


def state_of(protocol: HTTPProtocol | TCPProtocol) -> enum.Enum:
    """The state, typed loosely: each event may change it (no narrowing across calls)."""
    return protocol.state


def timeout_of(transport: FakeTransport) -> float | None:
    return transport.timeout


def reading(transport: FakeTransport) -> bool:
    return transport.reading


def closed_of(transport: FakeTransport) -> object:
    """How the transport was closed, typed loosely (no narrowing across calls)."""
    return transport.closed


def statuses(written: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", written)]


# -- the tables --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "states", "events", "initial"),
    [
        (HTTP_TRANSITIONS, HTTPState, HTTPEvent, HTTPState.IDLE),
        (TCP_TRANSITIONS, TCPState, TCPEvent, TCPState.WAITING),
    ],
)
def test_every_event_the_table_does_not_list_raises(table, states, events, initial):
    for state, event in itertools.product(states, events):
        machine = StateMachine(table, state)
        if (state, event) in table:
            assert machine.fire(event) is table[state, event]
        else:
            with pytest.raises(ProtocolStateError):
                machine.fire(event)
            assert machine.state is state  # an illegal event changes nothing


@pytest.mark.parametrize(
    ("table", "states", "initial", "closed"),
    [
        (HTTP_TRANSITIONS, HTTPState, HTTPState.IDLE, HTTPState.CLOSED),
        (TCP_TRANSITIONS, TCPState, TCPState.WAITING, TCPState.CLOSED),
    ],
)
def test_every_state_is_reachable_and_closed_is_final(table, states, initial, closed):
    reached, frontier = {initial}, [initial]
    while frontier:
        state = frontier.pop()
        for (source, _event), target in table.items():
            if source is state and target not in reached:
                reached.add(target)
                frontier.append(target)
    assert reached == set(states)
    assert {target for (source, _e), target in table.items() if source is closed} == {closed}


def test_state_machine_names_the_illegal_event():
    class St(enum.Enum):
        A = 1

    class Ev(enum.Enum):
        GO = 1

    table: dict[tuple[St, Ev], St] = {}
    with pytest.raises(ProtocolStateError, match="Ev.GO is not allowed in St.A"):
        StateMachine(table, St.A).fire(Ev.GO)


# -- HTTP ------------------------------------------------------------------------------------


def test_http_request_waits_for_the_verdict_then_keeps_the_connection():
    protocol, transport, services = http()
    protocol.data_received(GET)
    assert state_of(protocol) is HTTPState.WAITING
    assert services.status_requests == [protocol]
    assert transport.timeout is None  # the wait for a verdict has its own deadline
    protocol.status_received(ALIVE)
    assert statuses(transport.written) == [200]
    assert state_of(protocol) is HTTPState.IDLE
    assert transport.closed is OPEN
    assert timeout_of(transport) == 5.0  # the next request's deadline
    assert services.counted == [Verdict.ALIVE]


def test_http_pipelined_requests_are_taken_one_after_another():
    protocol, transport, services = http()
    protocol.data_received(GET * 3)
    for answered in range(1, 4):
        assert len(services.status_requests) == answered
        protocol.status_received(ALIVE)
    assert statuses(transport.written) == [200, 200, 200]
    assert state_of(protocol) is HTTPState.IDLE


def test_http_pipelined_requests_wait_while_the_client_does_not_read():
    protocol, transport, services = http()
    protocol.data_received(GET * 2)
    transport.buffered = 1000  # the first answer is not sent yet
    protocol.status_received(ALIVE)
    assert len(services.status_requests) == 1
    transport.buffered = 0
    protocol.resume_writing()
    assert len(services.status_requests) == 2


def test_http_half_close_while_waiting_is_still_answered_then_closed():
    """`printf 'GET ...' | nc -N`: the request, then the end of input, then the answer."""
    protocol, transport, _services = http()
    protocol.data_received(GET)
    assert protocol.eof_received() is True  # keep the connection: an answer is owed
    assert state_of(protocol) is HTTPState.HALF_CLOSED
    protocol.status_received(ALIVE)
    assert statuses(transport.written) == [200]
    assert b"\r\nConnection: close\r\n" in transport.written
    assert state_of(protocol) is HTTPState.CLOSED and transport.closed is False


def test_http_pipelined_requests_then_half_close_are_all_answered_then_closed():
    protocol, transport, services = http()
    protocol.data_received(GET + b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n" + GET)
    assert protocol.eof_received() is True
    assert state_of(protocol) is HTTPState.HALF_CLOSED
    protocol.status_received(ALIVE)  # the 404 goes out at once, then the third waits
    assert state_of(protocol) is HTTPState.HALF_CLOSED and transport.closed is OPEN
    protocol.status_received(ALIVE)
    assert statuses(transport.written) == [200, 404, 200]
    assert transport.written.count(b"\r\nConnection: close\r\n") == 1  # on the last only
    assert state_of(protocol) is HTTPState.CLOSED and closed_of(transport) is False
    assert len(services.status_requests) == 2


def test_http_requests_held_for_a_slow_reader_are_answered_after_its_end_of_input():
    protocol, transport, services = http()
    protocol.data_received(GET * 2)
    transport.buffered = 1000  # the first answer is not sent yet: the second waits
    protocol.status_received(ALIVE)
    assert protocol.eof_received() is True
    assert state_of(protocol) is HTTPState.DRAINING and transport.closed is OPEN
    transport.buffered = 0
    protocol.resume_writing()
    protocol.status_received(ALIVE)
    assert statuses(transport.written) == [200, 200]
    assert state_of(protocol) is HTTPState.CLOSED and closed_of(transport) is False


def test_http_end_of_input_between_requests_closes():
    protocol, _transport, _services = http()
    assert protocol.eof_received() is False
    assert state_of(protocol) is HTTPState.CLOSED


@pytest.mark.parametrize(
    "first_bytes",
    [
        pytest.param(b"\x16", id="TLS ClientHello"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", id="TLS record"),
        pytest.param(b"PRI * HTTP/2.0\r\n", id="HTTP/2 preface, first line"),
        pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", id="HTTP/2 preface"),
        pytest.param(b"G\xc3\xa9T /", id="non-ASCII method"),
        pytest.param(b"GE(T", id="non-token method"),
        pytest.param(b"\x00", id="NUL"),
        pytest.param(b"GET\r\n", id="line ends before the target"),
    ],
)
def test_http_what_cannot_be_http_gets_400_at_once(first_bytes):
    protocol, transport, services = http()
    protocol.data_received(first_bytes)
    assert statuses(transport.written) == [400]
    assert transport.closed is True  # lingers: the rest may be on its way
    assert state_of(protocol) is HTTPState.CLOSED
    assert not services.status_requests


URI_TOO_LONG = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("pieces", [1, 2, 3, 7, 100])
def test_http_long_target_is_414_however_the_bytes_are_split(pieces):
    protocol, transport, _services = http()
    size = -(-len(URI_TOO_LONG) // pieces)
    for start in range(0, len(URI_TOO_LONG), size):
        protocol.data_received(URI_TOO_LONG[start : start + size])
        if state_of(protocol) is HTTPState.CLOSED:
            break
    assert statuses(transport.written) == [414]


def test_http_long_head_is_431():
    protocol, transport, _services = http()
    protocol.data_received(b"GET / HTTP/1.1\r\n" + b"X-Filler: " + b"f" * 9000 + b"\r\n\r\n")
    assert statuses(transport.written) == [431]


def test_http_partial_request_at_the_deadline_gets_408():
    protocol, transport, _services = http()
    protocol.data_received(b"GET /healthz HT")
    protocol.timeout()
    assert statuses(transport.written) == [408]
    assert state_of(protocol) is HTTPState.CLOSED


def test_http_silent_client_at_the_deadline_is_closed_without_a_word():
    protocol, transport, _services = http()
    protocol.timeout()
    assert transport.written == b"" and transport.closed is False


def test_http_client_that_does_not_read_is_aborted_at_the_deadline():
    protocol, transport, _services = http()
    transport.buffered = 100
    protocol.timeout()
    assert transport.aborted


def test_http_input_beyond_the_mark_pauses_reading_until_answered():
    protocol, transport, services = http()
    count = MAX_BUFFERED_INPUT // len(GET) + 1
    protocol.data_received(GET * count)
    assert not transport.reading
    while state_of(protocol) is HTTPState.WAITING and not reading(transport):
        protocol.status_received(ALIVE)
    assert reading(transport)  # resumed once half the buffer was answered
    assert state_of(protocol) is HTTPState.WAITING  # well before the end


def test_http_debug_route_asks_for_the_text_by_name():
    protocol, transport, services = http(debug=True)
    protocol.data_received(b"GET /debug/stacks HTTP/1.1\r\nHost: x\r\n\r\n")
    assert services.text_requests == [(protocol, "stacks")]
    protocol.text_received("rank 0: waiting\n", None)
    assert statuses(transport.written) == [200]
    assert b"Content-Type: text/plain; charset=utf-8\r\n" in transport.written
    assert transport.written.endswith(b"\r\n\r\nrank 0: waiting\n")


@pytest.mark.parametrize(
    ("text", "error", "status"),
    [(None, None, 404), (None, "debug_text() did not return within 0.5s", 503)],
)
def test_http_debug_text_missing_or_failed(text, error, status):
    protocol, transport, _services = http(debug=True)
    protocol.data_received(b"GET /debug/x HTTP/1.1\r\nHost: x\r\n\r\n")
    protocol.text_received(text, error)
    assert statuses(transport.written) == [status]


@pytest.mark.parametrize("path", [b"/debug/stacks", b"/debug/"])
def test_http_debug_paths_are_404_without_debug(path):
    protocol, transport, services = http(debug=False)
    protocol.data_received(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert statuses(transport.written) == [404]
    assert not services.text_requests


def test_http_connection_lost_while_waiting_is_final():
    protocol, _transport, _services = http()
    protocol.data_received(GET)
    protocol.connection_lost()
    assert state_of(protocol) is HTTPState.CLOSED


# -- TCP -------------------------------------------------------------------------------------


def tcp() -> tuple[TCPProtocol, FakeTransport, FakeServices]:
    services = FakeServices()
    protocol = TCPProtocol(services, status_line)
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, transport, services


def test_tcp_asks_at_connect_and_closes_after_the_line():
    protocol, transport, services = tcp()
    assert services.status_requests == [protocol]
    protocol.status_received(ALIVE)
    assert transport.written == b"alive age=0.0 timeout=60\n"
    assert transport.closed is None  # nothing seen: the transport looks for unread input
    assert state_of(protocol) is TCPState.CLOSED


def test_tcp_input_is_dropped_and_makes_the_close_graceful():
    protocol, transport, _services = tcp()
    protocol.data_received(b"be_web/srv1\n")
    protocol.status_received(ALIVE)
    assert transport.written == b"alive age=0.0 timeout=60\n"
    assert transport.closed is True


def test_tcp_half_close_keeps_waiting_for_the_line():
    protocol, transport, _services = tcp()
    assert protocol.eof_received() is True
    assert state_of(protocol) is TCPState.HALF_CLOSED
    protocol.status_received(ALIVE)
    assert transport.written.startswith(b"alive ")


def test_tcp_second_verdict_is_a_bug_that_raises():
    protocol, _transport, _services = tcp()
    protocol.status_received(ALIVE)
    with pytest.raises(ProtocolStateError):
        protocol.status_received(ALIVE)


def test_http_parsed_heads_are_remembered_within_a_bound():
    """A prober's identical heads are parsed once; distinct heads cannot grow memory."""
    protocol, transport, _services = http()
    responses = protocol._responses
    for index in range(PARSED_CACHE * 2):
        protocol.data_received(f"OPTIONS /healthz?{index} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert len(responses.parsed) <= PARSED_CACHE
    assert statuses(transport.written) == [200] * PARSED_CACHE * 2
    protocol.data_received(GET)
    protocol.status_received(ALIVE)
    protocol.data_received(GET)
    head = GET[: GET.index(b"\n\r\n")]  # as find_head_end cuts it
    assert responses.parsed[head].path == "/healthz"


class ResettingTransport(FakeTransport):
    """A client that reset the connection: the first write finds it gone."""

    protocol: BaseProtocol

    def write(self, data: bytes) -> None:
        self.protocol.connection_lost()  # what SocketTransport.abort() tells the protocol


@pytest.mark.parametrize(
    "data", [GET, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01"]
)
def test_http_client_gone_at_the_answer_is_no_error(data):
    """A reset while answering (a prober that gave up) ends the connection quietly."""
    services = FakeServices()
    protocol = HTTPProtocol(services, HTTPResponses(5.0, False, lambda: dict.fromkeys(Verdict, 0)))
    transport = ResettingTransport()
    transport.protocol = protocol
    protocol.connection_made(transport)
    protocol.data_received(data)
    if services.status_requests:
        protocol.status_received(ALIVE)
    assert state_of(protocol) is HTTPState.CLOSED
