"""The accelerator suite: its tiny mode runs every part on a CPU, and one part's failure loses no other's results."""

import json
import os
import re
import subprocess
import sys

import pytest

from experiments.bench.suite import runner
from experiments.common.cpu_backend import fake_cpu_env
from tests.helpers import REPO, SHARED_TFDS, needs_fashion_mnist, tiny_config

FAKE = "tests.experiments.suite_fake_part"


@pytest.mark.slow
def test_a_failing_or_hanging_part_loses_nothing_else(tmp_path, monkeypatch, capsys):
    parts = {"fails": (FAKE, 60), "hangs": (FAKE, 12), "ok": (FAKE, 60)}
    monkeypatch.setattr(runner, "PARTS", parts)
    assert runner.main([f"--parts={','.join(parts)}", f"--out={tmp_path}"]) == 1
    got = json.loads((tmp_path / "results.json").read_text())["parts"]
    assert got["fails"]["status"] == "failed (exit 1)"
    assert got["fails"]["results"]["before"] == 1 and "after" not in got["fails"]["results"]
    assert "planted failure" in got["fails"]["log_tail"]
    assert got["hangs"]["status"] == "timed out after 12 s"
    assert got["hangs"]["results"]["before"] == 1  # recorded before it hung: kept
    assert got["ok"]["status"] == "ok" and got["ok"]["results"]["after"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "results.json", "table.md"]
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [
        "fails.log",
        "hangs.log",
        "ok.log",
    ]
    table = (tmp_path / "table.md").read_text().rstrip()
    assert capsys.readouterr().out.rstrip().endswith(table)  # the table comes last
    assert "fails failed (exit 1)" in table and "hangs timed out" in table and "ok ok" in table


def test_unknown_part_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match=r"unknown part\(s\) \['bench2'\]"):
        runner.main(["--parts=bench,bench2", f"--out={tmp_path}"])


def test_the_suite_process_never_imports_jax():
    """The parent must leave the accelerator to its parts (JAX would take the GPU's memory)."""
    code = (
        "import sys, experiments.bench.suite.runner, experiments.bench.suite.table; "
        "assert 'jax' not in sys.modules and 'torch' not in sys.modules, 'imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _tiny_suite(out, *args: str):
    """Runs ``python -m experiments.bench.suite --tiny ARGS`` on one CPU device; its output and results."""
    done = subprocess.run(
        [sys.executable, "-m", "experiments.bench.suite", "--tiny", f"--out={out}", *args],
        cwd=REPO,
        env=fake_cpu_env(1),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_tiny_mode_runs_every_part(tmp_path):
    """`--tiny` is the suite at tiny sizes on this CPU: a typo in any part fails here, not on the GPU."""
    done, results = _tiny_suite(tmp_path)
    assert results["suite"]["tiny"] is True
    assert list(results["parts"]) == runner.DEFAULT_PARTS
    assert all(p["status"] == "ok" for p in results["parts"].values())
    bench = results["parts"]["bench"]["results"]
    assert {"precision_probe", "bf16_curve", "ws_overhead_bf16", "float32_steps"} <= set(bench)
    tta = results["parts"]["tta"]["results"]["runs"][0]
    assert [p["epoch"] for p in tta["curve"]] == [1, 2] and tta["test_examples"] == 512
    assert results["parts"]["micro"]["results"]["study_model"][0]["steps_per_s"] > 0
    names = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()]
    assert "profile/train_step.optimized_hlo.txt" in names and "tests/junit.xml" in names
    assert any(n.endswith(".xplane.pb") for n in names)
    table = (tmp_path / "table.md").read_text()
    assert "missing" not in table and done.stdout.rstrip().endswith(table.rstrip())


@pytest.mark.slow
def test_tiny_optional_parts_and_the_study_cells_records(tmp_path):
    """The parts outside the default call: `imagenet` measures its two steps; `study` brings back its cells'
    records (the accelerator's config, BN also with population statistics), which the report pairs by seed."""
    from experiments.study import report

    _, results = _tiny_suite(tmp_path, f"--parts={','.join(runner.OPTIONAL_PARTS)}")
    assert all(p["status"] == "ok" for p in results["parts"].values())
    steps = results["parts"]["imagenet"]["results"]["steps"]
    assert [(s["normalization"], s["replicas"]) for s in steps] == [("GN+WS", 1), ("BCN+WS", 8)]
    study = results["parts"]["study"]["results"]
    assert [c["name"] for c in study["cells"]] == [
        "bn_b1_s0",
        "bn_b1_s1",
        "bn_b32_s0",
        "bn_b32_s1",
        "gn_ws_b32_s0",
        "gn_ws_b32_s1",
    ]  # fmt: skip (by name)
    assert study["grid"]["config"] == "experiments/configs/microbatch_deep.py"
    names = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()]
    assert not any("checkpoints" in n or "compile_cache" in n for n in names), names
    cells = report.collect(tmp_path / "study" / "runs")
    assert len(cells) == 6 and {c["steps"] for c in cells} == {4}
    assert {c["optimizer"] for c in cells} == {"momentum 0.0125 steps"}
    has_population = {c["name"][:-3]: c["accuracy_population"] is not None for c in cells}
    assert has_population == {"bn_b1": True, "bn_b32": True, "gn_ws_b32": False}
    assert "6 cells finished (seeds 0, 1)" in (tmp_path / "table.md").read_text()
    text = (
        report.write_report(tmp_path / "study" / "runs", tmp_path / "report") / "results.md"
    ).read_text()
    assert "paired over 2 seeds" in text and "4. *BN at 1/device, mismatch or damage?*" in text
    # A second call into the same folder goes on with the study: nothing left to train.
    _, again = _tiny_suite(tmp_path, "--parts=study")
    assert len(again["parts"]["study"]["results"]["cells"]) == 6
    assert "6 of 6 cells already finished" in (tmp_path / "logs" / "study.log").read_text()


@pytest.mark.slow
@needs_fashion_mnist
def test_prepare_fills_one_folder_the_suite_reads_offline(tmp_path):
    from experiments.bench.suite import prepare

    out = tmp_path / "device"
    manifest = prepare.prepare(out, str(SHARED_TFDS), ["fashion_mnist"], wheels={})
    assert (out / ".gitignore").read_text().splitlines()[-1] == "*"  # git ignores all of it
    assert set(manifest["files"]) == {
        ".gitignore",
        "data/fashion_mnist/3.0.1/train.npz",
        "data/fashion_mnist/3.0.1/test.npz",
    }
    assert manifest["source_fingerprint"] == runner.source_fingerprint()
    assert manifest["bytes"] == sum(f["bytes"] for f in manifest["files"].values())
    assert json.loads((out / "manifest.json").read_text()) == manifest


@pytest.mark.slow
def test_time_to_accuracy_trains_as_the_cli_does(tmp_path):
    """The timed driver is `experiments.train` without its bookkeeping: the same test accuracy per epoch."""
    from experiments import train
    from experiments.bench.suite.parts import time_to_accuracy
    from experiments.trainer.metrics import read_metrics

    config = tiny_config(
        num_train_steps=-1, num_epochs=2, eval_every_steps=-1, global_batch_size=64
    )
    timed = time_to_accuracy.train_to_target(config, target=0.5, time_limit_s=600)
    train.train_and_evaluate(config, str(tmp_path))
    logged = [(r["step"], r["accuracy"]) for r in read_metrics(tmp_path) if r["split"] == "test"]
    assert [(p["step"], p["test_accuracy"]) for p in timed["curve"]] == logged
    assert timed["completed"] and timed["dataset_source"] == "synthetic"
    reached = [p["train_s"] for p in timed["curve"] if p["test_accuracy"] >= 0.5]
    assert timed["time_to_target_s"] == (reached[0] if reached else None)


def _step(batch, seconds, mfu):
    timing = {"median": seconds, "min": seconds, "max": seconds}
    return {"per_device_batch": batch, "model": "vgg16", "step_time_s": timing,
            "images_per_s": batch / seconds, "mfu": mfu, "peak_flops_per_s": 989e12}  # fmt: skip


def test_table_rows_for_gpu_results():
    """Every row as a GPU run will fill it (made-up numbers: this checks the formatting only)."""
    from experiments.bench.suite.table import format_table

    overhead = {"per_device_batch": 64, "ratio": 1.01, "kernel_ratio": 1.05, "ws_step_s": 0.01,
                "plain_step_s": 0.0099, "ws": _step(64, 0.01, 0.2)}  # fmt: skip
    torch_run = lambda batch, s: {"batch": batch, "step_time_s": {"median": s}}
    curve = [
        {"epoch": 1, "train_s": 2.0, "test_accuracy": 0.91},
        {"epoch": 2, "train_s": 4.0, "test_accuracy": 0.935},
    ]
    parts = {
        "bench": {"machine": {"device_kind": "NVIDIA H200", "jax": "0.11.2"},
                  "bf16_curve": [_step(256, 0.02, 0.45)], "ws_overhead_bf16": [overhead],
                  "float32_steps": [_step(64, 0.03, 0.1)],
                  "precision_probe": {"matmul_n": 8192, **{k: {"matmul_tflops": 1.0, "conv_tflops": 1.0,
                      "matmul_relative_error_vs_float64": 1e-4, "conv_relative_error_vs_highest": 1e-4}
                      for k in ("default", "high", "highest", "bfloat16_inputs")}}},
        "torch": {"eager_fp32": [torch_run(64, 0.05)], "tuned_bf16": [torch_run(64, 0.02)]},
        "tta": {"runs": [{"config": {"model": "vgg16", "dtype": "bfloat16", "global_batch_size": 512,
                                     "num_epochs": 2}, "curve": curve, "target": 0.93, "time_to_target_s": 4.0,
                          "final_test_accuracy": 0.935, "images_per_s": 30000.0, "compile_s": 20.0}]},
        "micro": {"study_model": [{"normalization": "BCN+WS", "model": "vgg_small", "steps_per_s": 500.0}],
                  "study_cells": [{"images_per_replica": 1, "replicas": 32, "steps": 5625, "steps_per_s": 250.0,
                                   "cell_train_s": 22.5}],
                  "vgg16_ws_bcn_32x32": {"steps_per_s": 100.0}},
        "study": {"cells": [{"seed": s, "wall_time_s": t} for s, t in ((0, 30.0), (0, 50.0), (1, 40.0))]},
        "profile": {"step": {"model": "vgg16", "dtype": "bfloat16", "per_device_batch": 256, "flops": 1e12}},
    }  # fmt: skip
    results = {
        "suite": {"tiny": False, "source_fingerprint": "abc", "date": "2026-12-01",
                  "prepared": {"source_fingerprint": "abc", "commit": "0123456789abcdef"}},
        "parts": {n: {"status": "ok", "wall_s": 1.0, "results": r} for n, r in parts.items()},
    }  # fmt: skip
    table = format_table(results)
    assert "missing" not in table, table
    assert "NVIDIA H200, JAX 0.11.2, source abc (= prepared at 0123456789ab)" in table
    assert "best batch 256 | 12,800 img/s, 20.00 ms, MFU 45.0% of 989 TFLOP/s" in table
    assert "64: 20.0% · 256: 45.0%" in table
    assert (
        "ours f32 30.00 ms vs eager f32 50.00 ms; ours bf16 10.00 ms vs compiled bf16 20.00 ms"
        in table
    )
    assert "WS overhead bf16, batch 64 (WSConv / nn.Conv) | 1.010x auto, 1.050x kernel" in table
    assert "4.0 s of training (epoch 2); final 93.50%" in table
    assert "| BCN+WS 500 |" in table and "VGG16 WS+BCN on 32x32x3 | 100 steps/s" in table
    assert "(BN, 5,625 steps of 32): training time | 1/device 250 steps/s = 22 s |" in table
    assert "| 3 cells finished (seeds 0, 1), 40 s of training per cell (median);" in table


def test_table_names_the_machine_in_a_call_without_bench():
    """The study's call of its own (no bench part) still says which device and JAX it ran on."""
    from experiments.bench.suite.table import format_table

    study = {"machine": {"device_kind": "NVIDIA H200", "jax": "0.11.2"},
             "cells": [{"seed": 0, "wall_time_s": 30.0}]}  # fmt: skip
    results = {
        "suite": {
            "tiny": False,
            "source_fingerprint": "abc",
            "date": "2026-12-01",
            "prepared": None,
        },
        "parts": {"study": {"status": "ok", "wall_s": 1.0, "results": study}},
    }
    assert "suite: NVIDIA H200, JAX 0.11.2, source abc" in format_table(results)


def test_the_rehearsal_script_parses_and_uses_the_gpu_machines_jax():
    """scripts/rehearse_device is valid bash, executable, and pins the JAX that the guide says is there."""
    script = REPO / "scripts" / "rehearse_device"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    pinned = re.search(r"^JAX_VERSION=(\S+)$", script.read_text(), re.M).group(1)
    assert f"JAX {pinned} with CUDA" in (REPO / "docs" / "guide" / "accelerators.md").read_text()
