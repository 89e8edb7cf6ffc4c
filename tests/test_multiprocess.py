"""Two processes x 2 CPU devices (jax.distributed over localhost) end where one process x 4 devices does."""

import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO, cli_env, free_port, read_checkpoint

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


def _params(workdir) -> dict:
    return {k: v for k, v in _flatten(read_checkpoint(workdir, 3)["params"]).items()}


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
        env=cli_env(4),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]

    address = f"127.0.0.1:{free_port()}"
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
            env=cli_env(2),
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
