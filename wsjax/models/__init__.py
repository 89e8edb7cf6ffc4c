"""Models with injected ``conv`` and ``norm``: the reference VGG16 and a CIFAR ResNet-18."""

from wsjax.models.norms import NORMS, GroupNorm, norm_layer
from wsjax.models.resnet import BasicBlock, ResNet, ResNet18
from wsjax.models.vgg import VGG, VGG16, VGG16_STAGES, VGG16Narrow, pad_to_multiple

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
    "norm_layer",
    "pad_to_multiple",
]
