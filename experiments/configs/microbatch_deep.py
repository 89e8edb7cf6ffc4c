"""The micro-batch study where its claims can show: VGG16, SGD with momentum, the paper's step schedule.

The CPU study (``configs/microbatch.py``: six convolutions, Adam, 3 epochs) cannot separate the
normalizations: its network reaches 90% without any. Here the network is VGG16 (13 convolutions), deep
enough that training it without normalization lags, trained as the paper trains: SGD with momentum 0.9 and
weight decay 1e-4, the learning rate (the paper's 0.1 for 256 images, scaled linearly to the study's 32)
divided by 10 after 1/3 and 2/3 of the run (ImageNet's 30 and 60 of 90 epochs). BN cells are also evaluated
with re-estimated population statistics (``reestimate_bn_images``), which tells a train/test mismatch of
micro-batch BN's running averages from damage to its training. Everything else is the study's design
(``configs/microbatch.py``): Fashion-MNIST, 32 images per step whatever the split, the same examples in the
same order and the same initial parameters in every cell of a seed.

Run the sweep (resumable; every cell in one process, later seeds load the compiled programs from disk):
    python -m experiments.study.microbatch run --config experiments/configs/microbatch_deep.py \\
        --workdir runs/deep --in_process --seeds=0,1,2,3,4 --normalizations=BN,BN+WS,BCN+WS,GN+WS,none \\
        --per_device_batches=1,32 --batch_free_batches=32
Runtime:  the accelerator suite's ``study`` part runs this grid, as many seeds as its time allows; its
          budget and the CPU measurements it is sized from are in the guide (docs/guide/study.md,
          *On an accelerator*).
"""

from experiments.configs import microbatch


def get_config():
    config = microbatch.get_config()
    config.model = "vgg16"
    config.num_groups = 32  # the paper's, for GN and BCN's channel norm
    config.optimizer = "momentum"  # heavy ball, as PyTorch's SGD
    config.momentum = 0.9
    config.learning_rate = 0.0125  # the paper's 0.1 for 256 images, scaled linearly to 32
    config.weight_decay = 1e-4
    config.schedule = "steps"
    config.decay_fractions = (1 / 3, 2 / 3)
    config.num_epochs = 1  # 1,875 steps of 32
    config.reestimate_bn_images = 10_000
    return config
