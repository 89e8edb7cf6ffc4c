"""Models with injected ``conv`` and ``norm``: the reference VGG16, a CIFAR ResNet-18, the paper's ImageNet
ResNet / ResNeXt, BiT's ResNetV2."""

from wsjax.models._imagenet_resnet import (
    OFFICIAL_CONV,
    OFFICIAL_NORM,
    Bottleneck,
    ImageNetResNet,
    ResNet50,
    ResNet101,
    ResNeXt50_32x4d,
    ResNeXt101_32x4d,
)
from wsjax.models._norms import NORMS, GroupNorm, norm_layer
from wsjax.models._resnet import BasicBlock, ResNet, ResNet18
from wsjax.models._resnetv2 import BIT_DEPTHS, PreActBottleneck, ResNetV2, resnetv2
from wsjax.models._vgg import (
    VGG,
    VGG16,
    VGG16_STAGES,
    VGG16Narrow,
    max_pool_2x2,
    pad_to_multiple,
)

__all__ = [
    "NORMS",
    "VGG",
    "VGG16",
    "VGG16_STAGES",
    "BasicBlock",
    "GroupNorm",
    "ResNet",
    "ResNet18",
    "VGG16Narrow",
    "max_pool_2x2",
    "norm_layer",
    "pad_to_multiple",
    # BiT
    "BIT_DEPTHS",
    "PreActBottleneck",
    "ResNetV2",
    "resnetv2",
    # the paper's ImageNet networks (official layout)
    "OFFICIAL_CONV",
    "OFFICIAL_NORM",
    "Bottleneck",
    "ImageNetResNet",
    "ResNet50",
    "ResNet101",
    "ResNeXt50_32x4d",
    "ResNeXt101_32x4d",
]
