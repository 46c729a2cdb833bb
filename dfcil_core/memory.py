"""Exemplar memory: the per-class allocation (§6.1) and the selection rules (§6.2-6.4).

A memory is a tensor of indices into the full training set, never a copy of pixels.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def allocation(n_seen: int, memory_size: int, available: list[int]) -> list[int]:
    """Exemplars per seen class after a task: floor(M / n_seen) each; the remainder goes one at a time
    to classes visited newest first, among those with more than that many samples available (§6.1)."""
    per_class = memory_size // n_seen
    counts = [min(per_class, a) for a in available]
    remainder = memory_size - per_class * n_seen
    for c in reversed(range(n_seen)):
        if remainder == 0:
            break
        if available[c] > per_class:
            counts[c] += 1
            remainder -= 1
    return counts


def random_selection(pool: Tensor, labels: Tensor, counts: list[int], rng: np.random.Generator) -> Tensor:
    """For each class c, `counts[c]` entries of `pool` with label c, drawn without replacement.
    `pool` may contain duplicates (the reference re-selects from its oversampled replay set, §6.2)."""
    pool_labels = labels[pool].cpu().numpy()
    pool_np = pool.cpu().numpy()
    chosen = []
    for c, k in enumerate(counts):
        candidates = pool_np[pool_labels == c]
        chosen.append(rng.choice(candidates, size=min(k, len(candidates)), replace=False))
    return torch.as_tensor(np.concatenate(chosen).astype(np.int64), device=pool.device)


class RandomMemory:
    """Random class-balanced memory mixed 50/50 into training (Naive Rehearsal, LwF with coreset).

    Reference behaviour (switch `replay_oversample`, default true, §4.3 and quirk 8): at task t > 0 the
    training set is D_t plus |D_t| draws with replacement from the memory, and the next memory is
    re-selected from that oversampled pool. With the switch off, the memory is appended once and
    re-selected from the unique stored images."""

    def __init__(self, memory_size: int, oversample: bool, seed: int):
        self.memory_size = memory_size
        self.oversample = oversample
        self.seed = seed
        self.indices = torch.zeros(0, dtype=torch.long)
        self._pool: Tensor | None = None

    def training_pool(self, task_indices: Tensor) -> Tensor:
        stored = self.indices.to(task_indices.device)
        if len(stored) and self.oversample:
            draws = torch.randint(len(stored), (len(task_indices),), device=task_indices.device)
            stored = stored[draws]
        self._pool = torch.cat([task_indices, stored])
        return self._pool

    def update(self, task_index: int, n_seen: int, labels: Tensor) -> None:
        pool = self._pool if self.oversample else torch.unique(self._pool)
        available = torch.bincount(labels[pool], minlength=n_seen)[:n_seen].tolist()
        counts = allocation(n_seen, self.memory_size, available)
        rng = np.random.default_rng(self.seed * 10000 + task_index)  # the reference's selection seed
        self.indices = random_selection(pool, labels, counts, rng)

    def state_dict(self) -> dict:
        return {"indices": self.indices.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.indices = state["indices"]
