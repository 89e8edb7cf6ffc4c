"""The harness's tests run under the experiments' own XLA:CPU settings, as ``python -m experiments.train``."""

from experiments.common import cpu_backend

cpu_backend.configure()
