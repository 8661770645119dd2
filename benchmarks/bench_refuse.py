"""How late refuse_while_dead refuses: from the verdict turning dead to the first refusal.

Usage: python benchmarks/bench_refuse.py [--trials N]

A TCPHealthCheckServer with refuse_while_dead=True serves an alive agent; at a random
moment the callback starts saying dead. Nobody connects meanwhile (the worst case: only
the server's own recheck can notice), so the script polls the server's ``refusing`` flag
every millisecond, then checks that a connection to 127.0.0.1 is refused. Printed per
``recheck_interval``: the lag's median and maximum over the trials; the promise is a lag
of at most one interval (plus one callback call and scheduling).
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import time

os.environ.setdefault("LOGLEVEL", "ERROR")  # one "dead" warning per trial is expected

from elastic_healthcheck import TCPHealthCheckServer  # after LOGLEVEL is set


class Switch:
    """A callback that says alive until told otherwise."""

    def __init__(self) -> None:
        self.dead = False

    def __call__(self) -> int:
        return 0 if self.dead else int(time.time())


def lag(interval: float) -> float:
    switch = Switch()
    server = TCPHealthCheckServer(
        switch, 0, 60, host="127.0.0.1", refuse_while_dead=True, recheck_interval=interval
    )
    with server:
        time.sleep(random.uniform(interval, 2 * interval))  # a random phase of the recheck
        switch.dead = True
        died = time.monotonic()
        while not server.refusing:
            time.sleep(0.001)
        noticed = time.monotonic() - died
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            raise SystemExit("a connection was accepted while refusing")
        except ConnectionRefusedError:
            pass
    return noticed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    print("| recheck_interval | lag median | lag max | trials |")
    print("|---:|---:|---:|---:|")
    for interval in (0.1, 0.5, 1.0):
        lags = [lag(interval) for _ in range(args.trials)]
        print(
            f"| {interval:g} s | {statistics.median(lags) * 1000:.0f} ms "
            f"| {max(lags) * 1000:.0f} ms | {args.trials} |"
        )


if __name__ == "__main__":
    main()
