"""The trainer's input pipeline: the memory path (``data.py``) or the streaming one (``stream.py``).

    python -m experiments.trainer.input.convert --source DATA_DIR/NAME/VERSION --out NEW_DATA_DIR

``choice.resolve(config)`` picks one; both give the loop the same interface (``train_args``,
``eval_batches``, ``position``, ``restore``, ``close``). Memory: ``data.py`` loads a split (from TFDS or the
NumPy cache, ``data_cache.py``) into device memory and ``memory.py`` wraps it; ``augment.py`` is its
on-device augmentation, applied in the step. Streaming: ``sources.py`` (random-access sources),
``transforms.py`` (host-side augmentation), ``positions.py`` (the iterator's position beside each
checkpoint); ``convert.py`` rewrites a TFRecord-prepared TFDS dataset as ArrayRecord. Nothing here imports
the rest of the trainer.
"""
