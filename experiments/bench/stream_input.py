"""The streaming pipeline's host throughput: images/s per core for ImageNet-sized JPEGs and CIFAR-sized PNGs.

Images are made here (random smooth content, PIL-encoded: JPEG quality 90 at 500x375, ImageNet's typical size;
PNG at 32x32x3, as TFDS stores CIFAR) and kept encoded in memory, so that storage does not enter the figure.
Two figures per kind:

- ``per_core``: one thread decoding and augmenting record after record exactly as the pipeline's transforms do
  (``experiments/trainer/input/transforms.py``; ImageNet: random-resized crop to 224 + flip for training, resize 256 +
  centre crop 224 for evaluation; CIFAR: pad 4, crop, flip): images/s one host core delivers.
- ``pipeline``: grain's ``DataLoader`` as training runs it (``Decoded`` source in ``input_threads`` reading
  threads, augmentation, batches of 64), all of this machine's cores: images/s, and per core.

Against what a step consumes (images/s of a training step on this machine's device, measured in the same
run): headroom = delivered / consumed; a host needs ``consumed / per_core`` cores to keep its devices fed.
"""

from __future__ import annotations

import dataclasses
import io
import os
import time
from typing import Any

import grain
import numpy as np
from PIL import Image

from experiments.trainer.input import sources, stream, transforms

KINDS = {
    # name: (height, width, format, augmentation)
    "imagenet": (375, 500, "JPEG", stream.Augmentation("inception", 0, True, 224)),
    "cifar": (32, 32, "PNG", stream.Augmentation("pad_crop", 4, True, None)),
}


def encoded_images(kind: str, count: int, seed: int = 0) -> list[bytes]:
    """``count`` encoded images of ``kind``: smooth random colour fields plus noise (JPEG-like content)."""
    height, width, fmt, _ = KINDS[kind]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        coarse = rng.integers(
            0, 256, (max(2, height // 32), max(2, width // 32), 3), dtype=np.uint8
        )
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))
        noisy = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(
            buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {})
        )
        out.append(buffer.getvalue())
    return out


def _per_core(images: list[bytes], augmentation: stream.Augmentation, train: bool, seconds: float):
    """Images/s of decode + augment in this thread, cycling over ``images`` for about ``seconds``."""
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for i, data in enumerate(images):
            image = transforms.decode(data, 3)
            if train:
                rng = np.random.Generator(np.random.Philox(key=i))  # as grain seeds each record
                augmentation.train(image, rng)
            else:
                augmentation.eval(image)
            count += 1
    return count / (time.perf_counter() - start)


def _pipeline(images: list[bytes], augmentation: stream.Augmentation, batches: int, threads: int):
    labels = np.zeros(len(images), np.int32)
    source = sources.Decoded(_Encoded(images, labels), 3)
    loader = grain.DataLoader(
        data_source=source,
        sampler=grain.samplers.IndexSampler(len(images), shuffle=True, seed=0, num_epochs=None),
        operations=[stream._TrainMap(augmentation), grain.transforms.Batch(64)],
        read_options=grain.ReadOptions(num_threads=threads),
    )
    iterator = iter(loader)
    next(iterator)  # threads started
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * 64 / (time.perf_counter() - start)


@dataclasses.dataclass
class _Encoded:
    images: list[bytes]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "label": self.labels[i]}


def imagenet_step_images_per_s(setup, tiny: bool) -> dict[str, Any] | None:
    """A ResNet-50 (GN + WS) training step on 224x224 images on this device, batch 8; None in tiny mode or
    where model_factory has no ``resnet50``."""
    from experiments.bench import cases
    from experiments.trainer import model_factory

    if tiny or "resnet50" not in model_factory.MODELS:
        return None
    imagenet = dataclasses.replace(setup, model="resnet50", image_shape=(224, 224, 3))
    return cases.time_train_step(imagenet, 8, conv="ws", norm="gn", dtype="float32")


def measure(tiny: bool, consumed: dict[str, float | None]) -> dict[str, Any]:
    """Per kind: per-core and whole-pipeline images/s, and the headroom over ``consumed[kind]`` (img/s)."""
    cores = os.cpu_count() or 1
    seconds, batches, count = (0.3, 2, 16) if tiny else (8.0, 40, 256)
    results: dict[str, Any] = {"cores": cores, "load_average": os.getloadavg()}
    for kind, (height, width, fmt, augmentation) in KINDS.items():
        images = encoded_images(kind, count)
        train = _per_core(images, augmentation, True, seconds)
        evaluation = _per_core(images, augmentation, False, seconds)
        pipeline = _pipeline(images, augmentation, batches, min(16, cores))
        step = consumed.get(kind)
        results[kind] = {
            "image": f"{width}x{height} {fmt}",
            "mean_encoded_bytes": float(np.mean([len(x) for x in images])),
            "train_images_per_s_per_core": train,
            "eval_images_per_s_per_core": evaluation,
            "pipeline_images_per_s": pipeline,
            "pipeline_images_per_s_per_core": pipeline / cores,
            "step_consumes_images_per_s": step,
            "headroom": pipeline / step if step else None,
            "cores_to_feed_the_step": step / train if step else None,
        }
    return results


if (
    __name__ == "__main__"
):  # the host figures alone, without a device step: python -m experiments.bench.stream_input
    import json

    print(json.dumps(measure(False, {}), indent=2))
