"""ImageNet, ResNet-50 with GN + WS, one image per replica: the recipe and commands are in imagenet.py.

python -m experiments.train --config experiments/configs/imagenet_resnet50_gn_ws.py:DEVICES --workdir DIR
"""

from experiments.configs import imagenet


def get_config(devices=None):
    return imagenet.recipe("resnet50", "gn", devices)
