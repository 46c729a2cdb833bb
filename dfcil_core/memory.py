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


# ---------------------------------------------------------------- ranked memory (E2E, BiC)

@torch.no_grad()
def class_features(model, data, index: Tensor, normalize: bool = True, batch_size: int = 1000) -> Tensor:
    """Penultimate features of un-augmented training images (the reference's test transform, §1.5), in
    eval mode and in batches on the device (the reference forwards one image at a time; same values).
    The model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    feats = torch.cat([model.features(data.plain_images(index[i:i + batch_size], normalize))
                       for i in range(0, len(index), batch_size)])
    model.train(was_training)
    return feats


def _as_float64(x: Tensor) -> Tensor:
    return x.float() if x.device.type == "mps" else x.double()  # the reference ranks in NumPy float64


def nearest_to_mean(feats: Tensor, m: int) -> Tensor:
    """Positions of the m rows of `feats` closest to their mean (Euclidean, features not normalized),
    closest first; ties keep the earlier row. E2E's selection (§6.3, quirk 7)."""
    f = _as_float64(feats)
    distance = (f - f.mean(dim=0)).norm(dim=1)
    return torch.sort(distance, stable=True).indices[:m]


def herding(feats: Tensor, m: int) -> Tensor:
    """iCaRL herding (§6.4): repeatedly pick the row whose addition brings the mean of the chosen rows
    closest to the mean of all rows; returns positions in picking order. Ties keep the earlier row."""
    f = _as_float64(feats)
    mean = f.mean(dim=0)
    chosen_sum = torch.zeros_like(mean)
    taken = torch.zeros(len(f), dtype=torch.bool, device=f.device)
    picks = []
    for k in range(min(m, len(f))):
        distance = (mean - (chosen_sum + f) / (k + 1)).norm(dim=1).masked_fill(taken, float("inf"))
        i = distance.argmin()
        picks.append(i)
        taken[i] = True
        chosen_sum = chosen_sum + f[i]
    return torch.stack(picks) if picks else torch.zeros(0, dtype=torch.long, device=f.device)


SELECTION_RULES = {"nearest_to_mean": nearest_to_mean, "herding": herding}


class RankedMemory:
    """A memory holding the first m exemplars of each class's ranking (E2E nearest-to-mean, BiC herding).

    As the reference (§6.3-6.4), a class is ranked once, with the model of the task that introduced it,
    and later tasks keep a prefix of that cached ranking. The full memory is appended once to the
    training data (no oversampling, §6.5)."""

    def __init__(self, memory_size: int, rule: str):
        if rule not in SELECTION_RULES:
            raise ValueError(f"unknown selection rule {rule!r}; expected one of {sorted(SELECTION_RULES)}")
        self.memory_size = memory_size
        self.rule = SELECTION_RULES[rule]
        self.rankings: list[Tensor] = []  # rankings[c]: training-set indices of class c, best first
        self.indices = torch.zeros(0, dtype=torch.long)

    def update(self, model, data, n_seen: int, normalize: bool = True) -> None:
        """Re-allocate over `n_seen` classes; rank the classes not ranked yet with `model`."""
        labels = data.train_y
        n_ranked = len(self.rankings)
        stored = torch.bincount(labels[self.indices.to(labels.device)], minlength=n_seen)[:n_ranked]
        new = torch.bincount(labels, minlength=n_seen)[n_ranked:n_seen]
        counts = allocation(n_seen, self.memory_size, torch.cat([stored, new]).tolist())
        for c in range(n_ranked, n_seen):
            candidates = torch.nonzero(labels == c).flatten()  # storage order, as the reference's loop
            order = self.rule(class_features(model, data, candidates, normalize), counts[c])
            self.rankings.append(candidates[order.to(candidates.device)])
        self.indices = torch.cat([self.rankings[c][:counts[c]] for c in range(n_seen)])

    def state_dict(self) -> dict:
        return {"indices": self.indices.cpu(), "rankings": [r.cpu() for r in self.rankings]}

    def load_state_dict(self, state: dict) -> None:
        self.indices = state["indices"]
        self.rankings = list(state["rankings"])
