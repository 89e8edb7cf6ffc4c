"""Environment for emulating several devices on one CPU (fake CPU devices), as tests and the sweep do."""

from __future__ import annotations

import os

# XLA:CPU aborts a collective whose device threads do not all arrive within 40 s. On a loaded 2-core machine
# emulating 8 devices that happens (seen here: "Termination timeout for all reduce ... of 40 seconds"),
# so allow ten minutes. Long runs (hundreds to thousands of steps) on 8 fake devices also deadlock outright,
# idle machine or not, with or without --xla_cpu_multi_thread_eigen=false: gdb shows 7 of the 8 device
# threads of XLA's intra-op pool blocked in InProcessCommunicator::AllReduce waiting for the 8th, which never
# gets scheduled (jaxlib 0.10.2). Short test runs have not shown it; long emulations use vmapped replicas
# instead (``config.replicas_per_device``, see experiments/steps.py), which need no collectives.
PATIENT_COLLECTIVES = "--xla_cpu_collective_call_terminate_timeout_seconds=600 --xla_cpu_collective_timeout_seconds=600"


def fake_cpu_env(devices: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) set up for ``devices`` fake CPU devices."""
    env = {
        k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("JAX_")
    }
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_NUM_CPU_DEVICES"] = str(devices)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {PATIENT_COLLECTIVES}".strip()
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env
