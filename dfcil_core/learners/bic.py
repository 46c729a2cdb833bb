"""BiC: Large Scale Incremental Learning (Wu et al., CVPR 2019) as the reference's `kd.BIC` (§4.9).

At task t > 0 a holdout V (10% of the memory's size, class-balanced) is set aside. Stage 1 trains the
network on the rest of new data + memory with (1 - r) CE + r KD, r = n_old / n_all, on logits corrected
by the earlier tasks' bias layers, against the bias-corrected previous model. Stage 2 (through the
shared `run_stage`) fits one bias layer (alpha, beta) for task t's logit block on V. Memory: iCaRL
herding (§6.4), re-selected after stage 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfcil_core.learners.api import Batch, Task
from dfcil_core.learners.lwf import LwF
from dfcil_core.losses import kd_loss
from dfcil_core.memory import RankedMemory
from dfcil_core.methods import holdout_per_class


def first_k_per_class(index: Tensor, labels: Tensor, k: int) -> Tensor:
    """Mask over `index`: True for the first k entries of each class, in the order of `index`."""
    onehot = F.one_hot(labels[index], int(labels.max()) + 1)
    rank = (onehot.cumsum(dim=0) * onehot).sum(dim=1) - 1
    return rank < k


def apply_bias(z: Tensor, layers: list[Tensor], bounds: list[int]) -> Tensor:
    """alpha_s * z + beta_s on task s's block for each layer s = 1..len(layers) (layers[s-1] = [alpha, beta]);
    task 0's block and the blocks without a layer are unchanged."""
    parts = [z[:, : bounds[1]]]
    for s, ab in enumerate(layers, start=1):
        parts.append(ab[0] * z[:, bounds[s]:bounds[s + 1]] + ab[1])
    parts.append(z[:, bounds[len(layers) + 1]:])
    return torch.cat(parts, dim=1)


class BiC(LwF):
    name = "bic"
    state_parts = ("model", "memory")  # and the bias rows (below)

    def __init__(self, hp, ctx):
        super().__init__(hp, ctx)
        self.memory = RankedMemory(hp["memory_size"], "herding")
        self.bias: list[nn.Parameter] = []  # bias[s-1] = [alpha, beta] of task s >= 1
        self.holdout: Tensor | None = None

    def corrected(self, z: Tensor, train_last: bool = False) -> Tensor:
        layers = [b.detach() for b in self.bias]
        if train_last:
            layers[-1] = self.bias[-1]
        return apply_bias(z, layers, self.ctx.data.bounds)

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self.teacher_bias = [b.detach().clone() for b in self.bias]  # the teacher includes its bias layers

    @torch.no_grad()
    def teacher_logits(self, x: Tensor) -> Tensor:
        n_old = self.task.n_past_classes
        return apply_bias(self.teacher(x)[:, :n_old], self.teacher_bias, self.ctx.data.bounds)

    def train_indices(self, task: Task) -> Tensor:
        new = super().train_indices(task)
        if task.index == 0:
            return new
        labels, stored = self.ctx.data.train_y, self.memory.indices.to(new.device)
        k = holdout_per_class(len(stored), task.n_past_classes, self.hp["holdout_fraction"])
        # new classes: first k in storage order; old classes: first k in herding order (§4.9)
        held_new, held_old = first_k_per_class(new, labels, k), first_k_per_class(stored, labels, k)
        self.holdout = torch.cat([new[held_new], stored[held_old]])
        return torch.cat([new[~held_new], stored[~held_old]])

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        z = self.corrected(self.seen_logits(batch.x))
        ce = F.cross_entropy(z, batch.y)
        if self.teacher is None:
            return {"ce": ce}
        r = self.task.n_past_classes / self.task.n_seen_classes
        kd = kd_loss(z[:, : self.task.n_past_classes], self.teacher_logits(batch.x), self.hp["temperature"])
        return {"ce": (1 - r) * ce, "kd": r * kd}

    def end_task(self, task: Task) -> None:
        if task.index > 0:
            self.bias.append(nn.Parameter(torch.tensor([1.0, 0.0], device=self.ctx.device)))
            self.model.train(self.hp["bias_bn_train"])
            # weight decay applies to alpha and beta too, as in the reference (quirk 3)
            self.second_stage(f"task{task.index}-bias", [self.bias[-1]], self.bias_loss, self.holdout,
                              self.hp["bias_lr_factor"], self.hp["bias_batch_size"])
            self.holdout = None
        self.memory.update(self.model, self.ctx.data, task.n_seen_classes)  # herding after stage 2

    def bias_loss(self, batch: Batch) -> dict[str, Tensor]:
        with torch.no_grad():  # only alpha, beta learn; a forward in train mode still moves BN statistics
            z = self.seen_logits(batch.x)
        return {"ce": F.cross_entropy(self.corrected(z, train_last=True), batch.y)}

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        z = self.seen_logits(x)
        return self.corrected(z) if self.hp["bias_at_eval"] else z

    def state_dict(self) -> dict:
        bias = torch.stack([b.detach().cpu() for b in self.bias]) if self.bias else torch.zeros(0, 2)
        return {**super().state_dict(), "bias": bias}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        rows = state["bias"]
        del self.bias[len(rows):]
        with torch.no_grad():  # in place: a stage resumed from a checkpoint optimizes these very objects
            for s, row in enumerate(rows):
                if s < len(self.bias):
                    self.bias[s].copy_(row)
                else:
                    self.bias.append(nn.Parameter(row.clone()))
