"""Benchmarks, and the accelerator suite that runs them with the tests on a GPU or TPU.

    python -m experiments.bench.benchmark [--tiny]        # WS overhead, throughput, MFU, input, inference
    python -m experiments.bench.suite --out DIR           # the suite (see suite/): one command on a GPU or TPU

``cases`` and ``timing`` build and time the benchmark's cases, ``peaks`` knows device peak FLOP/s,
``stream_input`` and ``microbatch_emulation`` are cases that also run alone, ``torch_reference`` is the
PyTorch baseline.
"""
