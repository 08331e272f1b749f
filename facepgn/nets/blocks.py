"""Plain-torch MobileNet building blocks (torchvision is not available, and these export to ONNX).

Every block is conv -> BatchNorm -> ReLU6 so the BatchNorms fold into the convs at export time.
"""

from __future__ import annotations

import torch
from torch import nn


def scaled_channels(channels: int, width: float, divisor: int = 8) -> int:
    """``channels * width`` rounded to a multiple of ``divisor`` (at least ``divisor``)."""
    return max(divisor, int(channels * width + divisor / 2) // divisor * divisor)


class ConvBNAct(nn.Sequential):
    """k x k convolution, BatchNorm, ReLU6 (no activation when ``act=False``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: bool = True):
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class DepthwiseSeparable(nn.Module):
    """MobileNet v1 block: 3x3 depthwise (carries the stride) then 1x1 pointwise.

    A residual connection is added when shapes allow (stride 1, same channels): it keeps the deep,
    narrow stacks trainable in the few hundred steps a CPU budget allows.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.depthwise = ConvBNAct(in_ch, in_ch, 3, stride, groups=in_ch)
        self.pointwise = ConvBNAct(in_ch, out_ch, 1)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pointwise(self.depthwise(x))
        return x + y if self.residual else y


class Encoder(nn.Module):
    """A MobileNet-style encoder: a strided stem then stages of depthwise-separable blocks.

    ``stages`` is a list of (out_channels, stride, repeats). ``forward`` returns the feature map at the
    end of every stage so decoders can take skip connections.
    """

    def __init__(self, stem: int, stages: list[tuple[int, int, int]], width: float = 1.0):
        super().__init__()
        stem_ch = scaled_channels(stem, width)
        self.stem = ConvBNAct(3, stem_ch, 3, 2)
        blocks = []
        in_ch = stem_ch
        self.out_channels: list[int] = []
        self.strides: list[int] = []
        stride_total = 2
        for out, stride, repeats in stages:
            out_ch = scaled_channels(out, width)
            layers = [DepthwiseSeparable(in_ch, out_ch, stride)]
            layers += [DepthwiseSeparable(out_ch, out_ch, 1) for _ in range(repeats - 1)]
            blocks.append(nn.Sequential(*layers))
            in_ch = out_ch
            stride_total *= stride
            self.out_channels.append(out_ch)
            self.strides.append(stride_total)
        self.stages = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> roughly zero-mean, unit-variance input."""
    return (images - 0.5) / 0.25
