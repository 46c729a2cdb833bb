"""LwF-Synthetic: LwF whose distillation also covers synthetic replay (§4.12; the paper's ablation, not in the README).

Re-implements GT-RIPL/AlwaysBeDreaming-DFCIL:learners/datafree.py::DeepInversionLWF.update_model: CE on the real
samples over the seen classes plus KD over the old classes on real and synthetic samples together.
"""

import torch
import torch.nn.functional as F

from dfcil_core.learners.data_free import DataFreeLearner
from dfcil_core.losses import kd_loss


class LwFSynthetic(DataFreeLearner):
    name = "lwf_synthetic"

    def replay_loss(self, batch, x_replay, y_replay, z_replay):
        n_real, n_past = len(batch.y), self.task.n_past_classes
        logits = self.seen_logits(torch.cat([batch.x, x_replay]))  # (2B, n_seen)
        targets = torch.cat([self.teacher_logits(batch.x), z_replay])  # (2B, n_past)
        return {
            "ce": F.cross_entropy(logits[:n_real], batch.y),
            "kd": self.hp["mu"] * kd_loss(logits[:, :n_past], targets, self.hp["temperature"]),
        }
