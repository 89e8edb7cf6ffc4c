"""Test configuration, set before JAX starts: the experiments' XLA:CPU settings, 8 fake CPU devices and strict
NumPy promotion rules."""

import os

from experiments.common import cpu_backend

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# As the experiments run, and patient collectives: 8 fake devices on 2 loaded cores can exceed XLA's 40 s.
cpu_backend.configure()

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
