"""``validate(config, num_devices)``: every mistake a config can hold, as one-line ``ConfigError``, before any work.

The trainer calls it once, first thing; the rest of the trainer reads ``config.FIELD`` and trusts it. What only
the data or the model can say (a TFDS name that does not exist, channels that ``num_groups`` does not divide, a
checkpoint that does not fit) is checked where it is known, and also ends as a one-line ``ConfigError``.

Each field, its default and its meaning are declared once, in ``experiments/configs/default.py``; the names a
field may take are declared by the code that uses them (``model_factory.MODELS``, ``optim.OPTIMIZERS``, ...)
and read from there, so a new choice is added in one place.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable

import ml_collections

import wsjax
from experiments.common.errors import ConfigError, unknown
from experiments.trainer import model_factory, optim, population, steps
from experiments.trainer.input import choice
from wsjax.models import NORMS


def _choices() -> dict[str, Iterable[str]]:
    """Every field that names one of several things, and the names it may take."""
    return {
        "model": model_factory.MODELS,
        "conv": model_factory.CONVS,
        "ws_preset": wsjax.PRESETS,
        "ws_apply_to": wsjax.APPLY_TO,
        "conv_impl": model_factory.CONV_IMPLS,
        "norm": NORMS,
        "dtype": model_factory.DTYPES,
        "optimizer": optim.OPTIMIZERS,
        "schedule": optim.SCHEDULES,
        "weight_decay_on": optim.WEIGHT_DECAY_ON,
        "input_pipeline": choice.PIPELINES,
        "augmentation": choice.AUGMENTATIONS,
        "init_from_format": model_factory.INIT_FROM_FORMATS,
        "data_order": steps.DATA_ORDERS,
    }


def _positive_int(config: ml_collections.ConfigDict, field: str, minimum: int = 1) -> int:
    value = config[field]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{field} must be {what}, got {value!r}.")
    return value


def _check_batch_split(config: ml_collections.ConfigDict, num_devices: int) -> None:
    r = _positive_int(config, "replicas_per_device")
    if r > 1 and config.sync_batch_stats:
        raise ConfigError(
            "sync_batch_stats=True needs replicas_per_device=1: batch statistics are synced over devices, "
            "and replicas on one device are meant to keep their own (the micro-batch setting)."
        )
    k = _positive_int(config, "accumulate_steps")
    # Each replica's batch splits into k micro-batches.
    parts = num_devices * r * k
    where = (
        f"{num_devices} devices"
        + (f" × {r} replicas" if r > 1 else "")
        + (f" × {k} micro-batches (accumulate_steps)" if k > 1 else "")
    )
    if config.global_batch_size <= 0 or config.global_batch_size % parts:
        raise ConfigError(
            f"global_batch_size={config.global_batch_size} does not divide evenly over {where}; "
            f"use a multiple of {parts} (e.g. --config.global_batch_size="
            f"{max(1, round(config.global_batch_size / parts)) * parts})."
        )
    _positive_int(config, "eval_batch_size")


def _check_length(config: ml_collections.ConfigDict) -> None:
    if config.num_train_steps <= 0 and config.num_epochs <= 0:
        raise ConfigError(
            f"the run has no steps: num_train_steps={config.num_train_steps} and "
            f"num_epochs={config.num_epochs}; set one of them > 0."
        )
    if config.learning_rate < 0:
        raise ConfigError(f"learning_rate must be >= 0, got {config.learning_rate}.")
    if config.warmup_epochs < 0:
        raise ConfigError(f"warmup_epochs must be >= 0, got {config.warmup_epochs}.")
    fractions = tuple(config.decay_fractions)
    if any(not 0 < f < 1 for f in fractions):
        raise ConfigError(
            f"decay_fractions are fractions of the run, each in (0, 1); got {fractions}."
        )
    if any(e <= 0 for e in config.decay_epochs):
        raise ConfigError(
            f"decay_epochs must be positive epochs, got {tuple(config.decay_epochs)}."
        )
    if not 0 <= config.bn_momentum < 1:
        raise ConfigError(
            f"bn_momentum is Flax's (PyTorch's 0.1 is 0.9), in [0, 1); got {config.bn_momentum}."
        )


def _check_input(config: ml_collections.ConfigDict) -> None:
    if config.augmentation == "inception":
        if config.image_size <= 0:
            raise ConfigError("augmentation='inception' needs config.image_size (e.g. 224).")
        if config.input_pipeline == "memory":
            raise ConfigError(
                "augmentation='inception' needs input_pipeline='stream' or 'auto' (the memory path "
                "crops and flips on the device at the native size)."
            )
    if population.applies(config) and config.input_pipeline == "stream":
        raise ConfigError(population.NEEDS_MEMORY)
    for field in ("input_workers", "input_threads", "crop_padding", "image_size"):
        _positive_int(config, field, minimum=0)
    _positive_int(config, "prefetch")
    mean, std = tuple(config.normalize_mean), tuple(config.normalize_std)
    if not mean or len(mean) != len(std) or any(s <= 0 for s in std):
        raise ConfigError(
            f"normalize_mean {mean} and normalize_std {std} need the same length (one value, or one per "
            f"channel) and a positive std."
        )
    name = str(config.dataset)
    if name.startswith(("/", "./", "../", "~")) and not pathlib.Path(name).expanduser().is_dir():
        raise ConfigError(
            f"dataset {name!r} is a path but no folder is there; give a folder of .npz splits (see "
            f"experiments/trainer/input/data_cache.py) or a TFDS name."
        )


def _check_init_from(config: ml_collections.ConfigDict) -> None:
    path = config.init_from
    if path and not pathlib.Path(path).expanduser().is_file():
        raise ConfigError(f"init_from: no file {path!r}; give an .npz of the checkpoint's arrays.")


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Raises ``ConfigError`` (one line: the setting and the fix) for any setting that cannot work.

    Runs before any data is read or any array is made; see the module docstring for what is left to later.
    """
    for field, names in _choices().items():
        # With init_from, `model` names the checkpoint's architecture in its source's terms (a timm name, or
        # nothing for BiT): the loader checks it, and says what it knows.
        if field == "model" and config.init_from:
            continue
        if config[field] not in names:
            raise unknown(field, config[field], names)
    _check_batch_split(config, num_devices)
    _check_length(config)
    _check_input(config)
    _check_init_from(config)
    _positive_int(config, "num_groups")
    _positive_int(config, "keep_checkpoints")
    _positive_int(config, "profile_steps", minimum=0)
    _positive_int(config, "reestimate_bn_images", minimum=0)
    if not 0 <= config.seed < 2**32:
        raise ConfigError(f"seed must be in [0, 2**32), got {config.seed}.")
