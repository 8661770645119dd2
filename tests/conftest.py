"""Fixtures shared by every test: leaks fail."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _no_configuration_from_the_outer_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's ELASTIC_HEALTHCHECK_* or LOGLEVEL must not change what tests see."""
    for name in list(os.environ):
        if name.startswith("ELASTIC_HEALTHCHECK_") or name == "LOGLEVEL":
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """A test that leaves a thread running fails (servers must join theirs on stop())."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2.0
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"
