"""A PNG grid of generated images (the generative methods' per-task artifact), written with PIL so that a
training job does not pay torchvision's import time."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor


def save_grid(images: Tensor, path: Path, per_row: int = 8, pad: int = 2, min_size: int = 32) -> None:
    """images: (N, C, H, W) in [0, 1], C = 1 or 3. Small images are enlarged (nearest) to at least `min_size`."""
    x = images.detach().float().clamp(0, 1).cpu()
    if x.shape[-1] < min_size:
        x = F.interpolate(x, scale_factor=math.ceil(min_size / x.shape[-1]), mode="nearest")
    n, c, h, w = x.shape
    rows = math.ceil(n / per_row)
    grid = torch.ones(c, rows * (h + pad) + pad, per_row * (w + pad) + pad)
    for i in range(n):
        top, left = pad + (i // per_row) * (h + pad), pad + (i % per_row) * (w + pad)
        grid[:, top:top + h, left:left + w] = x[i]
    pixels = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(pixels[..., 0] if c == 1 else pixels).save(path)
