"""Optimizer and learning-rate schedule from the config (optax)."""

from __future__ import annotations

import jax
import ml_collections
import optax

from experiments.errors import ConfigError


def learning_rate_schedule(
    config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
    """``constant`` (after an optional linear warm-up), ``cosine``: warm-up then cosine decay to 0, or ``step``:
    the rate times 0.1 at each epoch of ``config.decay_epochs`` (the ResNet recipe: 30 and 60 of 90)."""
    warmup = int(config.warmup_epochs * steps_per_epoch)
    if config.schedule == "constant":
        if warmup == 0:
            return optax.constant_schedule(config.learning_rate)
        return optax.join_schedules(
            [
                optax.linear_schedule(0.0, config.learning_rate, warmup),
                optax.constant_schedule(config.learning_rate),
            ],
            [warmup],
        )
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, config.learning_rate, warmup, max(total_steps, warmup + 1), end_value=0.0
        )
    if config.schedule == "step":
        boundaries = {int(e * steps_per_epoch): 0.1 for e in config.get("decay_epochs", ())}
        return optax.piecewise_constant_schedule(config.learning_rate, boundaries)
    raise ConfigError(
        f"unknown schedule {config.schedule!r}; choose 'constant', 'cosine' or 'step'."
    )


def _decay_mask(params):
    # Decay kernels only, not biases, norm scales/shifts or WS gains.
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(
    config: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """``adam`` (the reference), ``adamw``, ``sgd`` with Nesterov momentum, or ``momentum`` (SGD with heavy-ball
    momentum, as ``torch.optim.SGD`` in the ImageNet recipe); weight decay on kernels."""
    if config.optimizer == "adam":
        tx = optax.adam(schedule)
        if config.weight_decay:  # L2 in the loss gradient, as torch.optim.Adam(weight_decay=...)
            tx = optax.chain(optax.add_decayed_weights(config.weight_decay, _decay_mask), tx)
        return tx
    if config.optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=config.weight_decay, mask=_decay_mask)
    if config.optimizer == "sgd":
        return optax.chain(
            optax.add_decayed_weights(config.weight_decay, _decay_mask),
            optax.sgd(schedule, momentum=config.momentum, nesterov=True),
        )
    if config.optimizer == "momentum":
        return optax.chain(
            optax.add_decayed_weights(config.weight_decay, _decay_mask),
            optax.sgd(schedule, momentum=config.momentum, nesterov=False),
        )
    raise ConfigError(
        f"unknown optimizer {config.optimizer!r}; choose 'adam', 'adamw', 'sgd' or 'momentum'."
    )
