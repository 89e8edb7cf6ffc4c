"""Two processes x 2 CPU devices (jax.distributed over localhost) end where one process x 4 devices does."""

import numpy as np
import pytest

from tests.helpers import TINY_ARGS, finish_processes, read_checkpoint, run_cli, start_trainers


def _params(workdir) -> dict:
    return {k: v for k, v in _flatten(read_checkpoint(workdir, 3)["params"]).items()}


def _flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[prefix + key] = value
    return out


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
    single = run_cli([*TINY_ARGS, f"--workdir={tmp_path / 'one'}"], devices=4)
    assert single.returncode == 0, single.stderr[-3000:]

    results = finish_processes(
        start_trainers([*TINY_ARGS, f"--workdir={tmp_path / 'two'}"], devices=2)
    )
    for code, _, err in results:
        assert code == 0, err[-3000:]
    # Only process 0 logs.
    assert "final test accuracy" in results[0][1] and "final test accuracy" not in results[1][1]

    one, two = _params(tmp_path / "one"), _params(tmp_path / "two")
    assert one.keys() == two.keys()
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)
