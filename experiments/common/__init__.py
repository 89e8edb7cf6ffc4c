"""What every part of the harness shares, and nothing else: one concept per module.

``errors`` (``ConfigError``, the mistakes a user can fix), ``provenance`` (commit, machine, versions),
``cpu_backend`` (the XLA:CPU settings), ``mesh`` (the data-parallel axis's name), ``filelock``. No entry point.
"""
