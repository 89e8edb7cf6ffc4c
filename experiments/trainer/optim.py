"""Optimizer and learning-rate schedule from the config (optax)."""

from __future__ import annotations

import jax
import ml_collections
import optax

from experiments.common.errors import unknown

OPTIMIZERS = ("adam", "adamw", "sgd", "momentum")
SCHEDULES = ("constant", "cosine", "steps")
WEIGHT_DECAY_ON = ("kernels", "all")


def learning_rate_schedule(
    config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
    """``constant`` (after an optional linear warm-up), ``cosine`` (warm-up then cosine decay to 0) or
    ``steps`` (warm-up, then x0.1 at each epoch of ``config.decay_epochs`` where a config sets it: the ResNet
    recipe's 30 and 60 of 90; else at each of ``config.decay_fractions`` of the run, by default
    BiT-HyperRule's 30/60/90%)."""
    warmup = (
        config.warmup_steps
        if config.warmup_steps >= 0
        else int(config.warmup_epochs * steps_per_epoch)
    )
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
    if config.schedule == "steps":
        # After the warm-up, x0.1 at each decay (absolute steps of the run).
        if config.decay_epochs:
            decays = [int(e * steps_per_epoch) for e in config.decay_epochs]
        else:
            decays = [int(f * total_steps) for f in config.decay_fractions]
        boundaries: dict[int, float] = {}
        for at in decays:
            step = max(at - warmup, 1)  # counted from the warm-up's end
            boundaries[step] = boundaries.get(step, 1.0) * 0.1  # decays at one step compound
        decay = optax.piecewise_constant_schedule(config.learning_rate, boundaries)
        if warmup == 0:
            return decay
        return optax.join_schedules(
            [optax.linear_schedule(0.0, config.learning_rate, warmup), decay], [warmup]
        )
    raise unknown("schedule", config.schedule, SCHEDULES)


def _kernels_only(params):
    """The weight-decay mask of ``weight_decay_on="kernels"``: not biases, norm scales/shifts or WS gains."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _decay_mask(config: ml_collections.ConfigDict):
    """``optax``'s mask for ``config.weight_decay_on``: kernels only, or None (every parameter)."""
    on = config.weight_decay_on
    if on not in WEIGHT_DECAY_ON:
        raise unknown("weight_decay_on", on, WEIGHT_DECAY_ON)
    return _kernels_only if on == "kernels" else None


def make_optimizer(
    config: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """``adam`` (the reference), ``adamw``, ``sgd`` with Nesterov momentum, or ``momentum`` (SGD with heavy-ball
    momentum, as ``torch.optim.SGD`` in the ImageNet recipe); weight decay on ``config.weight_decay_on``.

    Except in ``adamw``, the decay is L2 added to the gradient before the optimizer, as PyTorch's
    ``weight_decay`` argument: ``g + wd * p``; ``momentum`` is then ``v = m v + g + wd p; p -= lr v``.
    """
    mask = _decay_mask(config)
    if config.optimizer == "adam":
        tx = optax.adam(schedule)
        if config.weight_decay:  # L2 in the loss gradient, as torch.optim.Adam(weight_decay=...)
            tx = optax.chain(optax.add_decayed_weights(config.weight_decay, mask), tx)
        return tx
    if config.optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=config.weight_decay, mask=mask)
    if config.optimizer == "sgd":
        return optax.chain(
            optax.add_decayed_weights(config.weight_decay, mask),
            optax.sgd(schedule, momentum=config.momentum, nesterov=True),
        )
    if config.optimizer == "momentum":
        return optax.chain(
            optax.add_decayed_weights(config.weight_decay, mask),
            optax.sgd(schedule, momentum=config.momentum, nesterov=False),
        )
    raise unknown("optimizer", config.optimizer, OPTIMIZERS)
