"""E2E: End-to-End Incremental Learning (Castro et al., ECCV 2018) as the reference's `kd.ETE` (§4.8).

Stage A: new data plus the whole memory (appended once), CE plus a task-wise distillation from the
previous model. Then the memory is re-selected (nearest-to-mean, §6.3) and stage B, "balanced
fine-tuning", trains on the memory only at lr/100 through the shared `run_stage`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dfcil_core.learners.api import Batch, Task
from dfcil_core.learners.lwf import LwF
from dfcil_core.losses import kd_loss
from dfcil_core.memory import RankedMemory

def task_blocks(bounds: list[int], n_tasks: int) -> list[range]:
    """Logit blocks of tasks 0..n_tasks-1."""
    return [range(bounds[s], bounds[s + 1]) for s in range(n_tasks)]


def taskwise_weights(blocks: list[range], denominator: int) -> list[float]:
    """Each block's weight in the task-wise KD: its share |C_s| / denominator."""
    return [len(b) / denominator for b in blocks]


def taskwise_kd(z: Tensor, z_teacher: Tensor, blocks: list[range], denominator: int, temperature: float) -> Tensor:
    """sum_s (|C_s| / denominator) * KD_T(z, z_teacher; C_s): one softmax per past task (reference ETE)."""
    return sum(w * kd_loss(z[:, b.start:b.stop], z_teacher[:, b.start:b.stop], temperature)
               for w, b in zip(taskwise_weights(blocks, denominator), blocks))


class E2E(LwF):
    name = "e2e"
    state_parts = ("model", "memory")

    def __init__(self, hp, ctx):
        super().__init__(hp, ctx)
        self.memory = RankedMemory(hp["memory_size"], "nearest_to_mean")
        self.stage_a = None

    def train_indices(self, task: Task) -> Tensor:
        new = super().train_indices(task)
        return torch.cat([new, self.memory.indices.to(new.device)])  # memory appended once (§6.5)

    def distill(self, z: Tensor, z_teacher: Tensor) -> Tensor:
        """Stage A: past task s weighted by |C_s| / n_old."""
        blocks = task_blocks(self.ctx.data.bounds, self.task.index)
        return taskwise_kd(z, z_teacher, blocks, self.task.n_past_classes, self.hp["temperature"])

    def end_task(self, task: Task) -> None:
        if self.hp["balanced_new_kd"] == "stage_a" and task.index > 0:
            self.stage_a = self.frozen_copy(self.model)
        self.memory.update(self.model, self.ctx.data, task.n_seen_classes)  # features after stage A
        if task.index == 0:
            return
        head_only = self.hp["balanced_head_only"]
        self.model.train(self.hp["balanced_bn_train"])
        self.second_stage(f"task{task.index}-balanced", list((self.model.last if head_only else self.model).parameters()),
                          self.balanced_loss, self.memory.indices.to(self.ctx.device),
                          self.hp["balanced_lr_factor"], self.hp["balanced_batch_size"])
        self.stage_a = None

    def balanced_loss(self, batch: Batch) -> dict[str, Tensor]:
        """CE + mu * [sum_{s<t} |C_s|/n_all KD(C_s) + |C_t|/n_all KD_new], old KD from the previous model."""
        t, temperature = self.task, self.hp["temperature"]
        if self.hp["balanced_head_only"]:
            with torch.no_grad():
                h = self.model.features(batch.x)
            z = self.model.last(h)[:, : t.n_seen_classes]
        else:
            z = self.seen_logits(batch.x)
        z_old = self.teacher_logits(batch.x)
        new = t.classes
        if self.stage_a is None:  # reference: the previous model's first |C_t| old-class logits
            target = z_old[:, : len(new)]
        else:
            with torch.no_grad():
                target = self.stage_a(batch.x)[:, new.start:new.stop]
        kd = taskwise_kd(z, z_old, task_blocks(self.ctx.data.bounds, t.index), t.n_seen_classes, temperature)
        kd = kd + len(new) / t.n_seen_classes * kd_loss(z[:, new.start:new.stop], target, temperature)
        return {"ce": F.cross_entropy(z, batch.y), "kd": self.hp["mu"] * kd}
