"""Only a provably damaged checkpoint is moved aside; a transient error leaves it in place and is raised.

(Real damage, truncated and deleted files, is driven through the command line in test_faults.py.)
"""

import errno
import json

import jax.numpy as jnp
import pytest

from experiments.trainer.checkpoints import Checkpoints, is_damage

STATE = {"w": jnp.arange(6.0), "b": {"c": jnp.ones((2, 3))}}


@pytest.fixture
def workdir(tmp_path):
    saved = Checkpoints(tmp_path, keep=3)
    saved.save(1, STATE)
    saved.save(2, STATE)
    saved.close()
    return tmp_path


def _restore_failing_at_2(monkeypatch, ckpts, error):
    read = ckpts._read

    def failing(step, *args, **kwargs):
        if step == 2:
            raise error
        return read(step, *args, **kwargs)

    monkeypatch.setattr(ckpts, "_read", failing)


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.EIO, "Input/output error"),
        PermissionError(errno.EACCES, "Permission denied"),
        ValueError("PERMISSION_DENIED: Error opening local file"),  # as tensorstore reports it
        ValueError("UNAVAILABLE: the file server did not answer"),
        RuntimeError("a bug"),
    ],
)
def test_a_transient_error_is_raised_and_the_checkpoint_stays(workdir, monkeypatch, error):
    ckpts = Checkpoints(workdir, keep=3)
    _restore_failing_at_2(monkeypatch, ckpts, error)
    with pytest.raises(type(error), match=str(error.args[-1])):
        ckpts.restore_latest(STATE)
    ckpts.close()
    assert (workdir / "checkpoints" / "2").is_dir()
    assert not (workdir / "unreadable_checkpoints").exists()


@pytest.mark.parametrize(
    "error",
    [
        FileNotFoundError(errno.ENOENT, "No such file", "checkpoints/2/default/w"),
        json.JSONDecodeError("Unterminated string", "{", 1),
        ValueError("OUT_OF_RANGE: Error reading byte range of local file"),
        ValueError("Error decoding b-tree node: ZSTD_decompressStream() failed: Data corruption"),
    ],
)
def test_damage_is_moved_aside_and_the_previous_checkpoint_restored(workdir, monkeypatch, error):
    ckpts = Checkpoints(workdir, keep=3)
    _restore_failing_at_2(monkeypatch, ckpts, error)
    state, step, skipped = ckpts.restore_latest(STATE)
    ckpts.close()
    assert step == 1 and len(skipped) == 1 and "checkpoint 2 is unreadable" in skipped[0]
    assert not (workdir / "checkpoints" / "2").exists()
    assert [p.name.split("-")[0] for p in (workdir / "unreadable_checkpoints").iterdir()] == ["2"]
    assert jnp.array_equal(state["w"], STATE["w"])


def test_is_damage_looks_through_the_cause():
    try:
        try:
            raise OSError(errno.EIO, "Input/output error")
        except OSError as e:
            raise ValueError("could not read the checkpoint") from e
    except ValueError as wrapped:
        assert not is_damage(wrapped)
    assert is_damage(ValueError("NOT_FOUND: Metadata at a/.zarray does not exist"))
    assert not is_damage(KeyError("params"))
