"""A kernel given in another layout than its source's: every loader's error names the shape it needs, in the
source's own layout (OIHW for PyTorch and timm, HWIO for BiT), not one derived from the misread kernel."""

import numpy as np
import pytest

from tests.helpers import flax_to_bit, flax_to_timm, shapes_only
from tests.official_reference import Spec, shapes
from wsjax.models import resnetv2
from wsjax.pretrained import WeightsMismatchError, from_bit, from_official, from_timm


def _timm_weights():
    return flax_to_timm(shapes_only(resnetv2(50, 1), 32))


def test_timm_stem_in_flax_layout_names_timms_shape():
    weights = _timm_weights()
    weights["stem.conv.weight"] = np.zeros((7, 7, 3, 64), np.float32)  # HWIO, not timm's OIHW
    with pytest.raises(
        WeightsMismatchError,
        match=r"'stem.conv.weight' has shape \(7, 7, 3, 64\).*needs \(64, 3, 7, 7\)",
    ):
        from_timm(weights, "resnetv2_50x1_bit")


def test_timm_stem_of_other_input_channels_is_still_read():
    weights = _timm_weights()
    weights["stem.conv.weight"] = np.zeros((64, 1, 7, 7), np.float32)  # grayscale input, OIHW
    _, variables = from_timm(weights, "resnetv2_50x1_bit")
    assert variables["params"]["root_conv"]["kernel"].shape == (7, 7, 1, 64)


def test_bit_root_in_pytorch_layout_names_bits_shape():
    weights = flax_to_bit(shapes_only(resnetv2(50, 1), 32))
    weights["resnet/root_block/standardized_conv2d/kernel"] = np.zeros((64, 3, 7, 7), np.float32)
    with pytest.raises(
        WeightsMismatchError, match=r"has shape \(64, 3, 7, 7\).*HWIO.*\(7, 7, 3, 64\)"
    ):
        from_bit(weights)


def test_official_stem_in_flax_layout_names_the_official_shape():
    weights = {
        k: np.broadcast_to(np.int64(0) if k.endswith("tracked") else np.float32(0), s)
        for k, s in shapes(Spec(kind="gn")).items()
    }
    weights["conv1.weight"] = np.zeros((7, 7, 3, 64), np.float32)
    with pytest.raises(
        WeightsMismatchError,
        match=r"'conv1.weight' has shape \(7, 7, 3, 64\).*needs \(64, 3, 7, 7\)",
    ):
        from_official(weights, "resnet50")
