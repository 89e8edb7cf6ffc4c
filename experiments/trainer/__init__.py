"""The optax trainer: data-parallel training and evaluation of a wsjax model from an ml_collections config.

    python -m experiments.train --config experiments/configs/quick.py --workdir runs/quick

``experiments/train.py`` is the entry point and holds ``train_and_evaluate(config, workdir)``; here live its
parts: ``validation`` (every config mistake, checked first), ``model_factory`` and ``optim`` (the model and optimizer a config names), ``steps`` (the jitted,
shard-mapped train and eval steps), ``placement`` (replicas per device), ``loop`` (the training loop,
preemption), ``checkpoints``, ``metrics``, ``profiling``, ``run_info``, ``rng``, ``workdir``. The input
pipeline is ``input/``.
"""
