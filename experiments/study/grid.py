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
SEEDS = (0, 1, 2)  # the CPU study's
TRAIN_EXAMPLES = 60_000  # the study's dataset, Fashion-MNIST: its training split (an epoch)

# The accelerator's study (configs/microbatch_deep.py, the suite's `study` part): the paper's three claims and
# the floor, at the ends of the batch range, with seeds enough for paired differences. The batch-free
# normalizations run at 32 only: in the CPU study their b = 1 and b = 32 cells were one training for GN and
# none, and 0.09-0.23 points apart for GN+WS (the same maths in another order), well below the effects studied.
DEEP_NORMALIZATIONS = ("BN", "BN+WS", "BCN+WS", "GN+WS", "none")
DEEP_PER_DEVICE_BATCHES = (1, 32)
DEEP_BATCH_FREE_BATCHES = (32,)
DEEP_SEEDS = (0, 1, 2, 3, 4)
