"""Bad input on the command line: a clear one-line error that names the problem and the fix."""

import subprocess
import sys

import pytest

from tests.helpers import FAULT_ARGS, REPO, cli_env, run_cli

pytestmark = pytest.mark.slow
BASE = [
    *FAULT_ARGS,
    "--config.num_train_steps=1",
    "--config.model=vgg_tiny",
    "--config.num_groups=4",
]


def _error_line(result) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    return (
        lines[-1]
        if lines[-1].startswith(("error:", "FATAL"))
        else next(line for line in lines if line.startswith(("error:", "FATAL")))
    )


@pytest.mark.parametrize(
    "args, devices, expected",
    [
        (
            ["--config.global_batch_size=30"],
            4,
            "global_batch_size=30 does not divide evenly over 4 devices; use a multiple of 4",
        ),
        (["--config.dataset=cifar11"], 1, "unknown dataset 'cifar11'"),
        (
            ["--config.dataset=mnist", "--config.download=False"],
            1,
            "place t10k-images-idx3-ubyte.gz",
        ),
        (["--config.no_such_field=3"], 1, "unknown config field 'no_such_field'"),
        (["--config.num_epochs=ten"], 1, "num_epochs"),
        (
            ["--config.norm=layernorm"],
            1,
            "unknown norm 'layernorm'; choose one of bn, gn, bcn, none",
        ),
        (["--config.model=vgg19"], 1, "unknown model 'vgg19'"),
        (["--config.num_groups=5"], 1, "channels are not divisible into num_groups=5 groups"),
        (
            ["--config.replicas_per_device=3", "--config.global_batch_size=16"],
            2,
            "global_batch_size=16 does not divide evenly over 2 devices × 3 replicas; use a multiple of 6",
        ),
        (["--config.replicas_per_device=0"], 1, "replicas_per_device must be a positive integer"),
        (
            ["--config.accumulate_steps=3", "--config.global_batch_size=16"],
            2,
            "global_batch_size=16 does not divide evenly over 2 devices × 3 micro-batches "
            "(accumulate_steps); use a multiple of 6",
        ),
        (
            ["--config.replicas_per_device=2", "--config.sync_batch_stats=True"],
            1,
            "sync_batch_stats=True needs replicas_per_device=1",
        ),
        (["--config.conv_impl=cudnn"], 1, "unknown conv_impl 'cudnn'; choose one of auto, xla"),
        (["--config.ws_preset=foo"], 1, "unknown ws_preset 'foo'; choose one of pytorch, "),
        (
            ["--config.ws_apply_to=weights"],
            1,
            "unknown ws_apply_to 'weights'; choose one of kernel, output, auto",
        ),
    ],
)
def test_bad_config(tmp_path, args, devices, expected):
    extra = [f"--config.data_dir={tmp_path / 'tfds'}"] if "mnist" in " ".join(args) else []
    line = _error_line(
        run_cli([*BASE, *args, *extra, f"--workdir={tmp_path / 'w'}"], devices=devices)
    )
    assert expected in line, line


def test_workdir_not_writable(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    line = _error_line(run_cli([*BASE, f"--workdir={blocker / 'run'}"]))
    assert "is not writable" in line and "choose another --workdir" in line, line


def test_checkpoint_from_a_different_model_shape(tmp_path):
    assert run_cli([*BASE, f"--workdir={tmp_path}"]).returncode == 0
    line = _error_line(
        run_cli(
            [*BASE, "--config.model=vgg16_narrow", "--config.num_groups=8", f"--workdir={tmp_path}"]
        )
    )
    assert "does not fit this config" in line and "new --workdir" in line, line


# The command line with a genuine bug planted in it (a KeyError where the model is built).
WITH_A_BUG = """
import runpy, sys
from experiments.trainer import model_factory

def build_model(*args):
    return {}["a key the code forgot"]

model_factory.build_model = build_model
sys.argv = ["experiments.train", *sys.argv[1:]]
runpy.run_module("experiments.train", run_name="__main__")
"""


def test_a_bug_shows_its_traceback(tmp_path):
    """Only the user's mistakes are one line; a KeyError in our code must not pass for one."""
    done = subprocess.run(
        [sys.executable, "-c", WITH_A_BUG, *BASE, f"--workdir={tmp_path}"],
        cwd=REPO,
        env=cli_env(1),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "KeyError: 'a key the code forgot'" in done.stderr
    assert "error: 'a key the code forgot'" not in done.stderr
