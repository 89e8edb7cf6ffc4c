"""What changes on an accelerator: the arithmetic of float32 convolutions, and replicas against CPU devices.

These run on whatever backend JAX picks: the CPU in CI, a GPU or TPU in the accelerator suite
(``experiments/bench/suite/runner.py``), where they check the library's numerics at the accelerator's own
precision and the replicas-equal-devices maths across backends.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import wsjax
from experiments.bench import peaks
from experiments.trainer import steps
from tests import reference
from wsjax.models import VGG, norm_layer

# Relative error ||out - ref|| / ||ref|| that each arithmetic stays under for a 3x3x64 convolution:
# float32 far under 1e-5; TF32 (10-bit mantissa) near 3e-4; bfloat16 operands between 1e-3 and 1e-2.
TOLERANCE = {"fp32": 1e-5, "bf16x6": 1e-5, "bf16x3": 1e-4, "tf32": 2e-3, "bf16": 1e-2}


def _arithmetic(setting: str) -> str:
    device = jax.devices()[0]
    capability = getattr(device, "compute_capability", None)
    return peaks.matmul_precision(device.platform, "float32", setting, capability) or "fp32"


def _relative_error(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _ws_conv_error(setting: str, apply_to: str) -> float:
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (4, 8, 8, 64))
    conv = wsjax.WSConv(96, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, apply_to=apply_to)
    params = conv.init(kw, x)["params"]
    with jax.default_matmul_precision(setting):
        got = jax.jit(conv.apply)({"params": params}, x)
    w_hat = reference.standardize(params["kernel"])
    want = reference.conv_channels_last(x, w_hat, ((1, 1), (1, 1)))
    return _relative_error(got, want)


@pytest.mark.parametrize("apply_to", ["kernel", "output"])
@pytest.mark.parametrize("setting", ["highest", "default"])
def test_ws_conv_matches_float64_at_the_backends_precision(setting, apply_to):
    arithmetic = _arithmetic(setting)
    error = _ws_conv_error(setting, apply_to)
    assert error < TOLERANCE[arithmetic], f"{arithmetic}: relative error {error:.2e}"


def test_default_float32_precision_is_as_labelled():
    """MFU divides by the peak of the arithmetic ``peaks.matmul_precision`` names: check that it is the one
    XLA uses. Where it says TF32 (or one bfloat16 pass), default-precision convolutions must be visibly less
    exact than at 'highest'; where it says float32, as exact."""
    default, highest = _ws_conv_error("default", "kernel"), _ws_conv_error("highest", "kernel")
    if _arithmetic("default") in ("tf32", "bf16"):
        assert default > 10 * highest, (default, highest)
    else:
        assert default < 1e-5, default


def _train_state_and_data():
    model = VGG(stages=((8,), (16,)), norm=norm_layer("bcn", num_groups=4))
    state = steps.create_train_state(model, optax.sgd(0.1), (8, 8, 3), seed=0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16 * 2, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 16 * 2).astype(np.int32)
    cfg = steps.StepConfig(
        per_replica_batch=2, steps_per_epoch=2, crop_padding=2, flip=True, mean=(0.5,), std=(0.5,)
    )
    return jax.device_get(state), images, labels, cfg


def _three_steps(devices, replicas: int):
    state, images, labels, cfg = _train_state_and_data()
    mesh = Mesh(np.array(devices), (steps.AXIS,))
    shards = len(devices) * replicas
    put = lambda a: jax.device_put(
        a.reshape(shards, -1, *a.shape[1:]), NamedSharding(mesh, P(steps.AXIS))
    )
    train_step = steps.make_train_step(mesh, dataclasses.replace(cfg, replicas_per_device=replicas))
    state = jax.device_put(state, NamedSharding(mesh, P()))
    images, labels = put(images), put(labels)
    for _ in range(3):
        state, metrics = train_step(state, images, labels)
    return jax.device_get((state.params, state.batch_stats, metrics["loss"]))


@pytest.mark.slow
def test_replicas_on_this_backend_equal_cpu_devices():
    """8 vmapped replicas on the default device (a GPU in the accelerator suite) take the same three steps as
    8 CPU devices with one replica each: per-replica statistics, data order and gradient averaging agree
    across backends. Tolerance: float32 (at 'highest') with other reduction orders and conv algorithms."""
    cpus = jax.devices("cpu")
    if len(cpus) < 8:
        pytest.skip("needs 8 CPU devices (tests/conftest.py sets them)")
    with jax.default_matmul_precision("highest"):
        on_backend = _three_steps(jax.devices()[:1], replicas=8)
        on_cpus = _three_steps(cpus[:8], replicas=1)
    for a, b in zip(jax.tree.leaves(on_backend), jax.tree.leaves(on_cpus), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_bfloat16_step_tracks_float32():
    model = {
        dtype: VGG(stages=((8,), (16,)), norm=norm_layer("bcn", num_groups=4), dtype=dtype)
        for dtype in (jnp.float32, jnp.bfloat16)
    }
    x = jax.random.normal(jax.random.key(0), (8, 8, 8, 3))
    variables = model[jnp.float32].init(jax.random.key(1), x, train=False)
    outputs = {
        dtype: jax.jit(lambda v, x, m=m: m.apply(v, x, train=True, mutable=["batch_stats"])[0])(
            variables, x
        )
        for dtype, m in model.items()
    }
    assert outputs[jnp.bfloat16].dtype == jnp.float32  # logits come back in float32
    assert _relative_error(outputs[jnp.bfloat16], outputs[jnp.float32]) < 3e-2
