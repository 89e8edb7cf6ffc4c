"""Test configuration: 8 fake CPU devices and strict NumPy promotion rules, set before JAX starts."""

import os

from experiments.cpu_devices import PATIENT_COLLECTIVES  # noqa: E402
from experiments.xla_cpu import use_xla_convolutions_on_cpu  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Before JAX starts: 8 fake devices on 2 loaded cores must not trip XLA's 40 s collective timeout.
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {PATIENT_COLLECTIVES}".strip()
use_xla_convolutions_on_cpu()  # the XLA:CPU setting the experiments run with

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
