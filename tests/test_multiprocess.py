"""Two processes x 2 CPU devices (jax.distributed over localhost) end where one process x 4 devices does."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.helpers import REPO

ARGS = [
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


def _env(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    env.update(JAX_NUM_CPU_DEVICES=str(devices), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _params(workdir) -> dict:
    """The final checkpoint's parameters, read onto this process's first device."""
    path = workdir / "checkpoints" / "3" / "default"
    checkpointer = ocp.StandardCheckpointer()
    metadata = checkpointer.metadata(path)
    metadata = getattr(metadata, "item_metadata", metadata)
    metadata = getattr(metadata, "tree", metadata)
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device), metadata
    )
    restored = checkpointer.restore(path, target)
    return {k: np.asarray(v) for k, v in _flatten(restored["params"]).items()}


def _flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[prefix + key] = value
    return out


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    command = [sys.executable, "-m", "experiments.train"]
    single = subprocess.run(
        [*command, *ARGS, f"--workdir={tmp_path / 'one'}"],
        cwd=REPO,
        env=_env(4),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]

    address = f"127.0.0.1:{_free_port()}"
    workers = [
        subprocess.Popen(
            [
                *command,
                *ARGS,
                f"--workdir={tmp_path / 'two'}",
                f"--coordinator_address={address}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=REPO,
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=300) for w in workers]
    for w, (_, err) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, err[-3000:]
    # Only process 0 logs.
    assert "final test accuracy" in outputs[0][0] and "final test accuracy" not in outputs[1][0]

    one, two = _params(tmp_path / "one"), _params(tmp_path / "two")
    assert one.keys() == two.keys()
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)
