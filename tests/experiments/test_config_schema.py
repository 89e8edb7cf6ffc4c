"""One config schema: every field the code reads is declared in configs/default.py, and every mistake a config
can hold is one ConfigError from validate(), before any work."""

import ast
import importlib
import pathlib

import ml_collections
import pytest

from experiments.common.errors import ConfigError
from experiments.configs import default
from experiments.trainer import validation
from tests.helpers import REPO, tiny_config

# The config files (imagenet.py is the recipe the imagenet_* files share, not one of them).
CONFIGS = sorted(
    p.stem
    for p in (REPO / "experiments" / "configs").glob("*.py")
    if "def get_config(" in p.read_text()
)


def _reads(tree: ast.AST) -> set[str]:
    """Field names read from a variable called ``config``: ``config.X``, ``config["X"]``, ``config.get("X")``."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_config(node.value):
            names.add(node.attr)
        elif (
            isinstance(node, ast.Subscript)
            and _is_config(node.value)
            and isinstance(node.slice, ast.Constant)
        ):
            names.add(node.slice.value)
    # ConfigDict's own methods are not fields.
    return {n for n in names if not hasattr(ml_collections.ConfigDict, n)}


def _is_config(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id == "config"


def _experiment_sources() -> list[pathlib.Path]:
    return sorted((REPO / "experiments").rglob("*.py"))


def test_every_field_the_code_reads_is_declared_in_default():
    declared = set(default.get_config().keys())
    undeclared = {}
    for path in _experiment_sources():
        missing = _reads(ast.parse(path.read_text())) - declared
        if missing:
            undeclared[str(path.relative_to(REPO))] = sorted(missing)
    assert not undeclared, f"read but not declared in configs/default.py: {undeclared}"


def test_the_scan_sees_the_trainer_reads():
    """The scan above would pass on nothing: it must find the fields the trainer is known to read."""
    reads = _reads(ast.parse((REPO / "experiments" / "trainer" / "optim.py").read_text()))
    assert {"warmup_steps", "decay_epochs", "decay_fractions", "weight_decay_on"} <= reads


def test_no_second_default_in_code():
    """``config.get(name, default)`` would be a second default; the schema has the one."""
    offenders = []
    for path in _experiment_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and _is_config(node.func.value)
            ):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, offenders


@pytest.mark.parametrize("name", CONFIGS)
def test_derived_configs_only_override(name):
    module = importlib.import_module(f"experiments.configs.{name}")
    config = module.get_config()
    assert set(config.keys()) == set(default.get_config().keys()), name


@pytest.mark.parametrize("name", CONFIGS)
def test_every_shipped_config_validates(name):
    config = importlib.import_module(f"experiments.configs.{name}").get_config()
    # The ImageNet recipes put one image on each replica of 8 devices by default.
    validation.validate(config, num_devices=8 if name.startswith("imagenet") else 1)


# One case per kind of mistake: overrides of tiny_config, device count, the message's start.
MISTAKES = {
    "unknown model": ({"model": "vgg19"}, 1, "unknown model 'vgg19'; choose one of vgg16, "),
    "unknown conv": ({"conv": "sws"}, 1, "unknown conv 'sws'; choose one of ws, plain"),
    "unknown preset": ({"ws_preset": "foo"}, 1, "unknown ws_preset 'foo'; choose one of pytorch, "),
    "unknown apply_to": ({"ws_apply_to": "w"}, 1, "unknown ws_apply_to 'w'; choose one of kernel, "),
    "unknown conv_impl": ({"conv_impl": "cudnn"}, 1, "unknown conv_impl 'cudnn'; choose one of auto, xla"),
    "unknown norm": ({"norm": "ln"}, 1, "unknown norm 'ln'; choose one of bn, gn, bcn, none"),
    "unknown dtype": ({"dtype": "float16"}, 1, "unknown dtype 'float16'; choose one of float32, bfloat16"),
    "unknown optimizer": ({"optimizer": "lamb"}, 1, "unknown optimizer 'lamb'; choose one of adam, "),
    "unknown schedule": ({"schedule": "linear"}, 1, "unknown schedule 'linear'; choose one of constant, "),
    "unknown decay target": ({"weight_decay_on": "biases"}, 1, "unknown weight_decay_on 'biases'"),
    "unknown pipeline": ({"input_pipeline": "disk"}, 1, "unknown input_pipeline 'disk'; choose one of memory"),
    "unknown augmentation": ({"augmentation": "mixup"}, 1, "unknown augmentation 'mixup'"),
    "unknown init format": ({"init_from_format": "pth"}, 1, "unknown init_from_format 'pth'"),
    "unknown data order": ({"data_order": "random"}, 1, "unknown data_order 'random'"),
    "batch over devices": ({"global_batch_size": 12}, 8, "global_batch_size=12 does not divide evenly over 8 devices; use a multiple of 8"),
    "batch over replicas": ({"replicas_per_device": 3}, 2, "does not divide evenly over 2 devices × 3 replicas"),
    "batch over micro-batches": ({"accumulate_steps": 3}, 1, "does not divide evenly over 1 devices × 3 micro-batches"),
    "no replicas": ({"replicas_per_device": 0}, 1, "replicas_per_device must be a positive integer, got 0"),
    "no micro-batches": ({"accumulate_steps": 0}, 1, "accumulate_steps must be a positive integer, got 0"),
    "synced replicas": ({"replicas_per_device": 2, "sync_batch_stats": True}, 1, "sync_batch_stats=True needs replicas_per_device=1"),
    "no eval batch": ({"eval_batch_size": 0}, 1, "eval_batch_size must be a positive integer, got 0"),
    "no steps": ({"num_train_steps": -1, "num_epochs": 0}, 1, "the run has no steps"),
    "negative rate": ({"learning_rate": -0.1}, 1, "learning_rate must be >= 0"),
    "negative warm-up": ({"warmup_epochs": -1.0}, 1, "warmup_epochs must be >= 0"),
    "decay fraction": ({"decay_fractions": (0.5, 1.5)}, 1, "decay_fractions are fractions of the run"),
    "decay epoch": ({"decay_epochs": (0, 10)}, 1, "decay_epochs must be positive epochs"),
    "momentum in PyTorch's sense": ({"bn_momentum": 1.0}, 1, "bn_momentum is Flax's"),
    "inception without a size": ({"augmentation": "inception"}, 1, "augmentation='inception' needs config.image_size"),
    "inception in memory": ({"augmentation": "inception", "image_size": 224, "input_pipeline": "memory"}, 1, "augmentation='inception' needs input_pipeline='stream'"),
    "negative workers": ({"input_workers": -1}, 1, "input_workers must be an integer >= 0, got -1"),
    "no prefetch": ({"prefetch": 0}, 1, "prefetch must be a positive integer"),
    "normalization lengths": ({"normalize_mean": (0.5, 0.5), "normalize_std": (0.5,)}, 1, "need the same length"),
    "zero std": ({"normalize_std": (0.0,)}, 1, "and a positive std"),
    "missing dataset folder": ({"dataset": "./no/such/folder"}, 1, "dataset './no/such/folder' is a path but no folder is there"),
    "missing checkpoint": ({"init_from": "/no/such/R-50-GN-WS.npz"}, 1, "init_from: no file '/no/such/R-50-GN-WS.npz'"),
    "no groups": ({"num_groups": 0}, 1, "num_groups must be a positive integer"),
    "no checkpoints kept": ({"keep_checkpoints": 0}, 1, "keep_checkpoints must be a positive integer"),
    "negative profile": ({"profile_steps": -2}, 1, "profile_steps must be an integer >= 0"),
    "seed out of range": ({"seed": -1}, 1, "seed must be in [0, 2**32), got -1"),
}  # fmt: skip


@pytest.mark.parametrize("overrides, devices, message", MISTAKES.values(), ids=MISTAKES.keys())
def test_each_mistake_is_one_config_error(overrides, devices, message):
    config = tiny_config(**overrides)
    with pytest.raises(ConfigError) as caught:
        validation.validate(config, num_devices=devices)
    text = str(caught.value)
    assert text.startswith(message) or message in text, text
    assert "\n" not in text


def test_with_init_from_the_model_is_the_checkpoints_name(tmp_path):
    """timm's names (and BiT's none) are not the trainer's models: the loader judges them, not validate."""
    checkpoint = tmp_path / "weights.npz"
    checkpoint.write_bytes(b"")
    validation.validate(
        tiny_config(init_from=str(checkpoint), init_from_format="timm", model="resnetv2_50x1_bit"),
        1,
    )
    with pytest.raises(ConfigError, match="unknown model 'resnetv2_50x1_bit'"):
        validation.validate(tiny_config(model="resnetv2_50x1_bit"), 1)


def test_a_mistake_stops_the_run_before_any_data_is_read(tmp_path, monkeypatch):
    from experiments import train
    from experiments.trainer.input import choice, data

    def read(*args, **kwargs):
        raise AssertionError("data was read before the config was checked")

    monkeypatch.setattr(data, "load", read)
    monkeypatch.setattr(choice, "resolve", read)
    with pytest.raises(ConfigError, match="unknown optimizer 'lamb'"):
        train.train_and_evaluate(tiny_config(optimizer="lamb"), str(tmp_path))
