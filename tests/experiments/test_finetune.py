"""Fine-tuning from a converted checkpoint: ``config.init_from``, the ``steps`` schedule, the finetune config."""

import functools

import jax
import numpy as np
import pytest

import wsjax.pretrained
from experiments import train
from experiments.common.errors import ConfigError
from experiments.configs import finetune
from experiments.trainer import model_factory, optim, steps
from experiments.trainer.input import data
from tests.helpers import read_checkpoint
from tests.official_reference import Spec, state_dict
from wsjax.models import ImageNetResNet
from wsjax.pretrained import _official

# A tiny network of the official layout with GN(32): 32 channels everywhere (ResNeXt widths 8 x 4 groups).
TINY = Spec(stage_sizes=(1, 1), planes=(8, 8), stem=32, cardinality=4, num_classes=5)


@pytest.fixture
def tiny_checkpoint(tmp_path, monkeypatch):
    """An .npz of random official GN+WS weights of the "tiny" architecture (5 classes)."""
    arch = functools.partial(
        ImageNetResNet,
        stage_sizes=TINY.stage_sizes,
        planes=TINY.planes,
        stem_features=TINY.stem,
        cardinality=TINY.cardinality,
    )
    monkeypatch.setitem(_official.ARCHS, "tiny", arch)
    path = tmp_path / "tiny.npz"
    np.savez(path, **state_dict(TINY, seed=5))
    return path


def _config(tmp_path, checkpoint, **overrides):
    config = finetune.get_config("official")
    config.update(
        dataset="cifar10",
        data_dir=str(tmp_path / "tfds"),
        data_cache_dir="",
        model="tiny",
        init_from=str(checkpoint),
        global_batch_size=16,
        num_train_steps=2,
        warmup_steps=1,
        eval_batch_size=64,
        log_every_steps=1,
        eval_every_steps=2,
        checkpoint_every_steps=2,
        progress_bar=False,
    )
    config.update(overrides)
    return config


@pytest.mark.slow
def test_finetune_end_to_end_on_mock_data_starts_from_the_checkpoint(
    tmp_path, tiny_checkpoint, monkeypatch
):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(data, "_check_reachable", lambda url, timeout_s=5.0: True)
    # Learning rate 0: after two steps the parameters are still the checkpoint's, head included (zeros).
    config = _config(tmp_path, tiny_checkpoint, learning_rate=0.0)
    with tfds.testing.mock_data(num_examples=64):
        result = train.train_and_evaluate(config, str(tmp_path / "w"))
    assert 0.0 <= result["accuracy"] <= 1.0 and result["step"] == 2
    saved = read_checkpoint(tmp_path / "w", 2)["params"]
    _, want = wsjax.pretrained.from_official(dict(np.load(tiny_checkpoint)), "tiny", num_classes=10)
    assert saved["fc"]["kernel"].shape == (32, 10) and not np.any(saved["fc"]["kernel"])
    assert jax.tree.structure(saved) == jax.tree.structure(want["params"])
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(want["params"]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_bit_hyperrule_schedule():
    config = finetune.get_config()
    assert config.learning_rate == pytest.approx(0.003) and config.global_batch_size == 512
    config.warmup_steps = 10
    schedule = optim.learning_rate_schedule(config, steps_per_epoch=7, total_steps=100)
    lr = config.learning_rate
    assert float(schedule(0)) == 0.0 and float(schedule(5)) == pytest.approx(lr / 2)
    for step, want in [
        (10, lr),
        (29, lr),
        (31, lr / 10),
        (59, lr / 10),
        (61, lr / 100),
        (91, lr / 1000),
    ]:
        assert float(schedule(step)) == pytest.approx(want, rel=1e-6), step
    with pytest.raises(ValueError, match="finetune.py:nope: choose one of official, bit, timm"):
        finetune.get_config("nope")
    assert finetune.get_config("bit").normalize_mean == (0.5,)


def test_init_from_errors(tmp_path, tiny_checkpoint, monkeypatch):
    def load(**overrides):
        return model_factory.load_init_from(
            _config(tmp_path, tiny_checkpoint, **overrides), 10, None
        )

    assert load(init_from="") is None
    monkeypatch.delattr(wsjax.pretrained, "from_bit", raising=False)
    with pytest.raises(ConfigError, match="needs wsjax.pretrained.from_bit, which this version"):
        load(init_from_format="bit")
    with pytest.raises(ConfigError, match="init_from: cannot read '.*missing.npz'"):
        load(init_from=str(tmp_path / "missing.npz"))
    with pytest.raises(ConfigError, match="unknown arch 'resnet18'"):
        load(model="resnet18")
    sd = dict(np.load(tiny_checkpoint))
    del sd["layer2.0.conv2.weight"]
    np.savez(tmp_path / "broken.npz", **sd)
    with pytest.raises(ConfigError, match="weights have no 'layer2.0.conv2.weight'"):
        load(init_from=str(tmp_path / "broken.npz"))


def test_start_from_refuses_variables_that_do_not_fit_the_dataset():
    import optax

    fresh = steps.TrainState.create(
        apply_fn=None, params={"conv1": {"kernel": np.zeros((7, 7, 1, 32))}}, tx=optax.sgd(0.1)
    )
    loaded = model_factory.Pretrained(
        None, {"params": {"conv1": {"kernel": np.ones((7, 7, 3, 32))}}}
    )
    with pytest.raises(
        ConfigError, match=r"params/conv1/kernel has shape \(7, 7, 3, 32\) in the checkpoint"
    ):
        model_factory.start_from(fresh, loaded)
    fine = model_factory.Pretrained(None, {"params": {"conv1": {"kernel": np.ones((7, 7, 1, 32))}}})
    assert np.all(model_factory.start_from(fresh, fine).params["conv1"]["kernel"] == 1)
