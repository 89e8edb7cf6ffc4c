"""Training input: the memory path (``experiments/data.py``) or the streaming pipeline (``stream.py``).

``choice.resolve(config)`` picks one; both give the loop the same interface (``train_args``,
``eval_batches``, ``position``, ``restore``, ``close``). ``positions.py`` keeps the streaming iterator's
position beside each checkpoint; ``transforms.py`` is the host-side augmentation; ``sources.py`` the
random-access sources; ``convert.py`` rewrites a TFRecord-prepared TFDS dataset as ArrayRecord.
"""
