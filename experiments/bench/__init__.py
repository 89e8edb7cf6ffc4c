"""Benchmarks, and the accelerator suite that runs them with the tests on a GPU or TPU.

    python -m experiments.bench.benchmark [--tiny]        # WS overhead, throughput, MFU, input, inference
    python -m experiments.bench.suite --out DIR           # the suite (see suite/): one command on a GPU or TPU

``cases`` and ``timing`` build and time the benchmark's cases, ``peaks`` knows device peak FLOP/s,
``stream_input``, ``microbatch_emulation``, ``accumulation`` and ``cpu_default`` are cases that also run alone,
``torch_reference`` is the PyTorch baseline. Every run writes its JSON to :data:`RESULTS`.
"""

import pathlib

# Where every benchmark writes its record (results/benchmarks/ of the checkout).
RESULTS = pathlib.Path(__file__).resolve().parents[2] / "results" / "benchmarks"
