#!/usr/bin/env python3
"""Export a PyTorch model as TorchScript for `swarm train --model torchscript:PATH`.

    python3 tools/export_torchscript.py --out model.pt                      # the example model
    python3 tools/export_torchscript.py --module my_models.py:Net --args '{"width": 64}' --out net.pt
    python3 tools/export_torchscript.py --module my_models.py:Net --no-running-stats --out net.pt

Needs `torch` (CPU is enough: `pip install torch --index-url https://download.pytorch.org/whl/cpu`).
The trainer itself does not need Python.

What the trainer expects of the module (checked when it loads it):
  * `forward(x)` takes one float32 batch shaped like the data's examples, `[B, C, H, W]` for images
    (`[B, 1, 28, 28]` for Fashion-MNIST, `[B, 3, 32, 32]` for CIFAR), `[B, D]` for vectors,
    `[B, T]` int64 token ids for token sequences, and returns logits `[B, classes]`;
  * float32 parameters on the CPU. Every parameter with requires_grad is trained; nodes average
    them. The flat order is the parameter names sorted, and checkpoints store them by name, so
    `module.load_state_dict(safetensors.torch.load_file(...), strict=False)` loads them back.

Buffers (BatchNorm running mean/var, num_batches_tracked) are NOT parameters: nodes do not average
them, checkpoints do not hold them, and the averaged model is evaluated with the buffers saved in
this file. Prefer LayerNorm/GroupNorm; for BatchNorm pass --no-running-stats, which sets
track_running_stats=False on every BatchNorm layer (batch statistics in training and evaluation,
no buffers). The script refuses to export a module that still has floating-point buffers unless
--allow-buffers is given.
"""

import argparse
import importlib.util
import json
import sys

import torch
from torch import nn


class ExampleNet(nn.Module):
    """A small classifier for 1x28x28 images (Fashion-MNIST): Linear -> LayerNorm -> ReLU -> Linear."""

    def __init__(self, features: int = 784, hidden: int = 16, classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


def load_class(spec: str):
    path, _, name = spec.partition(":")
    if not name:
        sys.exit(f"--module {spec}: expected FILE.py:ClassName")
    module_spec = importlib.util.spec_from_file_location("user_models", path)
    if module_spec is None or module_spec.loader is None:
        sys.exit(f"--module {spec}: cannot import {path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, name)


def drop_running_stats(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
            m.num_batches_tracked = None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--module", help="FILE.py:ClassName of the model (default: the example model)")
    ap.add_argument("--args", default="{}", help="constructor keyword arguments as JSON")
    ap.add_argument("--input-shape", default="1,28,28", help="one example's shape, to test forward (e.g. 3,32,32)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the initial parameters")
    ap.add_argument("--no-running-stats", action="store_true", help="BatchNorm without running statistics")
    ap.add_argument("--allow-buffers", action="store_true", help="export even with floating-point buffers")
    ap.add_argument("--out", required=True, help="output .pt file")
    a = ap.parse_args()

    torch.manual_seed(a.seed)
    cls = load_class(a.module) if a.module else ExampleNet
    model = cls(**json.loads(a.args)).float().cpu()
    if a.no_running_stats:
        drop_running_stats(model)
    buffers = [n for n, b in model.named_buffers() if b is not None and b.is_floating_point()]
    if buffers and not a.allow_buffers:
        sys.exit(
            f"the model has buffers {buffers}: swarm does not average them and evaluates the averaged "
            "model with their initial values. Use --no-running-stats (BatchNorm), LayerNorm/GroupNorm, "
            "or --allow-buffers if they are constants."
        )
    model.train()
    scripted = torch.jit.script(model)
    shape = [2] + [int(d) for d in a.input_shape.split(",")]
    out = scripted(torch.zeros(shape))
    if out.dim() != 2 or out.shape[0] != 2:
        sys.exit(f"forward returned shape {list(out.shape)} for a batch of 2; expected [2, classes]")
    torch.jit.save(scripted, a.out)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"wrote {a.out}: {params} trainable parameters, {out.shape[1]} classes, input {shape[1:]}")


if __name__ == "__main__":
    main()
