"""A stand-in part for tests/experiments/test_device_suite.py: it succeeds, fails half-way, or hangs, by its name."""

import time


def run(ctx):
    ctx.record("before", 1)
    if ctx.name.startswith("fails"):
        raise RuntimeError("planted failure")
    if ctx.name.startswith("hangs"):
        time.sleep(600)
    ctx.record("after", 2)
