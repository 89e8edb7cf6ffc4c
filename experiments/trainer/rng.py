"""The run's random streams, each derived from the seed's key by ``fold_in`` with its own number.

One base key per run (``TrainState.rng``, from ``config.seed``) feeds three independent streams: the data
order (a permutation of each replica's shard per epoch), the augmentation (crop offsets and flips per step and
replica) and the parameter initialization. Everything that draws from them (training, the benchmark) calls
these functions, so the numbers below exist only here and a resumed run draws exactly what an uninterrupted
one does.
"""

from __future__ import annotations

import jax

DATA_ORDER = 0
AUGMENTATION = 1
INIT = 2


def data_order_key(rng: jax.Array, epoch: jax.Array, replica: jax.Array) -> jax.Array:
    """The key of replica ``replica``'s permutation of its shard in ``epoch``."""
    return jax.random.fold_in(
        jax.random.fold_in(jax.random.fold_in(rng, DATA_ORDER), epoch), replica
    )


def augmentation_key(rng: jax.Array, step: jax.Array, replica: jax.Array) -> jax.Array:
    """The key of replica ``replica``'s augmentation at ``step``."""
    return jax.random.fold_in(
        jax.random.fold_in(jax.random.fold_in(rng, AUGMENTATION), step), replica
    )


def init_key(rng: jax.Array) -> jax.Array:
    """The key of the parameter initialization."""
    return jax.random.fold_in(rng, INIT)
