"""ImageNet, ResNeXt-50 (32x4d) with BCN + WS, one image per replica: the recipe and commands are in imagenet.py.

python -m experiments.train --config experiments/configs/imagenet_resnext50_bcn_ws.py:DEVICES --workdir DIR
"""

from experiments.configs import imagenet


def get_config(devices=None):
    return imagenet.recipe("resnext50_32x4d", "bcn", devices)
