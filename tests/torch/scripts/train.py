"""A loop without an optimizer or collectives, which reports progress with beat() as the
docs say such a loop does: beats every 20 ms for TRAIN_SECONDS. (Loops with optimizer steps
and collectives, DDP's included, are steps.py and ddp_loop.py, with no beat().)

STUCK_RANK=N: local rank N stops beating after 0.5 s while the other goes on (its ranks do
not wait for each other).
FAIL_RANK=N: local rank N exits with status 3 after 0.5 s on the first attempt only.
"""

import os
import sys
import time

from elastic_healthcheck.worker import beat

rank = int(os.environ["LOCAL_RANK"])
attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
duration = float(os.environ.get("TRAIN_SECONDS", "3"))
stuck = os.environ.get("STUCK_RANK")
fail = os.environ.get("FAIL_RANK")
start = time.monotonic()
while time.monotonic() - start < duration:
    elapsed = time.monotonic() - start
    if fail is not None and int(fail) == rank and attempt == 0 and elapsed > 0.5:
        sys.exit(3)
    if not (stuck is not None and int(stuck) == rank and elapsed > 0.5):
        beat()
    time.sleep(0.02)
