"""``wsjax.pretrained.from_official``: the paper's GN+WS and BCN+WS checkpoints, against a NumPy reference."""

import functools

import jax
import numpy as np
import pytest

from tests.official_reference import Spec, forward, shapes, state_dict
from wsjax.models import ImageNetResNet
from wsjax.pretrained import WeightsMismatchError, _official, from_official

# Tiny networks of the official layout. GN+WS: GN has 32 groups there, so widths of 32; two blocks in the
# first stage (a projection, then an identity shortcut), a strided projection in the second.
TINY_GN = Spec(stage_sizes=(2, 1), planes=(32, 32), stem=32, num_classes=5, kind="gn")
# BCN+WS: the groups come from the checkpoint (4 here); a ResNeXt (4 groups of 4 and 8 channels) with the
# official head's AvgPool2d, here of 2 (the last map is 3x3 on 23x20 images).
TINY_BCN = Spec(
    stage_sizes=(1, 1),
    planes=(8, 16),
    stem=32,
    base_width=32,
    cardinality=4,
    num_classes=5,
    groups=4,
    kind="bcn",
)


def _tiny_arch(monkeypatch, spec, avg_pool_window=None):
    arch = functools.partial(
        ImageNetResNet,
        stage_sizes=spec.stage_sizes,
        planes=spec.planes,
        stem_features=spec.stem,
        base_width=spec.base_width,
        cardinality=spec.cardinality,
        avg_pool_window=avg_pool_window,
    )
    monkeypatch.setitem(_official.ARCHS, "tiny", arch)
    return "tiny"


@pytest.mark.parametrize(
    ("spec", "avg_pool_window", "side"),
    [(TINY_GN, None, (23, 20)), (TINY_BCN, 2, (23, 20))],
    ids=["gn_ws-resnet", "bcn_ws-resnext"],
)
def test_logits_equal_the_numpy_reference_of_the_official_network(
    monkeypatch, spec, avg_pool_window, side
):
    """WS in each code's convention, GN / BCN with running statistics, odd sizes (the stem's and pool's
    symmetric padding), stride on the 3x3, grouped 3x3, both shortcuts, the head's pool."""
    arch = _tiny_arch(monkeypatch, spec, avg_pool_window)
    sd = state_dict(spec, seed=3)
    x = np.random.default_rng(4).standard_normal((2, 3, *side)).astype(np.float32)  # NCHW
    want = forward(sd, spec, x, avg_pool_window=avg_pool_window)
    model, variables = from_official(sd, arch)
    assert ("batch_stats" in variables) == (spec.kind == "bcn")
    got = jax.jit(functools.partial(model.apply, train=False))(variables, x.transpose(0, 2, 3, 1))
    assert got.shape == (2, 5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def _to_official(variables, kind):
    """wsjax variables -> the official state dict, written from the official names (not wsjax's mapping)."""
    sd = {}
    for collection, tree in variables.items():
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            keys = [p.key for p in path]
            a = np.asarray(leaf)
            names = []
            for k in keys[:-1]:
                if k.startswith("layer"):
                    names.append(k.replace("_", "."))
                elif k.startswith("downsample"):
                    names.append(
                        {"downsample_conv": "downsample.0", "downsample_norm": "downsample.1"}[k]
                    )
                elif k.startswith("norm"):
                    names.append(k.replace("norm", "bn"))
                elif k == "batch_norm":
                    names.append("pbn")
                elif k != "channel_norm":
                    names.append(k)
            leaf_name = {"kernel": "weight", "scale": "weight", "bias": "bias"}.get(keys[-1])
            if collection == "batch_stats":
                leaf_name = {"mean": "running_mean", "var": "running_var"}[keys[-1]]
            if a.ndim == 4:
                a = a.transpose(3, 2, 0, 1)  # HWIO -> OIHW
            elif a.ndim == 2:
                a = a.T
            elif "channel_norm" in keys:
                a = a[None, :, None]
            sd[".".join([*names, leaf_name])] = a
    if kind == "bcn":  # PyTorch's BatchNorm2d saves a counter too
        for name in [n for n in sd if n.endswith("pbn.running_var")]:
            sd[name.replace("running_var", "num_batches_tracked")] = np.array(7, np.int64)
    return sd


@pytest.mark.parametrize(
    ("arch", "kind"), [("resnext50_32x4d", "gn"), ("resnet50", "bcn")], ids=["gn_ws", "bcn_ws"]
)
def test_round_trip_through_the_official_names(arch, kind):
    """Random variables -> official state dict (DataParallel's names, in a checkpoint dict) -> the same."""
    template, _ = from_official(
        {k: np.broadcast_to(np.float32(0), s) for k, s in shapes(_spec(arch, kind)).items()}, arch
    )
    abstract = jax.eval_shape(
        lambda: template.init(jax.random.key(0), np.zeros((1, 224, 224, 3), np.float32), False)
    )
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda a: rng.standard_normal(a.shape, np.float32), abstract)
    checkpoint = {
        "epoch": 90,
        "state_dict": {f"module.{k}": v for k, v in _to_official(variables, kind).items()},
    }
    model, loaded = from_official(checkpoint, arch)
    assert model.num_classes == 1000
    assert (
        model.conv.keywords == template.conv.keywords
        and model.norm.keywords == template.norm.keywords
    )
    assert jax.tree.structure(loaded) == jax.tree.structure(variables)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables), strict=True):
        np.testing.assert_array_equal(a, b)


def _spec(arch, kind="gn"):
    resnext = {"base_width": 4, "cardinality": 32} if arch.startswith("resnext") else {}
    depth = {"stage_sizes": (3, 4, 23, 3)} if "101" in arch else {}
    return Spec(kind=kind, **resnext, **depth)


def _zeros(spec):
    """A state dict of the right names and shapes, without memory (the loader checks before it copies)."""
    return {
        k: np.broadcast_to(np.int64(0) if k.endswith("tracked") else np.float32(0), s)
        for k, s in shapes(spec).items()
    }


def test_each_checkpoint_gets_its_own_conventions():
    gn, _ = from_official(_zeros(_spec("resnet50")), "resnet50")
    bcn, variables = from_official(_zeros(_spec("resnet50", "bcn")), "resnet50")
    assert gn.conv.keywords["standardization"] == "qiao"  # (w - mean) / (std + 1e-5)
    assert bcn.conv.keywords["standardization"] == "pytorch"  # (w - mean) / sqrt(var + 1e-5)
    assert bcn.norm.keywords["estimate"] is False and bcn.norm.keywords["num_groups"] == 32
    assert variables["params"]["norm1"]["channel_norm"]["scale"].shape == (32,)
    assert variables["batch_stats"]["layer4_2"]["norm3"]["batch_norm"]["var"].shape == (2048,)


def test_another_head_starts_at_zero_and_the_old_one_is_checked_not_used(monkeypatch):
    arch = _tiny_arch(monkeypatch, TINY_GN)
    sd = state_dict(TINY_GN)
    same_model, same = from_official(sd, arch)
    model, variables = from_official(sd, arch, num_classes=10)
    assert same_model.num_classes == 5 and model.num_classes == 10
    fc = variables["params"].pop("fc")
    assert fc["kernel"].shape == (128, 10) and not np.any(fc["kernel"]) and not np.any(fc["bias"])
    same["params"].pop("fc")
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(same), strict=True):
        np.testing.assert_array_equal(a, b)
    sd["fc.weight"] = np.zeros(
        (5, 64), np.float32
    )  # the checkpoint's head must still fit the features
    with pytest.raises(
        WeightsMismatchError, match=r"'fc.weight' has shape \(5, 64\).*needs \(5, 128\)"
    ):
        from_official(sd, arch, num_classes=10)


def test_errors_name_the_first_offending_key():
    sd = _zeros(_spec("resnet50"))
    missing = {k: v for k, v in sd.items() if k != "layer2.1.conv2.weight"}
    with pytest.raises(
        WeightsMismatchError, match=r"official resnet50 weights have no 'layer2.1.conv2.weight'"
    ):
        from_official(missing, "resnet50")
    with pytest.raises(WeightsMismatchError, match=r"1 name\(s\) .* first 'layer5.0.conv1.weight'"):
        from_official({**sd, "layer5.0.conv1.weight": np.zeros((1,))}, "resnet50")
    # A ResNeXt-50 32x8d is not the official 32x4d: its first bottleneck is twice as wide.
    with pytest.raises(
        WeightsMismatchError,
        match=r"'layer1.0.conv1.weight' has shape \(256, 64, 1, 1\), but the architecture needs \(128, 64, 1, 1\)",
    ):
        from_official(_zeros(Spec(base_width=8, cardinality=32)), "resnext50_32x4d")
    with pytest.raises(WeightsMismatchError, match=r"weights have no 'layer3.10.conv1.weight'"):
        from_official(sd, "resnet101")  # a ResNet-50 checkpoint is not a ResNet-101
    bcn = _zeros(_spec("resnet50", "bcn"))
    bcn["bn1.weight"] = np.zeros((32,), np.float32)
    with pytest.raises(
        WeightsMismatchError, match=r"'bn1.weight' has shape \(32,\).*\(1, groups, 1\)"
    ):
        from_official(bcn, "resnet50")
    with pytest.raises(
        ValueError, match="unknown arch 'resnet18'; choose one of resnet50, resnet101"
    ):
        from_official(sd, "resnet18")
    with pytest.raises(ValueError, match="num_classes must be a positive int or None, got 0"):
        from_official(sd, "resnet50", num_classes=0)
