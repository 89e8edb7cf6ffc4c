"""The micro-batch study: how each normalization trains as the images per device shrink (BN, GN, BCN, ± WS).

    python -m experiments.study.microbatch run --workdir DIR      # every cell, resumable
    python -m experiments.study.microbatch report --workdir DIR --out DIR

``microbatch`` drives the sweep over ``grid`` (normalizations × images per device × seed); ``cells`` trains
one cell with the trainer; ``report``, ``stats`` and ``plot`` turn the finished cells into a table, claims and
a figure.
"""
