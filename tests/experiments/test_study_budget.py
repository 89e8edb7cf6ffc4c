"""The sweep's cost on this machine (experiments/study/budget.py)."""

import json

import pytest

from experiments.study import budget
from experiments.study.cells import CONFIG, DEEP_CONFIG


def test_the_accelerator_grid_has_every_setting_once_and_five_seeds():
    settings, seeds = budget.settings(DEEP_CONFIG)
    assert seeds == (0, 1, 2, 3, 4)
    assert settings == [
        ("BN", 1), ("BN", 32), ("BN+WS", 1), ("BN+WS", 32), ("BCN+WS", 1), ("BCN+WS", 32),
        ("GN+WS", 32), ("none", 32),
    ]  # fmt: skip
    cpu_settings, _ = budget.settings(CONFIG)
    assert ("BN", 8) in cpu_settings and ("GN", 1) in cpu_settings


@pytest.mark.slow
def test_tiny_budget_times_every_setting_and_adds_them_up(tmp_path, capsys):
    tiny = ["--config.model=vgg_tiny", "--config.num_groups=4"]
    argv = [f"--out={tmp_path}", "--repeats=1", "--calls=1", *(f"--extra={f}" for f in tiny)]
    assert budget.main(argv) == 0
    result = json.loads((tmp_path / "budget.json").read_text())
    assert result["config"] == "experiments/configs/microbatch_deep.py"
    rows = result["settings"]
    assert len(rows) == 8 and {r["steps_per_cell"] for r in rows} == {1875}
    assert [r["replicas"] for r in rows[:2]] == [32, 1]
    assert result["train_s_per_seed"] == pytest.approx(sum(r["cell_train_s"] for r in rows))
    assert result["train_s_all_seeds"] == pytest.approx(5 * result["train_s_per_seed"])
    assert "| BCN+WS at 1/device | 32 |" in capsys.readouterr().out
