"""The accelerator suite: the tests, the benchmarks, time to accuracy and a profile on a GPU or TPU, in one command.

    python -m experiments.bench.suite --out DIR [--deadline_s N] [--parts tests,bench,...]

``runner`` runs each part of ``parts/`` in its own process under a deadline and writes the results to DIR;
``context`` is what a part gets, ``table`` the summary. ``prepare`` makes an offline bundle (wheels and the
dataset cache) for a machine without network, and ``offline.sh`` runs the suite there from that bundle.
"""
