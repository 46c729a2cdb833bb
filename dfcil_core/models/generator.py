"""The unconditional generator trained by model inversion (ABD models/generator.py, §2.4).

One class covers the reference's `CIFAR_GEN` (32x32x3, two upsamplings) and `TINYIMNET_GEN` (64x64x3, three
upsamplings, one extra 128->128 block) and, with `width=64, last_width=64`, `IMNET_GEN` (224x224x3, five upsamplings, all
blocks 64 wide); the demo uses the same design at 16x16x1 with a narrower width and a
smaller noise vector. The reference design is DAFL's: linear -> BN -> (upsample, conv, BN, LeakyReLU) blocks ->
conv -> Tanh -> a non-affine BN that re-standardizes every output channel to the normalized image space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BN_EPS = 0.8  # ABD models/generator.py:26 `nn.BatchNorm2d(128, 0.8)`: the positional 0.8 is eps (quirk 16)


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out, eps=BN_EPS), nn.LeakyReLU(0.2)]


def n_upsamplings(size: int) -> int:
    """Two doublings up to 32 px (CIFAR_GEN: 8 -> 32, the demo: 4 -> 16), one more per further doubling
    (TINYIMNET_GEN: 8 -> 64)."""
    ups = 2
    while size // 2**ups > 8:
        ups += 1
    if size % 2**ups:
        raise ValueError(f"generator: image size {size} is not a multiple of {2 ** ups}")
    return ups


class Generator(nn.Module):
    """`z_dim=1000, width=128, channels=3, size=32` is CIFAR_GEN (8,423,939 parameters);
    `size=64` is TINYIMNET_GEN (8,571,779); `size=224, width=64, last_width=64` is IMNET_GEN (3,326,275).
    `last_width` is the width of the last block (default: half the width, as CIFAR_GEN and TINYIMNET_GEN)."""

    def __init__(self, channels: int = 3, size: int = 32, z_dim: int = 1000, width: int = 128,
                 last_width: int | None = None):
        super().__init__()
        self.z_dim, self.width = z_dim, width
        ups = n_upsamplings(size)
        self.init_size = size // 2**ups
        self.l1 = nn.Linear(z_dim, width * self.init_size**2)
        self.bn0 = nn.BatchNorm2d(width)
        # After each upsampling a width->width block; after the last one width->last_width and the output conv.
        self.blocks = nn.ModuleList(nn.Sequential(*_block(width, width)) for _ in range(ups - 1))
        last_width = last_width or width // 2
        self.out = nn.Sequential(*_block(width, last_width), nn.Conv2d(last_width, channels, 3, padding=1),
                                 nn.Tanh(), nn.BatchNorm2d(channels, affine=False))

    def forward(self, z: Tensor) -> Tensor:
        x = self.bn0(self.l1(z).view(len(z), self.width, self.init_size, self.init_size))
        for block in self.blocks:
            x = block(F.interpolate(x, scale_factor=2))  # nearest, as the reference
        return self.out(F.interpolate(x, scale_factor=2))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n images from z ~ N(0, I), drawn on the generator's device (no host copy per step)."""
        z = torch.randn(n, self.z_dim, device=self.l1.weight.device, generator=generator)
        return self(z)
