"""The study's grid: the normalizations it compares and the images per replica it tries each at."""

from __future__ import annotations

# name -> (conv, norm) config values.
NORMALIZATIONS = {
    "BN": ("plain", "bn"),
    "BN+WS": ("ws", "bn"),
    "BCN": ("plain", "bcn"),
    "BCN+WS": ("ws", "bcn"),
    "GN": ("plain", "gn"),
    "GN+WS": ("ws", "gn"),
    "none": ("plain", "none"),  # plain convs, no normalization: the floor
}
# No batch statistics: each example's forward pass ignores the rest of the batch, so how the global batch is
# split over replicas cannot change the training (WS acts on weights only).
BATCH_FREE = frozenset({"GN", "GN+WS", "none"})
PER_DEVICE_BATCHES = (1, 2, 4, 8, 32)
