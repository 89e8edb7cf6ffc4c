"""A stronger CIFAR-10 recipe for accuracy: SGD + Nesterov, 5-epoch warm-up then cosine, weight decay.

Same network as default.py (VGG16, WS, BCN) trained longer with the usual large-scale recipe.

Run:   python -m experiments.train --config experiments/configs/accurate.py --workdir runs/accurate
Time:  about 39,000 steps at batch 128; a few hours on one GPU.
"""

from experiments.configs import default


def get_config():
    config = default.get_config()
    config.global_batch_size = 128
    config.num_epochs = 100
    config.optimizer = "sgd"
    config.learning_rate = 0.1
    config.schedule = "cosine"
    config.warmup_epochs = 5.0
    config.weight_decay = 5e-4
    config.normalize_mean = (0.4914, 0.4822, 0.4465)  # CIFAR-10 channel statistics
    config.normalize_std = (0.2470, 0.2435, 0.2616)
    return config
