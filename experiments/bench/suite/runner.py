"""The accelerator suite: tests, benchmarks, time to accuracy, micro-batch speed and a profile, on a GPU or TPU.

    python -m experiments.bench.suite --out DIR                       # the default parts, each in turn
    python -m experiments.bench.suite --out DIR --parts=bench,tta     # some of them
    python -m experiments.bench.suite --out DIR --parts=study --deadline_s=540   # the micro-batch study's cells
    python -m experiments.bench.suite --out DIR --tiny                # tiny sizes: checks the suite on any CPU

Each part (``parts/``) runs in its own process, one after the other, with its own time budget, cut to what is
left before ``--deadline_s`` (default: the chosen parts' budgets added up): a part that fails or overruns is
recorded as such and the next one starts. A part records its measurements as it goes, so a part stopped at its
limit keeps what it finished. The suite never touches the card's settings and applies no XLA:CPU flags.

What it writes to ``DIR``: ``table.md`` (each figure beside its goal, also printed last), ``results.json``
(every figure, each part's status and log tail, the machine), ``logs/PART.log`` (each part's output),
``profile/`` (the training step's profiler trace and compiled HLO), ``tests/junit.xml`` and, for the study,
``study/runs/CELL/`` (each cell's config, metrics and run info: what ``python -m experiments.study.microbatch
report`` reads). A later call with the same ``--out`` (or one holding a copy of an earlier call's ``study/``)
goes on with the study where it stopped: the finished cells are skipped.

On a machine without network, run ``python -m experiments.bench.suite.prepare`` first where there is one, and
``bash experiments/bench/suite/offline.sh --out DIR`` on the offline machine (see ``prepare.py``).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[3]
BUNDLE_DIR = REPO / ".device"  # the offline bundle that experiments/bench/suite/prepare.py makes
# name -> (module, its budget in seconds on one H200-class GPU), in the order they run.
PARTS = {
    "tests": ("experiments.bench.suite.parts.tests_part", 80),
    "bench": ("experiments.bench.suite.parts.jax_bench", 175),
    "tta": ("experiments.bench.suite.parts.time_to_accuracy", 75),
    "torch": ("experiments.bench.suite.parts.torch_bench", 80),
    "profile": ("experiments.bench.suite.parts.profile_step", 30),
    "micro": ("experiments.bench.suite.parts.micro_speed", 35),
    # Last: it gets what the others leave (they rarely use their whole budgets); skips without torch/timm.
    "pretrained": ("experiments.bench.suite.parts.pretrained_check", 75),
    # Not in the default call. The ResNet-50 step: a rerun with time to spare (--parts=imagenet).
    "imagenet": ("experiments.bench.suite.parts.imagenet_step", 150),
    # Not in the default call: the micro-batch study's cells, as many as fit (--parts=study --deadline_s=540).
    "study": ("experiments.bench.suite.parts.microbatch_study", 520),
}
OPTIONAL_PARTS = ("imagenet", "study")
DEFAULT_PARTS = [name for name in PARTS if name not in OPTIONAL_PARTS]
STUDY_RECORDS = ("config.json", "metrics.jsonl", "run_info.json")  # per cell; not its checkpoints
TINY_BUDGET_S = 120  # at least this per part in tiny mode (on a loaded 2-core CPU)
TINY_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
RESERVE_S = 8  # kept back for writing the results


def source_fingerprint(repo: pathlib.Path = REPO) -> str:
    """SHA-256 over the Python sources (path and bytes) of wsjax/, experiments/ and tests/.

    The device machine gets a copy of the working tree without git: this ties its results to the commit
    that ``prepare.py`` recorded with the same fingerprint.
    """
    digest = hashlib.sha256()
    for folder in ("wsjax", "experiments", "tests"):
        for path in sorted((repo / folder).rglob("*.py")):
            digest.update(str(path.relative_to(repo)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _run_child(args: argparse.Namespace) -> None:
    from experiments.bench.suite.context import PartContext

    module = importlib.import_module(args.module)
    ctx = PartContext(
        args.child, args.tiny, pathlib.Path(args.work), args.data_cache_dir, args.part_deadline
    )
    ctx.record("started", datetime.datetime.now().isoformat(timespec="seconds"))
    module.run(ctx)


def _environment(work: pathlib.Path, tiny: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # Parts that compile the same step (the benchmark's FLOP count, then its timing; the profile) reuse it.
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(work / "jax_cache"))
    # Tiny mode checks code paths and measures nothing: compile without optimizing (twice as fast).
    if tiny:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {TINY_XLA_FLAGS}".strip()
    return env


def _nvidia_smi() -> str | None:
    query = "name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm,power.draw,temperature.gpu"
    try:
        done = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def _run_part(name: str, args, work: pathlib.Path, env: dict, budget: float, log) -> dict:
    from experiments.bench.suite.context import read_results

    started = time.time()
    command = [
        sys.executable,
        "-m",
        "experiments.bench.suite",
        f"--child={name}",
        f"--module={PARTS[name][0]}",
        f"--work={work}",
        f"--part_deadline={started + budget - 3}",
    ]
    if args.data_cache_dir is not None:
        command.append(f"--data_cache_dir={args.data_cache_dir}")
    if args.tiny:
        command.append("--tiny")
    part_log = work / "logs" / f"{name}.log"
    part_log.parent.mkdir(parents=True, exist_ok=True)
    with part_log.open("w") as f:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            status = (
                "ok" if process.wait(timeout=budget) == 0 else f"failed (exit {process.returncode})"
            )
        except subprocess.TimeoutExpired:
            status = f"timed out after {budget:.0f} s"
        finally:  # the part and anything it started (pytest workers): its own process group
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
    wall = time.time() - started
    text = part_log.read_text(errors="replace")
    print(f"[suite] {name}: {status} in {wall:.0f} s (budget {budget:.0f} s)", file=log, flush=True)
    part = {
        "status": status,
        "wall_s": wall,
        "budget_s": budget,
        "results": read_results(work / "parts" / f"{name}.json"),
    }
    if status != "ok":
        part["log_tail"] = text[-3000:]
    return part


def _copy_study_records(source: pathlib.Path, target: pathlib.Path) -> None:
    """Each study cell's records (``STUDY_RECORDS``) under ``source/study`` to the same place under ``target``."""
    for path in sorted((source / "study").rglob("*")) if (source / "study").is_dir() else []:
        if path.is_file() and path.name in STUDY_RECORDS:
            to = target / path.relative_to(source)
            to.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, to)


def _write_results(out: pathlib.Path, work: pathlib.Path, results: dict, table: str) -> None:
    """The results a reader looks at, from the suite's scratch folder: not the study's checkpoints."""
    out.mkdir(parents=True, exist_ok=True)
    for folder in ("logs", "profile", "tests"):
        if (work / folder).is_dir():
            shutil.copytree(work / folder, out / folder, dirs_exist_ok=True)
    _copy_study_records(work, out)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "table.md").write_text(table + "\n")


def run_suite(args: argparse.Namespace) -> int:
    from experiments.bench.suite.table import format_table

    started = time.time()
    names = [n.strip() for n in args.parts.split(",") if n.strip()]
    unknown = sorted(set(names) - set(PARTS))
    if unknown:
        raise SystemExit(f"error: unknown part(s) {unknown}; choose from {', '.join(PARTS)}.")
    planned = {n: max(PARTS[n][1], TINY_BUDGET_S) if args.tiny else PARTS[n][1] for n in names}
    deadline_s = args.deadline_s or sum(planned.values()) + RESERVE_S
    deadline = started + deadline_s
    out = pathlib.Path(args.out)
    work = pathlib.Path(tempfile.mkdtemp(prefix="wsjax_suite_"))
    # The study's cells finished by an earlier call into the same --out: the sweep skips them.
    _copy_study_records(out, work)
    env = _environment(work, args.tiny)
    manifest = BUNDLE_DIR / "manifest.json"
    results: dict = {
        "suite": {
            "date": datetime.date.today().isoformat(),
            "tiny": args.tiny,
            "source_fingerprint": source_fingerprint(),
            "prepared": json.loads(manifest.read_text()) if manifest.exists() else None,
            "data_cache_dir": args.data_cache_dir,
            "nvidia_smi_before": _nvidia_smi(),
            "deadline_s": deadline_s,
        },
        "parts": {},
    }
    for name in names:
        budget = min(planned[name], deadline - time.time() - RESERVE_S)
        if budget < 10:
            results["parts"][name] = {"status": "skipped: no time left", "wall_s": 0.0}
            continue
        results["parts"][name] = _run_part(name, args, work, env, budget, sys.stdout)
    results["suite"]["nvidia_smi_after"] = _nvidia_smi()
    results["suite"]["wall_s"] = time.time() - started
    table = format_table(results)
    _write_results(out, work, results, table)
    shutil.rmtree(work, ignore_errors=True)
    print(f"[suite] results in {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    print(table)
    return 0 if all(p["status"] == "ok" for p in results["parts"].values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.bench.suite", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--tiny", action="store_true", help="tiny sizes: checks the suite in seconds"
    )
    parser.add_argument("--out", default=None, help="the folder to write the results to (required)")
    parser.add_argument(
        "--parts",
        default=",".join(DEFAULT_PARTS),
        help=f"comma-separated, from {list(PARTS)} (default: all but {', '.join(OPTIONAL_PARTS)})",
    )
    parser.add_argument(
        "--deadline_s",
        type=float,
        default=None,
        help="the whole suite's limit in seconds (default: the chosen parts' budgets added up)",
    )
    parser.add_argument(
        "--data_cache_dir",
        default=str(BUNDLE_DIR / "data") if (BUNDLE_DIR / "data").is_dir() else None,
        help="the NumPy dataset cache the training parts read (default: the offline bundle's, if there "
        "is one, else the trainer's own cache, filled from TFDS on first use)",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--module", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--part_deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _run_child(args)
        return 0
    if args.out is None:
        parser.error("--out DIR is required: the folder to write the results to")
    return run_suite(args)
