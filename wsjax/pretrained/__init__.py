"""Pretrained weight-standardized networks, loaded from their published checkpoints.

Each loader takes a flat mapping of the source's parameter names to NumPy arrays and returns
``(model, variables)`` such that ``model.apply(variables, images_nhwc, train=False)`` gives the source
network's logits. wsjax never needs torch and never unpickles: convert a PyTorch state dict once with
``{k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}``.
"""

from wsjax.pretrained._bit import from_bit
from wsjax.pretrained._official import from_official
from wsjax.pretrained._timm import from_timm
from wsjax.pretrained._weights import WeightReader, WeightsMismatchError

__all__ = ["WeightReader", "WeightsMismatchError", "from_bit", "from_official", "from_timm"]
