"""One cell of the micro-batch study (BN vs GN vs GN+WS vs BN+WS vs BCN+WS across per-device batch sizes).

The driver ``python -m experiments.microbatch run`` sets ``norm``, ``conv``, ``global_batch_size``
(= replicas × per-device batch), ``replicas_per_device``, ``num_train_steps`` (= its --train_examples / global
batch) and ``seed`` for each cell; everything else is shared, so every cell sees the same number of examples
with the same optimizer and schedule. Batch statistics are per replica: the paper's setting of several
devices with a micro-batch each (8 vmapped replicas on one CPU here).

Budget chosen for a 2-core CPU (about an hour for 5 normalizations × 5 batch sizes × 2 seeds): a narrow
6-conv VGG (16-32-64) on Fashion-MNIST, 20,000 training examples per cell (a third of an epoch; XLA:CPU
trains this model at about 300 images/s here). On a TPU VM or GPUs, run the same driver with
``--train_examples=500000 --extra=--config.dataset=cifar10 --extra=--config.model=vgg16``.
"""

from experiments.configs import quick


def get_config():
    config = quick.get_config()  # Fashion-MNIST (from ../shared when present), crop 2 + flip
    config.model = "vgg_small"
    config.num_groups = 8
    config.sync_batch_stats = False
    config.optimizer = "adam"
    config.learning_rate = 1e-3
    config.schedule = "cosine"
    config.num_epochs = 1  # unused once num_train_steps is set by the driver
    config.eval_every_steps = -1  # at the end of the (only) epoch
    config.checkpoint_every_steps = 1000
    config.log_every_steps = 50
    config.progress_bar = False
    return config
