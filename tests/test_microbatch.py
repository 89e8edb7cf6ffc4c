"""The micro-batch sweep driver and its report, on a tiny synthetic grid."""

import json
import subprocess
import sys

import pytest

from experiments import microbatch, microbatch_report
from tests.helpers import REPO

pytestmark = pytest.mark.slow


def test_grid_overrides_keep_examples_seen_constant():
    cells = microbatch.grid(["BN", "BCN+WS"], [1, 4], [0, 1])
    assert len(cells) == 8 and cells[0].seed == 0 and cells[-1].seed == 1
    steps = {}
    for cell in cells:
        args = dict(
            a.removeprefix("--config.").split("=")
            for a in cell.overrides(replicas=8, train_examples=640)
        )
        steps[cell.per_device_batch] = int(args["num_train_steps"]) * int(args["global_batch_size"])
        assert args["replicas_per_device"] == "8"  # one device here: all 8 replicas on it
    assert steps == {1: 640, 4: 640}
    assert (
        dict(a.split("=") for a in microbatch.Cell("BCN+WS", 2, 0).overrides(8, 64))[
            "--config.norm"
        ]
        == "bcn"
    )


def test_tiny_sweep_runs_resumes_and_reports(tmp_path):
    sweep = tmp_path / "sweep"
    command = [
        sys.executable, "-m", "experiments.microbatch", "run", f"--workdir={sweep}", "--replicas=2", "--seeds=0,1",
        "--normalizations=BN,BCN+WS", "--per_device_batches=1,4", "--train_examples=64",
        "--extra=--config.dataset=synthetic", "--extra=--config.model=vgg_tiny", "--extra=--config.num_groups=4",
        "--extra=--config.eval_batch_size=128",
    ]  # fmt: skip
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "8 of 8 cells already finished" in again.stderr

    out = microbatch_report.write_report(sweep, tmp_path / "report")
    table = (out / "results.md").read_text()
    assert "| BN |" in table and "| BCN+WS |" in table and "(2)" in table  # two seeds per cell
    assert "1/device" in table and "4/device" in table
    for name in ("accuracy_vs_batch.png", "training_curves.png"):
        assert (out / name).stat().st_size > 10_000
    cells = json.loads((out / "cells.json").read_text())
    assert {c["examples"] for c in cells} == {64}
    assert {c["replicas"] for c in cells} == {2}
