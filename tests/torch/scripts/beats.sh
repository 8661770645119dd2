#!/bin/sh
# A --no-python entrypoint: a shell script that starts Python itself; torchrun runs it as
# is, so the bootstrap is not in, and progress comes from train.py's beat() alone.
exec "$TEST_PYTHON" "$(dirname "$0")/train.py" "$@"
