"""The PyTorch reference's training step, timed: labml-nn's VGG16 with weight standardization + BCN.

    python -m experiments.bench.torch_reference --batches 2,64     # prints JSON; needs torch + labml-nn

The network is labml-nn's own (``labml_nn.normalization.weight_standardization.experiment.Model``: VGG16,
``Conv2d`` with weight standardization, ``BatchChannelNorm(channels, 32)``, ReLU), trained as its experiment
does (Adam, lr 2.5e-4, cross-entropy) on random CIFAR-sized images. Its twin with plain ``nn.Conv2d`` (BCN
kept) gives PyTorch's own WS overhead. Same timing rules as ours: warm-up excluded, median of repeats with
min-max. ``experiments.bench.benchmark --torch_python`` runs this in a subprocess (torch and JAX need not share an
environment) and reports JAX / PyTorch step-time ratios from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import time
from collections.abc import Callable

VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _models():
    """labml-nn's WS + BCN VGG16 and its plain-conv twin.

    The skeleton is that of ``labml_nn.experiments.cifar10.CIFAR10VGGModel`` (conv blocks, a 2x2 max-pool
    after each stage, one linear layer), rebuilt here because that module imports torchvision, whose PyPI
    wheels do not load against the CPU build of torch. The layers are labml-nn's own: its weight-standardized
    ``Conv2d`` and its ``BatchChannelNorm(channels, 32)``, as in its WS experiment.
    """
    from labml_nn.normalization.batch_channel_norm import BatchChannelNorm
    from labml_nn.normalization.weight_standardization.conv2d import Conv2d as WSConv2d
    from torch import nn

    class VGG(nn.Module):
        def __init__(self, conv):
            super().__init__()
            layers, in_channels = [], 3
            for stage in VGG16_STAGES:
                for channels in stage:
                    layers += [
                        conv(in_channels, channels, kernel_size=3, padding=1),
                        BatchChannelNorm(channels, 32),
                        nn.ReLU(inplace=True),
                    ]
                    in_channels = channels
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            self.layers = nn.Sequential(*layers)
            self.fc = nn.Linear(in_channels, 10)

        def forward(self, x):
            return self.fc(self.layers(x).flatten(1))

    return {"ws": lambda: VGG(WSConv2d), "plain": lambda: VGG(nn.Conv2d)}


def time_step(model_class, batch: int, repeats: int, calls: int) -> dict:
    import torch

    torch.manual_seed(0)
    model = model_class()
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2.5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    images = torch.randn(batch, 3, 32, 32)
    labels = torch.randint(0, 10, (batch,))

    def step():
        optimizer.zero_grad()
        loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()
        return loss.item()  # waits for the step, as block_until_ready does

    step()  # warm-up (allocations, Adam state)
    return {
        **step_times(step, batch, repeats, calls),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def step_times(
    step: Callable[[], object],
    batch: int,
    repeats: int,
    calls: int,
    sync: Callable[[], object] = lambda: None,
) -> dict:
    """Seconds per ``step()`` (median, min, max over ``repeats`` of ``calls`` calls) and images per second.

    Warm-up is the caller's. ``sync`` waits for the device after each repeat (``torch.cuda.synchronize``
    on a GPU). Free of JAX, so that the PyTorch side of the benchmark runs in a torch-only Python.
    """
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            step()
        sync()
        samples.append((time.perf_counter() - start) / calls)
    median = statistics.median(samples)
    return {
        "batch": batch,
        "step_time_s": {"median": median, "min": min(samples), "max": max(samples)},
        "images_per_s": batch / median,
    }


def run(batches: list[int], repeats: int, calls: int) -> dict:
    from importlib.metadata import version

    import torch

    models = _models()
    results = []
    for batch in batches:
        ws = time_step(models["ws"], batch, repeats, calls)
        plain = time_step(models["plain"], batch, repeats, calls)
        results.append(
            {
                "batch": batch,
                "ws": ws,
                "plain": plain,
                "ws_overhead": ws["step_time_s"]["median"] / plain["step_time_s"]["median"],
            }
        )
    return {
        "torch": torch.__version__,
        "labml_nn": version("labml-nn"),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "results": results,
    }


def run_in(python: str, batches: list[int], repeats: int, calls: int) -> dict:
    """:func:`run` in ``python`` (an interpreter with torch and labml-nn), from a JAX process: its JSON.

    Raises:
      SystemExit: ``python`` cannot be run, or the reference fails there (its stderr's end is shown).
    """
    repo = pathlib.Path(__file__).resolve().parents[2]
    command = [python, "-m", "experiments.bench.torch_reference", f"--batches={','.join(map(str, batches))}",
               f"--repeats={repeats}", f"--calls={calls}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(repo)}
    try:
        done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    except OSError as e:
        raise SystemExit(f"error: cannot run --torch_python={python}: {e}") from e
    if done.returncode != 0:
        raise SystemExit(
            f"error: the PyTorch reference failed (needs torch and labml-nn in {python}):\n"
            + done.stderr[-2000:]
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="2,64")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    print(json.dumps(run(batches, args.repeats, args.calls)))


if __name__ == "__main__":
    main()
