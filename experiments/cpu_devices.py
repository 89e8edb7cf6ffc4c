"""Environment for emulating several devices on one CPU (fake CPU devices), as tests and the sweep do."""

from __future__ import annotations

import os

# XLA:CPU aborts a collective whose device threads do not all arrive within 40 s. On a loaded 2-core machine
# emulating 8 devices that happens (seen here: "Termination timeout for all reduce ... of 40 seconds"),
# so allow ten minutes. Seen too, in long runs (thousands of steps): an all-reduce whose 8 threads never all
# arrive, even after 600 s, once beside a busy test suite under `nice` and once on an idle machine. That is
# a hang, not slowness: the micro-batch sweep cannot yet rely on 8 fake devices for long runs (see
# experiments/microbatch.py); the short multi-device tests have not shown it.
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
