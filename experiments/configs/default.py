"""The PyTorch reference experiment (labml-nn WS + BCN on CIFAR-10), in JAX.

VGG16 with weight-standardized convs and batch-channel norm (32 groups), Adam lr 2.5e-4, batch 64,
10 epochs, random crop 32 with 4-pixel padding, horizontal flip, inputs normalized with mean 0.5 / std 0.5.

Run:   python -m experiments.train --config experiments/configs/default.py --workdir runs/default
Needs: CIFAR-10 prepared by TFDS (downloaded on first use where there is internet).
Time:  about 7,800 steps; hours on a 2-core CPU, minutes on one GPU.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # Data.
    config.dataset = "cifar10"  # a TFDS image-classification name, or "synthetic" (no files needed)
    # TFDS data dir; None: ~/tensorflow_datasets.
    config.data_dir = ml_collections.config_dict.placeholder(str)
    config.download = True  # download and prepare the dataset if it is not prepared yet
    # NumPy copy of each split, written on the first TFDS load and read (without TensorFlow) afterwards.
    # None: ~/.cache/wsjax/datasets; "": off. See experiments/trainer/input/data_cache.py.
    config.data_cache_dir = ml_collections.config_dict.placeholder(str)
    # memory: the training split on the devices, batches drawn there (CIFAR, Fashion-MNIST); stream: each host
    # reads, decodes and augments its own shard (experiments/trainer/input/stream.py; ImageNet); auto: stream when the
    # decoded training split exceeds experiments/trainer/input/choice.py's limit or its images vary in size.
    config.input_pipeline = "auto"
    config.eval_split = "test"  # the split evaluated (ImageNet: validation)
    # pad_crop: crop_padding + horizontal_flip below, at the native size (both pipelines); inception:
    # random-resized crop to image_size + flip, resize + centre crop for evaluation (stream only).
    config.augmentation = "pad_crop"
    config.image_size = 0  # inception's output side (e.g. 224); 0: the native size
    config.input_workers = (
        0  # stream: grain worker processes for decoding and augmentation (0: in the training process);
        # the batches depend on it (grain batches within each worker): a run resumes only with its own
    )
    config.input_threads = (
        0  # stream: threads that read and decode records (0: the host's cores, at most 16)
    )
    config.prefetch = 2  # stream: batches placed on the devices ahead of the step
    config.crop_padding = 4  # random crop back to size after zero-padding each side by this much
    config.horizontal_flip = True  # random left-right mirror
    config.normalize_mean = (0.5,)  # per channel, or one value for all; applied to x / 255
    config.normalize_std = (0.5,)

    # Model.
    # vgg16 | vgg16_narrow | resnet18 | vgg_small | vgg_tiny | resnet50 | resnet101 | resnext50_32x4d |
    # resnext101_32x4d (experiments/trainer/model_factory.py MODELS)
    config.model = "vgg16"
    config.conv = "ws"  # ws (weight standardization) | plain
    config.ws_preset = "pytorch"  # wsjax.PRESETS key: pytorch | qiao | big_vision | bit | timm
    # kernel | output | auto: where WSConv applies the standardization (same maths; see wsjax.WSConv). auto:
    # on the output where the kernel outweighs the output map (VGG16's later layers), faster at equal results.
    config.ws_apply_to = "auto"
    # auto: wsjax.cpu.conv_general_dilated (on CPU, maps smaller than the kernel as shifted matmuls, much faster
    # there; see the README's "Convolutions on CPU"); xla: lax.conv_general_dilated everywhere.
    config.conv_impl = "auto"
    config.norm = "bcn"  # bcn | bn | gn | none
    config.num_groups = 32  # groups of gn and of BCN's channel norm
    config.bn_momentum = 0.9  # Flax sense (PyTorch's 0.1)
    # False: batch statistics per replica (the micro-batch setting); True: over the global batch.
    config.sync_batch_stats = False
    # Computation dtype: float32 | bfloat16 (parameters and statistics stay float32).
    config.dtype = "float32"
    # Start from a converted checkpoint: an .npz of its arrays under the source's names ("": a fresh model).
    # It defines the network and its conventions; conv, norm, ws_preset and num_groups then do not apply.
    config.init_from = ""
    config.init_from_format = (
        "official"  # official (Qiao's ResNets) | bit | timm (wsjax.pretrained)
    )

    # Optimization.
    config.global_batch_size = 64  # split evenly over all replicas of all devices of all hosts
    # Replicas per device (vmapped): > 1 emulates more devices, each with its own micro-batch, statistics and
    # gradient (averaged over all replicas), e.g. the paper's 8 devices × 1 image on one CPU or GPU.
    config.replicas_per_device = 1
    # Gradient accumulation: each replica's batch as this many micro-batches in turn (each with its own batch
    # statistics; memory of one micro-batch), gradients averaged, one optimizer update. BN/BCN running
    # statistics are updated once per micro-batch (see experiments/trainer/accumulation.py). 1: off.
    config.accumulate_steps = 1
    # replica: each replica walks its own shuffled shard; example: each of the global batch's slots is its own
    # stream, so the same global batches are drawn however they are split (the micro-batch study).
    config.data_order = "replica"
    config.num_epochs = 10
    config.num_train_steps = -1  # > 0 overrides num_epochs
    config.optimizer = "adam"  # adam | adamw | sgd (Nesterov) | momentum (heavy ball)
    config.learning_rate = 2.5e-4
    config.schedule = (
        "constant"  # constant | cosine | steps (all after warmup_epochs of linear warm-up)
    )
    config.warmup_epochs = 0.0
    config.warmup_steps = -1  # >= 0 wins over warmup_epochs
    # steps schedule: x0.1 at each of these epochs; () : at each of decay_fractions of the run instead.
    config.decay_epochs = ()
    config.decay_fractions = (0.3, 0.6, 0.9)  # BiT-HyperRule's
    config.weight_decay = 0.0  # L2, as PyTorch's weight_decay (adamw: decoupled)
    config.weight_decay_on = "kernels"  # kernels | all (also biases, norm scales/shifts, WS gains)
    config.momentum = 0.9  # sgd only
    config.seed = 0

    # Bookkeeping.
    config.eval_batch_size = 500  # global; the last partial batch is padded and masked
    config.log_every_steps = 50
    config.eval_every_steps = -1  # <= 0: at the end of every epoch
    config.checkpoint_every_steps = -1  # <= 0: at the end of every epoch
    config.keep_checkpoints = 3
    # > 0 (BN only, memory pipeline): after training, also evaluate with BN's statistics re-estimated over about
    # this many training images ("precise BN", experiments/trainer/population.py), reported beside the final
    # accuracy: a train/test mismatch of the running averages shows as the gap. Other norms ignore it.
    config.reestimate_bn_images = 0
    config.progress_bar = True
    # > 0: a jax.profiler trace of this many training steps, from the run's (or resumed segment's) second step
    # (the first compiles), written to WORKDIR/profile/ (TensorBoard's profile plugin or Perfetto open it).
    config.profile_steps = 0
    return config
