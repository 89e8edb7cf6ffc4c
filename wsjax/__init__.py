"""wsjax: Weight Standardization and Batch-Channel Normalization for JAX/Flax.

Qiao, Wang, Liu, Shen, Yuille. "Micro-Batch Training with Batch-Channel Normalization and Weight
Standardization", arXiv 1903.10520. Linen modules here; NNX mirrors in ``wsjax.nnx``; models in
``wsjax.models``.
"""

from wsjax.folding import fold_weight_standardization
from wsjax.layers import ScaledWSConv, WSConv, WSConvTranspose, WSDense
from wsjax.normalization import BatchChannelNorm, ChannelNorm, EstimatedBatchNorm
from wsjax.small_map_conv import conv_general_dilated
from wsjax.standardization import (
    PRESETS,
    StandardizeOptions,
    scaled_standardize,
    standardization_statistics,
    standardize,
)

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "BatchChannelNorm",
    "ChannelNorm",
    "EstimatedBatchNorm",
    "ScaledWSConv",
    "StandardizeOptions",
    "WSConv",
    "WSConvTranspose",
    "WSDense",
    "conv_general_dilated",
    "fold_weight_standardization",
    "scaled_standardize",
    "standardization_statistics",
    "standardize",
]
