"""The XLA:CPU settings: added on CPU only, never over the user's, never after JAX started; a notebook-style
``train_and_evaluate`` starts XLA as the command line does."""

import json
import subprocess
import sys
import warnings

import pytest

from experiments.common import cpu_backend
from tests.helpers import REPO, cli_env

CONVOLUTIONS, *COLLECTIVES = cpu_backend.SETTINGS


@pytest.mark.parametrize("platform", ["gpu", "cuda", "rocm", "tpu", None])
def test_nothing_cpu_specific_applies_elsewhere(platform, monkeypatch):
    assert cpu_backend.with_cpu_settings("--xla_dump_to=/tmp/x", platform) == "--xla_dump_to=/tmp/x"
    monkeypatch.setattr(cpu_backend, "backend_started", lambda: False)
    environ = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    cpu_backend.configure(environ, platform=platform or "tpu")
    assert environ == {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}


def test_cpu_gets_every_setting_and_keeps_the_users(monkeypatch):
    monkeypatch.setattr(cpu_backend, "backend_started", lambda: False)
    environ = {}
    cpu_backend.configure(environ, platform="cpu")
    assert environ["XLA_FLAGS"].split() == list(cpu_backend.SETTINGS)
    cpu_backend.configure(environ, platform="cpu")  # idempotent
    assert environ["XLA_FLAGS"].split() == list(cpu_backend.SETTINGS)

    # A flag the user set, with any value, stays the user's; the others are added.
    mine = "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_collective_timeout_seconds=5"
    environ = {"XLA_FLAGS": mine}
    cpu_backend.configure(environ, platform="cpu")
    flags = environ["XLA_FLAGS"].split()
    assert flags[:2] == mine.split() and CONVOLUTIONS not in flags
    assert flags[2:] == ["--xla_cpu_collective_call_terminate_timeout_seconds=600"]


def test_after_the_backend_started_nothing_changes_and_verify_warns_once(monkeypatch):
    monkeypatch.setattr(cpu_backend, "backend_started", lambda: True)
    monkeypatch.setattr(cpu_backend, "_warned", False)
    environ = {}
    cpu_backend.configure(environ, platform="cpu")
    assert environ == {}  # too late: XLA read its flags already
    with pytest.warns(RuntimeWarning, match="XLA:CPU is running without the experiments' settings"):
        assert cpu_backend.verify(environ, platform="cpu") is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cpu_backend.verify(environ, platform="cpu") is False  # once only
        assert cpu_backend.verify(environ, platform="gpu") is True
        assert cpu_backend.verify({"XLA_FLAGS": " ".join(cpu_backend.SETTINGS)}, "cpu") is True


def test_expected_platform_without_starting_jax(monkeypatch):
    monkeypatch.setattr(cpu_backend, "backend_started", lambda: False)
    assert cpu_backend.expected_platform("cuda,cpu") == "cuda"
    assert cpu_backend.expected_platform("cpu") == "cpu"
    monkeypatch.setattr(cpu_backend, "_accelerator_plugin_installed", lambda: False)
    assert cpu_backend.expected_platform("") == "cpu"
    monkeypatch.setattr(cpu_backend, "_accelerator_plugin_installed", lambda: True)
    assert cpu_backend.expected_platform("") is None  # only starting JAX would tell


def test_fake_cpu_env():
    env = cpu_backend.fake_cpu_env(4, {"JAX_ENABLE_X64": "1", "XLA_FLAGS": "--xla_dump_to=/tmp/x"})
    assert env["JAX_PLATFORMS"] == "cpu" and env["JAX_NUM_CPU_DEVICES"] == "4"
    assert "JAX_ENABLE_X64" not in env
    assert env["XLA_FLAGS"].split() == ["--xla_dump_to=/tmp/x", *cpu_backend.SETTINGS]


NOTEBOOK = """
import sys
from experiments import train
from tests.helpers import tiny_config
train.train_and_evaluate(tiny_config(num_train_steps=1), sys.argv[1])
"""


@pytest.mark.slow
def test_train_and_evaluate_applies_the_settings_itself(tmp_path):
    """As a notebook calls it: no XLA_FLAGS, no conftest, no command line."""
    env = {**cpu_backend.fake_cpu_env(1), "PYTHONPATH": str(REPO)}
    del env["XLA_FLAGS"]
    done = subprocess.run(
        [sys.executable, "-c", NOTEBOOK, str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RuntimeWarning" not in done.stderr
    recorded = json.loads((tmp_path / "run_info.json").read_text())["xla_flags"]
    assert recorded.split() == list(cpu_backend.SETTINGS)


# Prints the compiled program of a convolution's forward and gradients: as compiled by default, and with the
# per-compilation options (metadata and the module's name dropped: they carry nothing of the program).
_PROGRAMS = """
import json, jax, jax.numpy as jnp
from jax import lax
from experiments.common import cpu_backend

def loss(x, w):
    y = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(jnp.tanh(y) @ jnp.ones((64, 8)))

x, w = jnp.ones((8, 16, 16, 64)), jnp.ones((3, 3, 64, 64))
lowered = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w)
def program(options):
    text = lowered.compile(compiler_options=options).as_text()
    return [line for line in text.splitlines() if "metadata" not in line and not line.startswith("HloModule")]
print(json.dumps({"default": program(None), "options": program(cpu_backend.XLA_CONVOLUTIONS_OPTIONS)}))
"""


def _programs(xla_flags: str) -> dict:
    env = {**cli_env(1), "XLA_FLAGS": xla_flags}
    done = subprocess.run([sys.executable, "-c", _PROGRAMS], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_per_compilation_options_give_the_flags_program():
    """XLA_CONVOLUTIONS_OPTIONS, with no flag set, compiles what XLA_CONVOLUTIONS compiles, to the byte; and
    the choice is real on this jaxlib (without either, the convolutions go elsewhere)."""
    flagged = _programs(CONVOLUTIONS)["default"]
    unflagged = _programs("")
    assert unflagged["options"] == flagged
    assert unflagged["default"] != flagged
