"""Shared test helpers: tiny configs and access to the real Fashion-MNIST in ../shared."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from experiments.common.cpu_backend import fake_cpu_env
from experiments.configs import default

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_TFDS = REPO.parent / "shared" / "tensorflow_datasets"
needs_fashion_mnist = pytest.mark.skipif(
    not (SHARED_TFDS / "fashion_mnist").exists(),
    reason=f"the real Fashion-MNIST is not at {SHARED_TFDS} (only on this project's machines)",
)


def tiny_config(**overrides):
    """A config that trains in seconds on synthetic data."""
    config = default.get_config()
    config.dataset = "synthetic"
    config.model = "vgg_tiny"
    config.num_groups = 4
    config.global_batch_size = 16
    config.num_train_steps = 4
    config.eval_batch_size = 64
    config.log_every_steps = 2
    config.eval_every_steps = 4
    config.checkpoint_every_steps = 2
    config.learning_rate = 1e-3
    config.progress_bar = False
    config.update(overrides)
    return config


TRAIN = [sys.executable, "-m", "experiments.train"]
# A real (not tiny) model on synthetic data: ~0.1-0.3 s per step on 2 CPU cores, slow enough to be
# interrupted at a chosen step.
FAULT_ARGS = [
    "--config=experiments/configs/default.py",
    "--config.dataset=synthetic",
    "--config.model=vgg16_narrow",
    "--config.num_groups=8",
    "--config.global_batch_size=32",
    "--config.eval_batch_size=256",
    "--config.log_every_steps=1",
    "--config.progress_bar=False",
]


def cli_env(devices: int = 1) -> dict[str, str]:
    """The environment of a training subprocess with ``devices`` CPU devices."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("XLA_")}
    return fake_cpu_env(devices, base)


def run_cli(
    args: list[str], devices: int = 1, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Runs ``python -m experiments.train ARGS`` to completion (``env``: variables to add)."""
    return subprocess.run(
        [*TRAIN, *args],
        cwd=REPO,
        env={**cli_env(devices), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(args: list[str], devices: int = 1) -> subprocess.Popen:
    return subprocess.Popen(
        [*TRAIN, *args],
        cwd=REPO,
        env=cli_env(devices),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(predicate, timeout: float = 300, what: str = "condition") -> None:
    """Polls ``predicate`` until true; generous, since a loaded 2-core machine can take minutes to start."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def checkpoint_steps(workdir: pathlib.Path) -> list[int]:
    directory = workdir / "checkpoints"
    if not directory.exists():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def read_checkpoint(workdir: pathlib.Path, step: int) -> dict:
    """A checkpoint's arrays as NumPy, read onto this process's first device whatever wrote it."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    path = workdir / "checkpoints" / str(step) / "default"
    checkpointer = ocp.StandardCheckpointer()
    metadata = checkpointer.metadata(path)
    metadata = getattr(metadata, "item_metadata", metadata)
    metadata = getattr(metadata, "tree", metadata)
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device), metadata
    )
    return jax.tree.map(np.asarray, checkpointer.restore(path, target))


def logged_metrics(workdir: pathlib.Path, keys=("loss", "accuracy")) -> list[tuple]:
    """The deterministic part of metrics.jsonl (timings excluded)."""
    import json

    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [tuple([r["step"], r["split"], *(r[k] for k in keys)]) for r in map(json.loads, lines)]


def free_port() -> int:
    """A free localhost port for a ``jax.distributed`` coordinator."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_processes(
    command_of: Callable[[str, int], list[str]], processes: int = 2, devices: int = 1
) -> list[subprocess.Popen]:
    """Starts ``command_of(coordinator_address, process_id)`` once per process over a fresh localhost port.

    Each process gets ``devices`` CPU devices and piped, text stdout and stderr (``finish_processes`` reads them).
    """
    address = f"127.0.0.1:{free_port()}"
    return [
        subprocess.Popen(
            command_of(address, i),
            cwd=REPO,
            env=cli_env(devices),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]


def start_trainers(args: list[str], processes: int = 2, devices: int = 1) -> list[subprocess.Popen]:
    """``python -m experiments.train ARGS`` as ``processes`` processes of one ``jax.distributed`` run."""
    return start_processes(
        lambda address, i: [
            *TRAIN,
            *args,
            f"--coordinator_address={address}",
            f"--num_processes={processes}",
            f"--process_id={i}",
        ],
        processes,
        devices,
    )


def finish_processes(
    workers: list[subprocess.Popen], timeout: float = 300
) -> list[tuple[int, str, str]]:
    """Each process's (exit code, stdout, stderr); past ``timeout`` (all together) kills them all and fails.

    One process left waiting in a collective that the others never enter is a hang: the failure shows what
    each process printed instead of stalling CI.
    """
    deadline = time.monotonic() + timeout
    try:
        outputs = [w.communicate(timeout=max(deadline - time.monotonic(), 0.1)) for w in workers]
    except subprocess.TimeoutExpired:
        for w in workers:
            w.kill()
        tails = [w.communicate()[1][-2000:] for w in workers]
        pytest.fail(f"a process did not finish within {timeout} s (a hang?); stderr tails: {tails}")
    return [(w.returncode, out, err) for w, (out, err) in zip(workers, outputs, strict=True)]
