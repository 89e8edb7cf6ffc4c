"""Fashion-MNIST to 93% test accuracy in seconds on one GPU: VGG16 + WS + BCN in bfloat16, batch 512.

Run:     python -m experiments.train --config experiments/configs/fast_gpu.py --workdir runs/fast_gpu
Timed:   python -m experiments.bench.suite --out DIR --parts=tta  (training wall time to 93%; compilation and
         evaluation excluded; see experiments/bench/suite/parts/time_to_accuracy.py)
Data:    ../shared/tensorflow_datasets when it exists, else TFDS; on a machine without TensorFlow, the
         NumPy cache: --config.data_cache_dir=.device/data (made by python -m experiments.bench.suite.prepare).
Goal:    >= 93% on the 10,000 test images within 15 s of training on one H200. The recipe is
         reasoned, not yet tuned on a GPU: the README's Accelerators section has what was measured.
"""

from experiments.configs import quick


def get_config():
    config = quick.get_config()  # Fashion-MNIST (../shared when present), crop 2 + flip
    config.model = "vgg16"
    config.num_groups = 32
    config.dtype = "bfloat16"  # parameters, optimizer and statistics stay float32
    config.global_batch_size = 512  # 117 steps per epoch
    config.num_epochs = 15
    config.optimizer = "adam"
    config.learning_rate = 2e-3  # quick.py's 1e-3 at batch 64, raised for 8x the batch
    config.warmup_epochs = 1.0
    config.schedule = "cosine"
    config.eval_batch_size = 2000
    config.log_every_steps = 117
    config.checkpoint_every_steps = 10**9  # only the final one: a VGG16 checkpoint costs seconds
    return config
