"""Probe targets, parsed without sockets: what the CLI accepts and how it refuses."""

from __future__ import annotations

import re

import pytest

from elastic_healthcheck._cli.probe import TargetError, parse_target

VALID = [
    ("127.0.0.1:8080", ("http", "127.0.0.1", 8080, "/healthz")),
    ("node-3.cluster.local:29600", ("http", "node-3.cluster.local", 29600, "/healthz")),
    ("[::1]:8080", ("http", "::1", 8080, "/healthz")),
    ("[fe80::1%eth0]:8080", ("http", "fe80::1%eth0", 8080, "/healthz")),
    ("http://host:81/livez", ("http", "host", 81, "/livez")),
    ("http://host/", ("http", "host", 80, "/")),
    ("http://host", ("http", "host", 80, "/healthz")),
    ("HTTP://host:1/healthz?verbose", ("http", "host", 1, "/healthz?verbose")),
    ("http://[::1]:9/metrics", ("http", "::1", 9, "/metrics")),
    ("tcp://10.0.0.1:8081", ("tcp", "10.0.0.1", 8081, "/healthz")),
    ("tcp://[::1]:8081", ("tcp", "::1", 8081, "/healthz")),
]


@pytest.mark.parametrize(("text", "expected"), VALID, ids=[t for t, _ in VALID])
def test_valid_targets(text, expected):
    target = parse_target(text)
    assert (target.scheme, target.host, target.port, target.path) == expected
    assert target.text == text


INVALID = [
    ("localhost", "no port"),
    ("localhost:", "no port"),
    (":8080", "no host"),
    ("::1:8080", "brackets"),
    ("[::1]8080", "expected [ipv6-address]:port"),
    ("[::1", "expected [ipv6-address]:port"),
    ("host:http", "port must be a number"),
    ("host:0", "port must be a number"),
    ("host:65536", "port must be a number"),
    ("host:-1", "port must be a number"),
    ("https://host:443", "unsupported scheme 'https'"),
    ("udp://host:1", "unsupported scheme 'udp'"),
    ("tcp://host", "no port"),
    ("tcp://host:1/path", "no path"),
    ("host:1/healthz", "a path needs a URL"),
    ("http://user@host:1/", "expected host:port"),
]


@pytest.mark.parametrize(("text", "message"), INVALID, ids=[t for t, _ in INVALID])
def test_invalid_targets_name_the_problem(text, message):
    with pytest.raises(TargetError, match=re.escape(message)) as info:
        parse_target(text)
    assert repr(text) in str(info.value)
