"""The library on a CPU with no XLA flag, against the experiments' XLA setting and the PyTorch reference.

    python -m experiments.bench.cpu_default [--batch 64] [--torch_python .venv-torch/bin/python] [--out DIR]

A user who imports wsjax on a laptop or a CPU Colab sets no ``XLA_FLAGS``. jaxlib 0.10's XLA:CPU then hands
every 2-D float convolution to YNNPACK, which is slower here than XLA's own convolutions, most of all for
the kernel gradient; the experiments start XLA with ``experiments.common.cpu_backend.XLA_CONVOLUTIONS``.
A library cannot make that choice from inside the function it is traced into: which kernel runs a
convolution is decided when the caller's ``jax.jit`` compiles the whole step, for every convolution in it.
What a caller can do without a flag is one keyword, ``compiler_options=XLA_CONVOLUTIONS_OPTIONS``, on the
compilation; it gives the flag's program (identical HLO, tested).

This measures, in one process started without the flag (what such a user gets):

- the VGG16 WS+BCN training step (the benchmark's, 32 x 32 x 3, Adam) compiled as ``jax.jit`` compiles it
  (``default``) and with the keyword (``xla_convolutions``), timed in turns;
- each VGG16 convolution shape alone (forward, input gradient, kernel gradient) both ways: where the
  difference is;
- with ``--torch_python``, labml-nn's PyTorch step at the same batch, in a subprocess right after.

Writes ``results/benchmarks/DATE_TIME_cpu_default_COMMIT.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys
from typing import Any

from experiments.bench import RESULTS
from experiments.common import cpu_backend

# VGG16's 3x3 convolutions on 32 x 32 inputs, one per (map side, in, out); the 2 x 2 stage takes wsjax.cpu's
# shifted matmuls, no convolution.
VGG16_CONVOLUTIONS = ((32, 3, 64), (32, 64, 64), (16, 64, 128), (16, 128, 128), (8, 128, 256),
                      (8, 256, 256), (4, 256, 512), (4, 512, 512))  # fmt: skip
VARIANTS = {"default": None, "xla_convolutions": cpu_backend.XLA_CONVOLUTIONS_OPTIONS}


def env_without_flag(environ: dict[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default: this process's) with the experiments' convolution flag taken out of XLA_FLAGS."""
    env = dict(os.environ if environ is None else environ)
    flag = cpu_backend.flag_name(cpu_backend.XLA_CONVOLUTIONS)
    env["XLA_FLAGS"] = " ".join(
        f for f in env.get("XLA_FLAGS", "").split() if cpu_backend.flag_name(f) != flag
    )
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _compiled_step_runs(batch: int, repeats: int, calls: int):
    """The VGG16 WS+BCN step compiled both ways, each with its own copy of the state: closures to time."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh

    from experiments.bench import cases, timing
    from experiments.trainer import steps

    mesh = Mesh(np.array(jax.devices()[:1]), (steps.AXIS,))
    setup = cases.Setup("vgg16", (32, 32, 3), repeats, calls, mesh)
    config = cases.config_for(setup, conv="ws", ws_apply_to="auto", norm="bcn")
    step, state, images, labels = cases.train_step(setup, config, batch)
    lowered = step.lower(state, images, labels)
    runs = {}
    for name, options in VARIANTS.items():
        compiled = lowered.compile(compiler_options=options)
        runs[name] = timing.stepper(compiled, jax.tree.map(jnp.copy, state), images, labels)
    return runs


def _convolution_runs(side: int, cin: int, cout: int, batch: int):
    """Forward, input-gradient and kernel-gradient closures of one convolution shape, for each variant."""
    import jax
    from jax import lax

    def conv(x, w):
        return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip

    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (batch, side, side, cin))
    w = jax.random.normal(key, (3, 3, cin, cout))
    g = jax.random.normal(key, (batch, side, side, cout))
    parts = {
        "forward": (lambda x, w, g: conv(x, w)),
        "input_gradient": (lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0]),
        "kernel_gradient": (lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0]),
    }
    runs = {}
    for part, fn in parts.items():
        lowered = jax.jit(fn).lower(x, w, g)
        for name, options in VARIANTS.items():
            compiled = lowered.compile(compiler_options=options)
            runs[(part, name)] = lambda c=compiled: c(x, w, g)
    return runs


def measure_here(batch: int, repeats: int, calls: int) -> dict[str, Any]:
    """The figures, in this process, which must have started XLA without the convolution flag."""
    import jax

    from experiments.bench import timing

    flags = os.environ.get("XLA_FLAGS", "")
    has_flag = env_without_flag()["XLA_FLAGS"].split() != flags.split()
    if has_flag or jax.default_backend() != "cpu":
        raise SystemExit(
            "error: this measures XLA:CPU without the experiments' convolution flag; run it through "
            "`python -m experiments.bench.cpu_default` (which starts it so)."
        )
    steps = timing.time_interleaved(_compiled_step_runs(batch, repeats, calls), repeats, calls)
    result: dict[str, Any] = {
        "batch": batch,
        "xla_flags": flags,
        "compiler_options": cpu_backend.XLA_CONVOLUTIONS_OPTIONS,
        "step_time_s": {name: t.as_dict() for name, t in steps.items()},
        "default_over_xla_convolutions": steps["default"].median / steps["xla_convolutions"].median,
        "convolutions": [],
    }
    for side, cin, cout in VGG16_CONVOLUTIONS:
        times = timing.time_interleaved(_convolution_runs(side, cin, cout, batch), repeats, calls)
        row: dict[str, Any] = {"map": side, "in": cin, "out": cout}
        for (part, name), t in times.items():
            row.setdefault(part, {})[name] = t.median
        result["convolutions"].append(row)
    return result


def measure(batch: int, repeats: int, calls: int, torch_python: str | None = None) -> dict:
    """:func:`measure_here` in a fresh process without the flag; then the PyTorch reference, if given."""
    from experiments.bench import torch_reference

    command = [sys.executable, "-m", "experiments.bench.cpu_default", "--here",
               f"--batch={batch}", f"--repeats={repeats}", f"--calls={calls}"]  # fmt: skip
    done = subprocess.run(command, env=env_without_flag(), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: the no-flag measurement failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if torch_python:
        reference = torch_reference.run_in(torch_python, [batch], repeats, calls)
        torch_s = reference["results"][0]["ws"]["step_time_s"]["median"]
        result["torch_reference"] = reference
        result["over_torch"] = {
            name: t["median"] / torch_s for name, t in result["step_time_s"].items()
        }
    return result


def format_table(r: dict) -> str:
    steps = r["step_time_s"]
    lines = [
        f"VGG16 WS+BCN training step, batch {r['batch']}, XLA:CPU without the convolution flag:",
        f"  default (as jax.jit compiles it)      {steps['default']['median'] * 1e3:8.1f} ms",
        f"  compiler_options=XLA_CONVOLUTIONS_OPTIONS {steps['xla_convolutions']['median'] * 1e3:4.1f} ms",
        f"  default / with the option: {r['default_over_xla_convolutions']:.3f}x",
    ]
    if "over_torch" in r:
        torch_s = r["torch_reference"]["results"][0]["ws"]["step_time_s"]["median"]
        lines.append(
            f"  PyTorch reference {torch_s * 1e3:.1f} ms: default {r['over_torch']['default']:.3f}x, "
            f"with the option {r['over_torch']['xla_convolutions']:.3f}x"
        )
    lines.append("\nper convolution (ms, default / with the option):")
    lines.append("  map  in->out     forward        input grad     kernel grad")
    for c in r["convolutions"]:
        cells = "  ".join(
            f"{c[p]['default'] * 1e3:6.1f}/{c[p]['xla_convolutions'] * 1e3:6.1f}"
            for p in ("forward", "input_gradient", "kernel_gradient")
        )
        lines.append(f"  {c['map']:3d} {c['in']:3d}->{c['out']:<4d}  {cells}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--torch_python", default=None, help="a Python with torch and labml-nn")
    parser.add_argument("--out", default=str(RESULTS), help="folder for the JSON record")
    # The measuring process, started by measure() without the flag.
    parser.add_argument("--here", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.here:
        print(json.dumps(measure_here(args.batch, args.repeats, args.calls)))
        return
    from experiments.common import provenance

    now = datetime.datetime.now()
    result = {
        "machine": provenance.describe_machine(),
        "date": now.date().isoformat(),
        "command": " ".join(["python -m experiments.bench.cpu_default", *sys.argv[1:]]),
        **measure(args.batch, args.repeats, args.calls, args.torch_python),
    }
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    commit = result["machine"]["commit"][:12]
    path = out / f"{now.strftime('%Y-%m-%d_%H%M%S')}_cpu_default_{commit}.json"
    path.write_text(json.dumps(result, indent=2))
    print(format_table(result))
    print(f"\nwritten to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
