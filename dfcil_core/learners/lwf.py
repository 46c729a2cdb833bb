"""LwF: fine-tuning plus distillation of the previous model's old-class logits (§4.4; README "LwF")."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from dfcil_core.learners.api import Batch, Task, TeacherLearner
from dfcil_core.losses import kd_loss


class LwF(TeacherLearner):
    """L = CE(z over seen classes, y) + mu * KD_T(z, z_teacher; old classes) on every sample.

    The teacher is a frozen copy of the model as it stood at the start of the task."""

    name = "lwf"
    defaults = {
        "mu": 1.0,           # experiments/cifar100-*.sh: --mu 1 for lwf and lwf_coreset (§8.1)
        "temperature": 2.0,  # run.py --temp default; no script overrides it (§0)
    }

    @classmethod
    def shared_main_stage(cls, task: Task) -> str | None:
        return "base" if task.index == 0 else None  # no teacher, no memory yet: plain CE (§7.3)

    def distill(self, z: Tensor, z_teacher: Tensor) -> Tensor:
        """KD over all old classes at once (reference `loss_fn_kd`, no T^2)."""
        return kd_loss(z[:, : self.task.n_past_classes], z_teacher, self.hp["temperature"])

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        z = self.seen_logits(batch.x)
        terms = {"ce": F.cross_entropy(z, batch.y)}
        if self.teacher is not None:
            terms["kd"] = self.hp["mu"] * self.distill(z, self.teacher_logits(batch.x))
        return terms
