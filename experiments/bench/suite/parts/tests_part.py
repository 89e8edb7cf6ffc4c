"""Part ``tests``: the accelerator-relevant tests, run on the accelerator.

The numerics tests (standardization, layers, normalizations, output-side WS, folding, models, Linen = NNX)
compare against float64 NumPy references with float32 tolerances, so they run with
``JAX_DEFAULT_MATMUL_PRECISION=highest``: float32 convolutions in float32, not TF32.
``tests/experiments/test_accelerator.py`` then checks the default precision itself (TF32 on NVIDIA) at its own
tolerance, and 8 vmapped replicas on the accelerator against 8 CPU devices. The tests that need 8 devices
of one backend, TFDS, or XLA:CPU's own paths are left to CI. In tiny mode, the same command only collects
the tests (every file and option must exist) and runs ``tests/experiments/test_peaks.py``.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from typing import Any

from experiments.bench.suite.context import PartContext

REPO = pathlib.Path(__file__).resolve().parents[4]
FILES = [
    "tests/wsjax/test_standardization.py",
    "tests/wsjax/test_layers.py",
    "tests/wsjax/test_nnx.py",
    "tests/wsjax/test_normalization.py",
    "tests/wsjax/test_output_standardization.py",
    "tests/wsjax/test_folding.py",
    "tests/wsjax/test_models.py",
    "tests/experiments/test_peaks.py",
    "tests/experiments/test_accelerator.py",
    "tests/experiments/test_data_cache.py",  # the TFDS tests skip where TFDS is missing; the rest runs without TF
]
WORKERS = 8  # processes sharing the GPU (no preallocation); compiling, their main cost, is on the CPU cores
TEST_ENV = {  # what the tests run under (scripts/rehearse_device sets the same)
    "JAX_DEFAULT_MATMUL_PRECISION": "highest",
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",  # several test processes share one GPU
}
GRACE_S = 10  # for pytest to stop and write its report once interrupted


def _pytest(args: list[str], junit: pathlib.Path, timeout_s: float) -> tuple[int | None, str]:
    """Runs pytest; at ``timeout_s`` interrupts it as Ctrl-C would, so that it still writes its report.

    Returns the exit code (None if it had to be interrupted) and the output's tail.
    """
    env = {**os.environ, **TEST_ENV}
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
        "--durations=10", f"--junitxml={junit}", *args,
    ]  # fmt: skip
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT
        )
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = None
            process.send_signal(signal.SIGINT)  # pytest (and xdist) stop and write the JUnit XML
            try:
                process.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        output.seek(0)
        return code, output.read()[-6000:]


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
        code, output = _pytest(["--collect-only", *FILES], folder / "collect.xml", ctx.time_left())
        ctx.record("collect_only_exit_code", code)
        if code != 0:
            raise RuntimeError(f"collecting the suite's tests failed:\n{output[-3000:]}")
        args = ["tests/experiments/test_peaks.py"]
    else:
        args = ["-n", str(WORKERS), *FILES]
        try:
            import pytest_timeout  # noqa: F401 - on the GPU machine's image
        except ImportError:
            pass
        else:
            args = ["--timeout=60", *args]
    junit = folder / "junit.xml"
    code, output = _pytest(args, junit, ctx.time_left() - GRACE_S - 5)
    ctx.record("exit_code", code if code is not None else "interrupted at the part's time limit")
    ctx.record("output_tail", output)
    if junit.exists():
        ctx.record("summary", summarize_junit(junit))
