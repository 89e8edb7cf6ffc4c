"""Benchmarks: WS overhead, throughput (fp32/bf16, FLOP/s, MFU), input, inference, micro-batch emulation,
gradient accumulation (memory and time).

    python -m experiments.bench.benchmark                      # VGG16, per-device batch 2 and 64
    python -m experiments.bench.benchmark --tiny               # seconds: checks the harness (CI), not speed
    python -m experiments.bench.benchmark --torch_python=.venv-torch/bin/python   # + the PyTorch reference

Compilation is excluded, every timing waits for the device (``block_until_ready``), and each figure is the
median of several repeats with its min-max. Prints one line per case on stderr as it goes (a full run takes
minutes), then a table, and writes JSON with the machine, the device, the JAX/Flax versions and the commit to
``results/benchmarks/DATE_TIME_DEVICE_COMMIT.json`` (a second run never overwrites the first).
"""

from __future__ import annotations

import datetime
import json
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from experiments.bench import RESULTS, accumulation, cases, cpu_default, microbatch_emulation
from experiments.bench import torch_reference as torch_reference_lib
from experiments.common import cpu_backend, provenance
from experiments.trainer import steps


class _Progress:
    """Runs the cases one by one, with a line on stderr as each starts and ends (elapsed time)."""

    def __init__(self, total: int):
        self.total, self.done, self.started = total, 0, time.perf_counter()

    def __call__(self, name: str, case: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self._say(f"[{self.done + 1}/{self.total}] {name} ...")
        start = time.perf_counter()
        result = case(*args, **kwargs)
        self.done += 1
        self._say(f"[{self.done}/{self.total}] {name}: {time.perf_counter() - start:.1f} s")
        return result

    def _say(self, message: str) -> None:
        minutes, seconds = divmod(int(time.perf_counter() - self.started), 60)
        print(f"{minutes:3d}:{seconds:02d} {message}", file=sys.stderr, flush=True)


def _file_name(results: dict, tiny: bool) -> str:
    """``DATE_TIME_DEVICE_COMMIT[_tiny].json``: unique per run and commit."""
    commit = results["machine"]["commit"]
    short = commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")
    kind = results["machine"]["device_kind"].replace(" ", "_")
    return f"{results['started']}_{kind}_{short}{'_tiny' if tiny else ''}.json"


def run(
    tiny: bool,
    batches: list[int],
    repeats: int,
    calls: int,
    out_dir: pathlib.Path,
    torch_python: str | None = None,
):
    cpu_backend.configure()  # before JAX's backend starts (as training does); nothing on GPU/TPU
    mesh = Mesh(np.array(jax.devices()[:1]), (steps.AXIS,))  # one device: the paper's per-GPU view
    cpu_backend.verify()  # warns once if XLA:CPU started without the settings
    setup = cases.Setup(
        model="vgg_tiny" if tiny else "vgg16",
        image_shape=(32, 32, 3),
        repeats=2 if tiny else repeats,
        calls=1 if tiny else calls,
        mesh=mesh,
    )
    now = datetime.datetime.now()
    results: dict = {
        "machine": provenance.describe_machine(),
        "date": now.date().isoformat(),
        "started": now.strftime("%Y-%m-%d_%H%M%S"),
        "tiny": tiny,
    }
    case = _Progress(
        len(batches) + 8 + bool(torch_python) + (jax.default_backend() == "cpu" and not tiny)
    )
    results["ws_overhead"] = [
        case(f"WS overhead, batch {b}", cases.ws_overhead, setup, b) for b in batches
    ]
    large = max(batches)
    results["throughput"] = [
        case(
            f"throughput {dtype}, batch {large}",
            cases.time_train_step,
            setup,
            large,
            conv="ws",
            norm="bcn",
            dtype=dtype,
        )
        for dtype in ("float32", "bfloat16")
    ]
    results["input_pipeline"] = case(
        "input pipeline",
        cases.input_pipeline,
        setup,
        large,
        results["throughput"][0]["images_per_s"],
    )
    results["stream_input"] = case(
        "streaming input (host)", _stream_input, setup, tiny, results["throughput"][0]
    )
    results["inference"] = case("inference, folded vs WS", cases.inference, setup, large)
    results["small_map_conv"] = case("small-map convolution", cases.small_map_conv, setup, large)
    results["microbatch_emulation"] = case(
        "micro-batch emulation", microbatch_emulation.measure, setup
    )
    results["accumulation"] = case(
        f"gradient accumulation, batch {large}",
        accumulation.measure,
        setup,
        large,
        (1, 2, 4) if tiny else accumulation.ACCUMULATE_STEPS,
    )
    if jax.default_backend() == "cpu" and not tiny:
        # What a user who sets no XLA flag gets (a fresh process without it), with the PyTorch step beside it.
        results["cpu_default"] = case(
            f"CPU without the XLA flag, batch {large}",
            cpu_default.measure,
            large,
            setup.repeats,
            setup.calls,
            torch_python,
        )
    if torch_python:
        results["torch_reference"] = case(
            "PyTorch reference", torch_reference, torch_python, batches, setup, results
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / _file_name(results, tiny)
    path.write_text(json.dumps(results, indent=2))
    print(format_table(results))
    print(f"\nwritten to {path}", file=sys.stderr)
    return results, path


def _stream_input(setup: cases.Setup, tiny: bool, cifar_step: dict) -> dict:
    """The streaming pipeline's host images/s (experiments/bench/stream_input.py) against the steps' needs:
    CIFAR-sized against this run's float32 step, ImageNet-sized against a ResNet-50 step at 224."""
    try:
        from experiments.bench import stream_input  # grain: only here
    except ImportError as e:  # grain needs Python >= 3.11
        return {"skipped": f"grain unavailable: {e}"}

    imagenet_step = stream_input.imagenet_step_images_per_s(setup, tiny)
    consumed = {
        "cifar": cifar_step["images_per_s"],
        "imagenet": imagenet_step["images_per_s"] if imagenet_step else None,
    }
    results = stream_input.measure(tiny, consumed)
    results["cifar"]["step"] = (
        f"{cifar_step['model']} {cifar_step['dtype']}, batch {cifar_step['per_device_batch']}"
    )
    results["imagenet"]["step"] = "resnet50 GN+WS float32, batch 8" if imagenet_step else None
    return results


def torch_reference(python: str, batches: list[int], setup: cases.Setup, results: dict) -> dict:
    """labml-nn's PyTorch VGG16 WS+BCN step on this machine (a subprocess), and our step time over its."""
    if setup.model != "vgg16":
        raise SystemExit("error: the PyTorch reference is VGG16; drop --tiny to compare with it.")
    reference = torch_reference_lib.run_in(python, batches, setup.repeats, setup.calls)
    ours = {o["per_device_batch"]: o["ws_step_s"] for o in results["ws_overhead"]}
    for r in reference["results"]:
        r["jax_over_torch"] = ours[r["batch"]] / r["ws"]["step_time_s"]["median"]
    return reference


def _range(t: dict) -> str:
    return f"{t['median'] * 1e3:.1f} ms ({t['min'] * 1e3:.1f}-{t['max'] * 1e3:.1f})"


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _accumulation_line(a: dict, row: dict) -> str:
    k, micro = row["accumulate_steps"], row["micro_batch"]
    memory, alone, device = row["compiled_memory"], row["micro_batch_alone"], row["device_memory"]
    figures = []
    if memory:
        figures.append(
            f"compiled memory {_mib(memory['total'])} ({row['memory_over_one_batch']:.2f}x one batch"
            + (f"; one batch of {micro} alone: {_mib(alone['total'])})" if alone else ")")
        )
    if device and "peak_bytes_in_use" in device:
        figures.append(f"device peak so far {_mib(device['peak_bytes_in_use'])}")
    figures.append(f"step {_range(row['step_time_s'])} ({row['step_time_over_one_batch']:.2f}x)")
    return (
        f"| gradient accumulation, {a['model']} {a['conv'].upper()}+{a['norm'].upper()}, batch "
        f"{a['per_device_batch']} as {k} x {micro} | {', '.join(figures)} |"
    )


def format_table(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"{m['device_kind']} x1 ({m['backend']}, {m['cpu_count']} CPU cores), JAX {m['jax']}, Flax {m['flax']}, "
        f"commit {m['commit'][:12]}, {r['date']}, XLA_FLAGS={m.get('xla_flags') or '(none)'}",
        "",
        "| measurement | value |",
        "|---|---|",
    ]
    for o in r["ws_overhead"]:
        lines.append(
            f"| WS overhead, batch {o['per_device_batch']} (WSConv / nn.Conv step) | {o['ratio']:.3f}x "
            f"with apply_to='auto', {o['kernel_ratio']:.3f}x with 'kernel' ({_range(o['ws']['step_time_s'])}, "
            f"{_range(o['ws_kernel']['step_time_s'])} vs {_range(o['plain']['step_time_s'])}) |"
        )
    for t in r["throughput"]:
        mfu = f", MFU {100 * t['mfu']:.1f}% of the {t['matmul_precision']} peak" if t["mfu"] else ""
        gflops = (
            f", {t['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s" if t["achieved_flops_per_s"] else ""
        )
        lines.append(
            f"| train {t['model']} WS+BCN {t['dtype']}, batch {t['per_device_batch']} | {t['images_per_s']:.1f} img/s, "
            f"step {_range(t['step_time_s'])}{gflops}{mfu} |"
        )
    p = r["input_pipeline"]
    lines.append(
        f"| input pipeline (draw + augment on device) | {p['images_per_s']:.0f} img/s = {p['headroom']:.1f}x what the step consumes |"
    )
    for kind, s in r.get("stream_input", {}).items():
        if not isinstance(s, dict):
            continue
        against = (
            f"; {s['headroom']:.1f}x what the step consumes ({s['step']}: {s['step_consumes_images_per_s']:.1f} img/s)"
            if s["headroom"]
            else ""
        )
        lines.append(
            f"| streaming input, {kind} ({s['image']}), host | {s['train_images_per_s_per_core']:.0f} img/s per core "
            f"training, {s['eval_images_per_s_per_core']:.0f} evaluation; pipeline {s['pipeline_images_per_s']:.0f} img/s "
            f"on {r['stream_input']['cores']} cores{against} |"
        )
    i = r["inference"]
    lines.append(
        f"| inference, batch {i['batch']}: folded / WS | {i['speedup']:.3f}x faster ({_range(i['folded_s'])} vs "
        f"{_range(i['ws_s'])}; outputs differ by {i['max_abs_output_difference']:.1e}) |"
    )
    c = r["small_map_conv"]
    lines.append(
        f"| train step, batch {c['per_device_batch']}: lax convs / wsjax.cpu.conv_general_dilated | {c['speedup']:.2f}x "
        f"faster with ours ({_range(c['auto_step_s'])} vs {_range(c['xla_step_s'])}) |"
    )
    for e in r.get("microbatch_emulation", []):
        g = e["global_batch"]
        t = e["step_time_s"]
        lines.append(
            f"| micro-batch emulation, {e['model']} {e['normalization']}: {g} replicas x 1 image / 1 x {g} | "
            f"{e['emulation_cost']:.2f}x ({_range(t['1/device'])} vs {_range(t[f'{g}/device'])}) |"
        )
    a = r.get("accumulation")
    lines += [_accumulation_line(a, row) for row in (a["rows"] if a else [])]
    d = r.get("cpu_default")
    if d:
        steps = d["step_time_s"]
        torch = (
            f"; PyTorch reference: {d['over_torch']['default']:.2f}x without, "
            f"{d['over_torch']['xla_convolutions']:.2f}x with"
            if "over_torch" in d
            else ""
        )
        lines.append(
            f"| train step, batch {d['batch']}, no XLA flag: as jax.jit compiles it / with "
            f"compiler_options=XLA_CONVOLUTIONS_OPTIONS | {d['default_over_xla_convolutions']:.2f}x "
            f"({_range(steps['default'])} vs {_range(steps['xla_convolutions'])}){torch} |"
        )
    for t in r.get("torch_reference", {}).get("results", []):
        lines.append(
            f"| PyTorch reference (labml-nn, torch {r['torch_reference']['torch']}), batch {t['batch']}: "
            f"ours / theirs, WS+BCN step | {t['jax_over_torch']:.2f}x ({_range(t['ws']['step_time_s'])} theirs; "
            f"their WS overhead {t['ws_overhead']:.2f}x) |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    from absl import flags

    del argv
    FLAGS = flags.FLAGS
    run(
        FLAGS.tiny,
        [int(b) for b in FLAGS.batches],
        FLAGS.repeats,
        FLAGS.calls,
        pathlib.Path(FLAGS.out),
        FLAGS.torch_python,
    )


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_bool("tiny", False, "A tiny model and few repeats: checks the harness in seconds.")
    flags.DEFINE_list(
        "batches", ["2", "64"], "Per-device batch sizes for the WS overhead (largest: the rest)."
    )
    flags.DEFINE_integer("repeats", 5, "Timed repeats; the median is reported with min-max.")
    flags.DEFINE_integer("calls", 3, "Calls averaged within one repeat.")
    flags.DEFINE_string("out", str(RESULTS), "Folder for the JSON results.")
    flags.DEFINE_string(
        "torch_python",
        None,
        "A Python with torch and labml-nn (e.g. .venv-torch/bin/python): also time the PyTorch reference.",
    )
    app.run(main)
