"""Part ``tests``: the accelerator-relevant tests, run on the accelerator.

The numerics tests (standardization, layers, normalizations, output-side WS, folding, models, Linen = NNX)
compare against float64 NumPy references with float32 tolerances, so they run with
``JAX_DEFAULT_MATMUL_PRECISION=highest``: float32 convolutions in float32, not TF32.
``tests/test_accelerator.py`` then checks the default precision itself (TF32 on NVIDIA) at its own
tolerance, and 8 vmapped replicas on the accelerator against 8 CPU devices. The tests that need 8 devices
of one backend, TFDS, or XLA:CPU's own paths are left to CI. In tiny mode, the same command only collects
the tests (every file and option must exist) and runs ``tests/test_peaks.py``.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from typing import Any

from experiments.accel.context import PartContext

REPO = pathlib.Path(__file__).resolve().parents[2]
FILES = [
    "tests/test_standardization.py",
    "tests/test_layers.py",
    "tests/test_nnx.py",
    "tests/test_normalization.py",
    "tests/test_output_standardization.py",
    "tests/test_folding.py",
    "tests/test_models.py",
    "tests/test_peaks.py",
    "tests/test_accelerator.py",
    "tests/test_data_cache.py",  # the TFDS tests skip where TFDS is missing; the rest runs without TF
]
WORKERS = 6  # processes sharing the GPU (no preallocation): compilation is on the CPU cores


def _pytest(args: list[str], junit: pathlib.Path, timeout_s: float) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "JAX_DEFAULT_MATMUL_PRECISION": "highest",
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",  # several test processes share one GPU
    }
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        f"--junitxml={junit}",
        *args,
    ]
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s
    )


def summarize_junit(path: pathlib.Path) -> dict[str, Any]:
    """Counts, the slowest tests, and each failure's name with the first line of its message."""
    root = ElementTree.parse(path).getroot()
    cases = list(root.iter("testcase"))
    failures, skipped = [], 0
    for case in cases:
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        for child in case:
            if child.tag in ("failure", "error"):
                message = (child.get("message") or child.text or "").strip().splitlines()
                failures.append(
                    {"test": name, "kind": child.tag, "message": (message or [""])[0][:300]}
                )
            elif child.tag == "skipped":
                skipped += 1
    slowest = sorted(cases, key=lambda c: -float(c.get("time", 0)))[:5]
    return {
        "tests": len(cases),
        "failed": len(failures),
        "skipped": skipped,
        "passed": len(cases) - len(failures) - skipped,
        "failures": failures,
        "slowest": [
            {"test": f"{c.get('classname')}::{c.get('name')}", "s": float(c.get("time", 0))}
            for c in slowest
        ],
    }


def run(ctx: PartContext) -> None:
    folder = ctx.files
    if ctx.tiny:
        collected = _pytest(["--collect-only", *FILES], folder / "collect.xml", ctx.time_left())
        ctx.record("collect_only_exit_code", collected.returncode)
        if collected.returncode != 0:
            raise RuntimeError(f"collecting the suite's tests failed:\n{collected.stdout[-3000:]}")
        args = ["tests/test_peaks.py"]
    else:
        args = ["-n", str(WORKERS), *FILES]
        try:
            import pytest_timeout  # noqa: F401 - on the GPU machine's image
        except ImportError:
            pass
        else:
            args = ["--timeout=120", *args]
    junit = folder / "junit.xml"
    try:
        done = _pytest(args, junit, ctx.time_left() - 5)
    except subprocess.TimeoutExpired as e:
        ctx.record("timed_out", f"pytest did not finish in its {e.timeout:.0f} s")
        raise
    finally:
        if junit.exists():
            ctx.record("summary", summarize_junit(junit))
    ctx.record("exit_code", done.returncode)
    ctx.record("output_tail", done.stdout[-4000:] + done.stderr[-2000:])
