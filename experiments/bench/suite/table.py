"""The accelerator suite's closing table: each figure beside its goal, or why it is missing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def _percent(fraction: float | None) -> str:
    return f"{100 * fraction:.1f}%" if fraction is not None else "n/a"


def _part(results: dict, name: str) -> dict[str, Any]:
    return results["parts"].get(name, {}).get("results", {})


def _tests(r: dict) -> list[tuple[str, str, str]]:
    s = _part(r, "tests")["summary"]
    failed = "; ".join(f["test"].rsplit(".", 1)[-1] for f in s["failures"][:4])
    value = f"{s['passed']} passed, {s['failed']} failed, {s['skipped']} skipped"
    return [("tests on the device", value + (f" ({failed})" if failed else ""), "all pass")]


def _precision(r: dict) -> list[tuple[str, str, str]]:
    p = _part(r, "bench")["precision_probe"]
    rows = []
    for setting in ("default", "highest", "bfloat16_inputs"):
        q = p[setting]
        rows.append(
            (
                f"float32 matmul {p['matmul_n']}^3 / 3x3 conv, precision '{setting}'",
                f"{q['matmul_tflops']:.0f} / {q['conv_tflops']:.0f} TFLOP/s; errors "
                f"{q['matmul_relative_error_vs_float64']:.1e} (vs f64) / {q['conv_relative_error_vs_highest']:.1e}"
                " (vs highest)",
                "tells tf32 from fp32",
            )
        )
    return rows


def _curve(r: dict) -> list[tuple[str, str, str]]:
    bench = _part(r, "bench")
    overhead = [o["ws"] for o in bench.get("ws_overhead_bf16", []) if o["per_device_batch"] >= 64]
    curve = sorted(bench.get("bf16_curve", []) + overhead, key=lambda c: c["per_device_batch"])
    best = max(curve, key=lambda c: c["images_per_s"])
    points = " · ".join(f"{c['per_device_batch']}: {_percent(c['mfu'])}" for c in curve)
    mfu = (
        f"MFU {_percent(best['mfu'])} of {best['peak_flops_per_s'] / 1e12:.0f} TFLOP/s"
        if best["mfu"]
        else "no MFU (no peak)"
    )
    return [
        (
            f"{best['model']} WS+BCN bf16 train step, best batch {best['per_device_batch']}",
            f"{best['images_per_s']:,.0f} img/s, {_ms(best['step_time_s']['median'])}, {mfu}",
            ">= 50% MFU",
        ),
        ("MFU by per-device batch", points, ""),
    ]


def _overhead(r: dict) -> list[tuple[str, str, str]]:
    rows = []
    for o in _part(r, "bench")["ws_overhead_bf16"]:
        goal = "<= 1.10" if o["per_device_batch"] < 64 else "<= 1.02"
        rows.append(
            (
                f"WS overhead bf16, batch {o['per_device_batch']} (WSConv / nn.Conv)",
                f"{o['ratio']:.3f}x auto, {o['kernel_ratio']:.3f}x kernel ({_ms(o['ws_step_s'])} vs {_ms(o['plain_step_s'])})",
                goal,
            )
        )
    return rows


def _versus_torch(r: dict) -> list[tuple[str, str, str]]:
    from experiments.bench.suite.parts.torch_bench import summarize

    torch = _part(r, "torch")
    if "skipped" in torch:
        return [("PyTorch reference", f"skipped: {torch['skipped']}", "ours faster")]
    theirs = summarize(torch)
    bench = _part(r, "bench")
    ours_bf16 = {
        c["per_device_batch"]: c["step_time_s"]["median"] for c in bench.get("bf16_curve", [])
    }
    ours_bf16.update(
        {o["per_device_batch"]: o["ws_step_s"] for o in bench.get("ws_overhead_bf16", [])}
    )
    ours_f32 = {
        c["per_device_batch"]: c["step_time_s"]["median"] for c in bench.get("float32_steps", [])
    }
    rows = []
    for batch, t in sorted(theirs.items()):
        parts = []
        if "eager_fp32" in t and batch in ours_f32:
            parts.append(f"ours f32 {_ms(ours_f32[batch])} vs eager f32 {_ms(t['eager_fp32'])}")
        if "tuned_bf16" in t and batch in ours_bf16:
            parts.append(
                f"ours bf16 {_ms(ours_bf16[batch])} vs compiled bf16 {_ms(t['tuned_bf16'])}"
            )
        elif "eager_fp32" in t and batch in ours_bf16:
            parts.append(f"ours bf16 {_ms(ours_bf16[batch])}")
        rows.append(
            (
                f"step vs PyTorch (labml-nn VGG16), batch {batch}",
                "; ".join(parts) or "-",
                "ours faster",
            )
        )
    return rows


def _tta(r: dict) -> list[tuple[str, str, str]]:
    rows = []
    for run in _part(r, "tta")["runs"]:
        c = run["config"]
        reached = run["time_to_target_s"]
        hit = next((p["epoch"] for p in run["curve"] if p["test_accuracy"] >= run["target"]), None)
        value = (
            f"{reached:.1f} s of training (epoch {hit})" if reached is not None else "not reached"
        ) + (
            f"; final {100 * run['final_test_accuracy']:.2f}% after {run['curve'][-1]['train_s']:.1f} s, "
            f"{run['images_per_s']:,.0f} img/s, compile {run['compile_s']:.0f} s"
        )
        rows.append(
            (
                f"{100 * run['target']:.0f}% test accuracy, {c['model']} {c['dtype']}, batch "
                f"{c['global_batch_size']}, {c['num_epochs']} epochs",
                value,
                "<= 15 s",
            )
        )
    return rows


def _micro(r: dict) -> list[tuple[str, str, str]]:
    micro = _part(r, "micro")
    rows = micro.get("study_model", [])
    value = " · ".join(f"{m['normalization']} {m['steps_per_s']:.0f}" for m in rows)
    out = [(f"micro-batch emulation, {rows[0]['model']}, 8 replicas x 1 image: steps/s", value, "")]
    cells = micro.get("study_cells", [])
    if cells:
        value = " · ".join(
            f"{c['images_per_replica']}/device {c['steps_per_s']:.0f} steps/s = {c['cell_train_s']:.0f} s"
            for c in cells
        )
        batch = cells[0]["images_per_replica"] * cells[0]["replicas"]
        label = f"study cell (BN, {cells[0]['steps']:,} steps of {batch}): training time"
        out.append((label, value, ""))
    if "vgg16_ws_bcn_32x32" in micro:
        out.append(
            (
                "same, VGG16 WS+BCN on 32x32x3",
                f"{micro['vgg16_ws_bcn_32x32']['steps_per_s']:.0f} steps/s",
                "",
            )
        )
    return out


def _profile(r: dict) -> list[tuple[str, str, str]]:
    step = _part(r, "profile")["step"]
    return [
        (
            f"profile: {step['model']} {step['dtype']} step, batch {step['per_device_batch']}",
            f"trace + HLO in profile/; {step['flops'] / 1e12:.2f} TFLOP per step",
            "",
        )
    ]


def _pretrained(r: dict) -> list[tuple[str, str, str]]:
    from experiments.bench.suite.parts.pretrained_check import summarize

    label = "pretrained: our ResNetV2 vs timm resnetv2_50x1_bit, max abs logit difference"
    return [(label, summarize(_part(r, "pretrained")), "<= 1e-4 of the scale")]


def _imagenet(r: dict) -> list[tuple[str, str, str]]:
    rows = []
    for s in _part(r, "imagenet")["steps"]:
        mfu = f", MFU {_percent(s['mfu'])}" if s["mfu"] else ""
        rows.append(
            (
                f"{s['model']} {s['normalization']} {s['dtype']} train step, batch {s['per_device_batch']} as "
                f"{s['replicas']} replica(s)",
                f"{s['images_per_s']:,.0f} img/s, {_ms(s['step_time_s']['median'])}{mfu}",
                "",
            )
        )
    return rows


def _study(r: dict) -> list[tuple[str, str, str]]:
    cells = _part(r, "study")["cells"]
    label = "micro-batch study's grid on the device (configs/microbatch_deep.py, one process)"
    if not cells:
        return [(label, "no cell finished", "")]
    seconds = sorted(c["wall_time_s"] for c in cells)
    seeds = ", ".join(str(s) for s in sorted({c["seed"] for c in cells}))
    value = (
        f"{len(cells)} cells finished (seeds {seeds}), {seconds[len(seconds) // 2]:.0f} s of training per cell "
        "(median); records in study/runs/"
    )
    return [(label, value, "")]


ROWS: list[tuple[str, Callable[[dict], list[tuple[str, str, str]]]]] = [
    ("tests", _tests),
    ("bench", _precision),
    ("bench", _curve),
    ("bench", _overhead),
    ("torch", _versus_torch),
    ("tta", _tta),
    ("micro", _micro),
    ("profile", _profile),
    ("pretrained", _pretrained),
    ("imagenet", _imagenet),
    ("study", _study),
]


def _prepared(suite: dict) -> str:
    prepared = suite.get("prepared") or {}
    if not prepared:
        return "no .device/manifest.json"
    same = prepared.get("source_fingerprint") == suite["source_fingerprint"]
    return f"{'=' if same else 'changed since'} prepared at {prepared.get('commit', '?')[:12]}"


def format_table(results: dict) -> str:
    """Markdown: a status line per part, then measurement | value | goal."""
    # bench records the machine; so do the parts that run in calls of their own (imagenet, study)
    machine = next((m for n in results["parts"] if (m := _part(results, n).get("machine"))), {})
    suite = results["suite"]
    head = (
        f"wsjax accelerator suite{' (tiny: checks the suite, measures nothing)' if suite['tiny'] else ''}: "
        f"{machine.get('device_kind', '?')}, JAX {machine.get('jax', '?')}, source {suite['source_fingerprint']}"
        f" ({_prepared(suite)}), {suite['date']}"
    )
    statuses = " · ".join(
        f"{n} {p['status']} {p.get('wall_s', 0):.0f}s" for n, p in results["parts"].items()
    )
    lines = [head, statuses, "", "| measurement | value | goal |", "|---|---|---|"]
    for part, rows in ROWS:
        if part not in results["parts"]:
            continue
        try:
            lines += [f"| {a} | {b} | {c} |" for a, b, c in rows(results)]
        except (KeyError, IndexError, TypeError, ValueError) as e:
            status = results["parts"][part]["status"]
            lines.append(
                f"| {part}: {rows.__name__.strip('_')} | missing ({status}; {type(e).__name__} {e}) | |"
            )
    return "\n".join(lines)
