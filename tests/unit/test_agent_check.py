"""HAProxy agent-check lines: HAProxy's word first, ours after the ``#``, no sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from elastic_healthcheck._tcp.line import agent_check_line, status_line
from elastic_healthcheck.status import HealthStatus, Verdict

CASES = [
    pytest.param(
        HealthStatus(Verdict.ALIVE, 60.0, last_progress=0.0, age=3.04),
        b"up #alive age=3.0 timeout=60\n",
        id="alive",
    ),
    pytest.param(
        HealthStatus(Verdict.DEAD, 2.5, last_progress=0.0, age=75.0),
        b"down #dead age=75.0 timeout=2.5\n",
        id="dead",
    ),
    pytest.param(
        HealthStatus.unknown(60.0, "callback raised KeyError"),
        b"down #unknown timeout=60 reason=callback raised KeyError\n",
        id="unknown",
    ),
    pytest.param(
        HealthStatus.unknown(60.0, "up, ready\n100%"),
        b"down #unknown timeout=60 reason=up, ready 100%\n",
        id="haproxy-words-in-a-reason-stay-in-the-description",
    ),
]


@pytest.mark.parametrize(("status", "line"), CASES)
def test_agent_check_line_exact(status, line):
    assert agent_check_line(status) == line


@given(st.text(max_size=300))
def test_only_the_first_word_is_a_command(reason):
    """Whatever a reason says, HAProxy reads ``down`` and the rest as the description."""
    line = agent_check_line(HealthStatus.unknown(60.0, reason))
    assert line.startswith(b"down #unknown ")
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    assert line[len(b"down #") :] == status_line(HealthStatus.unknown(60.0, reason))
