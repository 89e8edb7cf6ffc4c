"""The streaming input pipeline: each process reads, decodes and augments its own shard on the host.

For datasets that do not fit in memory (ImageNet: ~140 GB of JPEGs). ``config.input_pipeline="stream"`` (or
``"auto"``, see ``choice.py``) replaces the memory path's device-resident shards (``experiments/trainer/input/data.py``) with
host batches that the train step receives ready-made (``steps.StepConfig.streamed``).

**Why grain.** The run must resume *bitwise* after ``kill -9`` (as the memory path does), on many hosts, each
reading only its own files. grain's ``DataLoader`` over a random-access source is built for exactly that: its
``IndexSampler`` is a pure function of (seed, position) -- a per-epoch shuffle of this process's contiguous
shard (``ShardOptions``, what ``ShardByJaxProcess`` builds from ``jax.process_index()``) -- and every record
gets its own ``numpy`` generator seeded from the seed and its position, so the batches and their augmentation
do not depend on threads, worker processes or restarts; the iterator's position is a few bytes of JSON
(``get_state`` / ``set_state``) that we save beside each checkpoint (``positions.py``). tf.data with TFDS's
per-process splits can also shard, but its checkpoint is a TensorFlow iterator snapshot (shuffle buffers and
all, large, through ``tf.train.Checkpoint``), its shuffle is a window rather than a permutation of the shard,
and it would put TensorFlow inside every training process. grain needs only NumPy at training time; TFDS and
TensorFlow are used to prepare ``array_record`` files, or not at all (synthetic data, the NumPy cache).

**Order.** Process ``p`` of ``P`` owns records ``[p N // P, (p + 1) N // P)`` of the training split (the last
``N mod P`` unused) and walks a fresh permutation of them every epoch; its batch of ``local replicas x
per-replica batch`` consecutive records is split in order over its replicas (device-major, as in
``steps.py``). A process's stream runs on across epoch boundaries. The order differs from the memory path's
(which permutes per replica, on the device), not its distribution.

**Evaluation** covers every example of the evaluation split exactly once: process ``p`` reads the contiguous
range ``p``of :func:`eval_ranges`, in batches of ``local replicas x eval batch``; the last is padded and
masked, and a process with fewer batches than another adds fully masked ones (every process must enter each
evaluation step, a collective).

**Prefetch.** A thread pulls batches from grain, records the iterator's position after each, and places them
on the devices (``jax.make_array_from_process_local_data`` with the mesh's sharding), ``config.prefetch``
batches ahead, so the step waits on the host only when the host is slower than the step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from experiments.common.errors import ConfigError
from experiments.common.mesh import AXIS
from experiments.trainer.input import sources as sources_lib
from experiments.trainer.input import transforms


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """What the host does to each image: ``pad_crop`` (CIFAR style, native size) or ``inception`` (crops to
    ``size``)."""

    kind: str
    padding: int
    mirror: bool
    size: int | None  # output side for "inception"

    def train(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.kind == "inception":
            return transforms.inception_crop(image, rng, self.size, self.mirror)
        return transforms.pad_crop_flip(image, rng, self.padding, self.mirror)

    def eval(self, image: np.ndarray) -> np.ndarray:
        return transforms.center_crop(image, self.size) if self.kind == "inception" else image


class _TrainMap(grain.transforms.RandomMap):
    def __init__(self, augmentation: Augmentation):
        self.augmentation = augmentation

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        return {"image": self.augmentation.train(element["image"], rng), "label": element["label"]}


class _EvalMap(grain.transforms.Map):
    def __init__(self, augmentation: Augmentation):
        self.augmentation = augmentation

    def map(self, element: dict) -> dict:
        return {**element, "image": self.augmentation.eval(element["image"])}


def eval_ranges(num_examples: int, process_count: int) -> list[tuple[int, int]]:
    """Each process's contiguous range of the evaluation split: every example in exactly one."""
    size = -(-num_examples // process_count)
    return [
        (min(p * size, num_examples), min((p + 1) * size, num_examples))
        for p in range(process_count)
    ]


def num_eval_batches(num_examples: int, process_count: int, per_process_batch: int) -> int:
    """Evaluation steps per pass, the same on every process (the longest range's batches)."""
    longest = max(hi - lo for lo, hi in eval_ranges(num_examples, process_count))
    return max(1, -(-longest // per_process_batch))


def _absl_flags_parsed() -> None:
    """Marks absl's flags parsed where no ``app.run`` did (a notebook, ``train_and_evaluate`` called directly).

    grain's worker processes read absl flags of their own as they start, and absl refuses any flag read before
    parsing: without this, ``input_workers > 0`` fails outside the command line with UnparsedFlagAccessError.
    Flags already parsed (the command line) are left as they are.
    """
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def eval_host_batches(
    source: Any,
    process_index: int,
    process_count: int,
    per_process_batch: int,
    augmentation: Augmentation,
    image_shape: tuple[int, int, int],
    workers: int = 0,
    threads: int = 16,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's evaluation batches of a decoded ``source``: ``image``, ``label``, ``mask``, ``index``.

    Every process yields :func:`num_eval_batches` batches of ``per_process_batch``; ``mask`` is 1 for a real
    example, ``index`` its position in the split (-1 for padding).
    """
    lo, hi = eval_ranges(len(source), process_count)[process_index]
    total = num_eval_batches(len(source), process_count, per_process_batch)
    batches: Iterator[dict] = iter(())
    if hi > lo:
        loader = grain.DataLoader(
            data_source=sources_lib.Range(source, lo, hi),
            sampler=grain.samplers.IndexSampler(hi - lo, shuffle=False, num_epochs=1),
            operations=[_EvalMap(augmentation), grain.transforms.Batch(per_process_batch)],
            worker_count=workers,
            read_options=grain.ReadOptions(num_threads=threads),
        )
        batches = iter(loader)
    for _ in range(total):
        batch = next(batches, None)
        n = 0 if batch is None else len(batch["label"])
        out = {
            "image": np.zeros((per_process_batch, *image_shape), np.uint8),
            "label": np.zeros((per_process_batch,), np.int32),
            "mask": (np.arange(per_process_batch) < n).astype(np.float32),
            "index": np.full((per_process_batch,), -1, np.int64),
        }
        if n:
            out["image"][:n], out["label"][:n] = batch["image"], batch["label"]
            out["index"][:n] = batch["index"]  # the position in the split (Decoded)
        yield out


class _Prefetch:
    """A thread that pulls ``(batch, position)`` from ``produce`` into a queue of ``depth``."""

    def __init__(self, produce: Callable[[], Any], depth: int):
        self._produce, self._queue = produce, queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="input-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                item = self._produce()
                while not self._stop.is_set():
                    try:
                        self._queue.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # handed to the training thread, which raises it
            self._queue.put((False, e))

    def get(self) -> Any:
        ok, item = self._queue.get()
        if not ok:
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class StreamInput:
    """Training batches and evaluation passes from the host, for the steps of ``steps.py``.

    ``train_args()`` gives the arguments after the state of the next train step; ``eval_batches()`` those of
    each evaluation step; ``position`` is the grain iterator's state after the last batch handed out (what a
    checkpoint of that step saves), ``restore(position)`` resumes there.
    """

    def __init__(
        self,
        config,
        mesh: Mesh,
        replicas_per_device: int,
        per_replica_batch: int,
        eval_per_replica: int,
    ):
        # validate() has checked the names and ranges; what the data says is checked here.
        kind = config.augmentation
        self.sources = sources_lib.open_sources(config)
        size = config.image_size or None
        if kind == "pad_crop" and self.sources.shape is None:
            raise ConfigError(
                f"{config.dataset!r} has images of different sizes: use augmentation='inception' with "
                f"an image_size."
            )
        self.augmentation = Augmentation(kind, config.crop_padding, config.horizontal_flip, size)
        channels = self.sources.channels
        self.image_shape = (size, size, channels) if kind == "inception" else self.sources.shape
        self.num_classes = self.sources.num_classes
        self.mesh = mesh
        self.process_index, self.process_count = jax.process_index(), jax.process_count()
        local_devices = sum(d.process_index == self.process_index for d in mesh.devices.flat)
        self.local_replicas = local_devices * replicas_per_device
        self.num_replicas = mesh.devices.size * replicas_per_device
        self.per_replica_batch, self.eval_per_replica = per_replica_batch, eval_per_replica
        self.workers = config.input_workers
        if self.workers:
            _absl_flags_parsed()
        self.threads = config.input_threads or min(16, os.cpu_count() or 1)
        self.depth = config.prefetch
        self.train_source = sources_lib.Decoded(self.sources.train, channels)
        self.eval_source = sources_lib.Decoded(self.sources.eval, channels)
        # What each process walks: its N // P records (grain's even split, the remainder dropped).
        self.train_examples = len(self.train_source) // self.process_count * self.process_count
        self.eval_examples = len(self.eval_source)
        self.per_process_batch = self.local_replicas * per_replica_batch
        self.steps_per_epoch = (
            len(self.train_source) // self.process_count // self.per_process_batch
        )
        self._sampler = grain.samplers.IndexSampler(
            len(self.train_source),
            shard_options=grain.sharding.ShardOptions(
                self.process_index, self.process_count, drop_remainder=True
            ),
            shuffle=True,
            num_epochs=None,
            seed=config.seed,
        )
        self._loader = grain.DataLoader(
            data_source=self.train_source,
            sampler=self._sampler,
            operations=[
                _TrainMap(self.augmentation),
                grain.transforms.Batch(self.per_process_batch, drop_remainder=True),
            ],
            worker_count=self.workers,
            read_options=grain.ReadOptions(num_threads=self.threads),
        )
        self._sharding = NamedSharding(mesh, P(AXIS))
        self._iterator = None
        self._prefetch: _Prefetch | None = None
        self._restore_to: str | None = None
        self.position: str | None = None

    @property
    def source_label(self) -> str:
        return self.sources.label

    def to_global(self, local: np.ndarray) -> jax.Array:
        """This process's ``(local replicas x b, ...)`` rows as the global ``(replicas, b, ...)`` array."""
        local = local.reshape(self.local_replicas, -1, *local.shape[1:])
        return jax.make_array_from_process_local_data(
            self._sharding, local, (self.num_replicas, *local.shape[1:])
        )

    def restore(self, position: str) -> None:
        """Resumes after the batch whose position a checkpoint saved (before the first ``train_args``)."""
        if self._iterator is not None:
            raise RuntimeError("restore() must precede the first batch")
        saved = json.loads(position).get("worker_count", self.workers)
        if saved != self.workers:  # grain would refuse it later, in its own words
            raise ConfigError(
                f"this run's input positions were saved with input_workers={saved}, not {self.workers}: "
                f"grain's batches depend on its worker count, so resume with --config.input_workers={saved}."
            )
        self._restore_to = position

    def _next(self) -> tuple[tuple[jax.Array, jax.Array], str]:
        batch = next(self._iterator)
        position = self._iterator.get_state().decode()
        return (self.to_global(batch["image"]), self.to_global(batch["label"])), position

    def train_args(self) -> tuple[jax.Array, jax.Array]:
        """``(images (replicas, b, H, W, C) uint8, labels (replicas, b))`` of the next step."""
        if self._iterator is None:
            self._iterator = iter(self._loader)
            if self._restore_to is not None:
                self._iterator.set_state(self._restore_to.encode())
            self._prefetch = _Prefetch(self._next, self.depth)
        args, self.position = self._prefetch.get()
        return args

    def host_eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        return eval_host_batches(
            self.eval_source,
            self.process_index,
            self.process_count,
            self.local_replicas * self.eval_per_replica,
            self.augmentation,
            self.image_shape,
            self.workers,
            self.threads,
        )

    def eval_batches(self) -> Iterator[tuple]:
        """``(images, labels, mask, batch_index=0)`` of each evaluation step (``steps.make_eval_step``)."""
        for batch in self.host_eval_batches():
            yield (
                self.to_global(batch["image"]),
                self.to_global(batch["label"]),
                self.to_global(batch["mask"]),
                jnp.int32(0),
            )

    def close(self) -> None:
        if self._prefetch is not None:
            self._prefetch.close()
