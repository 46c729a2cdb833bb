"""LwF.MC: LwF with the old model's outputs as soft targets for the old classes, in one multi-class loss
(§4.6, quirk 18; README "LwF.MC"; iCaRL's "LwF.MC" baseline).

`variant` (default `softmax`):
- `softmax`: the code at the ICCV commit (1f3e2d7, learners/kd.py LWF_MC). Softmax cross-entropy over
  the seen classes against a target row holding softmax(z_teacher) (T = 1) on the old classes plus a 1
  on the true class (rows sum to 2); plain CE at task 0.
- `bce`: the code after Feb 2022 (HEAD 50d9c2e) and iCaRL's definition. Sigmoid BCE summed over the
  seen classes and averaged over the batch, against the one-hot label with the old columns replaced by
  sigmoid(z_teacher); one-hot targets at task 0.

Why `softmax` is the default: the README's LwF.MC row already existed in the October 2021 commit, while
the BCE version and the script line that runs LwF.MC only arrived together in February 2022, so the
published numbers (the target of this project's paper config) were most likely produced by the softmax
version (spec §4.6). `bce` is the method's own paper (iCaRL) and the reference's current code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dfcil_core.learners.api import Batch
from dfcil_core.learners.lwf import LwF
from dfcil_core.losses import kd_loss

def lwf_mc_targets(y: Tensor, z_teacher: Tensor | None, n_seen: int, variant: str) -> Tensor:
    """The target matrix (B x n_seen): one-hot labels, old columns replaced by the teacher's outputs."""
    target = F.one_hot(y, n_seen).float()
    if z_teacher is not None:
        n_old = z_teacher.shape[1]
        old = F.softmax(z_teacher, dim=1) if variant == "softmax" else torch.sigmoid(z_teacher)
        target = torch.cat([old, target[:, n_old:]], dim=1)
    return target


def lwf_mc_loss(z: Tensor, target: Tensor, variant: str) -> Tensor:
    """softmax: -(1/B) sum_i sum_c target_ic log softmax(z_i)_c; bce: (1/B) sum_i sum_c BCE(sigmoid(z_ic), target_ic)."""
    if variant == "softmax":
        return kd_loss(z, target, temperature=1.0, teacher_probs=True)
    return F.binary_cross_entropy_with_logits(z, target, reduction="sum") / len(z)


class LwFMC(LwF):
    name = "lwf_mc"

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        z = self.seen_logits(batch.x)
        z_teacher = self.teacher_logits(batch.x) if self.teacher is not None else None
        target = lwf_mc_targets(batch.y, z_teacher, self.task.n_seen_classes, self.hp["variant"])
        return {"mc": lwf_mc_loss(z, target, self.hp["variant"])}
