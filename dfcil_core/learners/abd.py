"""ABD, Always Be Dreaming (Smith et al., ICCV 2021; §4.13; README "Ours").

Re-implements GT-RIPL/AlwaysBeDreaming-DFCIL:learners/datafree.py::AlwaysBeDreaming.update_model. At t > 0 the
loss on the real batch x and the synthetic batch x̂ (h = penultimate features of the student on [x; x̂]) is
- local CE: real samples, new-task logits only, scaled by 1 - r (quirk 12; `local_ce_scale`);
- fine-tuning CE: real + synthetic, all K logits, class weights (r, 1 - r), on stop-gradient features, so only
  the head learns from it (normalised by the sample count, not the weight sum);
- importance-weighted feature distillation: mu · mean ||W°_old (h - h°)||² / n_past through the frozen previous
  head W° (the teacher's), which reaches the backbone only.
r = n_past / n_seen. Task 0 is CE over all K logits, unseen classes included (quirk 13); `seen_classes_only` limits
it and the fine-tuning CE to the seen classes.
"""

import torch
import torch.nn.functional as F

from dfcil_core.learners.data_free import DataFreeLearner
from dfcil_core.losses import old_new_class_weights, weighted_ce


class ABD(DataFreeLearner):
    name = "abd"
    def softmax_classes(self) -> int:
        """How many logits the task-0 and fine-tuning softmaxes cover: all K (reference) or the seen ones."""
        return self.task.n_seen_classes if self.hp["seen_classes_only"] else self.ctx.n_classes

    def first_task_loss(self, batch):
        return {"ce": F.cross_entropy(self.model(batch.x)[:, :self.softmax_classes()], batch.y)}

    def replay_loss(self, batch, x_replay, y_replay, z_replay):
        n_real, n_past, n_seen = len(batch.y), self.task.n_past_classes, self.task.n_seen_classes
        x, y = torch.cat([batch.x, x_replay]), torch.cat([batch.y, y_replay])
        weights = old_new_class_weights(n_past, n_seen, self.ctx.n_classes, x.device)  # (K,)
        h = self.model(x, pen=True)  # (2B, d)
        local = self.model.last(h[:n_real])[:, n_past:n_seen]
        local_weights = weights if self.hp["local_ce_scale"] else torch.ones_like(weights)
        if self.hp["ft_second_forward"]:
            with torch.no_grad():
                h_ft = self.model(x, pen=True)
        else:
            h_ft = h.detach()
        with torch.no_grad():
            h_past = self.teacher(x, pen=True)
        w_past = self.teacher.last.weight[:n_past]  # (n_past, d), frozen; the biases cancel
        return {
            "ce_local": weighted_ce(local, batch.y - n_past, local_weights[n_past:]),
            "ce_ft": weighted_ce(self.model.last(h_ft)[:, :self.softmax_classes()], y, weights),
            "kd_feature": self.hp["mu"] * F.linear(h - h_past, w_past).pow(2).sum(dim=1).mean() / n_past,
        }
