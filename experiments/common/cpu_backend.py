"""The XLA:CPU settings the experiments run with, in one place, applied before JAX's backend starts.

Two settings, both XLA flags that only XLA:CPU reads, and only once, when JAX's backend starts:

- :data:`XLA_CONVOLUTIONS`: convolutions by XLA's own emitter instead of YNNPACK fusions. jaxlib 0.10.2 hands
  every convolution to YNNPACK on CPU; XLA's own are faster for VGG16 training on this project's 2-core x86
  machines, and YNNPACK keeps the reductions, dots and elementwise fusions, where it is the faster (measured
  with ``python -m experiments.bench.benchmark``; the figures are in the README, *Benchmarks*, item 4).
- :data:`PATIENT_COLLECTIVES`: XLA:CPU aborts a collective whose device threads do not all arrive within
  40 s, which a loaded 2-core machine emulating 8 devices exceeds (seen here: "Termination timeout for all
  reduce ... of 40 seconds"); ten minutes instead.

:func:`configure` adds them to ``XLA_FLAGS`` when the backend will be CPU, and nothing on GPU or TPU.
``train_and_evaluate``, the benchmark and the tests' conftest call it, so a notebook run and a command-line
run start XLA alike. A flag the user already put in ``XLA_FLAGS`` is left as the user set it. If JAX's
backend has already started (a notebook that computed something first), the flags can no longer take
effect: :func:`configure` then changes nothing and warns once.

:func:`fake_cpu_env` is the environment of a subprocess that emulates several devices on one CPU.
"""

from __future__ import annotations

import importlib.util
import os
import pkgutil
import warnings
from collections.abc import Mapping, MutableMapping

XLA_CONVOLUTIONS = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
# The same choice for one compilation (``jax.jit(f, compiler_options=...)`` or ``.compile(compiler_options=...)``),
# which needs no flag and works after JAX has started: jaxlib 0.10.2's default fusion types (dot, convolution,
# reduce) without the convolution. Its program is the flag's to the byte (tests/experiments/test_cpu_backend.py);
# experiments/bench/cpu_default.py measures what it buys.
XLA_CONVOLUTIONS_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
}
PATIENT_COLLECTIVES = (
    "--xla_cpu_collective_call_terminate_timeout_seconds=600",
    "--xla_cpu_collective_timeout_seconds=600",
)
SETTINGS = (XLA_CONVOLUTIONS, *PATIENT_COLLECTIVES)
_warned = False


def flag_name(flag: str) -> str:
    """``--xla_foo=1`` -> ``--xla_foo``: the name a setting is known by, whatever its value."""
    return flag.split("=", 1)[0]


def with_cpu_settings(xla_flags: str, platform: str | None) -> str:
    """``xla_flags`` with :data:`SETTINGS` added if ``platform`` is ``'cpu'``; unchanged for any other.

    A setting whose flag ``xla_flags`` already names, with any value, is not added.

    Args:
      xla_flags: the current ``XLA_FLAGS`` value.
      platform: the platform JAX's default backend is or will be (``'cpu'``, ``'gpu'``, ``'cuda'``,
        ``'tpu'``, ...); None when unknown, which changes nothing.
    """
    if platform != "cpu":
        return xla_flags
    present = {flag_name(f) for f in xla_flags.split()}
    missing = [s for s in SETTINGS if flag_name(s) not in present]
    return " ".join([xla_flags, *missing]).strip()


def backend_started() -> bool:
    """Whether JAX's backends are initialized (after which XLA ignores changes to ``XLA_FLAGS``)."""
    try:
        from jax._src import xla_bridge  # no public API says this (JAX 0.10, 0.11)
    except ImportError:
        return False
    started = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(started and started())


def expected_platform(platforms: str | None = None) -> str | None:
    """The platform of JAX's default backend, known without starting it where possible.

    Started: the backend's. Else the first of ``platforms`` if any is named. Else ``'cpu'`` when no GPU/TPU
    plugin is installed; None when one is (only starting JAX would tell whether it finds its accelerator).

    Args:
      platforms: JAX's platform list, e.g. ``'cuda,cpu'``; None: ``jax.config.jax_platforms`` (which
        ``JAX_PLATFORMS`` sets).
    """
    import jax

    if backend_started():
        return jax.default_backend()
    if platforms is None:
        platforms = jax.config.jax_platforms or ""
    if platforms:
        return platforms.split(",")[0].strip().lower()
    return None if _accelerator_plugin_installed() else "cpu"


def _accelerator_plugin_installed() -> bool:
    """A PJRT plugin package (CUDA, ROCm, ...) or libtpu, found the way JAX finds them, without loading."""
    from importlib.metadata import entry_points

    if importlib.util.find_spec("libtpu") is not None or list(entry_points(group="jax_plugins")):
        return True
    try:
        import jax_plugins  # the CUDA and ROCm plugins' namespace package
    except ImportError:
        return False
    return any(pkgutil.iter_modules(jax_plugins.__path__))


def configure(environ: MutableMapping[str, str] = os.environ, platform: str | None = None) -> None:
    """Adds :data:`SETTINGS` to ``environ['XLA_FLAGS']`` if JAX's backend will be CPU and has not started.

    Once the backend has started, changes nothing (see :func:`verify`).

    Args:
      environ: the environment to change (this process's by default).
      platform: the platform JAX will use; None: :func:`expected_platform`.
    """
    if backend_started():
        return  # XLA read its flags already; changing them now would only mislead run_info.json
    flags = environ.get("XLA_FLAGS", "")
    wanted = with_cpu_settings(flags, platform or expected_platform())
    if wanted != flags:
        environ["XLA_FLAGS"] = wanted


def verify(environ: Mapping[str, str] = os.environ, platform: str | None = None) -> bool:
    """Whether XLA:CPU runs with :data:`SETTINGS` (True on other platforms); warns once if not.

    Call once JAX's backend has started. The run goes on either way: same results, slower steps.

    Args:
      environ: the environment the backend started with (this process's by default).
      platform: the backend's platform; None: ``jax.default_backend()``.
    """
    global _warned
    import jax

    flags = environ.get("XLA_FLAGS", "")
    wanted = with_cpu_settings(flags, platform or jax.default_backend())
    if wanted == flags:
        return True
    if not _warned:
        _warned = True
        warnings.warn(
            "XLA:CPU is running without the experiments' settings: JAX started before "
            "experiments.common.cpu_backend.configure() could set XLA_FLAGS (or a GPU/TPU plugin is installed "
            "and JAX_PLATFORMS was unset, so the platform was unknown until then). Results are the same "
            "but steps are slower than `python -m experiments.train`'s. To match it, start JAX with "
            f'XLA_FLAGS="{wanted}" (e.g. restart the kernel and train before any other JAX computation).',
            RuntimeWarning,
            stacklevel=2,
        )
    return False


def fake_cpu_env(devices: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) set up for ``devices`` fake CPU devices.

    ``JAX_*`` variables of ``base`` are dropped, the platform is CPU, and ``XLA_FLAGS`` holds :data:`SETTINGS`.
    """
    env = {
        k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("JAX_")
    }
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_NUM_CPU_DEVICES"] = str(devices)
    env["XLA_FLAGS"] = with_cpu_settings(env.get("XLA_FLAGS", ""), "cpu")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env
