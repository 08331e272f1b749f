"""Multiply-add counting with forward hooks on Conv2d and Linear (the layers that dominate a
MobileNet's cost; BatchNorm, activations, pooling and the soft-argmax are ignored)."""

from __future__ import annotations

import torch
from torch import nn


def count_macs(module: nn.Module, *inputs: torch.Tensor) -> dict[str, int]:
    """Run ``module(*inputs)`` once and return multiply-adds per top-level child and ``total``
    (for a batch of one: divide by the batch size yourself if it is larger)."""
    counts: dict[str, int] = {}
    handles = []

    def hook_for(prefix: str):
        def hook(layer: nn.Module, args, output):
            out = output if isinstance(output, torch.Tensor) else output[0]
            if isinstance(layer, nn.Conv2d):
                k = layer.kernel_size[0] * layer.kernel_size[1] * (layer.in_channels // layer.groups)
                macs = out.numel() * k
            else:  # Linear
                macs = out.numel() * layer.in_features
            counts[prefix] = counts.get(prefix, 0) + int(macs)

        return hook

    for name, layer in module.named_modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            handles.append(layer.register_forward_hook(hook_for(name.split(".")[0] or name)))
    try:
        was_training = module.training
        module.eval()
        with torch.no_grad():
            module(*inputs)
        module.train(was_training)
    finally:
        for h in handles:
            h.remove()
    counts["total"] = sum(counts.values())
    return counts
