"""The harness around the library: a trainer, the micro-batch study, benchmarks, one-off checks.

    trainer/   the optax trainer (steps, loop, checkpoints, model and optimizer from a config) and its
               input pipeline (trainer/input/); entry point: python -m experiments.train
    configs/   the trainer's ml_collections configs; every field is declared in configs/default.py
    study/     the micro-batch study: python -m experiments.study.microbatch {run,report}
    bench/     benchmarks (python -m experiments.bench.benchmark) and the accelerator suite
               (bench/suite/: python -m experiments.bench.suite --out DIR)
    checks/    one-off checks against other code: python -m experiments.checks.official_check
    common/    what they all share: ConfigError, provenance, XLA:CPU settings, the mesh axis, a file lock

The trainer imports nothing from the study, the benchmarks or the checks; its input pipeline imports nothing
from the rest of the trainer.
"""
