"""One cell of the micro-batch study: the same training run, its global batch split over 32 / b replicas.

The driver ``python -m experiments.study.microbatch run`` sets ``conv``, ``norm``, ``replicas_per_device`` (global
batch / per-device batch / devices) and ``seed`` for each cell; everything here is shared, so every cell
trains the same steps on the same examples with the same optimizer and schedule. ``data_order="example"``
makes each step's global batch the same whatever the split (see ``experiments/trainer/steps.py``).

Run one cell:  python -m experiments.train --config experiments/configs/microbatch.py --workdir runs/mb_bn \
                   --config.conv=plain --config.norm=bn
Expect:        the reference cell (BN, 32 images on one replica, seed 0): its accuracy, and the sweep's cost
               from its per-step times, are in the README (*The micro-batch study*, Budget), measured in
               results/microbatch2/calibration/.
Runtime:       5,625 steps per cell; minutes per cell on a 2-core CPU, hours for the sweep (README, Budget).
"""

from experiments.configs import quick


def get_config():
    config = quick.get_config()  # Fashion-MNIST (from ../shared when present), crop 2 + flip
    config.model = "vgg_small"  # six 3x3 convs of 16-16-32-32-64-64 channels
    config.num_groups = 8  # GN and BCN's channel groups
    config.sync_batch_stats = False  # each replica normalizes with its own batch statistics
    config.global_batch_size = (
        32  # divides Fashion-MNIST's 60,000: identical global batches in every cell
    )
    config.data_order = (
        "example"  # the same global batches however they are split (see trainer/steps.py)
    )
    # WS on the kernel in every cell. "auto" decides from the batch a layer sees, which under the replicas'
    # vmap is one replica's: at 1 image per replica it moves the late layers to the output side, the same maths
    # rounded otherwise, and GN+WS would no longer train bitwise alike at every split (docs/guide/study.md).
    config.ws_apply_to = "kernel"
    config.optimizer = "adam"
    config.learning_rate = 1e-3
    config.schedule = "cosine"
    config.num_epochs = 3  # 1,875 steps each
    config.eval_every_steps = -1  # every epoch: the training curves
    config.checkpoint_every_steps = -1  # every epoch
    config.log_every_steps = 100
    config.progress_bar = False
    return config
