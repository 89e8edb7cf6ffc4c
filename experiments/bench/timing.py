"""Timing that excludes compilation and waits for the device: median of repeats, with min and max."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds per call: median, min and max over repeats (each repeat averages ``calls`` calls)."""

    median: float
    min: float
    max: float
    repeats: int
    calls: int

    def as_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


def time_calls(fn: Callable[[], Any], repeats: int, calls: int = 1) -> Timing:
    """Times ``fn()`` (a closure that may thread its own state); the first call, compiling, is excluded."""
    jax.block_until_ready(fn())  # compile and warm up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            out = fn()
        jax.block_until_ready(out)
        samples.append((time.perf_counter() - start) / calls)
    return Timing(statistics.median(samples), min(samples), max(samples), repeats, calls)


def time_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, calls: int = 1
) -> dict[str, Timing]:
    """:func:`time_calls` for several closures, taking turns within every repeat.

    A ratio of two medians is then measured under the same machine conditions: a drift in clock speed or
    background load during the run hits every closure alike instead of whichever ran last.
    """
    for fn in fns.values():
        jax.block_until_ready(fn())  # compile and warm up
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                out = fn()
            jax.block_until_ready(out)
            samples[name].append((time.perf_counter() - start) / calls)
    return {
        name: Timing(statistics.median(s), min(s), max(s), repeats, calls)
        for name, s in samples.items()
    }


def stepper(step: Callable, state: Any, *args: Any) -> Callable[[], Any]:
    """A closure that runs ``state, metrics = step(state, *args)`` and keeps the new (donated) state."""
    box = [state]

    def run():
        box[0], metrics = step(box[0], *args)
        return metrics

    return run
