"""A few CPU minutes: narrow VGG16 (WS + BCN, 8 groups) on Fashion-MNIST, 2 epochs of Adam.

Run:     python -m experiments.train --config experiments/configs/quick.py --workdir runs/quick
Data:    data_dir defaults to ../shared/tensorflow_datasets when it exists (this project's machines);
         elsewhere TFDS downloads Fashion-MNIST.
Expect:  >= 0.88 test accuracy (see README for the measured figure and wall time).
"""

import pathlib

from experiments.configs import default

SHARED = pathlib.Path(__file__).resolve().parents[3] / "shared" / "tensorflow_datasets"


def get_config():
    config = default.get_config()
    config.dataset = "fashion_mnist"
    if SHARED.exists():
        config.data_dir = str(SHARED)
    config.model = "vgg16_narrow"
    config.num_groups = 8
    config.crop_padding = 2
    config.horizontal_flip = True
    config.global_batch_size = 64
    config.num_epochs = 2
    config.learning_rate = 1e-3
    config.schedule = "cosine"
    config.log_every_steps = 100
    return config
