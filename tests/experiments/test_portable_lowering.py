"""What an accelerator would get, checked on a CPU host: every config's training step lowers for CUDA and TPU
(``jax.export``), and carries XLA's convolutions only, none of the CPU's shifted-matmul path."""

import dataclasses
import importlib
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from experiments.trainer import model_factory, optim, steps

CONFIGS = sorted(
    p.stem
    for p in (pathlib.Path(steps.__file__).parents[1] / "configs").glob("*.py")
    if p.stem
    not in ("__init__", "imagenet")  # imagenet.py is the recipe the imagenet_* configs call
)


def _config(name):
    return importlib.import_module(f"experiments.configs.{name}").get_config()


def _step_module(name, platforms):
    """The config's training step, exported for ``platforms`` from abstract inputs (nothing is computed)."""
    config = _config(name)
    # The ResNeXt's AvgPool2d(7) head needs ImageNet's 224; the rest lower at CIFAR's size.
    side = 224 if "resnext" in config.model else 32
    model = model_factory.build_model(config, 10, None)
    mesh = Mesh(np.array(jax.devices()[:1]), (steps.AXIS,))
    schedule = optim.learning_rate_schedule(config, 10, 100)
    state = jax.eval_shape(
        lambda: steps.create_train_state(
            model, optim.make_optimizer(config, schedule), (side, side, 3), config.seed
        )
    )
    cfg = dataclasses.replace(
        steps.StepConfig.from_config(config, per_replica_batch=2, steps_per_epoch=1),
        replicas_per_device=1,
        pool_replicas=False,
    )
    images = jax.ShapeDtypeStruct((1, 2, side, side, 3), jnp.uint8)
    labels = jax.ShapeDtypeStruct((1, 2), jnp.int32)
    return jax.export.export(steps.make_train_step(mesh, cfg), platforms=platforms)(
        state, images, labels
    ).mlir_module()


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_every_configs_step_lowers_for_cuda_and_tpu_with_xla_convolutions_only(name):
    text = _step_module(name, ["cuda", "tpu"])
    assert "stablehlo.convolution" in text
    assert "small_map_conv" not in text, (
        "the CPU's shifted-matmul path reached an accelerator's program"
    )


@pytest.mark.slow
def test_the_vgg16_ws_bcn_step_takes_the_cpu_path_on_the_cpu_only():
    """The quick recipe's VGG16 (WS + BCN) has 2x2 maps in its last stage at 32x32: the CPU's program takes
    the shifted matmuls there, a CUDA program from the same host does not."""
    assert "small_map_conv" in _step_module("quick", ["cpu"])
    cuda = _step_module("quick", ["cuda"])
    assert "small_map_conv" not in cuda and "stablehlo.convolution" in cuda
