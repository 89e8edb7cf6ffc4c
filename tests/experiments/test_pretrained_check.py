"""The accelerator suite's ``pretrained`` part (timm's BiT against ``wsjax.pretrained``) without torch."""

import sys
import time

import jax
import pytest

from tests.helpers import flax_to_timm, random_params, same_params
from wsjax.models import ResNetV2
from wsjax.pretrained import from_bit

TINY = dict(stage_sizes=(2, 1, 1), width=32, num_classes=5)  # GN(32) as BiT's, at test size


@pytest.fixture(scope="module")
def tiny():
    x = jax.random.normal(jax.random.key(0), (2, 23, 23, 3))
    model = ResNetV2(**TINY)
    return model, random_params(model, x), x


def test_the_part_skips_without_torch(tmp_path, monkeypatch):
    """CI has no torch: the GPU check records why and succeeds; its table row says so."""
    from experiments.bench.suite.context import PartContext, read_results
    from experiments.bench.suite.parts import pretrained_check
    from experiments.bench.suite.table import format_table

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    ctx = PartContext("pretrained", True, tmp_path, None, time.time() + 60)
    pretrained_check.run(ctx)
    assert list(ctx.results) == ["skipped"]
    assert ctx.results["skipped"].startswith("torch or timm not importable: ")
    assert read_results(ctx.results_path) == ctx.results
    results = {
        "suite": {"tiny": True, "source_fingerprint": "abc", "date": "2026-12-01"},
        "parts": {"pretrained": {"status": "ok", "wall_s": 1.0, "results": ctx.results}},
    }
    assert "| skipped: torch or timm not importable" in format_table(results)
    case = lambda ours, eps: {"from_timm_vs_timm_float64": {"relative": ours},
                              "from_bit_vs_timm_eps_1e-10_float64": {"relative": 2e-5},
                              "timm_eps_1e-8_vs_1e-10": {"relative": eps}}  # fmt: skip
    made_up = {"timm_init": case(1.5e-5, 2e-5), "kernels_x1e-3": case(1.4e-5, 0.45)}
    results["parts"]["pretrained"]["results"] = made_up
    assert (
        "| timm_init: from_timm 1.5e-05, from_bit 2.0e-05 (eps 1e-8 vs 1e-10: 2.0e-05) · "
        "kernels_x1e-3: from_timm 1.4e-05, from_bit 2.0e-05 (eps 1e-8 vs 1e-10: 4.5e-01) of the logits' "
        "scale, vs timm in float64 |"
    ) in format_table(results)


def test_the_parts_own_timm_to_bit_mapping(tiny):
    """The GPU check renames timm's state dict to BiT's names by its own mapping: checked here, no torch."""
    from experiments.bench.suite.parts.pretrained_check import timm_to_bit

    _, params, _ = tiny
    same_params(from_bit(timm_to_bit(flax_to_timm(params)))[1]["params"], params)
