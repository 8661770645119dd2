"""Prints how the worker was started: ARGV <rank> <sys.orig_argv>."""

import os
import sys

print("ARGV", os.environ["RANK"], sys.orig_argv, flush=True)
