"""Test configuration, set before JAX starts: 8 fake CPU devices, patient collectives, strict NumPy promotion.

These are the tests' own settings. ``tests/experiments/conftest.py`` adds the experiments' XLA:CPU settings for
the harness's tests, which run as ``python -m experiments.train`` does.
"""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# 8 fake devices on 2 loaded cores can keep a collective's threads waiting past XLA:CPU's 40 s: ten minutes.
# (XLA:CPU flags; other backends ignore them.)
PATIENT_COLLECTIVES = (
    "--xla_cpu_collective_call_terminate_timeout_seconds=600",
    "--xla_cpu_collective_timeout_seconds=600",
)
_flags = os.environ.get("XLA_FLAGS", "")
_present = {f.split("=", 1)[0] for f in _flags.split()}
os.environ["XLA_FLAGS"] = " ".join(
    [_flags, *(f for f in PATIENT_COLLECTIVES if f.split("=", 1)[0] not in _present)]
).strip()

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
# Most of a test's time is XLA compiling: a contributor's second run of ./test reads the programs back from
# disk (keyed by the program, the flags and the versions, so a change recompiles what it changed).
jax.config.update(
    "jax_compilation_cache_dir", str(pathlib.Path(__file__).parents[1] / ".pytest_cache" / "jax")
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
