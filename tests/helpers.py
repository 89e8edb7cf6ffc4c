"""The tests' shared helpers, for both trees: the library's (convolution cases, the NumPy-standardized kernel,
Linen to NNX) and the harness's (tiny configs, training subprocesses, checkpoints, the real Fashion-MNIST in
../shared). The harness's import ``experiments`` inside their functions, so that a library test that imports
this module imports nothing from ``experiments``."""

from __future__ import annotations

import functools
import os
import pathlib
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import wsjax
from tests import reference

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_TFDS = REPO.parent / "shared" / "tensorflow_datasets"
needs_fashion_mnist = pytest.mark.skipif(
    not (SHARED_TFDS / "fashion_mnist").exists(),
    reason=f"the real Fashion-MNIST is not at {SHARED_TFDS} (only on this project's machines)",
)


def tiny_config(**overrides):
    """A config that trains in seconds on synthetic data."""
    from experiments.configs import default

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
    from experiments.common.cpu_backend import fake_cpu_env

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


# The library's helpers.

CONV_CASES = {
    "1d": dict(x=(2, 9, 4), features=6, kernel_size=(3,)),
    "1d_causal": dict(x=(2, 9, 4), features=6, kernel_size=(3,), padding="CAUSAL"),
    "2d": dict(x=(2, 8, 8, 4), features=6, kernel_size=(3, 3)),
    "2d_stride_valid": dict(
        x=(2, 9, 9, 4), features=6, kernel_size=(3, 3), strides=2, padding="VALID"
    ),
    "2d_circular": dict(x=(2, 8, 8, 4), features=6, kernel_size=(3, 3), padding="CIRCULAR"),
    "2d_reflect": dict(x=(2, 8, 8, 4), features=6, kernel_size=(3, 3), padding="REFLECT"),
    "2d_int_padding": dict(x=(2, 8, 8, 4), features=6, kernel_size=(3, 3), padding=2),
    "2d_explicit_padding": dict(
        x=(2, 8, 8, 4), features=6, kernel_size=(3, 3), padding=((1, 0), (2, 1))
    ),
    "2d_dilation": dict(x=(2, 9, 9, 4), features=6, kernel_size=(3, 3), kernel_dilation=2),
    "2d_input_dilation": dict(
        x=(2, 5, 5, 4), features=6, kernel_size=(3, 3), input_dilation=2, padding=((1, 1), (1, 1))
    ),
    "2d_groups": dict(x=(2, 8, 8, 8), features=6, kernel_size=(3, 3), feature_group_count=2),
    "2d_depthwise": dict(x=(2, 8, 8, 4), features=8, kernel_size=(3, 3), feature_group_count=4),
    "2d_no_bias": dict(x=(2, 8, 8, 4), features=6, kernel_size=(3, 3), use_bias=False),
    "2d_1x1": dict(x=(2, 5, 5, 4), features=6, kernel_size=(1, 1)),
    "3d": dict(x=(2, 5, 6, 5, 3), features=4, kernel_size=(3, 2, 3), strides=(1, 2, 1)),
    "3d_1x1x1": dict(x=(2, 4, 4, 4, 7), features=3, kernel_size=(1, 1, 1)),
    "unbatched": dict(x=(8, 8, 4), features=6, kernel_size=(3, 3)),
    "two_batch_dims": dict(x=(2, 3, 8, 8, 4), features=6, kernel_size=(3, 3)),
}


def standardized(kernel, s: wsjax.Standardization):
    """The NumPy reference in the convention ``s``."""
    return reference.standardize(kernel, s.eps, 1 if s.unbiased else 0, s.eps_outside_sqrt)


def conv_kwargs(case):
    """A ``CONV_CASES`` case's layer arguments (all but the input shape)."""
    return {k: v for k, v in case.items() if k != "x"}


def replace_kernel(params, kernel):
    """``params`` with its ``kernel`` replaced (in its dtype)."""
    return {**params, "kernel": jnp.asarray(kernel, params["kernel"].dtype)}


def load_into_nnx(module: nnx.Module, params: dict, batch_stats: dict | None = None) -> None:
    """Copies Linen variables into an NNX module with the same attribute names."""
    state = nnx.state(module)
    for collection in (params, batch_stats or {}):
        for path, value in jax.tree_util.tree_flatten_with_path(collection)[0]:
            target = state
            for key in path:
                target = target[key.key]
            target[...] = value
    nnx.update(module, state)


def random_params(model, x, kernel_std=None, seed=0):
    """Every parameter random (GN scale around 1, a non-zero head): init alone would hide mistakes."""
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["params"]
    leaves, tree = jax.tree.flatten_with_path(params)
    rng = np.random.default_rng(seed)
    out = []
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path)
        if "'scale'" in name:
            value = 1 + 0.2 * rng.standard_normal(leaf.shape)
        elif "'bias'" in name:
            value = 0.2 * rng.standard_normal(leaf.shape)
        else:
            std = np.prod(leaf.shape[:-1]) ** -0.5
            if kernel_std == "spread":  # per output channel, variances from 1e-11 to 1e-7
                std = 10 ** rng.uniform(-5.5, -3.5, leaf.shape[-1])
            value = std * rng.standard_normal(leaf.shape) + 0.3 * std  # a mean for WS to remove
        out.append(np.asarray(value, np.float32))
    return jax.tree.unflatten(tree, out)


# ---- the reference: BiT's equations in float64 NumPy ----------------------------------------------


def logits_of(model, params, x):
    """The model's logits, compiled (eager dispatch of every op is far slower on a loaded CPU)."""
    return np.asarray(jax.jit(functools.partial(model.apply, train=False))({"params": params}, x))


UNIT = re.compile(r"block(\d)_unit(\d\d)")


def flax_to_bit(params):
    """A BiT .npz's names and layouts: HWIO kernels, GN gamma/beta (C,), a (1, 1, C, K) conv head."""
    out = {"resnet/root_block/standardized_conv2d/kernel": params["root_conv"]["kernel"]}
    out["resnet/group_norm/gamma"] = params["norm_pre_head"]["scale"]
    out["resnet/group_norm/beta"] = params["norm_pre_head"]["bias"]
    if "head" in params:
        out["resnet/head/conv2d/kernel"] = np.asarray(params["head"]["kernel"])[None, None]
        out["resnet/head/conv2d/bias"] = params["head"]["bias"]
    for name, unit in params.items():
        match = UNIT.fullmatch(name)
        if not match:
            continue
        prefix = f"resnet/block{match[1]}/unit{match[2]}"
        for i, letter in zip("123", "abc", strict=True):
            out[f"{prefix}/{letter}/standardized_conv2d/kernel"] = unit[f"conv{i}"]["kernel"]
            out[f"{prefix}/{letter}/group_norm/gamma"] = unit[f"gn{i}"]["scale"]
            out[f"{prefix}/{letter}/group_norm/beta"] = unit[f"gn{i}"]["bias"]
        if "conv_proj" in unit:
            out[f"{prefix}/a/proj/standardized_conv2d/kernel"] = unit["conv_proj"]["kernel"]
    return {k: np.asarray(v) for k, v in out.items()}


def flax_to_timm(params):
    """A timm resnetv2_*_bit state dict's names and layouts: OIHW kernels, a (K, C, 1, 1) conv head."""
    oihw = lambda k: np.asarray(k).transpose(3, 2, 0, 1)
    out = {
        "stem.conv.weight": oihw(params["root_conv"]["kernel"]),
        "norm.weight": params["norm_pre_head"]["scale"],
        "norm.bias": params["norm_pre_head"]["bias"],
    }
    if "head" in params:
        out["head.fc.weight"] = np.asarray(params["head"]["kernel"]).T[:, :, None, None]
        out["head.fc.bias"] = params["head"]["bias"]
    for name, unit in params.items():
        match = UNIT.fullmatch(name)
        if not match:
            continue
        prefix = f"stages.{int(match[1]) - 1}.blocks.{int(match[2]) - 1}"
        for i in "123":
            out[f"{prefix}.conv{i}.weight"] = oihw(unit[f"conv{i}"]["kernel"])
            out[f"{prefix}.norm{i}.weight"] = unit[f"gn{i}"]["scale"]
            out[f"{prefix}.norm{i}.bias"] = unit[f"gn{i}"]["bias"]
        if "conv_proj" in unit:
            out[f"{prefix}.downsample.conv.weight"] = oihw(unit["conv_proj"]["kernel"])
    return {k: np.asarray(v) for k, v in out.items()}


def same_params(a, b):
    """Two parameter trees equal bit for bit."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# The harness's helpers.

# Three steps of a tiny model on synthetic data: one process of 4 devices or two of 2 end alike.
TINY_ARGS = [
    "--config=experiments/configs/default.py",
    "--config.dataset=synthetic",
    "--config.model=vgg_tiny",
    "--config.num_groups=4",
    "--config.global_batch_size=16",
    "--config.num_train_steps=3",
    "--config.eval_every_steps=3",
    "--config.checkpoint_every_steps=3",
    "--config.learning_rate=0.001",
    "--config.progress_bar=False",
]


def assert_bitwise_equal(a, b):
    """Two pytrees equal bit for bit, leaf by leaf (the failing leaf's path named)."""
    for (path, x), y in zip(
        jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b), strict=True
    ):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def last_logged_step(workdir) -> int:
    """The step of metrics.jsonl's last line (0 before any)."""
    path = workdir / "metrics.jsonl"
    return logged_metrics(workdir)[-1][0] if path.exists() and path.read_text().strip() else 0


def shapes_only(model, size=224):
    """A checkpoint of the right shapes that costs no memory (broadcast zeros)."""
    x = jnp.zeros((1, size, size, 3))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["params"]
    return jax.tree.map(lambda s: np.broadcast_to(np.float32(0), s.shape), shapes)
