"""DGR's convolutional VAE (ABD models/autoencoder.py `CIFAR_GEN`, from van de Ven & Tolias; §2.5).

No BatchNorm. Encoder: three 4x4 stride-2 convs (width, 2·width, 8·width channels) with ReLU; linear heads to
the mean and log-variance of z. Decoder: linear projection back, three 4x4 stride-2 transposed convs
(8·width -> 4·width -> width -> channels, ReLU on the first two) and a sigmoid, so images live in [0, 1].
`channels=3, size=32, z_dim=1024, width=64` is the reference's 28,722,179-parameter network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _down(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)


def _up(c_in: int, c_out: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)


class VAE(nn.Module):
    def __init__(self, channels: int = 3, size: int = 32, z_dim: int = 1024, width: int = 64):
        super().__init__()
        if size % 8:
            raise ValueError(f"VAE: image size {size} is not a multiple of 8")
        self.z_dim = z_dim
        self.shape = (8 * width, size // 8, size // 8)  # the encoder's output map
        volume = self.shape[0] * self.shape[1] * self.shape[2]
        self.encoder = nn.Sequential(_down(channels, width), nn.ReLU(), _down(width, 2 * width), nn.ReLU(),
                                     _down(2 * width, 8 * width), nn.ReLU(), nn.Flatten())
        self.q_mean = nn.Linear(volume, z_dim)
        self.q_logvar = nn.Linear(volume, z_dim)
        self.project = nn.Linear(z_dim, volume)
        self.decoder = nn.Sequential(_up(8 * width, 4 * width), nn.ReLU(), _up(4 * width, width), nn.ReLU(),
                                     _up(width, channels), nn.Sigmoid())

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(self.project(z).view(len(z), *self.shape))

    def loss(self, x: Tensor, weight: Tensor) -> Tensor:
        """Per-sample BCE (mean over pixels) times `weight`, averaged, plus the Gaussian KL (sum over z, mean
        over the batch) divided by the pixel count; both weighted 1 (autoencoder.py `loss_function`).
        Uses the reparameterized z in train mode and the mean in eval mode, as the reference's forward."""
        h = self.encoder(x)
        mu, logvar = self.q_mean(h), self.q_logvar(h)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        recon = self.decode(z)
        # CUDA autocast refuses binary_cross_entropy (unsafe in bf16): compute it in fp32 under `precision: bf16`
        with torch.autocast(x.device.type, enabled=False):
            bce = F.binary_cross_entropy(recon.flatten(1).float(), x.flatten(1).float(), reduction="none").mean(dim=1)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1).mean() / x[0].numel()
        return (bce * weight).mean() + kl

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, self.z_dim, device=self.project.weight.device, generator=generator)
        return self.decode(z)
