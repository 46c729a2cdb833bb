"""The training batch, below both the trainer and the learners (which import the trainer for their own stages)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Batch:
    """One training batch: augmented, normalized images on the device and their remapped labels.

    `index` holds each sample's position in the full training set (memory selection needs it).
    Synthetic replay is not part of the batch: data-free learners draw it inside `loss`."""

    x: Tensor
    y: Tensor
    index: Tensor
