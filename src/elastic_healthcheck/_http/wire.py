"""HTTP/1.1 for a health-check server: bytes in, bytes out, no I/O.

Only what a health endpoint needs, strictly: a request head is parsed into a
:class:`Request` or rejected with a status (:class:`HTTPError`); responses are built
whole, with an exact ``Content-Length``, so they go out in one ``send()``. Nothing a
client sends is ever copied into a response.

References are to RFC 9110 (semantics) and RFC 9112 (HTTP/1.1 messages).
"""

from __future__ import annotations

import re
import time
from http import HTTPStatus

__all__ = [
    "ALLOW",
    "MAX_HEADERS",
    "MAX_REQUEST_HEAD",
    "MAX_REQUEST_LINE",
    "HTTPError",
    "Request",
    "build_response",
    "connection_field",
    "early_error",
    "find_head_end",
    "http_date",
    "parse_request",
    "reason_phrase",
]

# The largest request head accepted, in bytes. A prober's is ~150 bytes; nginx's default
# large_client_header_buffers is 8 KiB, h11's limit 16 KiB, kubelet reads 10 KiB bodies.
MAX_REQUEST_HEAD = 8192

# The longest request line accepted, in bytes: longer gets 414 (URI Too Long), decided on
# the line alone, however its bytes arrive (nginx's large_client_header_buffers: 8 KiB).
MAX_REQUEST_LINE = 8192

# Header fields per request at most (CPython's http.client uses 100).
MAX_HEADERS = 100

ALLOW = "GET, HEAD, OPTIONS"

# Reason phrases as RFC 9110 section 15 names them. http.HTTPStatus used the older RFC 7231
# names for 413 and 414 before Python 3.13; the same server must say the same bytes on
# every Python.
_PHRASES = {
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "Content Too Large",
    HTTPStatus.REQUEST_URI_TOO_LONG: "URI Too Long",
}


def reason_phrase(status: HTTPStatus) -> str:
    """The reason phrase for ``status``, as RFC 9110 names it."""
    return _PHRASES.get(status, status.phrase)


# RFC 9110 section 5.6.2: token = 1*tchar.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 section 5.5: field-value bytes are VCHAR, SP, HTAB and obs-text; no CTLs.
_BAD_VALUE_BYTE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# Visible ASCII only in the request target: no spaces, no controls, no obs-text.
_TARGET = re.compile(rb"[\x21-\x7e]+")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
# RFC 3986 section 3.2: the authority ends at the first "/", "?" or "#".
_AUTHORITY_END = re.compile(rb"[/?#]")


class HTTPError(Exception):
    """The request cannot be served; answer with ``status`` and close the connection."""

    def __init__(self, status: HTTPStatus) -> None:
        super().__init__(reason_phrase(status))
        self.status = status


class Request:
    """A parsed request head: what routing and the connection need, nothing more."""

    __slots__ = ("method", "path", "minor", "keep_alive")

    def __init__(self, method: str, path: str, minor: int, keep_alive: bool) -> None:
        self.method = method
        self.path = path  # without the query string; "*" for OPTIONS *
        self.minor = minor  # HTTP/1.<minor>
        self.keep_alive = keep_alive

    def __repr__(self) -> str:
        fields = f"{self.method!r}, {self.path!r}, minor={self.minor}"
        return f"Request({fields}, keep_alive={self.keep_alive})"


# The start of a request line: a method (a token) and the space after it.
_METHOD_SO_FAR = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]*")
# RFC 9113 section 3.4: the HTTP/2 connection preface starts with this line.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n"


def early_error(buf: bytes) -> HTTPStatus | None:
    """Reject a request head that cannot become valid, as soon as its bytes prove it.

    ``buf`` holds what arrived of a head (leading empty lines removed), complete or
    not. A TLS handshake (its first byte is 0x16), the HTTP/2 preface, or a method with
    a byte that is not a token character gets 400 at that byte; a request line longer
    than ``MAX_REQUEST_LINE`` gets 414 and a head longer than ``MAX_REQUEST_HEAD`` 431,
    whether the bytes came in one piece or in many.

    >>> early_error(b"\x16\x03\x01\x02\x00")
    <HTTPStatus.BAD_REQUEST: 400>
    >>> early_error(b"GET /healthz HT") is None
    True

    Returns:
        The status to answer with before closing, or ``None`` while the head may
        still turn out valid.
    """
    method_end = _METHOD_SO_FAR.match(buf).end()  # type: ignore[union-attr]
    if method_end < len(buf) and (method_end == 0 or buf[method_end] != 0x20):
        return HTTPStatus.BAD_REQUEST  # not a token, or the line ends before a space
    if buf.startswith(_H2_PREFACE[: len(buf)]) and len(buf) >= len(_H2_PREFACE):
        return HTTPStatus.BAD_REQUEST
    line_end = buf.find(b"\n", 0, MAX_REQUEST_LINE + 2)
    line_length = len(buf) if line_end < 0 else line_end - (buf[line_end - 1 : line_end] == b"\r")
    if line_length > MAX_REQUEST_LINE:
        return HTTPStatus.REQUEST_URI_TOO_LONG
    end, _following = find_head_end(buf)
    if (end if end >= 0 else len(buf)) > MAX_REQUEST_HEAD:
        return HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    return None


def find_head_end(buf: bytes) -> tuple[int, int]:
    """Find the empty line that ends a request head.

    Lines end in CRLF, or in a bare LF (RFC 9112 section 2.2 lets recipients accept it),
    so the head ends at the first LF followed by CRLF or by LF.

    Returns:
        ``(end, next)``: the head is ``buf[:end]`` and what follows starts at
        ``buf[next:]``; ``(-1, -1)`` while the head is incomplete.
    """
    crlf = buf.find(b"\n\r\n")
    lf = buf.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, crlf + 3
    if lf >= 0:
        return lf, lf + 2
    return -1, -1


def parse_request(head: bytes) -> Request:
    """Parse a request head: ``buf[:end]`` from :func:`find_head_end`.

    Empty lines before the request line must be removed first (RFC 9112 section 2.2
    says to ignore them).

    Raises:
        HTTPError: 400 for anything malformed, 413 for a request with content, 431 for
            too many header fields, 501 for a transfer coding, 505 for a major version
            other than 1 (HTTP/0.9 and HTTP/2 alike).
    """
    lines = head.split(b"\n")
    request_line = _strip_cr(lines[0])
    parts = request_line.split(b" ")
    if len(parts) != 3:
        raise HTTPError(HTTPStatus.BAD_REQUEST)
    method, target, version = parts
    match = _VERSION.fullmatch(version)
    if match is None or not _TOKEN.fullmatch(method) or not _TARGET.fullmatch(target):
        raise HTTPError(HTTPStatus.BAD_REQUEST)
    major, minor = int(match[1]), int(match[2])
    if major != 1:
        raise HTTPError(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED)

    fields = lines[1:]
    if len(fields) > MAX_HEADERS:
        raise HTTPError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
    hosts = 0
    connection: list[bytes] = []
    content_length: bytes | None = None
    for raw in fields:
        line = _strip_cr(raw)
        name, colon, value = line.partition(b":")
        # No whitespace before the colon (RFC 9112 section 5.1) and no obs-fold
        # continuation lines (section 5.2): both are answered with 400.
        if not colon or not _TOKEN.fullmatch(name):
            raise HTTPError(HTTPStatus.BAD_REQUEST)
        value = value.strip(b" \t")
        if _BAD_VALUE_BYTE.search(value):
            raise HTTPError(HTTPStatus.BAD_REQUEST)
        key = name.lower()
        if key == b"host":
            hosts += 1
        elif key == b"connection":
            connection.extend(t.strip(b" \t").lower() for t in value.split(b","))
        elif key == b"content-length":
            if not value.isdigit() or (content_length is not None and value != content_length):
                raise HTTPError(HTTPStatus.BAD_REQUEST)
            content_length = value
        elif key == b"transfer-encoding":
            # We read no content, so we implement no transfer coding (section 6.1).
            raise HTTPError(HTTPStatus.NOT_IMPLEMENTED)
    # An HTTP/1.1 request must carry exactly one Host (RFC 9112 section 3.2).
    if hosts > 1 or (hosts == 0 and minor >= 1):
        raise HTTPError(HTTPStatus.BAD_REQUEST)
    # Any digit but 0 means content. Compare bytes, not int(): a value longer than
    # sys.get_int_max_str_digits() (4300) fits in a request head and int() raises ValueError.
    if content_length is not None and content_length.lstrip(b"0"):
        raise HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)

    # "close" ends the connection in every version; an HTTP/1.0 one persists only when
    # asked to with "keep-alive" (RFC 9112 section 9.3).
    keep_alive = b"close" not in connection and (minor >= 1 or b"keep-alive" in connection)
    return Request(method.decode("ascii"), _path(method, target), minor, keep_alive)


def _strip_cr(line: bytes) -> bytes:
    if line.endswith(b"\r"):
        line = line[:-1]
    if b"\r" in line or b"\0" in line:  # a bare CR or a NUL is never valid in a head
        raise HTTPError(HTTPStatus.BAD_REQUEST)
    return line


def _path(method: bytes, target: bytes) -> str:
    """The path of an origin-form or absolute-form target, without its query."""
    if target.startswith(b"/"):
        path = target
    elif target == b"*":
        if method != b"OPTIONS":
            raise HTTPError(HTTPStatus.BAD_REQUEST)
        return "*"
    elif target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
        # Absolute form (RFC 9112 section 3.2.2): servers must accept it.
        rest = target.split(b"://", 1)[1]
        end = _AUTHORITY_END.search(rest)
        authority, path = (rest[: end.start()], rest[end.start() :]) if end else (rest, b"")
        # An empty host must be rejected (RFC 9110 section 4.2.1), and userinfo treated
        # as an error (section 4.2.4: it hides the real host from a reader).
        if authority[:1] in (b"", b":") or b"@" in authority:
            raise HTTPError(HTTPStatus.BAD_REQUEST)
        if not path.startswith(b"/"):
            path = b"/" + path  # an empty path is "/" (RFC 9110 section 4.2.3)
    elif method == b"CONNECT":
        return ""  # authority form: only CONNECT uses it, and CONNECT is not allowed
    else:
        raise HTTPError(HTTPStatus.BAD_REQUEST)
    return path.split(b"?", 1)[0].decode("ascii")


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(epoch_seconds: int) -> str:
    """The IMF-fixdate of RFC 9110 section 5.6.7, independent of the locale."""
    t = time.gmtime(epoch_seconds)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


# Sent with every response: never cache a health answer, never sniff a content type.
_COMMON = b"Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"


def connection_field(request: Request, keep: bool) -> str | None:
    """The ``Connection`` field of the answer to ``request``: ``close`` when the connection
    ends with it, ``keep-alive`` to an HTTP/1.0 client that keeps it, else none."""
    if not keep:
        return "close"
    return "keep-alive" if request.minor == 0 else None


def build_response(
    status: HTTPStatus,
    body: bytes,
    content_type: str,
    *,
    date: str,
    head_only: bool = False,
    connection: str | None = None,
    extra: str = "",
) -> bytes:
    """A whole response, ready for one ``send()``.

    Args:
        status: The status code.
        body: The content; its length is sent even when ``head_only``.
        content_type: The ``Content-Type`` value.
        date: The ``Date`` value (see :func:`http_date`).
        head_only: Leave the content out, as a response to HEAD must.
        connection: ``"close"`` or ``"keep-alive"`` to send a ``Connection`` field.
        extra: More header lines, each ending in CRLF.
    """
    head = (
        f"HTTP/1.1 {status.value} {reason_phrase(status)}\r\n"
        f"Date: {date}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        + (f"Connection: {connection}\r\n" if connection else "")
        + extra
    ).encode("ascii")
    return head + _COMMON + b"\r\n" + (b"" if head_only else body)
