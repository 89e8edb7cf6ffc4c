"""The device suite: its tiny mode runs every part on a CPU, and one part's failure loses no other's results."""

import json
import subprocess
import sys
import tarfile

import pytest

from experiments import device_suite
from experiments.cpu_devices import fake_cpu_env
from tests.helpers import REPO, SHARED_TFDS, needs_fashion_mnist, tiny_config

FAKE = "tests.suite_fake_part"


def test_a_failing_or_hanging_part_loses_nothing_else(tmp_path, monkeypatch, capsys):
    parts = {"fails": (FAKE, 60), "hangs": (FAKE, 12), "ok": (FAKE, 60)}
    monkeypatch.setattr(device_suite, "PARTS", parts)
    assert device_suite.main([f"--parts={','.join(parts)}", f"--out={tmp_path}"]) == 1
    got = json.loads((tmp_path / "results.json").read_text())["parts"]
    assert got["fails"]["status"] == "failed (exit 1)"
    assert got["fails"]["results"]["before"] == 1 and "after" not in got["fails"]["results"]
    assert "planted failure" in got["fails"]["log_tail"]
    assert got["hangs"]["status"] == "timed out after 12 s"
    assert got["hangs"]["results"]["before"] == 1  # recorded before it hung: kept
    assert got["ok"]["status"] == "ok" and got["ok"]["results"]["after"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "files.tar.gz",
        "results.json",
        "suite.log",
        "table.md",
    ]
    table = (tmp_path / "table.md").read_text().rstrip()
    assert capsys.readouterr().out.rstrip().endswith(table)  # the table comes last
    assert "fails failed (exit 1)" in table and "hangs timed out" in table and "ok ok" in table


def test_unknown_part_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match=r"unknown part\(s\) \['bench2'\]"):
        device_suite.main(["--parts=bench,bench2", f"--out={tmp_path}"])


def test_the_suite_process_never_imports_jax():
    """The parent must leave the accelerator to its parts (JAX would take the GPU's memory)."""
    code = (
        "import sys, experiments.device_suite, experiments.accel.table; "
        "assert 'jax' not in sys.modules and 'torch' not in sys.modules, 'imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_tiny_mode_runs_every_part(tmp_path):
    """`--tiny` is the GPU call at tiny sizes on this CPU: a typo in any part fails here, not on the GPU."""
    done = subprocess.run(
        [sys.executable, "-m", "experiments.device_suite", "--tiny", f"--out={tmp_path}"],
        cwd=REPO,
        env=fake_cpu_env(1),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["suite"]["tiny"] is True
    assert list(results["parts"]) == list(device_suite.PARTS)
    assert all(p["status"] == "ok" for p in results["parts"].values())
    bench = results["parts"]["bench"]["results"]
    assert {"precision_probe", "bf16_curve", "ws_overhead_bf16", "float32_steps"} <= set(bench)
    tta = results["parts"]["tta"]["results"]["runs"][0]
    assert [p["epoch"] for p in tta["curve"]] == [1, 2] and tta["test_examples"] == 512
    assert results["parts"]["micro"]["results"]["study_model"][0]["steps_per_s"] > 0
    with tarfile.open(tmp_path / "files.tar.gz") as tar:
        names = tar.getnames()
    assert "profile/train_step.optimized_hlo.txt" in names and "tests/junit.xml" in names
    assert any(n.endswith(".xplane.pb") for n in names)
    table = (tmp_path / "table.md").read_text()
    assert "missing" not in table and done.stdout.rstrip().endswith(table.rstrip())


@pytest.mark.slow
@needs_fashion_mnist
def test_prepare_fills_one_folder_that_fits_the_device_tool(tmp_path):
    from experiments import prepare_device

    out = tmp_path / "device"
    manifest = prepare_device.prepare(out, str(SHARED_TFDS), ["fashion_mnist"], wheels={})
    assert (out / ".gitignore").read_text().splitlines()[-1] == "*"  # git ignores all of it
    assert set(manifest["files"]) == {
        ".gitignore",
        "data/fashion_mnist/3.0.1/train.npz",
        "data/fashion_mnist/3.0.1/test.npz",
    }
    assert manifest["source_fingerprint"] == device_suite.source_fingerprint()
    assert manifest["travel_bytes"] < prepare_device.TRAVEL_LIMIT_BYTES
    assert json.loads((out / "manifest.json").read_text()) == manifest


@pytest.mark.slow
def test_time_to_accuracy_trains_as_the_cli_does(tmp_path):
    """The timed driver is `experiments.train` without its bookkeeping: the same test accuracy per epoch."""
    from experiments import train
    from experiments.accel import time_to_accuracy
    from experiments.metrics import read_metrics

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
