"""The XLA:CPU setting the experiments start with: convolutions by XLA's own emitter, not YNNPACK fusions.

jaxlib 0.10.2 hands every convolution to YNNPACK on CPU. On this project's 2-core x86 machines XLA's own
(Eigen) convolutions are faster for VGG16 training: the WS+BCN step at per-device batch 64 took ~490 ms
instead of ~620 ms, batch 2 unchanged (measured with ``python -m experiments.benchmark``; see the README).
YNNPACK keeps the reductions, dots and elementwise fusions, where it is the faster.

XLA reads its flags once, when the backend starts, so :func:`use_xla_convolutions_on_cpu` must run before the
first computation. It leaves any ``--xla_cpu_experimental_ynn_fusion_type`` the user set alone. The flag only
concerns XLA:CPU; GPU and TPU backends ignore it.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
XLA_CONVOLUTIONS = f"{YNN_FUSION_FLAG}=-individual_convolution"


def use_xla_convolutions_on_cpu(environ: MutableMapping[str, str] = os.environ) -> None:
    """Adds :data:`XLA_CONVOLUTIONS` to ``XLA_FLAGS`` in ``environ`` unless a YNN fusion setting is there."""
    flags = environ.get("XLA_FLAGS", "")
    if YNN_FUSION_FLAG not in flags:
        environ["XLA_FLAGS"] = f"{flags} {XLA_CONVOLUTIONS}".strip()
