"""An offline bundle of the accelerator suite, for a GPU or TPU machine without network: one folder, ``.device/``.

    python -m experiments.bench.suite.prepare               # here, with network: fills .device/
    # copy the checkout with .device/ to the offline machine, then there:
    bash experiments/bench/suite/offline.sh --out DIR       # installs .device/wheels, runs the suite

A machine with network needs none of this: ``python -m experiments.bench.suite --out DIR`` there. The bundle
is for one that has JAX (and, for the PyTorch part, torch) but cannot download anything, and may lack
TensorFlow. ``.device/`` holds:

- ``wheels/``: the pure-Python packages such a machine usually lacks, for its Python (``--python_version``),
  without their dependencies (absl-py, PyYAML, numpy, packaging, protobuf, torch; it must have those):
  ml-collections (the configs), tensorboardX (TensorBoard events), labml-nn (the PyTorch reference; the
  modules it uses import torch only).
- ``data/``: the NumPy cache (``experiments/trainer/input/data_cache.py``) of Fashion-MNIST, made from
  ``--data_dir`` (or TFDS's download), so training there needs no TensorFlow.
- ``manifest.json``: the commit and source fingerprint it was prepared at, and each file's size and SHA-256;
  the suite's ``results.json`` repeats it, which ties the results to the commit.

``.device/`` is ignored by git (a ``.gitignore`` of its own, and ``/.device/`` in ``.git/info/exclude``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import subprocess
import sys

from experiments.bench.suite.runner import BUNDLE_DIR, REPO, source_fingerprint

# The versions this project runs with here (the venv's; labml-nn: pyproject's torch-reference extra).
WHEELS = {"ml-collections": "1.1.0", "tensorboardX": "2.6.5", "labml-nn": "0.5.1"}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
SHARED_TFDS = REPO.parent / "shared" / "tensorflow_datasets"


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


def download_wheels(
    folder: pathlib.Path, wheels: dict[str, str], python_version: str = "3.12"
) -> list[pathlib.Path]:
    """``pip download`` of each ``name==version`` for CPython ``python_version`` on x86-64 Linux, no dependencies."""
    folder.mkdir(parents=True, exist_ok=True)
    platforms = [f"--platform={p}" for p in PLATFORMS]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--only-binary=:all:", f"--python-version={python_version}", "--implementation=cp", *platforms,
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


def prepare(
    out: pathlib.Path,
    data_dir: str | None,
    datasets: list[str],
    wheels: dict[str, str],
    python_version: str = "3.12",
) -> dict:
    """Fills ``out`` (wheels, data cache, manifest); returns the manifest."""
    from experiments.trainer.input import data

    ignore(out)
    if wheels:
        download_wheels(out / "wheels", wheels, python_version)
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
        "bytes": sum(p.stat().st_size for p in files),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default=str(BUNDLE_DIR), help="the folder to fill (default .device)"
    )
    parser.add_argument("--data_dir", default=str(SHARED_TFDS) if SHARED_TFDS.exists() else None,
                        help="TFDS data dir to read the datasets from (default ../shared/...)")  # fmt: skip
    parser.add_argument("--datasets", default="fashion_mnist", help="comma-separated TFDS names")
    parser.add_argument("--skip_wheels", action="store_true", help="no pip download (offline)")
    parser.add_argument(
        "--python_version", default="3.12", help="the offline machine's Python, for its wheels"
    )
    args = parser.parse_args(argv)
    manifest = prepare(
        pathlib.Path(args.out).resolve(),
        args.data_dir,
        [d for d in args.datasets.split(",") if d],
        {} if args.skip_wheels else WHEELS,
        args.python_version,
    )
    print(
        f"prepared {args.out}: {len(manifest['files'])} files, {manifest['bytes'] / 2**20:.1f} MiB.\n"
        "next, on the offline machine, from this checkout with the folder in it: "
        "bash experiments/bench/suite/offline.sh --out DIR"
    )


if __name__ == "__main__":
    main()
