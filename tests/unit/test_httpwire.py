"""The HTTP wire format, table-driven: bytes in, a Request or a status out, no sockets.

Request tables hold whole heads as a client sends them, blank line included; ``parse``
cuts them with :func:`find_head_end` exactly as the server does. RFC 9110 is HTTP
semantics, RFC 9112 HTTP/1.1 messages.
"""

from __future__ import annotations

import email.utils
import http.client
import io
import re
from http import HTTPStatus

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elastic_healthcheck._http.wire import (
    MAX_HEADERS,
    HTTPError,
    Request,
    build_response,
    find_head_end,
    http_date,
    parse_request,
    reason_phrase,
)

BAD_REQUEST = HTTPStatus.BAD_REQUEST
TOO_LARGE = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
TOO_MANY_FIELDS = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
NOT_IMPLEMENTED = HTTPStatus.NOT_IMPLEMENTED
BAD_VERSION = HTTPStatus.HTTP_VERSION_NOT_SUPPORTED


def parse(raw: bytes) -> Request:
    """Parse one whole request head, blank line included, as the server does."""
    end, following = find_head_end(raw)
    assert following == len(raw), "the table entry must be exactly one request head"
    return parse_request(raw[:end])


def fields(n: int) -> bytes:
    """``n`` distinct, valid header field lines, Host first."""
    return b"Host: a\r\n" + b"".join(b"X-F%d: v\r\n" % i for i in range(n - 1))


# -- find_head_end -------------------------------------------------------------------------

# (buffer, the head it holds, what follows the head)
COMPLETE_HEADS = [
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r",
        b"",
        id="crlf",
    ),
    pytest.param(
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"GET / HTTP/1.1\nHost: a",
        b"",
        id="lf-only",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\n\n",
        b"GET / HTTP/1.1\r\nHost: a\r",
        b"",
        id="crlf-lines-lf-blank-line",
    ),
    pytest.param(
        b"GET / HTTP/1.1\nHost: a\n\r\n",
        b"GET / HTTP/1.1\nHost: a",
        b"",
        id="lf-lines-crlf-blank-line",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\nAccept: */*\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\nAccept: */*\r",
        b"",
        id="mixed-line-ends",
    ),
    pytest.param(
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.0\r",
        b"",
        id="no-header-fields",
    ),
    pytest.param(
        b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: a\r",
        b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n",
        id="pipelined-crlf",
    ),
    pytest.param(
        b"GET /a HTTP/1.1\nHost: a\n\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a HTTP/1.1\nHost: a",
        b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n",
        id="pipelined-lf-then-crlf",
    ),
    pytest.param(
        b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\nHost: a\n\n",
        b"GET /a HTTP/1.1\r\nHost: a\r",
        b"GET /b HTTP/1.1\nHost: a\n\n",
        id="pipelined-crlf-then-lf",
    ),
    pytest.param(
        b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b",
        b"GET /a HTTP/1.1\r\nHost: a\r",
        b"GET /b",
        id="pipelined-second-incomplete",
    ),
]


@pytest.mark.parametrize(("buf", "head", "rest"), COMPLETE_HEADS)
def test_find_head_end_splits_head_from_what_follows(buf, head, rest):
    end, following = find_head_end(buf)
    assert buf[:end] == head
    assert buf[following:] == rest


INCOMPLETE_HEADS = [
    pytest.param(b"", id="empty"),
    pytest.param(b"GET / HTTP/1.1", id="request-line-unterminated"),
    pytest.param(b"GET / HTTP/1.1\r\n", id="request-line-only"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n", id="no-blank-line"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n\r", id="blank-line-missing-lf"),
    pytest.param(b"GET / HTTP/1.1\nHost: a\n", id="lf-no-blank-line"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\r\n", id="cr-cr-lf-is-not-a-blank-line"),
]


@pytest.mark.parametrize("buf", INCOMPLETE_HEADS)
def test_find_head_end_reports_incomplete_head(buf):
    assert find_head_end(buf) == (-1, -1)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"GET /healthz HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n", id="crlf"),
        pytest.param(b"GET /healthz HTTP/1.1\nHost: a\nAccept: */*\n\n", id="lf"),
    ],
)
def test_find_head_end_finds_nothing_until_the_last_byte_arrives(raw):
    """Byte by byte, as a slow client sends: every proper prefix is incomplete."""
    for size in range(len(raw)):
        assert find_head_end(raw[:size]) == (-1, -1), raw[:size]
    assert find_head_end(raw)[1] == len(raw)


def test_pipelined_requests_parse_one_after_the_other():
    buf = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nHEAD /metrics HTTP/1.1\nHost: a\n\n"
    end, following = find_head_end(buf)
    first = parse_request(buf[:end])
    buf = buf[following:]
    end, following = find_head_end(buf)
    second = parse_request(buf[:end])
    assert (first.method, first.path) == ("GET", "/healthz")
    assert (second.method, second.path) == ("HEAD", "/metrics")
    assert buf[following:] == b""


# -- parse_request: accepted -------------------------------------------------------------

# (whole request head, method, path, HTTP/1.<minor>, keep-alive)
VALID_REQUESTS = [
    # Methods and request-target forms (RFC 9112 section 3.2).
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n", "GET", "/healthz", 1, True, id="get"),
    pytest.param(b"HEAD /livez HTTP/1.1\r\nHost: a\r\n\r\n", "HEAD", "/livez", 1, True, id="head"),
    pytest.param(
        b"OPTIONS /metrics HTTP/1.1\r\nHost: a\r\n\r\n",
        "OPTIONS",
        "/metrics",
        1,
        True,
        id="options",
    ),
    pytest.param(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", "OPTIONS", "*", 1, True, id="options-*"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "GET", "/", 1, True, id="root"),
    pytest.param(
        b"GET /healthz?verbose=1&x=%20y HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET",
        "/healthz",
        1,
        True,
        id="origin-form-query",
    ),
    pytest.param(
        b"GET /healthz? HTTP/1.1\r\nHost: a\r\n\r\n", "GET", "/healthz", 1, True, id="empty-query"
    ),
    pytest.param(
        b"GET /healthz?a?b HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET",
        "/healthz",
        1,
        True,
        id="question-mark-in-query",
    ),
    pytest.param(
        b"GET http://node-1:8080/healthz?x=1 HTTP/1.1\r\nHost: node-1:8080\r\n\r\n",
        "GET",
        "/healthz",
        1,
        True,
        id="absolute-form-http",
    ),
    pytest.param(
        b"GET https://node-1/metrics HTTP/1.1\r\nHost: node-1\r\n\r\n",
        "GET",
        "/metrics",
        1,
        True,
        id="absolute-form-https",
    ),
    pytest.param(
        b"GET http://node-1 HTTP/1.1\r\nHost: node-1\r\n\r\n",
        "GET",
        "/",
        1,
        True,
        id="absolute-form-no-path",
    ),
    pytest.param(
        b"GET https://node-1:8443 HTTP/1.1\r\nHost: node-1\r\n\r\n",
        "GET",
        "/",
        1,
        True,
        id="absolute-form-https-port-no-path",
    ),
    pytest.param(
        b"GET http://node-1?next=/healthz HTTP/1.1\r\nHost: node-1\r\n\r\n",
        "GET",
        "/",
        1,
        True,
        id="absolute-form-query-no-path",
    ),
    pytest.param(
        b"GET HTTP://node-1/healthz HTTP/1.1\r\nHost: node-1\r\n\r\n",
        "GET",
        "/healthz",
        1,
        True,
        id="absolute-form-scheme-case-insensitive",
    ),
    pytest.param(
        b"GET http://[::1]:8080/livez HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
        "GET",
        "/livez",
        1,
        True,
        id="absolute-form-ipv6",
    ),
    pytest.param(
        b"CONNECT node-1:443 HTTP/1.1\r\nHost: node-1:443\r\n\r\n",
        "CONNECT",
        "",
        1,
        True,
        id="connect-authority-form",
    ),
    # Other methods parse; routing answers 405 (RFC 9110 section 9.1: methods are tokens).
    pytest.param(b"DELETE / HTTP/1.1\r\nHost: a\r\n\r\n", "DELETE", "/", 1, True, id="delete"),
    pytest.param(
        b"M-SEARCH / HTTP/1.1\r\nHost: a\r\n\r\n", "M-SEARCH", "/", 1, True, id="m-search"
    ),
    pytest.param(b"get / HTTP/1.1\r\nHost: a\r\n\r\n", "get", "/", 1, True, id="method-case-kept"),
    # Persistence (RFC 9112 section 9.3).
    pytest.param(b"GET / HTTP/1.0\r\n\r\n", "GET", "/", 0, False, id="http10-closes"),
    pytest.param(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", "GET", "/", 0, False, id="http10-with-host"),
    pytest.param(
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "GET",
        "/",
        0,
        True,
        id="http10-keep-alive",
    ),
    pytest.param(
        b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
        "GET",
        "/",
        0,
        True,
        id="http10-keep-alive-mixed-case",
    ),
    pytest.param(
        b"GET / HTTP/1.0\r\nConnection: te,keep-alive\r\n\r\n",
        "GET",
        "/",
        0,
        True,
        id="http10-keep-alive-in-list",
    ),
    pytest.param(
        b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
        "GET",
        "/",
        0,
        False,
        id="http10-close-wins-over-keep-alive",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        "GET",
        "/",
        1,
        False,
        id="http11-close",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: CLOSE\r\n\r\n",
        "GET",
        "/",
        1,
        False,
        id="http11-close-upper-case",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive , Close\r\n\r\n",
        "GET",
        "/",
        1,
        False,
        id="http11-close-in-list",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: te\r\nConnection: close\r\n\r\n",
        "GET",
        "/",
        1,
        False,
        id="http11-close-in-second-field",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
        "GET",
        "/",
        1,
        True,
        id="http11-keep-alive",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: closed, upgrade\r\n\r\n",
        "GET",
        "/",
        1,
        True,
        id="http11-other-options-persist",
    ),
    # A later minor version is HTTP/1.x (RFC 9110 section 2.5).
    pytest.param(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", "GET", "/", 2, True, id="http12"),
    pytest.param(
        b"GET / HTTP/1.9\r\nHost: a\r\nConnection: close\r\n\r\n",
        "GET",
        "/",
        9,
        False,
        id="http19-close",
    ),
    # Line ends (RFC 9112 section 2.2: a bare LF may end a line).
    pytest.param(b"GET /livez HTTP/1.1\nHost: a\n\n", "GET", "/livez", 1, True, id="bare-lf"),
    pytest.param(
        b"GET /livez HTTP/1.1\r\nHost: a\nAccept: */*\r\n\n",
        "GET",
        "/livez",
        1,
        True,
        id="mixed-line-ends",
    ),
    # Field values (RFC 9110 section 5.5).
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Note: caf\xc3\xa9 \x80\xff\r\n\r\n",
        "GET",
        "/",
        1,
        True,
        id="obs-text-in-value",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: kube-probe/1.30\tx\r\n\r\n",
        "GET",
        "/",
        1,
        True,
        id="tab-in-value",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost:\t a \t\r\nConnection: \tclose \r\n\r\n",
        "GET",
        "/",
        1,
        False,
        id="optional-whitespace-around-value",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\n\r\n", "GET", "/", 1, True, id="empty-value"
    ),
    pytest.param(b"GET / HTTP/1.1\r\nHost:\r\n\r\n", "GET", "/", 1, True, id="empty-host-value"),
    pytest.param(
        b"GET / HTTP/1.1\r\nhOsT: a\r\n\r\n", "GET", "/", 1, True, id="field-name-case-insensitive"
    ),
    # Content-Length: 0 is no content at all (RFC 9110 section 8.6).
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        "GET",
        "/",
        1,
        True,
        id="content-length-zero",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 000\r\n\r\n",
        "GET",
        "/",
        1,
        True,
        id="content-length-zeros",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
        "GET",
        "/",
        1,
        True,
        id="duplicate-identical-content-length-zero",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\n" + fields(MAX_HEADERS) + b"\r\n",
        "GET",
        "/",
        1,
        True,
        id="max-headers-exactly",
    ),
    pytest.param(
        b"GET /healthz HTTP/1.1\r\nHost: 10.0.0.7:8080\r\nUser-Agent: kube-probe/1.30\r\n"
        b"Accept: */*\r\nConnection: close\r\n\r\n",
        "GET",
        "/healthz",
        1,
        False,
        id="kubelet-probe",
    ),
]


@pytest.mark.parametrize(("raw", "method", "path", "minor", "keep_alive"), VALID_REQUESTS)
def test_valid_request_is_parsed(raw, method, path, minor, keep_alive):
    request = parse(raw)
    assert (request.method, request.path, request.minor, request.keep_alive) == (
        method,
        path,
        minor,
        keep_alive,
    )


def test_head_without_trailing_cr_parses():
    """A head given without its last line's CR (a bare-LF client) is the same request."""
    request = parse_request(b"GET /healthz HTTP/1.1\r\nHost: a")
    assert (request.method, request.path) == ("GET", "/healthz")


def test_request_repr_names_every_field():
    request = parse(b"GET /healthz HTTP/1.0\r\n\r\n")
    assert repr(request) == "Request('GET', '/healthz', minor=0, keep_alive=False)"


# -- parse_request: rejected -------------------------------------------------------------

# (whole request head, the status it is answered with)
INVALID_REQUESTS = [
    # Request line: method SP request-target SP HTTP-version (RFC 9112 section 3).
    pytest.param(b"GET /\r\n\r\n", BAD_REQUEST, id="two-parts-http09-style"),
    pytest.param(b"GET\r\n\r\n", BAD_REQUEST, id="one-part"),
    pytest.param(b"GET / HTTP/1.1 x\r\nHost: a\r\n\r\n", BAD_REQUEST, id="four-parts"),
    pytest.param(b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="double-space-1"),
    pytest.param(b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="double-space-2"),
    pytest.param(b" GET / HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="leading-space"),
    pytest.param(b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", BAD_REQUEST, id="trailing-space"),
    pytest.param(b"GET\t/\tHTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="tabs-as-separators"),
    # Method is a token (RFC 9110 section 9.1).
    pytest.param(b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="method-at-sign"),
    pytest.param(b"GET: / HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="method-colon"),
    pytest.param(b"(GET) / HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="method-parens"),
    pytest.param(b"G\xc9T / HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="method-non-ascii"),
    pytest.param(b"GET\x7f / HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="method-del"),
    # Request target: visible ASCII only.
    pytest.param(b"GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="target-control"),
    pytest.param(b"GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="target-del"),
    pytest.param(b"GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="target-tab"),
    pytest.param(b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="target-space"),
    pytest.param(b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="target-utf8"),
    pytest.param(b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="target-obs-text"),
    # Asterisk form is for OPTIONS only (RFC 9112 section 3.2.4).
    pytest.param(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="asterisk-with-get"),
    pytest.param(b"HEAD * HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="asterisk-with-head"),
    pytest.param(b"M-SEARCH * HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="asterisk-ssdp"),
    # Unknown target forms.
    pytest.param(b"GET healthz HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="relative-target"),
    pytest.param(b"GET ?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="query-only-target"),
    pytest.param(b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="ftp-scheme"),
    pytest.param(b"GET http:/a HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="http-one-slash"),
    pytest.param(b"GET node-1:80 HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="authority-get"),
    # An http(s) URI with an empty host is invalid (RFC 9110 section 4.2.1).
    pytest.param(b"GET http:// HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="absolute-no-host"),
    pytest.param(
        b"GET http:///healthz HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="absolute-empty-host"
    ),
    pytest.param(
        b"GET https://?x HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="absolute-empty-host-query"
    ),
    pytest.param(
        b"GET http://:8080/healthz HTTP/1.1\r\nHost: a\r\n\r\n",
        BAD_REQUEST,
        id="absolute-port-without-host",
    ),
    # Userinfo in an http(s) URI is an error (RFC 9110 section 4.2.4).
    pytest.param(
        b"GET http://user@node-1/healthz HTTP/1.1\r\nHost: a\r\n\r\n",
        BAD_REQUEST,
        id="absolute-userinfo",
    ),
    pytest.param(
        b"GET http://u:pw@node-1 HTTP/1.1\r\nHost: a\r\n\r\n",
        BAD_REQUEST,
        id="absolute-userinfo-password",
    ),
    # HTTP-version = "HTTP/" DIGIT "." DIGIT, case-sensitive (RFC 9112 section 2.3).
    pytest.param(b"GET / HTTP/1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="version-no-minor"),
    pytest.param(b"GET / HTTP/2\r\nHost: a\r\n\r\n", BAD_REQUEST, id="version-2-no-minor"),
    pytest.param(b"GET / HTTP/1.1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="version-three-numbers"),
    pytest.param(b"GET / http/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="version-lower-case"),
    pytest.param(b"GET / HTTP/11.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="version-two-digit-major"),
    pytest.param(b"GET / HTTP/1.10\r\nHost: a\r\n\r\n", BAD_REQUEST, id="version-two-digit-minor"),
    pytest.param(b"GET / HTTPS/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="version-https"),
    pytest.param(b"GET / HTTP/1.x\r\nHost: a\r\n\r\n", BAD_REQUEST, id="version-letter"),
    pytest.param(b"GET / HTTP/\r\nHost: a\r\n\r\n", BAD_REQUEST, id="version-empty"),
    # Another major version (RFC 9110 section 15.6.6).
    pytest.param(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", BAD_VERSION, id="http2"),
    pytest.param(b"GET / HTTP/3.0\r\nHost: a\r\n\r\n", BAD_VERSION, id="http3"),
    pytest.param(b"GET / HTTP/0.9\r\n\r\n", BAD_VERSION, id="http09-version"),
    pytest.param(b"GET / HTTP/2.0\r\n\r\n", BAD_VERSION, id="http2-without-host"),
    # Field lines: field-name ":" OWS field-value OWS (RFC 9112 section 5).
    pytest.param(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", BAD_REQUEST, id="space-before-colon"),
    pytest.param(b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", BAD_REQUEST, id="tab-before-colon"),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", BAD_REQUEST, id="obs-fold-space"
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n", BAD_REQUEST, id="obs-fold-tab"
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n X-B: c\r\n\r\n",
        BAD_REQUEST,
        id="obs-fold-with-colon",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", BAD_REQUEST, id="whitespace-before-first-field"
    ),
    pytest.param(b"GET / HTTP/1.1\r\nHost a\r\n\r\n", BAD_REQUEST, id="field-without-colon"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", BAD_REQUEST, id="empty-field-name"),
    pytest.param(b"GET / HTTP/1.1\r\nHo/st: a\r\n\r\n", BAD_REQUEST, id="field-name-slash"),
    pytest.param(b"GET / HTTP/1.1\r\nH\xc3\xb6st: a\r\n\r\n", BAD_REQUEST, id="field-name-utf8"),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\n\r\n", BAD_REQUEST, id="value-control"
    ),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: \x1b[0m\r\n\r\n", BAD_REQUEST, id="value-esc"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x7f\r\n\r\n", BAD_REQUEST, id="value-del"),
    # NUL anywhere (RFC 9110 section 5.5).
    pytest.param(b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="nul-in-target"),
    pytest.param(b"GE\x00T / HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="nul-in-method"),
    pytest.param(b"GET / HTTP/1.1\x00\r\nHost: a\r\n\r\n", BAD_REQUEST, id="nul-after-version"),
    pytest.param(b"GET / HTTP/1.1\r\nHo\x00st: a\r\n\r\n", BAD_REQUEST, id="nul-in-name"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\x00\r\n\r\n", BAD_REQUEST, id="nul-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n\x00\r\n\r\n", BAD_REQUEST, id="nul-line"),
    # A bare CR (RFC 9112 section 2.2).
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", BAD_REQUEST, id="bare-cr-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n", BAD_REQUEST, id="cr-cr-lf"),
    pytest.param(b"GET /\r HTTP/1.1\r\nHost: a\r\n\r\n", BAD_REQUEST, id="bare-cr-in-target"),
    pytest.param(b"GET / HTTP/1.1\rHost: a\r\n\r\n", BAD_REQUEST, id="bare-cr-as-line-end"),
    # Host (RFC 9112 section 3.2).
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", BAD_REQUEST, id="http11-without-host"),
    pytest.param(
        b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n", BAD_REQUEST, id="http11-fields-but-no-host"
    ),
    pytest.param(b"GET / HTTP/1.2\r\n\r\n", BAD_REQUEST, id="http12-without-host"),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", BAD_REQUEST, id="two-identical-hosts"
    ),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", BAD_REQUEST, id="two-hosts"),
    pytest.param(
        b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", BAD_REQUEST, id="http10-two-hosts"
    ),
    pytest.param(
        b"GET http://node-1/ HTTP/1.1\r\n\r\n", BAD_REQUEST, id="absolute-form-still-needs-host"
    ),
    # Content-Length = 1*DIGIT (RFC 9110 section 8.6).
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n", BAD_REQUEST, id="cl-letters"
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", BAD_REQUEST, id="cl-negative"
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +0\r\n\r\n", BAD_REQUEST, id="cl-plus-sign"
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", BAD_REQUEST, id="cl-empty"
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x0\r\n\r\n", BAD_REQUEST, id="cl-hex"
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0.0\r\n\r\n", BAD_REQUEST, id="cl-decimal"
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1_0\r\n\r\n", BAD_REQUEST, id="cl-underscore"
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0 0\r\n\r\n",
        BAD_REQUEST,
        id="cl-inner-space",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0, 0\r\n\r\n", BAD_REQUEST, id="cl-list"
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: \xd9\xa0\r\n\r\n",
        BAD_REQUEST,
        id="cl-arabic-zero",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 1\r\n\r\n",
        BAD_REQUEST,
        id="cl-conflicting",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 00\r\n\r\n",
        BAD_REQUEST,
        id="cl-same-value-spelled-differently",
    ),
    # Content: we read none (RFC 9110 section 15.5.14).
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n", TOO_LARGE, id="cl-1"),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4096\r\n\r\n", TOO_LARGE, id="cl-4096"
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n",
        TOO_LARGE,
        id="cl-leading-zeros",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        TOO_LARGE,
        id="cl-beyond-64-bits",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        TOO_LARGE,
        id="cl-duplicate-nonzero",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
        TOO_LARGE,
        id="cl-more-digits-than-int-str-limit",
    ),
    # Transfer codings (RFC 9112 section 6.1).
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        NOT_IMPLEMENTED,
        id="te-chunked",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
        NOT_IMPLEMENTED,
        id="te-identity",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", NOT_IMPLEMENTED, id="te-empty"
    ),
    pytest.param(
        b"GET / HTTP/1.0\r\nTRANSFER-ENCODING: gzip, chunked\r\n\r\n",
        NOT_IMPLEMENTED,
        id="te-http10-upper-case",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        NOT_IMPLEMENTED,
        id="te-with-content-length",
    ),
    # Field count (RFC 6585 section 5).
    pytest.param(
        b"GET / HTTP/1.1\r\n" + fields(MAX_HEADERS + 1) + b"\r\n",
        TOO_MANY_FIELDS,
        id="max-headers-plus-one",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\n" + b"Host: a\r\n" * (MAX_HEADERS + 1) + b"\r\n",
        TOO_MANY_FIELDS,
        id="max-headers-plus-one-before-duplicate-host",
    ),
]


@pytest.mark.parametrize(("raw", "status"), INVALID_REQUESTS)
def test_invalid_request_is_rejected_with_status(raw, status):
    with pytest.raises(HTTPError) as caught:
        parse(raw)
    assert caught.value.status is status


def test_long_zero_content_length_is_no_content():
    """Five thousand zeros are still 0, and never reach int() (its 4300-digit limit)."""
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: " + b"0" * 5000 + b"\r\n\r\n"
    assert parse(raw).path == "/"


def test_empty_head_is_bad_request():
    with pytest.raises(HTTPError) as caught:
        parse_request(b"")
    assert caught.value.status is BAD_REQUEST


def test_http2_connection_preface_is_version_not_supported():
    """h2c prior knowledge (RFC 9113 section 3.4) gets 505, not a parse error."""
    buf = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    end, following = find_head_end(buf)
    assert buf[following:] == b"SM\r\n\r\n"
    with pytest.raises(HTTPError) as caught:
        parse_request(buf[:end])
    assert caught.value.status is BAD_VERSION


def test_http_error_carries_status_and_phrase():
    error = HTTPError(HTTPStatus.NOT_IMPLEMENTED)
    assert error.status is HTTPStatus.NOT_IMPLEMENTED
    assert str(error) == "Not Implemented"


# -- parse_request: anything a client sends ----------------------------------------------

_REJECT_STATUSES = {BAD_REQUEST, TOO_LARGE, TOO_MANY_FIELDS, NOT_IMPLEMENTED, BAD_VERSION}

_PIECES = st.sampled_from(
    [b"GET", b"HEAD", b"OPTIONS", b"CONNECT", b"/", b"/healthz?x", b"*", b"http://", b"https://"]
    + [b"a", b"@", b":", b"?", b"#", b"[::1]", b" ", b"\t", b"\r", b"\n", b"\r\n", b"\x00"]
    + [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"Host", b"Connection", b"close", b"keep-alive"]
    + [b"Content-Length", b"Transfer-Encoding", b"0", b"1", b",", b"\x80", b"\xff", b"\x7f"]
)
# Random bytes rarely get past the request line, so also build heads from the pieces a
# parser branches on.
_HEADS = st.one_of(
    st.binary(max_size=200),
    st.lists(st.one_of(_PIECES, st.binary(max_size=4)), max_size=40).map(b"".join),
    st.tuples(
        st.sampled_from([b"GET / HTTP/1.1", b"GET http://a/ HTTP/1.0", b"OPTIONS * HTTP/1.1"]),
        st.lists(st.lists(_PIECES, max_size=6).map(b"".join), max_size=8),
    ).map(lambda t: b"\r\n".join([t[0], *t[1]])),
)


@settings(max_examples=300, deadline=None)
@given(_HEADS)
def test_any_bytes_give_a_request_or_an_http_error(head):
    """Nothing a client sends raises anything but HTTPError, and a path is clean ASCII."""
    try:
        request = parse_request(head)
    except HTTPError as exc:
        assert exc.status in _REJECT_STATUSES
        return
    assert isinstance(request, Request)
    assert request.path.isascii()
    assert all(0x21 <= ord(c) <= 0x7E for c in request.path), request.path
    assert request.path == "" or request.path == "*" or request.path.startswith("/")
    assert request.method.isascii() and request.method
    assert 0 <= request.minor <= 9
    assert isinstance(request.keep_alive, bool)


# -- build_response ----------------------------------------------------------------------

DATE = "Thu, 01 Jan 1970 00:00:00 GMT"
BODY = b'{"status":"alive"}\n'


def test_build_response_exact_bytes():
    response = build_response(
        HTTPStatus.OK,
        BODY,
        "application/json",
        date=DATE,
        connection="keep-alive",
        extra="Allow: GET, HEAD, OPTIONS\r\n",
    )
    assert response == (
        b"HTTP/1.1 200 OK\r\n"
        b"Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: 19\r\n"
        b"Connection: keep-alive\r\n"
        b"Allow: GET, HEAD, OPTIONS\r\n"
        b"Cache-Control: no-store\r\n"
        b"X-Content-Type-Options: nosniff\r\n"
        b"\r\n"
        b'{"status":"alive"}\n'
    )


def test_build_response_without_connection_sends_no_connection_field():
    response = build_response(HTTPStatus.OK, BODY, "application/json", date=DATE)
    assert b"Connection" not in response
    assert response.startswith(b"HTTP/1.1 200 OK\r\nDate: ")


def test_build_response_connection_close():
    response = build_response(HTTPStatus.OK, BODY, "text/plain", date=DATE, connection="close")
    assert b"\r\nConnection: close\r\n" in response


def test_build_response_for_head_leaves_body_out_but_keeps_its_length():
    """RFC 9110 section 9.3.2: HEAD gets the GET head, Content-Length included."""
    get = build_response(HTTPStatus.OK, BODY, "application/json", date=DATE)
    head = build_response(HTTPStatus.OK, BODY, "application/json", date=DATE, head_only=True)
    assert get == head + BODY
    assert b"\r\nContent-Length: 19\r\n" in head
    assert head.endswith(b"\r\n\r\n")


@pytest.mark.parametrize(
    ("status", "status_line"),
    [
        pytest.param(HTTPStatus.OK, b"HTTP/1.1 200 OK\r\n", id="200"),
        pytest.param(HTTPStatus.NOT_FOUND, b"HTTP/1.1 404 Not Found\r\n", id="404"),
        pytest.param(
            HTTPStatus.METHOD_NOT_ALLOWED, b"HTTP/1.1 405 Method Not Allowed\r\n", id="405"
        ),
        pytest.param(
            HTTPStatus.SERVICE_UNAVAILABLE, b"HTTP/1.1 503 Service Unavailable\r\n", id="503"
        ),
        pytest.param(
            HTTPStatus.HTTP_VERSION_NOT_SUPPORTED,
            b"HTTP/1.1 505 HTTP Version Not Supported\r\n",
            id="505",
        ),
    ],
)
def test_build_response_status_line(status, status_line):
    assert build_response(status, b"", "text/plain", date=DATE).startswith(status_line)


@pytest.mark.parametrize(
    ("body", "length"),
    [
        pytest.param(b"", b"0", id="empty"),
        pytest.param(b"x", b"1", id="one-byte"),
        pytest.param("café\n".encode(), b"6", id="utf8-counts-bytes"),
        pytest.param(b"x" * 100_000, b"100000", id="large"),
    ],
)
def test_build_response_content_length_is_exact(body, length):
    response = build_response(HTTPStatus.OK, body, "text/plain", date=DATE)
    assert b"\r\nContent-Length: " + length + b"\r\n" in response
    assert response.endswith(b"\r\n\r\n" + body)


class _FakeSocket:
    """Enough of a socket for http.client.HTTPResponse to read from bytes."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(io.BytesIO(self._data))


def test_build_response_is_read_by_http_client():
    """The stdlib client (a reference reader) sees the status, fields and body we meant."""
    raw = build_response(
        HTTPStatus.SERVICE_UNAVAILABLE,
        b'{"status":"dead"}\n',
        "application/json",
        date=DATE,
        connection="close",
    )
    response = http.client.HTTPResponse(_FakeSocket(raw))  # type: ignore[arg-type]
    response.begin()
    try:
        assert (response.status, response.version) == (503, 11)
        assert response.getheader("Content-Type") == "application/json"
        assert response.getheader("Cache-Control") == "no-store"
        assert response.getheader("X-Content-Type-Options") == "nosniff"
        assert response.getheader("Date") == DATE
        assert response.will_close
        assert response.read() == b'{"status":"dead"}\n'
    finally:
        response.close()


# -- http_date ---------------------------------------------------------------------------

IMF_FIXDATE = re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT")

KNOWN_DATES = [
    pytest.param(0, "Thu, 01 Jan 1970 00:00:00 GMT", id="epoch"),
    pytest.param(951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT", id="leap-day-2000"),
    pytest.param(1_709_210_096, "Thu, 29 Feb 2024 12:34:56 GMT", id="leap-day-2024"),
    pytest.param(946_684_799, "Fri, 31 Dec 1999 23:59:59 GMT", id="last-second-of-1999"),
    pytest.param(1_700_000_000, "Tue, 14 Nov 2023 22:13:20 GMT", id="1.7e9"),
    pytest.param(2_147_483_647, "Tue, 19 Jan 2038 03:14:07 GMT", id="int32-max"),
    pytest.param(4_107_542_400, "Mon, 01 Mar 2100 00:00:00 GMT", id="2100-is-not-leap"),
]


@pytest.mark.parametrize(("epoch", "expected"), KNOWN_DATES)
def test_http_date_known_epochs(epoch, expected):
    assert http_date(epoch) == expected


@pytest.mark.parametrize(("epoch", "expected"), KNOWN_DATES)
def test_http_date_is_imf_fixdate(epoch, expected):
    """RFC 9110 section 5.6.7: fixed length, English names, GMT."""
    assert IMF_FIXDATE.fullmatch(http_date(epoch))


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=253_402_300_799))  # up to 9999-12-31T23:59:59Z
def test_http_date_matches_email_utils_formatdate(epoch):
    """Locale-independent: the same text as the stdlib's English-only formatter."""
    assert http_date(epoch) == email.utils.formatdate(epoch, usegmt=True)


@pytest.mark.parametrize(
    ("status", "phrase"),
    [
        (HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "Content Too Large"),
        (HTTPStatus.REQUEST_URI_TOO_LONG, "URI Too Long"),
        (HTTPStatus.SERVICE_UNAVAILABLE, "Service Unavailable"),
    ],
)
def test_reason_phrases_are_rfc_9110s_on_every_python(status, phrase):
    assert reason_phrase(status) == phrase
    assert build_response(status, b"", "text/plain", date="d").startswith(
        f"HTTP/1.1 {status.value} {phrase}\r\n".encode()
    )
