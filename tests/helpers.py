"""Shared test helpers: tiny configs and access to the real Fashion-MNIST in ../shared."""

from __future__ import annotations

import pathlib

import pytest

from experiments.configs import default

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_TFDS = REPO.parent / "shared" / "tensorflow_datasets"
needs_fashion_mnist = pytest.mark.skipif(
    not (SHARED_TFDS / "fashion_mnist").exists(),
    reason=f"the real Fashion-MNIST is not at {SHARED_TFDS} (only on this project's machines)",
)


def tiny_config(**overrides):
    """A config that trains in seconds on synthetic data."""
    config = default.get_config()
    config.dataset = "synthetic"
    config.model = "vgg_tiny"
    config.num_groups = 4
    config.global_batch_size = 16
    config.num_train_steps = 4
    config.eval_batch_size = 64
    config.log_every_steps = 2
    config.eval_every_steps = 4
    config.checkpoint_every_steps = 2
    config.learning_rate = 1e-3
    config.progress_bar = False
    config.update(overrides)
    return config
