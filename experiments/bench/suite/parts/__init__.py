"""The parts of the accelerator suite (``python -m experiments.bench.suite``), one measurement each.

Each has ``run(ctx)`` with a :class:`experiments.bench.suite.context.PartContext`.
"""
