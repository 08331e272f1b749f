"""The Pose Guidance Network (PGN): the 68 landmarks in 3D, in crop pixel coordinates.

Design (compact, ~10-25 M multiply-adds at 128x128, width 1):

* a MobileNet-style encoder down to stride 16, then a light U-Net decoder back to stride
  ``heatmap_stride`` (default 4: 32x32 maps for a 128 px crop) with additive skip connections;
* a 1x1 head gives, per landmark, a heatmap logit map and a depth map;
* **soft-argmax**: x, y are the expectation of the pixel centres under the softmax of the heatmap
  (differentiable, sub-pixel, no quantisation); z is the expectation of the depth map under the same
  distribution, in units of the crop side (so it scales with x and y). z is then centred (mean over
  the 68 points = 0), the convention of ``facepgn.records``;
* a per-landmark **confidence** in (0, 1] from the spread of the distribution: a sharp peak means a
  confident landmark. The closed-form pose fit uses it as a weight (``facepgn.model``).

Coordinates follow ``facepgn.geometry``: pixels, x right, y down, z towards the camera.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from facepgn.nets.blocks import ConvBNAct, DepthwiseSeparable, Encoder, normalize_images, scaled_channels

NUM_LANDMARKS = 68

# (out_channels, stride, repeats); the stem has stride 2, so the stages end at strides 4, 8, 16.
PGN_STAGES = [(24, 2, 2), (48, 2, 2), (96, 2, 3)]


class PoseGuidanceNetwork(nn.Module):
    def __init__(self, input_size: int = 128, width: float = 1.0, heatmap_stride: int = 4):
        super().__init__()
        if heatmap_stride not in (4, 8):
            raise ValueError(f"heatmap_stride must be 4 or 8, got {heatmap_stride}")
        if input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16, got {input_size}")
        self.input_size = input_size
        self.heatmap_stride = heatmap_stride
        self.encoder = Encoder(16, PGN_STAGES, width)
        c4, c8, c16 = self.encoder.out_channels
        dec = scaled_channels(64, width)
        self.lateral16 = ConvBNAct(c16, dec, 1)
        self.lateral8 = ConvBNAct(c8, dec, 1)
        self.refine8 = DepthwiseSeparable(dec, dec)
        if heatmap_stride == 4:
            self.lateral4 = ConvBNAct(c4, dec, 1)
            self.refine4 = DepthwiseSeparable(dec, dec)
        self.head = nn.Conv2d(dec, 2 * NUM_LANDMARKS, 1)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)
        # learnable sharpness of the softmax (starts soft so early gradients reach every cell)
        self.log_temperature = nn.Parameter(torch.tensor(0.0))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (B, 3, S, S) in [0, 1] -> ``landmarks_3d`` (B, 68, 3) crop px, ``landmark_confidence``
        (B, 68), ``heatmaps`` (B, 68, h, w) probabilities."""
        f4, f8, f16 = self.encoder(normalize_images(images))
        x = self.lateral16(f16)
        x = F.interpolate(x, scale_factor=2.0, mode="nearest") + self.lateral8(f8)
        x = self.refine8(x)
        if self.heatmap_stride == 4:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest") + self.lateral4(f4)
            x = self.refine4(x)
        out = self.head(x)
        logits, depth = out[:, :NUM_LANDMARKS], out[:, NUM_LANDMARKS:]
        return soft_argmax_3d(logits, depth, self.heatmap_stride, self.input_size, self.log_temperature)


def soft_argmax_3d(
    logits: torch.Tensor, depth: torch.Tensor, stride: int, input_size: int, log_temperature: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Heatmap logits + depth maps (B, L, h, w) -> 3D points in crop pixels (float32)."""
    b, n, h, w = logits.shape
    logits = logits.float()
    depth = depth.float()
    if log_temperature is not None:
        logits = logits * torch.exp(log_temperature.float())
    prob = torch.softmax(logits.reshape(b, n, h * w), dim=-1).reshape(b, n, h, w)
    # centre of heatmap cell j in crop pixels (pixel centres at integer coordinates)
    xs = (torch.arange(w, device=logits.device, dtype=torch.float32) + 0.5) * stride - 0.5
    ys = (torch.arange(h, device=logits.device, dtype=torch.float32) + 0.5) * stride - 0.5
    px = prob.sum(dim=2)  # (B, L, w)
    py = prob.sum(dim=3)  # (B, L, h)
    x = (px * xs).sum(-1)
    y = (py * ys).sum(-1)
    z = (prob * depth).sum(dim=(2, 3)) * input_size
    z = z - z.mean(dim=1, keepdim=True)
    var = (px * (xs - x[..., None]) ** 2).sum(-1) + (py * (ys - y[..., None]) ** 2).sum(-1)
    spread = torch.sqrt(var + 1e-6) / stride  # in heatmap cells
    confidence = 1.0 / (1.0 + spread)
    return {"landmarks_3d": torch.stack([x, y, z], dim=-1), "landmark_confidence": confidence, "heatmaps": prob}
