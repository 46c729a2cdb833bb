"""The "DeepInversion" baseline of the ABD paper (§4.11; README "DeepInversion").

Re-implements GT-RIPL/AlwaysBeDreaming-DFCIL:learners/datafree.py::DeepInversionGenBN.update_model: CE on the real
samples only, KD on the real samples over the old classes, and KD on the synthetic samples towards the teacher's
softened distribution zero-padded over the new classes (no hard-label CE on synthetic data; quirk 24).
"""

import torch
import torch.nn.functional as F

from dfcil_core.learners.data_free import DataFreeLearner
from dfcil_core.losses import kd_loss


class DeepInversion(DataFreeLearner):
    name = "deep_inversion"

    def replay_loss(self, batch, x_replay, y_replay, z_replay):
        n_real, n_past, n_seen = len(batch.y), self.task.n_past_classes, self.task.n_seen_classes
        mu, t = self.hp["mu"], self.hp["temperature"]
        logits = self.seen_logits(torch.cat([batch.x, x_replay]))  # (2B, n_seen): one forward, shared BN batch
        real, synthetic = logits[:n_real], logits[n_real:]
        padded = F.pad(F.softmax(z_replay / t, dim=1), (0, n_seen - n_past))  # (B, n_seen), new classes 0
        return {
            "ce": F.cross_entropy(real, batch.y),
            "kd_real": mu * kd_loss(real[:, :n_past], self.teacher_logits(batch.x), t),
            "kd_synthetic": mu * kd_loss(synthetic, padded, t, teacher_probs=True),
        }
