"""One cell of the micro-batch study: the same training run with the global batch split over more replicas.

DRAFT (calibration pending).
"""

from experiments.configs import quick


def get_config():
    config = quick.get_config()  # Fashion-MNIST (from ../shared when present), crop 2 + flip
    config.model = "vgg_small"
    config.num_groups = 8
    config.sync_batch_stats = False  # each replica normalizes with its own batch statistics
    config.global_batch_size = 32
    config.data_order = "example"  # the same global batches however they are split (see steps.py)
    config.optimizer = "adam"
    config.learning_rate = 1e-3
    config.schedule = "cosine"
    config.num_epochs = 4
    config.eval_every_steps = -1  # every epoch
    config.checkpoint_every_steps = -1  # every epoch
    config.log_every_steps = 100
    config.progress_bar = False
    return config
