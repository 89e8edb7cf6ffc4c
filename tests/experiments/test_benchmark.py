"""The benchmark harness in its tiny mode: every section runs and is recorded (correctness, not speed)."""

import json

import pytest

from experiments.bench import benchmark

pytestmark = pytest.mark.slow


def test_tiny_benchmark_writes_every_section(tmp_path, capsys):
    results, path = benchmark.run(tiny=True, batches=[2, 4], repeats=2, calls=1, out_dir=tmp_path)
    saved = json.loads(path.read_text())
    # One line as each of the 10 cases starts and ends, with the time elapsed.
    progress = [line for line in capsys.readouterr().err.splitlines() if "/10] " in line]
    assert len(progress) == 20 and progress[-1].split()[1:3] == ["[10/10]", "gradient"], progress
    commit = saved["machine"]["commit"][:12]
    kind = saved["machine"]["device_kind"].replace(" ", "_")
    assert path.name == f"{saved['started']}_{kind}_{commit}" + (
        "-dirty_tiny.json" if saved["machine"]["commit"].endswith("-dirty") else "_tiny.json"
    )
    assert (
        saved["machine"]["jax"] and saved["machine"]["commit"] and saved["machine"]["device_kind"]
    )
    assert [o["per_device_batch"] for o in saved["ws_overhead"]] == [2, 4]
    for o in saved["ws_overhead"]:
        assert o["ratio"] > 0 and o["ws"]["conv"] == "ws" and o["plain"]["conv"] == "plain"
        assert o["ws"]["ws_apply_to"] == "auto" and o["ws_kernel"]["ws_apply_to"] == "kernel"
        assert o["kernel_ratio"] == o["ws_kernel"]["step_time_s"]["median"] / o["plain_step_s"]
        t = o["ws"]["step_time_s"]
        assert t["min"] <= t["median"] <= t["max"] and t["repeats"] == 2
    assert [t["dtype"] for t in saved["throughput"]] == ["float32", "bfloat16"]
    assert all(t["flops_per_step"] > 0 for t in saved["throughput"])  # XLA's cost analysis on CPU
    assert saved["throughput"][0]["mfu"] is None  # no peak for a CPU
    assert saved["input_pipeline"]["headroom"] > 0
    for kind in ("imagenet", "cifar"):
        stream = saved["stream_input"][kind]
        assert stream["train_images_per_s_per_core"] > 0 and stream["pipeline_images_per_s"] > 0
    assert saved["stream_input"]["cifar"]["headroom"] > 0
    assert saved["inference"]["max_abs_output_difference"] < 1e-4
    assert saved["small_map_conv"]["speedup"] > 0
    emulation = saved["microbatch_emulation"]
    assert [e["normalization"] for e in emulation] == ["BN", "BCN+WS"]
    for e in emulation:
        g = e["global_batch"]
        assert set(e["step_time_s"]) == {"1/device", f"{g}/device"} and e["emulation_cost"] > 0
    accumulation = saved["accumulation"]
    assert (accumulation["model"], accumulation["norm"], accumulation["per_device_batch"]) == (
        "vgg_tiny",
        "bcn",
        4,
    )
    rows = accumulation["rows"]
    assert [(r["accumulate_steps"], r["micro_batch"]) for r in rows] == [(1, 4), (2, 2), (4, 1)]
    for r in rows:
        memory = r["compiled_memory"]  # XLA's buffer assignment, on the CPU too
        assert memory["temp"] > 0 and memory["total"] >= memory["temp"]
        assert r["device_memory"] is None  # the CPU keeps no memory statistics
        assert r["step_time_s"]["median"] > 0 and r["step_time_over_one_batch"] > 0
    assert rows[0]["micro_batch_alone"] is None and rows[0]["memory_over_one_batch"] == 1
    assert all(r["micro_batch_alone"]["temp"] > 0 for r in rows[1:])
    table = benchmark.format_table(results)
    assert "WS overhead, batch 2" in table and "micro-batch emulation, vgg_tiny BCN+WS" in table
    assert "gradient accumulation, vgg_tiny WS+BCN, batch 4 as 4 x 1" in table


def _vgg16_setup():
    import jax
    import numpy as np
    from jax.sharding import Mesh

    from experiments.bench import cases
    from experiments.trainer import steps

    mesh = Mesh(np.array(jax.devices()[:1]), (steps.AXIS,))
    return cases.Setup("vgg16", (32, 32, 3), repeats=1, calls=1, mesh=mesh)


def test_torch_reference_errors_are_one_line():
    with pytest.raises(SystemExit, match="cannot run --torch_python=/nonexistent/python"):
        benchmark.torch_reference("/nonexistent/python", [2], _vgg16_setup(), {})
    tiny = _vgg16_setup().__class__("vgg_tiny", (32, 32, 3), 1, 1, _vgg16_setup().mesh)
    with pytest.raises(SystemExit, match="drop --tiny"):
        benchmark.torch_reference("python", [2], tiny, {})


def test_torch_reference_is_the_same_network_as_ours():
    """Where torch and labml-nn are installed (not in CI): labml-nn's WS+BCN VGG16 has our VGG16's size."""
    pytest.importorskip("torch")
    pytest.importorskip("labml_nn")
    from experiments.bench import torch_reference

    result = torch_reference.run([2], repeats=1, calls=1)["results"][0]
    assert result["ws"]["parameters"] == result["plain"]["parameters"] == 14_729_098
    assert result["ws_overhead"] > 0


def test_result_files_of_two_runs_differ():
    machine = {"commit": "0123456789abcdef-dirty", "device_kind": "NVIDIA H100"}
    first = benchmark._file_name({"machine": machine, "started": "2026-11-28_101500"}, tiny=False)
    second = benchmark._file_name({"machine": machine, "started": "2026-11-28_143000"}, tiny=False)
    assert first == "2026-11-28_101500_NVIDIA_H100_0123456789ab-dirty.json" != second


def test_cpu_default_measures_without_the_flag(tmp_path):
    """The no-flag case in its own process: the step both ways, every VGG16 convolution, one JSON record."""
    import subprocess
    import sys

    from experiments.bench import cpu_default
    from experiments.common import cpu_backend
    from tests.helpers import REPO, cli_env

    command = [sys.executable, "-m", "experiments.bench.cpu_default", "--batch=2", "--repeats=1",
               "--calls=1", f"--out={tmp_path}"]  # fmt: skip
    done = subprocess.run(
        command, cwd=REPO, env=cli_env(1), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = tmp_path.glob("*_cpu_default_*.json")
    saved = json.loads(path.read_text())
    assert cpu_backend.XLA_CONVOLUTIONS not in saved["xla_flags"]  # measured as a user without it
    assert set(saved["step_time_s"]) == {"default", "xla_convolutions"}
    assert saved["default_over_xla_convolutions"] == pytest.approx(
        saved["step_time_s"]["default"]["median"]
        / saved["step_time_s"]["xla_convolutions"]["median"]
    )
    assert [(c["map"], c["in"], c["out"]) for c in saved["convolutions"]] == list(
        cpu_default.VGG16_CONVOLUTIONS
    )
    assert saved["command"].startswith("python -m experiments.bench.cpu_default")
    assert "default / with the option" in done.stdout
