"""LwF: fine-tuning plus distillation of the previous model's old-class logits (§4.4; README "LwF")."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from dfcil_core.learners.api import Batch, TeacherLearner
from dfcil_core.losses import kd_loss


class LwF(TeacherLearner):
    """L = CE(z over seen classes, y) + mu * KD_T(z, z_teacher; old classes) on every sample.

    The teacher is a frozen copy of the model as it stood at the start of the task."""

    name = "lwf"

    def distill(self, z: Tensor, z_teacher: Tensor) -> Tensor:
        """KD over all old classes at once (reference `loss_fn_kd`, no T^2)."""
        return kd_loss(z[:, : self.task.n_past_classes], z_teacher, self.hp["temperature"])

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        z = self.seen_logits(batch.x)
        terms = {"ce": F.cross_entropy(z, batch.y)}
        if self.teacher is not None:
            terms["kd"] = self.hp["mu"] * self.distill(z, self.teacher_logits(batch.x))
        return terms
