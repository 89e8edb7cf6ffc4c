"""One process of test_multihost_faults.py's checkpoint-agreement test (run as a script, not collected).

    python tests/experiments/multihost_checkpoint_worker.py ADDRESS NUM_PROCESSES PROCESS_ID ROOT

Joins ``jax.distributed`` at ``ADDRESS``, then restores ``ROOT/<scenario>`` (made by the test) with
:meth:`Checkpoints.restore_latest`, one scenario after the other, and prints one JSON line per scenario: the
step it resumed from (or the error it raised), what it skipped, and whether the state read back is
:data:`STATE`. Faults only one process sees are injected here, in this test process, never in the library.
"""

from __future__ import annotations

import errno
import json
import pathlib
import sys

import jax

SCENARIOS = ("damaged", "one_sided", "transient", "views")


def state():
    """The saved state, the same on every process (the test saves it with one process)."""
    import jax.numpy as jnp

    return {"w": jnp.arange(6.0), "b": {"c": jnp.ones((2, 3))}}


def _fail_at(ckpts, step: int, error: BaseException) -> None:
    read = ckpts._read

    def failing(s, *args, **kwargs):
        if s == step:
            raise error
        return read(s, *args, **kwargs)

    ckpts._read = failing


def main(address: str, num_processes: int, process_id: int, root: pathlib.Path) -> None:
    jax.distributed.initialize(address, num_processes, process_id)
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from experiments.trainer.checkpoints import Checkpoints

    mesh = Mesh(np.array(jax.devices()), ("d",))
    target = jax.device_put(state(), NamedSharding(mesh, P()))
    for scenario in SCENARIOS:
        workdir = root / scenario
        if scenario == "views":  # process 1 sees another folder: as if its filesystem lagged
            workdir = root / ("views" if process_id == 0 else "views_lagging")
        ckpts = Checkpoints(workdir, keep=5)
        if process_id == 1 and scenario == "one_sided":
            _fail_at(ckpts, 3, FileNotFoundError(errno.ENOENT, "No such file", "3/default/w"))
        if process_id == 1 and scenario == "transient":
            _fail_at(ckpts, 3, OSError(errno.EIO, "Input/output error"))
        result = {"scenario": scenario, "process": process_id}
        try:
            restored, step, skipped = ckpts.restore_latest(target)
            equal = jax.tree.map(
                lambda a, b: bool(np.array_equal(a.addressable_data(0), b)), restored, state()
            )
            result.update(step=step, skipped=skipped, equal=all(jax.tree.leaves(equal)))
        except Exception as e:  # every scenario is reported; the test decides
            result.update(error=f"{type(e).__name__}: {e}")
        finally:
            ckpts.close()
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), pathlib.Path(sys.argv[4]))
