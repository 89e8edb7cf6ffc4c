"""Fine-tuning a converted pretrained checkpoint on any TFDS dataset, with a BiT-HyperRule-style schedule.

SGD with momentum 0.9, learning rate 0.003 x batch / 512, linear warm-up, then x0.1 at 30, 60 and 90% of
the run, no weight decay; the new head starts at zero (the loaders do that for another class count).

Run:     python -m experiments.train --config experiments/configs/finetune.py:official --workdir runs/ft \
             --config.init_from=R-50-GN-WS.npz --config.model=resnet50 --config.dataset=cifar10
         (the argument after ":" is init_from_format: official | bit | timm; default official)
Weights: an .npz of the source's own names, e.g. for the paper's PyTorch checkpoints
         np.savez(out, **{k: v.numpy() for k, v in torch.load(path, weights_only=True)["state_dict"].items()})
         (see the README's "Pretrained weights").
Differs from BiT-HyperRule: images stay at the dataset's size (no resize to 160/448 and crop), no MixUp, and
the experiments' SGD uses Nesterov momentum.
Time:    10,000 steps of batch 512 of a ResNet-50: hours on one GPU.
"""

import ml_collections

from experiments.configs import default

# Each format's input normalization, applied to x / 255: the official PyTorch code used ImageNet's mean and
# std; BiT (and timm's BiT models) scale to [-1, 1].
NORMALIZATION = {
    "official": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "bit": ((0.5,), (0.5,)),
    "timm": ((0.5,), (0.5,)),
}


def get_config(init_from_format: str | None = None) -> ml_collections.ConfigDict:
    init_from_format = init_from_format or "official"
    if init_from_format not in NORMALIZATION:
        raise ValueError(
            f"finetune.py:{init_from_format}: choose one of {', '.join(NORMALIZATION)} after the ':'."
        )
    config = default.get_config()
    # The converted checkpoint: an .npz of the source's names (required), and how to read it. The checkpoint
    # defines the network (conv, norm and WS preset do not apply); config.model names the architecture for
    # "official" (resnet50 | resnet101 | resnext50_32x4d | resnext101_32x4d) and "timm" (timm's name).
    config.init_from_format = init_from_format
    config.model = "resnet50"
    config.normalize_mean, config.normalize_std = NORMALIZATION[init_from_format]

    config.dataset = "cifar10"
    config.global_batch_size = 512
    config.num_train_steps = 10_000  # BiT-HyperRule: 500 (< 20k examples), 10k (< 500k), 20k (more)
    config.optimizer = "sgd"
    config.momentum = 0.9
    # 0.003 per 512 images: with another --config.global_batch_size, scale --config.learning_rate alike.
    config.learning_rate = 0.003 * config.global_batch_size / 512
    config.weight_decay = 0.0
    config.schedule = "steps"
    config.warmup_steps = 500  # wins over warmup_epochs
    config.eval_every_steps = 1_000
    config.checkpoint_every_steps = 1_000
    return config
