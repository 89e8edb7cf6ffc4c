"""wsjax.standardize and wsjax.scaled_standardize against the NumPy references."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wsjax
from tests import reference

# Flax kernel layouts: conv 1-D/2-D/3-D, depthwise (in/groups = 1), 1x1x1xC, Dense, ConvTranspose.
SHAPES = {
    "conv1d": (5, 4, 6),
    "conv2d": (3, 3, 8, 16),
    "conv3d": (3, 2, 3, 4, 5),
    "depthwise": (3, 3, 1, 12),
    "pointwise_1x1x1": (1, 1, 1, 7, 3),
    "dense": (20, 10),
    "single_input_3d": (2, 1, 1, 1, 4),
}


def _kernel(shape, seed=0, dtype=jnp.float32, offset=0.0):
    return (jax.random.normal(jax.random.key(seed), shape) * 0.3 + offset).astype(dtype)


def _reference(w, s: wsjax.Standardization):
    return reference.standardize(w, s.eps, 1 if s.unbiased else 0, s.eps_outside_sqrt)


@pytest.mark.parametrize("name", SHAPES)
@pytest.mark.parametrize("preset", list(wsjax.PRESETS))
def test_presets_match_numpy(name, preset):
    s = wsjax.PRESETS[preset]
    w = _kernel(SHAPES[name], offset=0.5)
    got = jax.jit(lambda w: wsjax.standardize(w, s))(w)
    np.testing.assert_allclose(got, _reference(w, s), rtol=2e-5, atol=2e-6)
    np.testing.assert_array_equal(jax.jit(s.kernel)(w), got)


@pytest.mark.parametrize("preset", list(wsjax.PRESETS))
def test_moments_in_the_presets_own_sense(preset):
    s = wsjax.PRESETS[preset]
    w = _kernel((3, 3, 16, 8), offset=-2.0)
    flat = np.asarray(wsjax.standardize(w, s), np.float64).reshape(-1, 8)
    np.testing.assert_allclose(flat.mean(axis=0), 0.0, atol=1e-6)
    ddof = 1 if s.unbiased else 0
    # eps shifts the variance by a relative ~eps/var; 1e-4 covers eps=1e-5 at var ~0.09.
    np.testing.assert_allclose(flat.var(axis=0, ddof=ddof), 1.0, rtol=3e-4)


def test_default_is_the_pytorch_reference():
    w = _kernel((3, 3, 4, 6))
    assert wsjax.Standardization() == wsjax.PRESETS["pytorch"]
    np.testing.assert_array_equal(wsjax.standardize(w), wsjax.standardize(w, "pytorch"))
    np.testing.assert_allclose(
        wsjax.standardize(w), reference.standardize(w, 1e-5, 1), rtol=2e-5, atol=2e-6
    )


def test_presets_really_differ():
    w = _kernel((3, 3, 4, 6))
    outs = [np.asarray(wsjax.standardize(w, s)) for s in wsjax.PRESETS.values()]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert not np.allclose(outs[i], outs[j], rtol=0, atol=1e-7)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_statistics_in_float32(dtype):
    w = _kernel((3, 3, 64, 8), dtype=dtype, offset=3.0)  # large mean: bf16 statistics would lose it
    got = wsjax.standardize(w)
    assert got.dtype == dtype
    want = reference.standardize(np.asarray(w, np.float64), 1e-5, 1)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-2, atol=1e-2)
    # Same values as float32 statistics, rounded once at the end.
    np.testing.assert_array_equal(got, wsjax.standardize(w.astype(jnp.float32)).astype(dtype))


def _enable_x64():
    """x64 mode within a ``with``: ``jax.enable_x64`` from JAX 0.8 on, ``jax.experimental``'s before."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # removed in JAX 0.10

    return enable_x64(True)


def test_float64_stays_float64():
    with _enable_x64():
        w = jnp.asarray(np.random.default_rng(0).normal(size=(3, 3, 2, 4)))
        got = wsjax.standardize(w)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, reference.standardize(w, 1e-5, 1), rtol=1e-12)


def test_constant_kernel_gives_finite_zeros():
    w = jnp.full((3, 3, 4, 2), 0.7)
    for s in wsjax.PRESETS.values():
        out = wsjax.standardize(w, s)
        assert np.all(np.isfinite(out))
        # The float32 mean of 0.7s is off by a few roundings (~2e-7); a tiny eps amplifies that by
        # 1/sqrt(eps) (1/eps outside the root), exactly as in the reference implementations.
        amplification = 1 / s.eps if s.eps_outside_sqrt else 1 / np.sqrt(s.eps)
        np.testing.assert_allclose(out, 0.0, atol=5e-7 * amplification)
    out = wsjax.scaled_standardize(w, jnp.ones(2))  # eps = 1e-4 floors var * fan_in
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, 0.0, atol=5e-7 / np.sqrt(1e-4))


def test_constant_kernel_gradient_is_finite():
    grad = jax.grad(lambda w: jnp.sum(wsjax.standardize(w) * jnp.arange(2.0).reshape(1, 1, 1, 2)))(
        jnp.ones((3, 3, 4, 2))
    )
    assert np.all(np.isfinite(grad))


def test_gradient_matches_finite_differences():
    w = _kernel((3, 4, 5), seed=3)
    probe = _kernel((3, 4, 5), seed=4)
    loss = lambda w: jnp.sum(wsjax.standardize(w) * probe)
    grad = jax.grad(loss)(w)
    # Central differences against the float64 reference.
    ref_loss = lambda w: float(
        np.sum(reference.standardize(w, 1e-5, 1) * np.asarray(probe, np.float64))
    )
    w64 = np.asarray(w, np.float64)
    rng = np.random.default_rng(0)
    for _ in range(5):
        idx = tuple(rng.integers(0, s) for s in w.shape)
        bump = np.zeros_like(w64)
        bump[idx] = 1e-6
        numeric = (ref_loss(w64 + bump) - ref_loss(w64 - bump)) / 2e-6
        np.testing.assert_allclose(grad[idx], numeric, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", SHAPES)
def test_scaled_standardize_matches_numpy(name):
    w = _kernel(SHAPES[name], offset=0.2)
    gain = jax.random.uniform(jax.random.key(5), (w.shape[-1],), minval=0.5, maxval=2.0)
    np.testing.assert_allclose(
        jax.jit(wsjax.scaled_standardize)(w, gain),
        reference.scaled_standardize(w, gain, 1e-4),
        rtol=2e-5,
        atol=2e-6,
    )


@pytest.mark.parametrize("name", SHAPES)
def test_scaled_standardize_timm_form_matches_numpy(name):
    w = _kernel(SHAPES[name], offset=0.2)
    gain = jax.random.uniform(jax.random.key(5), (w.shape[-1],), minval=0.5, maxval=2.0)
    np.testing.assert_allclose(
        jax.jit(wsjax.scaled_standardize, static_argnames="form")(w, gain, form="timm"),
        reference.scaled_standardize_timm(w, gain, 1e-6),  # None: timm's own default eps
        rtol=2e-5,
        atol=2e-6,
    )


def test_scaled_standardize_forms_differ_on_a_kernel_of_small_variance():
    # std 1e-3: var = 1e-6, timm's eps, so timm's sqrt(var + eps) is about sqrt(2) std, while NFNets'
    # max(n var, eps) is n var (eps only floors it): the forms, each equal to its own reference, disagree.
    w = _kernel((3, 3, 16, 8)) * (1e-3 / 0.3)
    gain = jax.random.uniform(jax.random.key(5), (8,), minval=0.5, maxval=2.0)
    nfnet = wsjax.scaled_standardize(w, gain, eps=1e-6, form="nfnet")
    timm = wsjax.scaled_standardize(w, gain, eps=1e-6, form="timm")
    np.testing.assert_allclose(
        nfnet, reference.scaled_standardize(w, gain, 1e-6), rtol=2e-5, atol=2e-6
    )
    np.testing.assert_allclose(
        timm, reference.scaled_standardize_timm(w, gain, 1e-6), rtol=2e-5, atol=2e-6
    )
    assert np.max(np.abs(np.asarray(nfnet) - np.asarray(timm))) > 0.1 * np.max(np.abs(nfnet))
    # Each form's default eps is its source's: 1e-4 for NFNets, 1e-6 for timm.
    np.testing.assert_array_equal(wsjax.scaled_standardize(w, gain, form="timm"), timm)
    np.testing.assert_allclose(
        wsjax.scaled_standardize(w, gain),
        reference.scaled_standardize(w, gain, 1e-4),
        rtol=2e-5,
        atol=2e-6,
    )


def test_scaled_standardize_unknown_form_is_rejected():
    with pytest.raises(ValueError, match="form must be one of"):
        wsjax.scaled_standardize(jnp.ones((3, 3)), jnp.ones(3), form="haiku")


def test_scaled_standardize_unit_gain_has_unit_fan_in_variance():
    w = _kernel((3, 3, 32, 4))
    flat = np.asarray(wsjax.scaled_standardize(w, jnp.ones(4)), np.float64).reshape(-1, 4)
    np.testing.assert_allclose(flat.var(axis=0) * flat.shape[0], 1.0, rtol=1e-4)


@pytest.mark.parametrize(
    "fn", [wsjax.standardize, lambda w, eps=1e-4: wsjax.scaled_standardize(w, jnp.ones(1), eps)]
)
def test_rank_below_two_is_rejected(fn):
    with pytest.raises(ValueError, match="rank >= 2"):
        fn(jnp.ones((5,)))
    with pytest.raises(ValueError, match="rank >= 2"):
        fn(jnp.ones(()))


def test_negative_eps_is_rejected():
    with pytest.raises(ValueError, match="eps must be >= 0"):
        wsjax.standardize(jnp.ones((3, 3)), wsjax.Standardization(eps=-1e-5))
    with pytest.raises(ValueError, match="eps must be >= 0"):
        wsjax.scaled_standardize(jnp.ones((3, 3)), jnp.ones(3), eps=-1.0)


def test_unbiased_over_one_entry_is_rejected():
    with pytest.raises(ValueError, match=r"Standardization\(unbiased=False\)"):
        wsjax.standardize(jnp.ones((1, 1, 1, 4)))
    biased = wsjax.Standardization(unbiased=False)
    out = wsjax.standardize(jnp.ones((1, 1, 1, 4)), biased)  # biased: finite zeros
    np.testing.assert_array_equal(out, 0.0)


@pytest.mark.parametrize("shape", [(3,), (1, 3), (4, 1)])
def test_gain_of_the_wrong_shape_is_rejected(shape):
    with pytest.raises(ValueError, match=r"gain must have shape \(out_features,\)"):
        wsjax.scaled_standardize(jnp.ones((3, 3, 2, 4)), jnp.ones(shape))


def test_jit_does_not_recompile():
    f = jax.jit(wsjax.standardize)
    f(_kernel((3, 3, 4, 8), seed=0))
    f(_kernel((3, 3, 4, 8), seed=1))
    assert f._cache_size() == 1


def test_one_pass_statistics_survive_a_mean_far_larger_than_the_spread():
    """mean/std = 3,000: E[w²] - E[w]² in float32 would lose the variance entirely; the shifted pass does not."""
    w = _kernel((3, 3, 32, 4), offset=1000.0)
    want = reference.standardize(w, 1e-5, 1)
    np.testing.assert_allclose(wsjax.standardize(w), want, rtol=1e-3, atol=1e-3)


def test_gradient_ignores_the_shift():
    """The statistics' shift is stop-gradient'ed: the gradient must still be that of the exact formula."""
    w = _kernel((3, 3, 4, 3), offset=0.7)
    g = jax.random.normal(jax.random.key(9), w.shape)

    def exact(w):  # the two-pass formula, written out
        centered = w - jnp.mean(w, axis=(0, 1, 2), keepdims=True)
        var = jnp.sum(jnp.square(centered), axis=(0, 1, 2), keepdims=True) / (w[..., 0].size - 1)
        return centered * jax.lax.rsqrt(var + 1e-5)

    got = jax.grad(lambda w: jnp.sum(wsjax.standardize(w) * g))(w)
    want = jax.grad(lambda w: jnp.sum(exact(w) * g))(w)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_big_vision_preset_is_big_visions_formula():
    """big_vision models/bit.py, vit_jax's hybrid ResNet and the paper's TF snippet: biased std, + 1e-5."""
    w = _kernel((3, 3, 8, 5), offset=0.3)
    w64 = np.asarray(w, np.float64)
    axes = (0, 1, 2)
    centered = w64 - w64.mean(axis=axes)  # NumPy's std is the biased one, as jnp.std and tf.keras's
    want = centered / (centered.std(axis=axes) + 1e-5)
    assert wsjax.PRESETS["big_vision"] == wsjax.Standardization(1e-5, False, True)
    np.testing.assert_allclose(wsjax.standardize(w, "big_vision"), want, rtol=2e-5, atol=2e-6)


def test_a_standardization_is_said_one_way():
    """A preset name or a Standardization; a variant of a preset is dataclasses.replace of it."""
    w = _kernel((3, 3, 4, 6), offset=0.2)
    bit = wsjax.standardize(w, wsjax.PRESETS["bit"])
    np.testing.assert_array_equal(wsjax.standardize(w, "bit"), bit)
    np.testing.assert_array_equal(
        wsjax.standardize(w, wsjax.Standardization(eps=1e-10, unbiased=False)), bit
    )
    np.testing.assert_allclose(
        wsjax.standardize(w, dataclasses.replace(wsjax.PRESETS["bit"], eps=1e-3)),
        reference.standardize(w, 1e-3, 0),
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "value, spelling",
    [
        (1e-5, "wsjax.Standardization(eps=1e-05)"),  # once taken as the pytorch preset's eps
        (0, "wsjax.Standardization(eps=0)"),
        ({"eps": 1e-5, "unbiased": False}, "wsjax.Standardization(eps=1e-05, unbiased=False)"),
        (None, "standardization='bit' or wsjax.Standardization("),
        (True, "standardization='bit' or wsjax.Standardization("),
        (jnp.ones(3), "standardization='bit' or wsjax.Standardization("),
    ],
)
def test_anything_else_is_refused_with_the_right_spelling(value, spelling):
    for call in [
        lambda: wsjax.standardize(jnp.ones((3, 3)), value),
        lambda: wsjax.standardization_statistics(jnp.ones((3, 3)), value),
        lambda: wsjax.WSConv(6, (3, 3), standardization=value),
        lambda: wsjax.WSDense(6, standardization=value),
    ]:
        with pytest.raises(TypeError, match="must be a wsjax.PRESETS name") as error:
            call()
        assert spelling in str(error.value)


def test_the_keyword_form_and_the_mapping_form_are_gone():
    w = jnp.ones((3, 3))
    with pytest.raises(TypeError, match="unexpected keyword argument 'eps'"):
        wsjax.standardize(w, eps=1e-5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'unbiased'"):
        wsjax.standardization_statistics(w, unbiased=False)
    with pytest.raises(TypeError, match="must be a mapping"):
        wsjax.standardize(w, **wsjax.PRESETS["bit"])
    with pytest.raises(TypeError):
        wsjax.WSConv(6, (3, 3), eps=1e-5)
    assert not hasattr(wsjax, "StandardizeOptions")


def test_standardization_is_one_frozen_hashable_value():
    s = wsjax.Standardization(1e-3, unbiased=False)
    assert s == wsjax.Standardization(eps=1e-3, unbiased=False, eps_outside_sqrt=False)
    assert hash(s) == hash(wsjax.Standardization(1e-3, False, False))
    assert len(set(wsjax.PRESETS.values())) == len(wsjax.PRESETS)  # all different
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.eps = 1.0
    # Usable as a static argument: a new equal value does not recompile.
    f = jax.jit(lambda w, s: s.kernel(w), static_argnums=1)
    f(_kernel((3, 3, 2, 4)), wsjax.Standardization())
    f(_kernel((3, 3, 2, 4)), wsjax.Standardization(1e-5))
    assert f._cache_size() == 1


def test_standardization_statistics_method_matches_the_function():
    w = _kernel((3, 3, 8, 4), offset=0.1)
    for s in wsjax.PRESETS.values():
        mean, scale = s.statistics(w)
        want_mean, want_scale = wsjax.standardization_statistics(w, s)
        np.testing.assert_array_equal(mean, want_mean)
        np.testing.assert_array_equal(scale, want_scale)
        flat = (np.asarray(w, np.float64).reshape(-1, 4) - np.asarray(mean)) * np.asarray(scale)
        np.testing.assert_allclose(flat.reshape(w.shape), _reference(w, s), rtol=1e-4, atol=1e-5)


def test_bad_conventions_are_refused_when_built():
    with pytest.raises(ValueError, match="eps must be >= 0"):
        wsjax.Standardization(eps=-1.0)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        wsjax.Standardization(eps=float("nan"))
    with pytest.raises(TypeError, match="unbiased must be a bool"):
        wsjax.Standardization(unbiased="no")
    with pytest.raises(
        ValueError, match="unknown standardization 'pytroch'; choose one of pytorch"
    ):
        wsjax.standardize(jnp.ones((3, 3)), "pytroch")


def test_standardization_is_named_in_the_compiled_program():
    """jax.named_scope: profiles and HLO dumps name the standardization ops."""
    w = _kernel((3, 3, 4, 8))
    for fn, scope in [
        (wsjax.standardize, "weight_standardization"),
        (wsjax.standardization_statistics, "weight_standardization_statistics"),
        (lambda w: wsjax.scaled_standardize(w, jnp.ones(8)), "scaled_weight_standardization"),
    ]:
        assert f"/{scope}/" in jax.jit(fn).lower(w).compile().as_text()
