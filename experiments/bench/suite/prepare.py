"""Prepares, on this machine, everything the device suite needs on the GPU machine, in one folder: ``.device/``.

    python -m experiments.bench.suite.prepare      # then, with the device tool (README, "Accelerators"):
                                              #   run(command="bash experiments/bench/suite/offline.sh",
                                              #       carry=[".device"], timeout_s=600)

The GPU machine has no network, no TensorFlow and only its image's packages; the device tool sends the
working tree (at most 64 MiB) and the ignored folders named in ``carry``. So ``.device/`` holds:

- ``wheels/``: the pure-Python packages that machine lacks, for Python 3.12, without their dependencies
  (which it has: absl-py, PyYAML, numpy, packaging, protobuf, torch): ml-collections (the configs),
  tensorboardX (TensorBoard events), labml-nn (the PyTorch reference; the modules it uses import torch only).
- ``data/``: the NumPy cache (``experiments/trainer/input/data_cache.py``) of Fashion-MNIST, made from
  ``../shared/tensorflow_datasets`` (or TFDS's download), so training there needs no TensorFlow.
- ``manifest.json``: the commit and source fingerprint it was prepared at, each file's size and SHA-256,
  and the size that will travel.

``.device/`` is ignored by git (a ``.gitignore`` of its own, and ``/.device/`` in ``.git/info/exclude``).
Run this in the checkout the device tool sends: the one the session was started in.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import subprocess
import sys

from experiments.bench.suite.runner import DEVICE_DIR, REPO, source_fingerprint

# The versions this project runs with here (the venv's; labml-nn: pyproject's torch-reference extra).
WHEELS = {"ml-collections": "1.1.0", "tensorboardX": "2.6.5", "labml-nn": "0.5.1"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
SHARED_TFDS = REPO.parent / "shared" / "tensorflow_datasets"
TRAVEL_LIMIT_BYTES = 64 * 2**20  # the device tool's limit on the working tree plus carried folders
CARRY = [".device"]
COMMAND = "bash experiments/bench/suite/offline.sh"


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


def ignore(folder: pathlib.Path) -> None:
    """Keeps ``folder`` out of git: its own ``.gitignore``, and a line in ``.git/info/exclude``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".gitignore").write_text("# made by experiments/bench/suite/prepare.py\n*\n")
    exclude = _git("rev-parse", "--git-path", "info/exclude")
    if exclude and folder.is_relative_to(REPO):
        path = pathlib.Path(exclude) if pathlib.Path(exclude).is_absolute() else REPO / exclude
        line = f"/{folder.relative_to(REPO)}/"
        lines = path.read_text().splitlines() if path.exists() else []
        if line not in lines:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"{x}\n" for x in [*lines, line]))


def download_wheels(folder: pathlib.Path, wheels: dict[str, str]) -> list[pathlib.Path]:
    """``pip download`` of each ``name==version`` for CPython 3.12 on x86-64 Linux, no dependencies."""
    folder.mkdir(parents=True, exist_ok=True)
    platforms = [f"--platform={p}" for p in PLATFORMS]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--only-binary=:all:", "--python-version=3.12", "--implementation=cp", *platforms,
               f"--dest={folder}", *(f"{n}=={v}" for n, v in wheels.items())]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(
            f"error: pip could not download {', '.join(wheels)} (offline?); rerun with network, or "
            f"--skip_wheels and place the wheels in {folder} by hand:\n{done.stderr[-1500:]}"
        )
    return sorted(folder.glob("*.whl"))


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def travel_bytes(extra: pathlib.Path) -> int:
    """What the device tool sends: tracked and untracked-not-ignored files, plus the carried folder."""
    listed = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    files = [REPO / f for f in listed if f and (REPO / f).is_file()]
    files += [p for p in extra.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in set(files))


def prepare(
    out: pathlib.Path, data_dir: str | None, datasets: list[str], wheels: dict[str, str]
) -> dict:
    """Fills ``out`` (wheels, data cache, manifest); returns the manifest."""
    from experiments.trainer.input import data

    ignore(out)
    if wheels:
        download_wheels(out / "wheels", wheels)
    for name in datasets:
        folder = data.write_cache(name, data_dir, str(out / "data"))
        print(
            f"cached {name}: {folder.relative_to(REPO) if folder.is_relative_to(REPO) else folder}"
        )
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    manifest = {
        "commit": _git("rev-parse", "HEAD")
        + ("-dirty" if _git("status", "--porcelain", "-uno") else ""),
        "source_fingerprint": source_fingerprint(),
        "files": {
            str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": _sha256(p)[:16]}
            for p in files
        },  # fmt: skip
        "travel_bytes": travel_bytes(out),
        "command": COMMAND,
        "carry": CARRY,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if manifest["travel_bytes"] > TRAVEL_LIMIT_BYTES:
        raise SystemExit(
            f"error: {manifest['travel_bytes'] / 2**20:.1f} MiB would travel, over the device tool's "
            f"64 MiB: remove untracked files or cache fewer datasets."
        )
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default=str(DEVICE_DIR), help="the folder to fill (default .device)"
    )
    parser.add_argument("--data_dir", default=str(SHARED_TFDS) if SHARED_TFDS.exists() else None,
                        help="TFDS data dir to read the datasets from (default ../shared/...)")  # fmt: skip
    parser.add_argument("--datasets", default="fashion_mnist", help="comma-separated TFDS names")
    parser.add_argument("--skip_wheels", action="store_true", help="no pip download (offline)")
    args = parser.parse_args(argv)
    manifest = prepare(
        pathlib.Path(args.out).resolve(),
        args.data_dir,
        [d for d in args.datasets.split(",") if d],
        {} if args.skip_wheels else WHEELS,
    )
    print(
        f"prepared {args.out}: {len(manifest['files'])} files; "
        f"{manifest['travel_bytes'] / 2**20:.1f} MiB will travel (limit 64).\n"
        f"next, with the device tool: run(command={COMMAND!r}, carry={CARRY}, timeout_s=600)"
    )


if __name__ == "__main__":
    main()
