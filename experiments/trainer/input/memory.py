"""The memory path (``experiments/trainer/input/data.py``) behind the same interface as the streaming one (``stream.py``).

The training data sits on the devices and each step draws its batch there, so the step's arguments are the
same arrays every time and the data position is a function of the step: nothing to save in a checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax.numpy as jnp

from experiments.trainer.input import data


class MemoryInput:
    def __init__(self, dataset: data.Dataset, eval_per_replica: int):
        self.dataset, self.eval_per_replica = dataset, eval_per_replica
        self.position = None  # the data order is a function of (seed, step)

    def train_args(self) -> tuple:
        return self.dataset.train.images, self.dataset.train.labels

    def eval_batches(self) -> Iterator[tuple]:
        test = self.dataset.test
        for i in range(test.per_replica // self.eval_per_replica):
            yield test.images, test.labels, test.mask, jnp.int32(i)

    def restore(self, position: str) -> None:
        del position

    def close(self) -> None:
        pass
