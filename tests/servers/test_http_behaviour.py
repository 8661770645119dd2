"""What an HTTP prober sees: status codes, bodies, headers, keep-alive, metrics, logs."""

from __future__ import annotations

import json
import logging
import socket
import time

import pytest

from .client import NOW_CALLBACK, Response, ResponseReader, exchange, read_response, request
from .conftest import connect, wait_for

REQUIRED_HEADERS = {"cache-control": "no-store", "x-content-type-options": "nosniff"}


def assert_common_headers(response: Response) -> None:
    for name, value in REQUIRED_HEADERS.items():
        assert response.header(name) == value
    assert "server" not in response.headers
    assert (response.header("date") or "").endswith(" GMT")
    if response.body:
        assert int(response.header("content-length") or -1) == len(response.body)


@pytest.mark.parametrize("path", ["/healthz", "/livez"])
def test_alive_is_200_with_json_verdict(server, path):
    response = request(server.port, path)
    assert response.status == 200
    assert response.header("content-type") == "application/json"
    body = json.loads(response.body)
    assert body["status"] == "alive"
    assert body["timeout"] == 60
    assert body["reason"] is None
    assert 0 <= body["age"] < 5
    assert abs(body["last_progress"] - time.time()) < 5
    assert_common_headers(response)


def test_dead_is_503(server_factory):
    server = server_factory(lambda: int(time.time()) - 120, timeout=60)
    server.start()
    response = request(server.port)
    assert response.status == 503
    body = json.loads(response.body)
    assert body["status"] == "dead"
    assert body["age"] >= 120


@pytest.mark.parametrize(
    ("callback", "reason"),
    [
        pytest.param(lambda: None, "callback returned NoneType", id="none"),
        pytest.param(lambda: "soon", "callback returned str", id="string"),
        pytest.param(lambda: float("nan"), "callback returned nan", id="nan"),
        pytest.param(lambda: 1 / 0, "callback raised ZeroDivisionError", id="raises"),
        pytest.param(lambda: time.time() * 1000, None, id="milliseconds"),
    ],
)
def test_unknown_is_503_with_reason(server_factory, callback, reason):
    server = server_factory(callback)
    server.start()
    response = request(server.port)
    assert response.status == 503
    body = json.loads(response.body)
    assert body["status"] == "unknown"
    assert body["last_progress"] is None and body["age"] is None
    if reason is not None:
        assert body["reason"] == reason
    assert "Traceback" not in response.body.decode()


def test_query_string_does_not_change_the_status(server_factory):
    server = server_factory(lambda: 0)
    server.start()
    for path in ["/healthz?verbose", "/healthz?status=alive", "/livez?x=1&y=2"]:
        assert request(server.port, path).status == 503


def test_absolute_form_target_is_routed(server):
    assert request(server.port, f"http://127.0.0.1:{server.port}/healthz").status == 200


def test_head_is_get_without_body(server_factory):
    server = server_factory(lambda: None)  # a body that does not change between requests
    server.start()
    get = request(server.port, "/healthz")
    head = request(server.port, "/healthz", method="HEAD")
    assert head.status == get.status
    assert head.body == b""
    assert head.header("content-length") == get.header("content-length")
    assert head.header("content-type") == get.header("content-type")


def test_head_of_metrics_has_the_length_of_get(server):
    head = request(server.port, "/metrics", method="HEAD")
    assert head.status == 200
    assert int(head.header("content-length") or 0) > 100


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "*"])
def test_options_answers_with_allow(server, path):
    response = request(server.port, path, method="OPTIONS")
    assert response.status == 200
    assert response.header("allow") == "GET, HEAD, OPTIONS"
    assert response.body == b""
    assert response.header("content-length") == "0"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "TRACE", "BREW"])
def test_other_methods_get_405_with_allow(server, method):
    response = request(server.port, "/healthz", method=method)
    assert response.status == 405
    assert response.header("allow") == "GET, HEAD, OPTIONS"
    assert_common_headers(response)


def test_connect_gets_405(server):
    response = request(server.port, "example.com:443", method="CONNECT")
    assert response.status == 405


@pytest.mark.parametrize("path", ["/", "/healthz/", "/health", "/HEALTHZ", "/favicon.ico"])
def test_unknown_paths_get_404(server, path):
    response = request(server.port, path)
    assert response.status == 404
    assert_common_headers(response)


def test_nothing_the_client_sends_is_reflected(server):
    marker = "zzmarkerzz"
    for method, path in [("GET", f"/{marker}"), (marker.upper(), "/healthz")]:
        response = request(
            server.port,
            path,
            method=method,
            headers=f"Host: {marker}\r\nX-{marker}: {marker}\r\nConnection: close\r\n",
        )
        assert marker not in (response.raw_head + response.body).decode().lower()


def test_keep_alive_serves_many_requests_on_one_connection(server):
    with connect(server.port) as sock:
        for path, status in [
            ("/healthz", 200),
            ("/livez", 200),
            ("/metrics", 200),
            ("/nope", 404),
            ("/healthz", 200),
        ]:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            response = read_response(sock)
            assert response.status == status, path
            assert response.header("connection") is None


def test_pipelined_requests_are_answered_in_order(server):
    with connect(server.port) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /livez HTTP/1.1\r\nHost: x\r\n\r\n"
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        reader = ResponseReader(sock)
        statuses = [reader.read().status, reader.read().status]
        statuses.append(reader.read(head_only=True).status)
        last = reader.read()
        statuses.append(last.status)
        assert last.header("connection") == "close"
        assert sock.recv(1) == b""
    assert statuses == [200, 404, 200, 200]


def _five_ms_callback() -> int:
    time.sleep(0.005)  # the callback's own work: the answer comes after the end of input
    return int(time.time())


@pytest.mark.parametrize("callback", ["instant", "5 ms"])
def test_pipelined_requests_then_half_close_are_all_answered_in_order(server_factory, callback):
    """Requests sent before a half-close (``shutdown(SHUT_WR)``) are each answered, in
    order, and then the server closes."""
    server = server_factory(_five_ms_callback if callback == "5 ms" else NOW_CALLBACK)
    server.start()
    for _ in range(20):
        with connect(server.port) as sock:
            sock.sendall(
                b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            sock.shutdown(socket.SHUT_WR)
            reader = ResponseReader(sock)
            responses = [reader.read() for _ in range(3)]
            assert sock.recv(1) == b"" and reader.buffer == b""
        assert [r.status for r in responses] == [200, 404, 200]
        # "close" on the last when the end of input came before it was answered.
        assert [r.header("connection") for r in responses][:2] == [None, None]


def test_http10_closes_after_the_response(server):
    response = exchange(server.port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nConnection: close\r\n" in response


def test_http10_keep_alive_is_honoured(server):
    with connect(server.port) as sock:
        for _ in range(3):
            sock.sendall(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            response = read_response(sock)
            assert response.status == 200
            assert response.header("connection") == "keep-alive"


def test_connection_close_is_honoured(server):
    with connect(server.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_response(sock).header("connection") == "close"
        assert sock.recv(1) == b""


def test_metrics_parse_with_the_reference_parser(server):
    parser = pytest.importorskip("prometheus_client.parser")
    for _ in range(3):
        request(server.port, "/healthz")
    response = request(server.port, "/metrics")
    assert response.status == 200
    assert response.header("content-type") == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in parser.text_string_to_metric_families(response.body.decode())}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in families.values()
        for s in family.samples
    }
    assert samples[("elastic_healthcheck_alive", ())] == 1
    assert samples[("elastic_healthcheck_timeout_seconds", ())] == 60
    assert samples[("elastic_healthcheck_probes_total", (("verdict", "alive"),))] == 3
    assert samples[("elastic_healthcheck_probes_total", (("verdict", "dead"),))] == 0
    assert families["elastic_healthcheck_probes"].type == "counter"
    assert (
        abs(samples[("elastic_healthcheck_last_progress_timestamp_seconds", ())] - time.time()) < 5
    )


def test_bound_port_and_url_are_readable_after_start(server):
    assert server.port > 0
    assert server.host == "127.0.0.1"
    assert server.url == f"http://127.0.0.1:{server.port}/healthz"
    assert server.addresses == [("127.0.0.1", server.port)]


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")


@needs_ipv6
def test_default_host_is_dual_stack(server_factory):
    server = server_factory(host=None)
    server.start()
    assert server.host == "::"
    assert request(server.port, host="127.0.0.1").status == 200
    assert request(server.port, host="::1").status == 200
    assert server.url == f"http://127.0.0.1:{server.port}/healthz"


@needs_ipv6
def test_explicit_ipv6_address(server_factory):
    server = server_factory(host="::1")
    server.start()
    assert server.url == f"http://[::1]:{server.port}/healthz"
    assert request(server.port, host="::1").status == 200
    with pytest.raises(OSError):
        request(server.port, host="127.0.0.1", timeout=1)


@needs_ipv6
def test_localhost_listens_on_both_loopbacks_on_one_port(server_factory):
    server = server_factory(host="localhost")
    server.start()
    hosts = {host for host, _ in server.addresses}
    if hosts != {"127.0.0.1", "::1"}:
        pytest.skip(f"localhost resolves to {hosts} here")
    assert {port for _, port in server.addresses} == {server.port}
    assert request(server.port, host="127.0.0.1").status == 200
    assert request(server.port, host="::1").status == 200


def test_start_and_stop_log_one_info_line_each_with_the_address(server_factory, eh_caplog):
    server = server_factory()
    server.start()
    port, url = server.port, server.url
    for _ in range(5):
        request(port)
    server.stop()
    messages = [(r.levelno, r.getMessage()) for r in eh_caplog.records]
    assert messages == [
        (logging.INFO, f"Serving http health checks on 127.0.0.1:{port} ({url})"),
        (logging.INFO, f"Stopped http health check server on 127.0.0.1:{port} ({url})"),
    ]


def test_transitions_are_logged_once_each(server_factory, eh_caplog):
    answers = [0, 0, 0, "oops", "oops", None, None]

    def callback():
        return answers.pop(0) if answers else int(time.time())

    server = server_factory(callback)
    server.start()
    deadline = time.monotonic() + 10
    while answers and time.monotonic() < deadline:  # probes may share one call
        request(server.port)
    wait_for(lambda: request(server.port).status == 200)  # past the verdict-reuse window
    server.stop()
    transitions = [
        (r.levelno, r.getMessage().split(",")[0])
        for r in eh_caplog.records
        if "Health check:" in r.getMessage()
    ]
    assert transitions == [
        (logging.WARNING, "Health check: dead"),
        (logging.WARNING, "Health check: unknown"),
        (logging.INFO, "Health check: alive again"),
    ]
    unknown = next(r.getMessage() for r in eh_caplog.records if "unknown" in r.getMessage())
    assert "callback returned" in unknown


def test_requests_are_not_logged(server, eh_caplog):
    for path in ["/healthz", "/nope", "/metrics"]:
        request(server.port, path)
    exchange(server.port, b"garbage\r\n\r\n")
    assert eh_caplog.records == []
