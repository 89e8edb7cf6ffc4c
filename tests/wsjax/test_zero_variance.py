"""Weight standardization at zero and tiny variance: finite, correct gradients for every preset, and the
forward pass bit for bit what it was.

A channel of equal entries (``kernel_init=zeros``, a pruned channel) has sigma = 0. The presets that add eps
to the standard deviation (``qiao``, ``big_vision``) meet ``sqrt``'s infinite derivative there; the true
derivative of ``(w - mean) / (sigma + eps)`` at such a channel is ``(I - 11^T / n) / eps``.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wsjax

PRESETS = list(wsjax.PRESETS)
SHAPE = (3, 3, 4, 3)  # channel 0 all zeros, channel 1 constant, channel 2 random
N = 3 * 3 * 4


def _kernel(spread=1.0):
    w = jax.random.normal(jax.random.key(0), SHAPE)
    return w.at[..., 0].set(0.0).at[..., 1].set(0.7).at[..., 2].multiply(spread)


WEIGHTS = jax.random.normal(jax.random.key(1), SHAPE)  # a loss that weighs every entry differently


def _old_forward(w, s: wsjax.Standardization):
    """The forward pass as it was written before the gradient fix: the same operations, plain sqrt."""
    from wsjax._moments import centered_and_sum_sq

    centered, sum_sq = centered_and_sum_sq(w)
    var = sum_sq / (N - 1 if s.unbiased else N)
    if s.eps_outside_sqrt:
        return (centered / (jnp.sqrt(var) + s.eps)).astype(w.dtype)
    return (centered * jax.lax.rsqrt(var + s.eps)).astype(w.dtype)


@pytest.mark.parametrize("preset", PRESETS)
def test_the_forward_pass_is_unchanged_bit_for_bit(preset):
    s = wsjax.PRESETS[preset]
    for w in (_kernel(), _kernel(1e-4)):
        new = jax.jit(lambda w, s=s: s.kernel(w))(w)
        old = jax.jit(lambda w, s=s: _old_forward(w, s))(w)
        np.testing.assert_array_equal(np.asarray(new), np.asarray(old))


@pytest.mark.parametrize("preset", PRESETS)
def test_gradients_are_finite_at_exactly_zero_variance(preset):
    s = wsjax.PRESETS[preset]
    grad = jax.grad(lambda w: jnp.sum(s.kernel(w) * WEIGHTS))(_kernel())
    assert np.all(np.isfinite(grad)), f"{preset}: {np.asarray(grad)[..., :2]}"
    if s.eps_outside_sqrt:
        # (I - 11^T / n) / eps applied to the loss's weights: the centred weights over eps.
        for c in (0, 1):
            want = (WEIGHTS[..., c] - WEIGHTS[..., c].mean()) / s.eps
            np.testing.assert_allclose(grad[..., c], want, rtol=1e-5, atol=1e-6 / s.eps)


def _float64_gradient(w, s: wsjax.Standardization):
    """The gradient from the equation in float64, with plain sqrt (fine where sigma > 0)."""
    with jax.enable_x64(True):

        def f(w):
            c = w - w.mean(axis=(0, 1, 2), keepdims=True)
            var = jnp.sum(c**2, axis=(0, 1, 2), keepdims=True) / (N - 1 if s.unbiased else N)
            denom = jnp.sqrt(var) + s.eps if s.eps_outside_sqrt else jnp.sqrt(var + s.eps)
            return jnp.sum(c / denom * jnp.asarray(WEIGHTS, jnp.float64))

        return np.asarray(jax.grad(f)(jnp.asarray(w, jnp.float64)))


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("spread", [1e-2, 1e-3])
def test_gradients_at_small_variance_match_float64(preset, spread):
    s = wsjax.PRESETS[preset]
    w = jax.random.normal(jax.random.key(2), SHAPE) * spread
    got = np.asarray(jax.grad(lambda w: jnp.sum(s.kernel(w) * WEIGHTS))(w))
    want = _float64_gradient(np.asarray(w, np.float64), s)
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())


@pytest.mark.parametrize("preset", ["qiao", "big_vision"])
@pytest.mark.parametrize("apply_to", ["kernel", "output"])
def test_a_zero_initialized_layer_trains(preset, apply_to):
    """The case users meet: ``kernel_init=zeros`` (or a pruned channel) in a WS layer, either side."""
    layer = wsjax.WSConv(
        4, (3, 3), standardization=preset, kernel_init=nn.initializers.zeros, apply_to=apply_to
    )
    x = jax.random.normal(jax.random.key(3), (2, 6, 6, 3))
    params = layer.init(jax.random.key(0), x)
    grads = jax.grad(lambda p: jnp.sum(layer.apply(p, x) ** 2 + layer.apply(p, x)))(params)
    for leaf in jax.tree.leaves(grads):
        assert np.all(np.isfinite(leaf))
    assert np.abs(np.asarray(grads["params"]["kernel"])).max() > 0


@pytest.mark.parametrize("preset", PRESETS)
def test_the_statistics_gradient_is_finite_at_zero_variance(preset):
    s = wsjax.PRESETS[preset]
    grad = jax.grad(lambda w: jnp.sum(jnp.stack(s.statistics(w)) * jnp.arange(1.0, 4.0)[None]))(
        _kernel()
    )
    assert np.all(np.isfinite(grad))
