"""A folded model exported to serialized StableHLO (jax.export) for the CPU, CUDA and TPU, reloaded and called
on the CPU: the outputs of ``apply``. The guide's export snippet is these lines."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import wsjax
from wsjax.models import VGG, norm_layer


def test_a_folded_model_round_trips_through_serialized_stablehlo():
    model = VGG(stages=((8,), (16,)), norm=norm_layer("bcn", num_groups=4))
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    variables = model.init(jax.random.key(1), x, train=False)
    folded = wsjax.fold_weight_standardization(model, variables, x, train=False)
    plain = model.clone(conv=nn.Conv)
    want = model.apply(variables, x, train=False)

    forward = jax.jit(lambda v, x: plain.apply(v, x, train=False))
    exported = jax.export.export(forward, platforms=["cpu", "cuda", "tpu"])(folded, x)
    blob = exported.serialize()  # bytes: a file for any of the three platforms
    restored = jax.export.deserialize(blob)

    assert restored.platforms == ("cpu", "cuda", "tpu")
    got = restored.call(folded, x)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    assert "weight_standardization" not in restored.mlir_module()  # folded: no statistics left
    assert jnp.asarray(got).shape == (2, 10)
