"""Test configuration, set before JAX starts: the experiments' XLA:CPU settings, 8 fake CPU devices and strict
NumPy promotion rules."""

import os
import pathlib

from experiments import cpu_backend

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# As the experiments run, and patient collectives: 8 fake devices on 2 loaded cores can exceed XLA's 40 s.
cpu_backend.configure()

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
