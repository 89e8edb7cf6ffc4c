"""Streaming over two processes (jax.distributed over localhost, one CPU device each): each reads its own
shard, evaluation's collective steps line up, and each saves its own iterator position."""

import json

import pytest

pytest.importorskip("grain", reason="the streaming pipeline needs grain (Python >= 3.11)")

from tests.helpers import TINY_ARGS, finish_processes, start_trainers


@pytest.mark.slow
def test_two_processes_stream_their_own_shards(tmp_path):
    args = [
        *TINY_ARGS,
        "--config.input_pipeline=stream",
        "--config.eval_batch_size=24",  # 512 test examples: a partial last batch per process
        f"--workdir={tmp_path}",
    ]
    results = finish_processes(start_trainers(args))
    for code, _, err in results:
        assert code == 0, err[-3000:]
    assert "final test accuracy" in results[0][1]
    for i in range(2):
        state = json.loads((tmp_path / "input_positions" / "3" / f"process_{i}.json").read_text())
        assert (
            f"ShardOptions(shard_index={i}, shard_count=2, drop_remainder=True)" in state["sampler"]
        )
        # 3 steps of this process's 8 examples (global batch 16 over 2 processes): 24 records read.
        assert sorted(int(k) for k in state["last_seen_indices"].values()) == [2 * 23 + i]
