"""``wsjax.pretrained.from_official`` against the official PyTorch code itself, in two processes.

The paper's checkpoints are not downloadable everywhere; their networks are. Step 1 runs, in an environment
with torch, the model files of the two official repositories (pytorch-classification: GN+WS;
Batch-Channel-Normalization: BCN+WS) with random weights, random norm affines and running statistics, and
saves each state dict with its inputs and float32 / float64 logits. Step 2, in wsjax's environment, loads
each state dict with ``from_official`` and compares logits: in float32 (what a user gets) and with float64
computation (where only the network, not rounding, can differ).

    git clone https://github.com/joe-siyuan-qiao/pytorch-classification /tmp/gnws
    git clone https://github.com/joe-siyuan-qiao/Batch-Channel-Normalization /tmp/bcn
    TORCH_PYTHON -m experiments.checks.official_check torch --gn_ws=/tmp/gnws --bcn_ws=/tmp/bcn/imagenet --out=/tmp/oc
    python -m experiments.checks.official_check compare --out=/tmp/oc > results/official_check/DATE.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import sys

import numpy as np

CASES = [  # (kind, arch, input sides): ResNets at an even and an odd side, ResNeXts within AvgPool2d(7)
    (kind, arch, sides)
    for kind in ("gn_ws", "bcn_ws")
    for arch, sides in (
        ("resnet50", (224, 225)),
        ("resnet101", (224, 225)),
        ("resnext50_32x4d", (224, 230)),
        ("resnext101_32x4d", (224, 230)),
    )
]


def _torch_net(repo: pathlib.Path, arch: str):
    # The repositories' `models` package (layers.py, imagenet/resnet.py, imagenet/resnext.py) as they are.
    sys.path.insert(0, str(repo))
    for name in [m for m in sys.modules if m == "models" or m.startswith("models.")]:
        del sys.modules[name]
    resnet = importlib.import_module("models.imagenet.resnet")
    resnext = importlib.import_module("models.imagenet.resnext")
    sys.path.pop(0)
    if arch.startswith("resnext"):
        depth = 50 if "50" in arch else 101
        return getattr(resnext, f"l_resnext{depth}")(4, 32)  # the training scripts' 32x4d
    return getattr(resnet, f"l_{arch}")()


def run_torch(repos: dict[str, pathlib.Path], out: pathlib.Path) -> None:
    import torch

    out.mkdir(parents=True, exist_ok=True)
    for kind, arch, sides in CASES:
        torch.manual_seed(0)
        net = _torch_net(repos[kind], arch)
        with torch.no_grad():
            for name, p in net.named_parameters():
                if p.ndim < 4 and not name.startswith("fc"):  # norm affines, away from 1 and 0
                    p.copy_((1 if name.endswith("weight") else 0) + 0.2 * torch.randn_like(p))
            for name, b in net.named_buffers():
                if name.endswith("running_mean"):
                    b.copy_(0.3 * torch.randn_like(b))
                elif name.endswith("running_var"):
                    b.copy_(0.5 + torch.rand_like(b))
        net.eval()
        arrays = {f"sd/module.{k}": v.numpy() for k, v in net.state_dict().items()}
        for side in sides:
            x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(side))
            with torch.no_grad():
                arrays[f"x{side}"] = x.numpy()
                arrays[f"y32_{side}"] = net(x).numpy()
                arrays[f"y64_{side}"] = net.double()(x.double()).numpy()
                net.float()
        arrays["torch_version"] = np.array(torch.__version__)
        np.savez(out / f"{kind}_{arch}.npz", **arrays)
        print(kind, arch, file=sys.stderr, flush=True)


def compare(out: pathlib.Path) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from wsjax.pretrained import from_official

    rows = []
    for kind, arch, sides in CASES:
        saved = np.load(out / f"{kind}_{arch}.npz")
        weights = {k[3:]: saved[k] for k in saved.files if k.startswith("sd/")}
        model, variables = from_official(weights, arch)
        f32 = jax.jit(lambda v, x, m=model: m.apply(v, x, train=False))
        with jax.enable_x64(True):
            v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
            model64 = model.clone(dtype=jnp.float64)
            f64 = jax.jit(lambda v, x, m=model64: m.apply(v, x, train=False))
            for side in sides:
                x = saved[f"x{side}"].transpose(0, 2, 3, 1)
                y32, y64 = saved[f"y32_{side}"], saved[f"y64_{side}"]
                ours32 = np.asarray(f32(variables, jnp.asarray(x, jnp.float32)))
                ours64 = np.asarray(f64(v64, jnp.asarray(x, jnp.float64)))
                scale = float(np.abs(y64).max())
                rows.append(
                    {
                        "checkpoint": kind,
                        "arch": arch,
                        "side": side,
                        "logits_max_abs": scale,
                        "float32_vs_torch_float32": float(np.abs(ours32 - y32).max()),
                        "torch_float32_vs_torch_float64": float(np.abs(y32 - y64).max()),
                        "float64_vs_torch_float64": float(np.abs(ours64 - y64).max()),
                    }
                )
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("torch", "compare"))
    parser.add_argument("--gn_ws", type=pathlib.Path, help="pytorch-classification checkout")
    parser.add_argument("--bcn_ws", type=pathlib.Path, help="Batch-Channel-Normalization/imagenet")
    parser.add_argument("--out", type=pathlib.Path, required=True)
    args = parser.parse_args()
    if args.step == "torch":
        run_torch({"gn_ws": args.gn_ws, "bcn_ws": args.bcn_ws}, args.out)
    else:
        import jax

        from experiments.common.provenance import describe_machine, git_commit

        rows = compare(args.out)
        meta = {"commit": git_commit(), "jax": jax.__version__, "machine": describe_machine()}
        print(json.dumps({**meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
