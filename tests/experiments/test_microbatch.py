"""The micro-batch study: only the per-device batch varies between cells; the driver, its report."""

import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from experiments.common.filelock import try_lock
from experiments.study import cells, microbatch, report
from experiments.trainer import steps
from tests.helpers import REPO
from wsjax import WSConv
from wsjax.models import VGG, norm_layer

N, G = 64, 16  # training examples, global batch: 4 steps per epoch


def _cfg(replicas: int, order: str, augment: bool = False) -> steps.StepConfig:
    b = G // replicas
    return steps.StepConfig(
        per_replica_batch=b,
        steps_per_epoch=N // G,
        crop_padding=2 * augment,
        flip=augment,
        mean=(0.5,),
        std=(0.5,),
        replicas_per_device=replicas,
        data_order=order,
    )


def _global_batches(replicas: int, order: str, num_steps: int) -> np.ndarray:
    """The global example indices at each step, replica by replica (as data.py shards the split)."""
    cfg, shard = _cfg(replicas, order), N // replicas
    rng = jax.random.PRNGKey(7)
    indices = jax.jit(steps.batch_indices, static_argnums=(2, 3))
    return np.stack(
        [
            np.concatenate(
                [
                    d * shard + np.asarray(indices(rng, jnp.int32(s), shard, cfg, jnp.int32(d)))
                    for d in range(replicas)
                ]
            )
            for s in range(num_steps)
        ]
    )


def test_example_order_gives_every_split_the_same_global_batches():
    reference = _global_batches(1, "example", 8)  # two epochs
    for replicas in (2, 4, 16):
        np.testing.assert_array_equal(_global_batches(replicas, "example", 8), reference)
    for epoch in (reference[:4], reference[4:]):  # every example once per epoch
        assert sorted(epoch.ravel()) == list(range(N))
    assert not np.array_equal(reference[:4], reference[4:])  # a fresh order each epoch
    # The default order shuffles each replica's shard on its own: the global batches depend on the split.
    assert not np.array_equal(_global_batches(4, "replica", 8), _global_batches(1, "replica", 8))


def _train(replicas: int, norm: str, num_steps: int = 5, apply_to: str = "kernel"):
    """``num_steps`` of SGD from seed 0 with crop + flip, the global batch split over vmapped replicas; WS on
    the kernel or, as ``apply_to`` says, on the output."""
    mesh = Mesh(np.array(jax.devices()[:1]), (steps.AXIS,))
    conv = functools.partial(WSConv, apply_to=apply_to)
    model = VGG(stages=((8,), (16,)), conv=conv, norm=norm_layer(norm, num_groups=4))
    state = steps.create_train_state(model, optax.sgd(0.1), (8, 8, 3), seed=0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, 8, 8, 3), dtype=np.uint8).reshape(
        replicas, N // replicas, 8, 8, 3
    )
    labels = rng.integers(0, 10, N).astype(np.int32).reshape(replicas, N // replicas)
    sharding = NamedSharding(mesh, P(steps.AXIS))
    images, labels = jax.device_put(images, sharding), jax.device_put(labels, sharding)
    train_step = steps.make_train_step(mesh, _cfg(replicas, "example", augment=True))
    for _ in range(num_steps):
        state, metrics = train_step(state, images, labels)
    return jax.device_get((state.params, metrics["loss"]))


@pytest.mark.slow
def test_split_changes_nothing_but_the_batch_statistics():
    # GN has no batch statistics: 1 replica of 16 and 8 replicas of 2 are the same training (same examples,
    # same augmentation, same mean gradient) up to float rounding, over an epoch boundary.
    (params1, loss1), (params8, loss8) = _train(1, "gn"), _train(8, "gn")
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params8), jax.tree.leaves(params1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # BN normalizes with each replica's statistics: the split changes the training.
    (_, bn_loss1), (_, bn_loss8) = _train(1, "bn"), _train(8, "bn")
    assert not np.isclose(bn_loss8, bn_loss1, rtol=1e-3)


@pytest.mark.slow
@pytest.mark.skipif(
    jax.default_backend() != "cpu", reason="bitwise: XLA:CPU's fixed order of operations"
)
def test_ws_on_the_kernel_trains_every_split_bitwise_alike():
    """The study fixes ``ws_apply_to="kernel"``: with ``"auto"`` a layer decides from the batch it sees, one
    replica's under the replicas' vmap, and at 1 image per replica moves its late layer (4×4 outputs, 72
    kernel entries per channel) to the output side: the same maths, rounded otherwise."""
    assert cells.cell_config([]).ws_apply_to == "kernel"
    assert cells.cell_config([], cells.DEEP_CONFIG).ws_apply_to == "kernel"
    (params1, loss1), (params16, loss16) = _train(1, "gn"), _train(16, "gn")
    # The loss is a metric, averaged over the replicas in another order: close, not bitwise.
    np.testing.assert_allclose(loss16, loss1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(params16), jax.tree.leaves(params1), strict=True):
        np.testing.assert_array_equal(a, b)
    (auto1, _), (auto16, _) = _train(1, "gn", apply_to="auto"), _train(16, "gn", apply_to="auto")
    pairs = zip(jax.tree.leaves(auto16), jax.tree.leaves(auto1), strict=True)
    assert any(not np.array_equal(a, b) for a, b in pairs)


def test_grid_keeps_the_global_batch_and_varies_the_replicas():
    cells = microbatch.grid(["BN", "GN+WS"], [1, 4, 32], [0, 1])  # GN+WS: the ends only
    assert cells[0].seed == 0 and cells[-1].seed == 1  # seeds outermost
    assert sorted({(c.normalization, c.per_device_batch) for c in cells}) == [
        ("BN", 1), ("BN", 4), ("BN", 32), ("GN+WS", 1), ("GN+WS", 32),
    ]  # fmt: skip
    for cell in cells:
        for devices in (1, 2) if cell.per_device_batch < 32 else (1,):
            args = dict(a.removeprefix("--config.").split("=") for a in cell.overrides(32, devices))
            assert int(args["global_batch_size"]) == 32
            replicas = int(args["replicas_per_device"]) * devices
            assert replicas * cell.per_device_batch == 32
    assert len(microbatch.grid(["GN"], [1, 4, 32], [0], batch_free_batches=[1, 4, 32])) == 3
    with pytest.raises(ValueError, match="unknown normalization"):
        microbatch.grid(["LN"], [1], [0])


def test_design_check_names_the_fix():
    microbatch.check_design([1, 2, 4, 8, 32], 32, 1)
    with pytest.raises(ValueError, match="--global_batch=256"):
        microbatch.check_design([1, 2, 4, 8, 32], 32, 8)  # 32 images on 8 devices: no 32 per device
    with pytest.raises(ValueError, match="3 image.*--global_batch=48"):
        microbatch.check_design([1, 2, 3, 8], 32, 2)
    with pytest.raises(ValueError, match="positive"):
        microbatch.check_design([0, 1], 32, 1)
    with pytest.raises(ValueError, match="bad config flag"):
        cells.check_flags(["--config.no_such_field=1"])
    with pytest.raises(ValueError, match="bad config flag"):
        cells.check_flags(["--config.num_epochs=many"])
    cells.check_flags(["--config.num_epochs=2"])


def finish(workdir):  # what a finished cell leaves: its final accuracy in run_info.json
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "run_info.json").write_text(json.dumps({"final_test_accuracy": 0.9}))


def test_a_failed_cell_does_not_stop_the_sweep_but_a_broken_setup_does(tmp_path, monkeypatch):
    trained = []

    def fake_cell(
        workdir, flags, log, claim=None, config=None
    ):  # "trains" a cell, or fails like a diverged run
        trained.append(workdir.name)
        if workdir.name in failing:
            return "exit 1"
        finish(workdir)
        return None

    monkeypatch.setattr(cells, "run_subprocess", fake_cell)
    failing = {"bn_b2_s0"}
    with pytest.raises(RuntimeError, match=r"1 cell\(s\) failed: bn_b2_s0"):
        microbatch.run(tmp_path / "a", [0], ["BN"], [1, 2, 4], global_batch=4, devices=1)
    assert trained == ["bn_b1_s0", "bn_b2_s0", "bn_b4_s0"]  # went on after the failure
    trained.clear()
    failing = {"bn_b2_s0"} | {f"bn_b{b}_s1" for b in (1, 2, 4)}
    with pytest.raises(RuntimeError, match="the last 3 cells all failed"):
        microbatch.run(tmp_path / "a", [0, 1, 2], ["BN"], [1, 2, 4], global_batch=4, devices=1)
    assert trained == [
        "bn_b2_s0",
        "bn_b1_s1",
        "bn_b2_s1",
    ]  # finished cells skipped; stopped at 3 in a row


def test_workers_share_a_sweep_through_each_cells_claim(tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "sweep"
    trained = []

    def fake_cell(workdir, flags, log, claim=None, config=None):
        trained.append(workdir.name)
        if (
            workdir.name == "bn_b1_s0"
        ):  # meanwhile another worker finishes b4, which this one has listed
            finish(sweep / "bn_b4_s0")
        finish(workdir)

    monkeypatch.setattr(cells, "run_subprocess", fake_cell)
    (sweep / "bn_b2_s0").mkdir(parents=True)
    other_worker, _ = try_lock(sweep / "bn_b2_s0" / ".claim")  # another worker is training b2
    assert other_worker is not None
    microbatch.run(sweep, [0], ["BN"], [1, 2, 4], global_batch=4, devices=1)
    assert trained == ["bn_b1_s0"]  # b2 is the other worker's; b4 it finished
    assert "1 cell(s) left to other workers: bn_b2_s0" in capsys.readouterr().err
    assert "pid" in (sweep / "bn_b2_s0" / ".claim").read_text()  # who holds it, for a reader

    other_worker.close()  # that worker died before finishing b2: the next run trains it
    trained.clear()
    microbatch.run(sweep, [0], ["BN"], [1, 2, 4], global_batch=4, devices=1)
    assert trained == ["bn_b2_s0"]


def test_a_cell_whose_worker_dies_gets_a_second_look(tmp_path, monkeypatch, capsys):
    trained = []

    def fake_cell(workdir, flags, log, claim, config=None):
        trained.append(workdir.name)
        if workdir.name == "bn_b2_s0":
            other_worker.close()  # meanwhile the worker that held b1 dies
        finish(workdir)

    monkeypatch.setattr(cells, "run_subprocess", fake_cell)
    (tmp_path / "bn_b1_s0").mkdir()
    other_worker, _ = try_lock(tmp_path / "bn_b1_s0" / ".claim")
    microbatch.run(tmp_path, [0], ["BN"], [1, 2, 4], global_batch=4, devices=1)
    assert trained == ["bn_b2_s0", "bn_b4_s0", "bn_b1_s0"]  # b1 after the first pass
    err = capsys.readouterr().err
    assert "left to other workers" not in err
    assert "3/3" in err and "4/3" not in err  # the bar counts cells, not looks at them


def test_the_claim_lasts_as_long_as_the_training(tmp_path, monkeypatch):
    """The trainer inherits the claim: killing the worker's parent does not free a cell still training."""
    claim, _ = try_lock(tmp_path / ".claim")
    passed = {}

    def fake_run(command, **kwargs):  # the trainer's launch, as run_subprocess makes it
        passed.update(kwargs)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(cells.subprocess, "run", fake_run)
    assert cells.run_subprocess(tmp_path, [], tmp_path / "log", claim) is None
    assert passed["pass_fds"] == (claim.fileno(),)
    monkeypatch.undo()
    # What that gives: a child holding the inherited descriptor keeps the lock after the parent closes it.
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"],
        stdin=subprocess.PIPE,
        pass_fds=passed["pass_fds"],
    )
    try:
        claim.close()
        assert try_lock(tmp_path / ".claim")[0] is None
    finally:
        child.communicate(b"")
    assert try_lock(tmp_path / ".claim")[0] is not None  # the training ended: free


def test_a_time_limit_starts_no_cell_expected_to_overrun(tmp_path, monkeypatch, capsys):
    now = [100.0]  # a fake clock: each cell "takes" 10 s
    trained = []

    def fake_cell(workdir, flags, log, claim=None, config=None):
        trained.append(workdir.name)
        now[0] += 10
        finish(workdir)

    monkeypatch.setattr(cells, "run_subprocess", fake_cell)
    monkeypatch.setattr(microbatch.time, "monotonic", lambda: now[0])
    microbatch.run(tmp_path, [0], ["BN"], [1, 2, 4], global_batch=4, devices=1, time_limit_s=25)
    assert trained == ["bn_b1_s0", "bn_b2_s0"]  # a third would end at 30 s
    assert (
        "stopped for time (a cell takes up to 10 s; the limit is 25 s)" in capsys.readouterr().err
    )


def test_design_check_names_cells_run_from_uncommitted_code():
    shared = dict(
        global_batch=32, steps=9, data_order="example", model="m", dataset="d", optimizer="o"
    )
    cells = [
        {**shared, "name": "bn_b1_s0", "per_device_batch": 1, "replicas": 32, "commit": "a" * 40},
        {
            **shared,
            "name": "bn_b32_s0",
            "per_device_batch": 32,
            "replicas": 1,
            "commit": "b" * 40 + "-dirty",
        },
    ]
    text = report.design_check(cells)
    assert "DIFFERS" not in text and "bbbbbbbbbbbb-dirty" in text
    assert "- run from uncommitted changes (rerun to confirm): bn_b32_s0" in text
    cells[1]["commit"] = "b" * 40
    assert "uncommitted" not in report.design_check(cells)


# Runs the driver's parent as ``python -m experiments.study.microbatch`` would, then checks it never imported JAX
# (on a TPU VM its children could not open the chips; on a GPU it would hold memory).
PARENT = """
import runpy, sys
sys.argv = ["microbatch", *sys.argv[1:]]
try:
    runpy.run_module("experiments.study.microbatch", run_name="__main__", alter_sys=True)
except SystemExit as e:
    if e.code:
        raise
assert "jax" not in sys.modules, "the driver's parent imported jax"
print("the parent never imported jax")
"""
TINY = [
    "--seeds=0,1", "--normalizations=BN,BCN+WS,GN+WS", "--per_device_batches=1,2,8", "--global_batch=8",
    "--extra=--config.dataset=synthetic", "--extra=--config.model=vgg_tiny", "--extra=--config.num_groups=4",
    "--extra=--config.num_train_steps=6", "--extra=--config.eval_every_steps=3",
    "--extra=--config.log_every_steps=2", "--extra=--config.eval_batch_size=128",
]  # fmt: skip


@pytest.mark.slow
def test_tiny_sweep_equal_steps_and_batch_resumes_and_reports(tmp_path):
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-c", PARENT, "run", f"--workdir={sweep}", *TINY]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "the parent never imported jax" in first.stdout
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "16 of 16 cells already finished" in again.stderr, again.stderr[-2000:]

    cells = report.collect(sweep)
    assert len(cells) == 16  # ((BN, BCN+WS) × 3 batches + GN+WS × (1, 8)) × 2 seeds
    assert {c["steps"] for c in cells} == {6} and {c["global_batch"] for c in cells} == {8}
    assert {c["data_order"] for c in cells} == {"example"}
    assert {(c["per_device_batch"], c["replicas"]) for c in cells} == {(1, 8), (2, 4), (8, 1)}
    # GN+WS uses no batch statistics: its b = 1 and b = 8 cells are one training, up to float rounding.
    gn = {
        (c["per_device_batch"], c["seed"]): c["accuracy"]
        for c in cells
        if c["normalization"] == "GN+WS"
    }
    for seed in (0, 1):
        assert abs(gn[(1, seed)] - gn[(8, seed)]) <= 2 / 512

    out = report.write_report(sweep, tmp_path / "report")
    text = (out / "results.md").read_text()
    assert "- steps: 6\n" in text and "- global_batch: 8\n" in text and "DIFFERS" not in text
    assert "| BN | " in text and "| BCN+WS | " in text and "(2) |" in text  # two seeds per cell
    for claim in (
        "1. *BN degrades",
        "2. *WS improves",
        "3. *BCN+WS at micro-batch",
        "beats GN+WS",
        "Control: GN+WS",
    ):
        assert claim in text
    assert "23.72" in text  # the paper's figures beside ours
    assert (out / "microbatch.png").stat().st_size > 20_000
    assert len(json.loads((out / "cells.json").read_text())) == 16


@pytest.mark.slow
def test_in_process_matches_a_subprocess(tmp_path):
    args = ["--seeds=0", "--normalizations=BCN+WS", "--per_device_batches=2", *TINY[3:]]
    for mode, extra in (("sub", []), ("in", ["--in_process"])):
        result = subprocess.run(
            [sys.executable, "-m", "experiments.study.microbatch", "run", f"--workdir={tmp_path / mode}", *args, *extra],
            cwd=REPO, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    sub, inproc = (report.collect(tmp_path / m) for m in ("sub", "in"))
    assert (
        sub[0]["accuracy"] == inproc[0]["accuracy"] and sub[0]["steps"] == inproc[0]["steps"] == 6
    )
    assert (tmp_path / "in" / "compile_cache").is_dir()


def test_cells_started_with_another_config_stop_the_sweep(tmp_path, monkeypatch):
    """The CPU study's cells found by the accelerator's config (the names are alike) are not skipped as done."""
    trained = []

    def fake_cell(workdir, flags, log, claim=None, config=None):
        trained.append(workdir.name)
        finish(workdir)

    monkeypatch.setattr(cells, "run_subprocess", fake_cell)
    cell = microbatch.grid(["BN"], [4], [0])[0]
    flags = cell.overrides(4, 1)

    def start(config, *more):  # what the trainer writes first into a cell's folder
        (tmp_path / cell.name).mkdir(exist_ok=True)
        text = cells.cell_config([*flags, *more], config).to_json_best_effort()
        (tmp_path / cell.name / "config.json").write_text(text)

    start(cells.CONFIG)
    finish(tmp_path / cell.name)
    with pytest.raises(ValueError) as raised:
        microbatch.run(
            tmp_path, [0], ["BN"], [4], global_batch=4, devices=1, config=cells.DEEP_CONFIG
        )
    message = str(raised.value)
    assert "1 cell(s)" in message and "bn_b4_s0" in message and "microbatch_deep.py" in message
    assert "model: 'vgg_small' -> 'vgg16'" in message and "new --workdir" in message
    assert trained == []

    # How the run goes (another data folder, another logging rate) is not another cell: it counts as done.
    start(cells.CONFIG, "--config.data_dir=/elsewhere", "--config.log_every_steps=7")
    microbatch.run(tmp_path, [0], ["BN"], [4], global_batch=4, devices=1)
    assert trained == []
    # A field the cell's config does not have (added to the trainer since) is not compared.
    recorded = json.loads((tmp_path / cell.name / "config.json").read_text())
    del recorded["reestimate_bn_images"]
    (tmp_path / cell.name / "config.json").write_text(json.dumps(recorded))
    assert cells.config_changes(tmp_path / cell.name, flags) == []
    assert cells.config_changes(tmp_path / "never_started", flags) == []
