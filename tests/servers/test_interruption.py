"""start() is all or nothing under interruption, and a fork at any moment is harmless.

Both are tested at every line the package executes in start() (and stop()), with a
tracer: one raises there, as a signal handler would (torch's agent raises on SIGTERM);
the other holds the thread there while another thread forks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

import elastic_healthcheck

from .conftest import answers_alive

PACKAGE = str(Path(elastic_healthcheck.__file__).parent)


class Interrupt(Exception):
    """What a signal handler raises (torch's SignalException is an Exception too)."""


def _tracer(on_line):
    """Call ``on_line(count)`` at each line executed in the package; count from 0."""
    count = [0]

    def local(frame, event, arg):
        if event == "line":
            count[0] += 1
            on_line(count[0] - 1)
        return local

    def global_(frame, event, arg):
        return local if PACKAGE in frame.f_code.co_filename else None

    return global_, count


def _run_traced(tracer, call):
    previous = sys.gettrace()  # coverage's, when measured: put it back after
    sys.settrace(tracer)
    try:
        call()
    finally:
        sys.settrace(previous)


def _lines_of(call) -> int:
    tracer, count = _tracer(lambda index: None)
    _run_traced(tracer, call)
    return int(count[0])


def _ours() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("elastic-healthcheck")]


def test_start_interrupted_at_any_line_leaves_nothing_and_stop_then_start_work(kind, factory):
    """Started and serving, or no thread, no socket, no half state; then stop() and start()."""
    first = factory()
    lines = _lines_of(first.start)
    port = first.port
    first.stop()
    assert lines > 20
    for index in range(lines):
        server = factory(port=port)

        def interrupt(at: int, index: int = index) -> None:
            if at == index:
                raise Interrupt(index)

        tracer, _count = _tracer(interrupt)
        try:
            _run_traced(tracer, server.start)
        except Interrupt:
            if server.is_running:  # interrupted after the commit: started, and serving
                assert answers_alive(kind, port), index
                server.stop()
            assert server._engine is None, index
            assert not _ours(), index
            with socket.create_server(("127.0.0.1", port)):
                pass  # the port is free
        server.stop()  # never raises, whatever state start() left
        server.start()
        assert answers_alive(kind, port)
        server.stop()


def _listening_fds() -> list[int]:
    """Listening sockets this process holds (read in the child)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue  # not a socket
        with sock:
            try:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    found.append(int(name))
            except OSError:
                pass
    return found


def _wait_child(pid: int, deadline: float) -> int:
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.005)  # a child process has no event to wait on with a deadline
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child deadlocked")


def _fork_at(server, operation: str, index: int) -> int | None:
    """Run ``operation`` in a thread, hold it at line ``index``, fork; the child's status."""
    at_line, forked = threading.Event(), threading.Event()

    def hold(at: int) -> None:
        if at == index:
            at_line.set()
            forked.wait(10)

    tracer, _count = _tracer(hold)
    thread = threading.Thread(target=_run_traced, args=(tracer, getattr(server, operation)))
    thread.start()
    try:
        if not at_line.wait(10):
            return None  # this run took a shorter path
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads: on purpose
            pid = os.fork()
        if pid == 0:  # the child: stop() must return, and no listening socket may be left
            signal.alarm(5)  # a deadlock ends the child with SIGALRM
            try:
                server.stop()
                os._exit(10 + len(_listening_fds()))
            except BaseException:
                os._exit(3)
    finally:
        forked.set()
        thread.join(10)
    return _wait_child(pid, time.monotonic() + 10)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/fd")
@pytest.mark.parametrize("operation", ["start", "stop"])
def test_fork_at_any_line_never_deadlocks_nor_holds_the_port(server_factory, operation):
    probe_server = server_factory()
    if operation == "stop":
        probe_server.start()
    lines = _lines_of(getattr(probe_server, operation))
    probe_server.stop()
    for index in range(lines):
        server = server_factory()
        if operation == "stop":
            server.start()
        status = _fork_at(server, operation, index)
        server.stop()
        if status is None:
            continue
        assert os.WIFEXITED(status), f"line {index}: child ended by signal {status & 0x7F}"
        assert os.WEXITSTATUS(status) == 10, f"line {index}: child exit {os.WEXITSTATUS(status)}"


# Interrupts start() at every line and every call the caller's thread runs, the standard
# library's included (where a real signal handler's exception can land too: inside
# Thread.start() or socket.socketpair(), say), then counts what is left. In a process of
# its own: a half-made standard-library object may warn as it is collected.
INTERRUPTED_STARTS = """
import gc, json, os, sys, threading, time
from elastic_healthcheck import {cls}

def fds():
    gc.collect()
    return sorted(os.listdir("/proc/self/fd"))

def tasks():
    return len(os.listdir("/proc/self/task"))

def make():
    return {cls}(lambda: int(time.time()), 0, 60, host="127.0.0.1")

warm = make()
warm.start()
warm.stop()
threads, open_fds, task_count = threading.enumerate(), fds(), tasks()
events = [0]

def counting(frame, event, arg):
    events[0] += 1
    return counting

sys.settrace(counting)
warm.start()
sys.settrace(None)
warm.stop()
leaks, interrupted = [], 0
for index in range(events[0]):
    seen = [0]

    def tracer(frame, event, arg):
        seen[0] += 1
        if seen[0] - 1 == index:
            raise KeyboardInterrupt(index)
        return tracer

    server = make()
    try:
        sys.settrace(tracer)
        try:
            server.start()
        finally:
            sys.settrace(None)
    except BaseException:  # KeyboardInterrupt, or what the interrupted code turned it into
        interrupted += 1
    server.stop()
    del server
    deadline = time.monotonic() + 2.0
    while tasks() != task_count and time.monotonic() < deadline:
        time.sleep(0.005)
    left = [t.name for t in threading.enumerate() if t not in threads]
    if left or tasks() != task_count or fds() != open_fds:
        leaks.append({{"at": index, "threads": left, "tasks": tasks() - task_count,
                       "fds": len(fds()) - len(open_fds)}})
        threads, open_fds, task_count = threading.enumerate(), fds(), tasks()
print(json.dumps({{"events": events[0], "interrupted": interrupted, "leaks": leaks}}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="counts /proc/self/fd and /proc/self/task")
@pytest.mark.parametrize("cls", ["HTTPHealthCheckServer", "TCPHealthCheckServer"])
def test_start_interrupted_anywhere_leaves_no_thread_and_no_descriptor(cls):
    """A Ctrl-C inside start(), wherever it lands, leaves no thread (not even one
    registered and never run) and no descriptor behind."""
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_STARTS.format(cls=cls)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["interrupted"] > 100, result
    assert result["leaks"] == [], result


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork()")
def test_forks_while_another_thread_restarts_the_server_never_hold_the_listener(kind, factory):
    """fork() at any moment of a restart on another thread (a socket being made or closed
    included): no child holds the listening socket, so every restart in the parent binds
    its port, and once stopped nobody listens there."""
    first = factory()
    first.start()
    port = first.port
    first.stop()
    server = factory(port=port)  # restarted on one port, as torch's agent does
    done, errors = threading.Event(), []

    def restart() -> None:
        while not done.is_set():
            try:
                server.start()
            except OSError as exc:  # EADDRINUSE: a child holds the port
                errors.append(exc)
            server.stop()

    restarter = threading.Thread(target=restart)
    children = []
    release_r, release_w = os.pipe()
    restarter.start()
    try:
        for _ in range(100):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads
                pid = os.fork()
            if pid == 0:  # the child keeps whatever it got until the parent is done
                os.close(release_w)
                os.read(release_r, 1)
                os._exit(0)
            children.append(pid)
            time.sleep(0.002)  # let the restarts go on between forks
    finally:
        done.set()
        restarter.join(10)
        try:
            assert errors == []
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
        finally:
            os.close(release_w)
            os.close(release_r)
            for pid in children:
                os.waitpid(pid, 0)
