"""wsjax: Weight Standardization and Batch-Channel Normalization for JAX/Flax.

Qiao, Wang, Liu, Shen, Yuille. "Micro-Batch Training with Batch-Channel Normalization and Weight
Standardization", arXiv 1903.10520. Weight Standardization computes a layer with, per output channel ``o``,

.. math::

   \\hat w_{\\cdot o} = \\frac{w_{\\cdot o} - \\mu_o}{\\sqrt{\\sigma_o^2 + \\epsilon}}

instead of its raw kernel ``w``. The Linen modules are here; NNX mirrors in :mod:`wsjax.nnx`; models in
:mod:`wsjax.models`; the CPU convolution in :mod:`wsjax.cpu`. Everything public is re-exported here; the
modules whose names start with an underscore are internal.
"""

from wsjax import cpu
from wsjax._channel_norm import ChannelNorm
from wsjax._folding import fold_weight_standardization
from wsjax._layers import ScaledWSConv, WSConv, WSConvTranspose, WSDense
from wsjax._normalization import BatchChannelNorm, EstimatedBatchNorm
from wsjax._output_standardization import APPLY_TO
from wsjax._scaled_standardization import scaled_standardize
from wsjax._standardization import (
    PRESETS,
    Standardization,
    standardization_statistics,
    standardize,
)
from wsjax._standardize_convs import StandardizedConvs, skip_head, standardize_convs

__version__ = "0.1.0"

__all__ = [
    "APPLY_TO",
    "PRESETS",
    "BatchChannelNorm",
    "ChannelNorm",
    "EstimatedBatchNorm",
    "ScaledWSConv",
    "Standardization",
    "StandardizedConvs",
    "WSConv",
    "WSConvTranspose",
    "WSDense",
    "cpu",
    "fold_weight_standardization",
    "scaled_standardize",
    "skip_head",
    "standardization_statistics",
    "standardize",
    "standardize_convs",
]
