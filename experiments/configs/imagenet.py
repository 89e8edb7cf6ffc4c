"""The paper's ImageNet recipe (the official pytorch-classification one), shared by the imagenet_*.py configs.

ResNet-50/101 or ResNeXt-50 (32x4d) with weight-standardized convolutions (each official code's convention:
``qiao`` with GN, ``pytorch`` with BCN) and GN or BCN (32 groups); SGD with momentum 0.9, learning rate
0.1 x global batch / 256, weight decay 1e-4 (on every parameter, as the official scripts), 90 epochs, the
rate x0.1 at epochs 30 and 60; Inception-style random-resized crops of 224 + flip for training, resize to 256 + centre crop 224 for evaluation, on the whole validation split (50,000 images,
top-1 and top-5). One image per replica: the global batch of 256 is 256 replicas of one image, each with its
own batch statistics (the micro-batch setting), ``replicas_per_device = 256 / devices`` of them vmapped on each
device.

Run (DEVICES: the number of accelerators of the whole job, e.g. 8 GPUs, or 32 for a v4-32 TPU slice; it sets
replicas_per_device = 256 / DEVICES):
    python -m experiments.train --config experiments/configs/imagenet_resnet50_gn_ws.py:DEVICES \\
        --workdir runs/r50_gn_ws [--config.data_dir=DATA_DIR] [--distributed]
Data:  streamed from TFDS ``imagenet2012`` prepared as array_record in DATA_DIR (default ~/tensorflow_datasets).
       ImageNet cannot be downloaded: place ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from
       image-net.org, after registering) in DATA_DIR/downloads/manual/; the first run prepares them once
       (hours). A missing file stops the run with a message naming it and that folder.
Time:  90 x 5,004 = 450,360 steps of 256 images. (The BCN+WS ResNet-101 checkpoint was trained for 100 epochs,
       x0.1 at 30, 60 and 90: --config.num_epochs=100 '--config.decay_epochs=(30,60,90)'.)
"""

import ml_collections

from experiments.configs import default

GLOBAL_BATCH = 256
EPOCHS = 90


def recipe(model: str, norm: str, devices: str | None = None) -> ml_collections.ConfigDict:
    """The recipe for ``model`` (a model_factory name) and ``norm`` (gn | bcn) on ``devices`` accelerators."""
    devices = int(devices or 8)  # the paper's 8 GPUs
    if devices <= 0 or GLOBAL_BATCH % devices:
        raise ValueError(f"devices must divide the global batch {GLOBAL_BATCH}, got {devices}")
    config = default.get_config()
    config.dataset = "imagenet2012"
    config.input_pipeline = "stream"
    config.eval_split = "validation"
    config.augmentation = "inception"
    config.image_size = 224
    config.crop_padding = 0
    config.horizontal_flip = True
    config.normalize_mean = (0.485, 0.456, 0.406)  # ImageNet channel statistics (of x / 255)
    config.normalize_std = (0.229, 0.224, 0.225)
    config.input_workers = (
        0  # raise to the host's cores / devices where the step outruns one process
    )

    config.model = model
    config.conv = "ws"
    # As the official code of each: pytorch-classification's GN+WS (w - mean) / (std + 1e-5), "qiao";
    # Batch-Channel-Normalization's imagenet/ BCN+WS (w - mean) / sqrt(var + 1e-5), "pytorch".
    config.ws_preset = "qiao" if norm == "gn" else "pytorch"
    config.norm = norm
    config.num_groups = 32
    config.sync_batch_stats = False  # every replica its own statistics

    config.global_batch_size = GLOBAL_BATCH
    config.replicas_per_device = GLOBAL_BATCH // devices  # one image per replica
    config.num_epochs = EPOCHS
    config.optimizer = "momentum"
    config.momentum = 0.9
    config.learning_rate = 0.1 * GLOBAL_BATCH / 256
    config.schedule = "steps"
    config.decay_epochs = (30, 60)
    config.weight_decay = 1e-4
    # Every parameter, as both official scripts: optim.SGD(model.parameters(), ..., weight_decay=...)
    # (pytorch-classification imagenet.py:167; Batch-Channel-Normalization imagenet/imagenet.py:168).
    config.weight_decay_on = "all"
    config.dtype = "bfloat16"  # parameters, optimizer state and statistics stay float32

    config.eval_batch_size = 1024
    config.log_every_steps = 500
    config.checkpoint_every_steps = -1  # every epoch
    config.eval_every_steps = -1  # every epoch
    config.progress_bar = False
    return config
