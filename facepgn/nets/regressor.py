"""The coefficient regressor: a compact MobileNet (depthwise-separable convs, plain torch).

It predicts the identity and expression coefficients of the (truncated) face model and, for the
direct-pose baseline only, the pose (3DDFA style: log-scale, a 6D rotation, x/y translation).

It does not share the PGN's encoder: the two tasks want different features (global shape vs. local
landmark positions), the direct-pose baseline then differs from the PGN model only in where the pose
comes from, and either network can be swapped or exported on its own. Both together stay well under
the 200 M multiply-add budget at 128x128 (``bench/count_macs.py``).

Output conventions: identity ~ N(0, 1) per mode (a linear head); expression weights in [0, 1]
(a sigmoid, biased towards the neutral face at start).
"""

from __future__ import annotations

import torch
from torch import nn

from facepgn.nets.blocks import Encoder, normalize_images

# (out_channels, stride, repeats); strides 4, 8, 16, 32 after the stride-2 stem.
REGRESSOR_STAGES = [(32, 2, 1), (64, 2, 2), (128, 2, 3), (256, 2, 2)]

POSE_PARAMS = 9  # log-scale (1), rotation 6D (6), translation x, y (2)


class CoefficientRegressor(nn.Module):
    def __init__(self, num_id: int, num_exp: int, width: float = 1.0, direct_pose: bool = False):
        super().__init__()
        self.num_id = num_id
        self.num_exp = num_exp
        self.direct_pose = direct_pose
        self.encoder = Encoder(16, REGRESSOR_STAGES, width)
        # Linear heads straight on the pooled features (as MobileNet does): a ReLU hidden layer here
        # died within a few hundred steps (units pushed negative for every input), leaving constant
        # coefficients -- the fidelity benchmark caught it.
        hidden = self.encoder.out_channels[-1]
        self.coeff_head = nn.Linear(hidden, num_id + num_exp)
        nn.init.normal_(self.coeff_head.weight, std=0.01)
        nn.init.zeros_(self.coeff_head.bias)
        with torch.no_grad():
            self.coeff_head.bias[num_id:] = -3.0  # expressions start near neutral
        if direct_pose:
            self.pose_head = nn.Linear(hidden, POSE_PARAMS)
            nn.init.normal_(self.pose_head.weight, std=0.01)
            with torch.no_grad():
                # identity rotation: first two columns (1,0,0), (0,1,0)
                self.pose_head.bias.copy_(torch.tensor([0.0, 1, 0, 0, 0, 1, 0, 0, 0]))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.encoder(normalize_images(images))[-1]
        h = feats.mean(dim=(2, 3))
        coeffs = self.coeff_head(h).float()
        out = {
            "id_coeffs": coeffs[:, : self.num_id],
            "exp_coeffs": torch.sigmoid(coeffs[:, self.num_id :]),
        }
        if self.direct_pose:
            out["pose_params"] = self.pose_head(h).float()
        return out


def rotation_from_6d(r6: torch.Tensor) -> torch.Tensor:
    """(..., 6) -> proper rotation (..., 3, 3) by Gram-Schmidt on two columns (Zhou et al. 2019)."""
    a1, a2 = r6[..., :3], r6[..., 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)
