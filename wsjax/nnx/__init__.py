"""Flax NNX mirrors of every wsjax module: same maths, same parameter names as the Linen versions."""

from wsjax.nnx._channel_norm import ChannelNorm
from wsjax.nnx._folding import fold_weight_standardization
from wsjax.nnx._layers import ScaledWSConv, WSConv, WSConvTranspose, WSDense
from wsjax.nnx._normalization import BatchChannelNorm, EstimatedBatchNorm
from wsjax.nnx._standardize_convs import standardize_convs

__all__ = [
    "BatchChannelNorm",
    "ChannelNorm",
    "EstimatedBatchNorm",
    "ScaledWSConv",
    "WSConv",
    "WSConvTranspose",
    "WSDense",
    "fold_weight_standardization",
    "standardize_convs",
]
