"""R-DFCIL: Relation-Guided Representation Learning for Data-Free Class Incremental Learning (Gao et al., ECCV 2022).

Re-implements gqk/R-DFCIL (f47e123) module.py `Module.training_step` on gqk/cl-lite v0.5.0, with this project's
ResNet-32, generator and inversion (the same four losses as ABD's; a fresh generator every task, 5,000 iterations).
At task t > 0, with N = the task's classes, n_past the old ones, α = log2(N/2 + 1) and β = sqrt(n_past / N):

- stage 1, relation-guided representation learning (the main stage: all epochs but the last `finetune_epochs`),
  real and synthetic images through separate forwards, so their BN batch statistics do not mix:
  - local CE on the real batch over the new task's logits, weight λ_ce (1 + 1/α) / β;
  - hard KD: L1 between the student's and the teacher's old-class logits on synthetic images, weight λ_hkd α β;
  - relational KD: angle-wise RKD between the student's and the teacher's penultimate features of the real batch,
    each first through its own learnable linear projection (d -> 2d, trained with the network), weight λ_rkd α β;
- stage 2, head refinement (the last `finetune_epochs`, constant lr `finetune_lr`): backbone frozen in eval mode,
  only the classifier learns, from a CE over real + synthetic images (the teacher's argmax as labels) weighted per
  class by inverse label frequency, plus the hard KD; no RKD.

Task 0 is plain CE for the main stage and nothing after it. The classifier has no bias, and each task's rows start
from N(0, 0.001²), as cl-lite's per-task heads (`weights_init_classifier`).
Deviation: the reference refreshes the class weights at each epoch's end from the label counts so far (stage 1's
included); here every stage-2 step uses the counts so far, which differ from those by less than one epoch's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfcil_core.learners.api import Batch, Task
from dfcil_core.learners.data_free import DataFreeLearner
from dfcil_core.losses import rkd_angle_loss

HEAD_INIT_STD = 0.001  # cl_lite/nn/init.py weights_init_classifier


def loss_weights(n_past: int, n_new: int, hp: dict) -> dict[str, float]:
    """Stage 1's weights of the local CE, hard KD and relational KD (module.py `register_losses`)."""
    alpha = math.log2(n_new / 2 + 1)
    beta = math.sqrt(n_past / n_new)
    return {"ce": hp["lambda_ce"] * (1 + 1 / alpha) / beta,
            "hkd": hp["lambda_hkd"] * alpha * beta,
            "rkd": hp["lambda_rkd"] * alpha * beta}


def inverse_frequency_weights(counts: Tensor) -> Tensor:
    """Per-class CE weights from label counts: total / count (a class never seen counts 1), scaled so the
    smallest weight is 1 (module.py `training_epoch_end`)."""
    weights = counts.sum() / counts.clamp(min=1)
    return weights / weights.min()


class RDFCIL(DataFreeLearner):
    name = "rdfcil"
    # tests' one-epoch tasks leave no epoch for stage 2; the tests of stage 2 give it epochs of its own
    tiny_overrides = {**DataFreeLearner.tiny_overrides, "finetune_epochs": 0}

    def __init__(self, hp: dict, ctx):
        super().__init__(hp, ctx)
        nn.init.zeros_(self.model.last.bias)  # bias-free heads: the bias stays 0, outside every optimizer
        self.projections: nn.ModuleList | None = None  # the student's and the teacher's RKD projections
        self.class_counts: Tensor | None = None  # labels (real + synthetic) trained on in this task, per class

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        with torch.no_grad():  # the new task's head, as cl-lite appends one
            self.model.last.weight[task.n_past_classes:task.n_seen_classes].normal_(0, HEAD_INIT_STD)
        if task.index > 0:
            d = self.model.last.in_features
            self.projections = nn.ModuleList(
                nn.Linear(d, self.hp["rkd_projection_factor"] * d) for _ in range(2)).to(self.ctx.device)
            self.class_counts = torch.zeros(task.n_seen_classes, device=self.ctx.device)

    def parameters(self) -> list[nn.Parameter]:
        network = [p for name, p in self.model.named_parameters() if name != "last.bias"]
        return network + (list(self.projections.parameters()) if self.projections is not None else [])

    def main_stage_epochs(self, train: dict) -> int:
        return train["epochs"] - self.hp["finetune_epochs"]

    def count_labels(self, *labels: Tensor) -> None:
        y = torch.cat(labels)
        self.class_counts.index_add_(0, y, torch.ones_like(y, dtype=self.class_counts.dtype))

    def replay_loss(self, batch, x_replay, y_replay, z_replay):
        task = self.task
        n_past, n_seen = task.n_past_classes, task.n_seen_classes
        w = loss_weights(n_past, n_seen - n_past, self.hp)
        h = self.model(batch.x, pen=True)
        logits_synthetic = self.model(x_replay)  # a forward of its own (module.py `training_step`)
        with torch.no_grad():
            h_teacher = self.teacher(batch.x, pen=True)
        self.count_labels(batch.y, y_replay)
        student, teacher = self.projections
        return {
            "ce_local": w["ce"] * F.cross_entropy(self.model.last(h)[:, n_past:n_seen], batch.y - n_past),
            "kd_hard": w["hkd"] * F.l1_loss(logits_synthetic[:, :n_past], z_replay),
            "kd_relation": w["rkd"] * rkd_angle_loss(student(h), teacher(h_teacher)),
        }

    def refine_loss(self, batch: Batch) -> dict[str, Tensor]:
        """Stage 2: the head alone, on features of the frozen backbone (eval mode)."""
        n_past, n_seen = self.task.n_past_classes, self.task.n_seen_classes
        x_replay, y_replay, z_replay = self.replay(len(batch.y))
        with torch.no_grad():
            h = self.model(torch.cat([batch.x, x_replay]), pen=True)  # eval mode: one forward is two
        logits = self.model.last(h)[:, :n_seen]
        y = torch.cat([batch.y, y_replay])
        self.count_labels(y)
        ce = F.cross_entropy(logits, y, weight=inverse_frequency_weights(self.class_counts))
        hkd = F.l1_loss(logits[len(batch.y):, :n_past], z_replay)
        return {"ce": self.hp["lambda_ce"] * ce,
                "kd_hard": loss_weights(n_past, n_seen - n_past, self.hp)["hkd"] * hkd}

    def end_task(self, task: Task) -> None:
        if task.index > 0 and self.hp["finetune_epochs"] > 0:
            self.model.eval()  # the backbone is frozen, its BN statistics too (cl-lite `freeze`)
            self.second_stage(f"task{task.index}-head", [self.model.last.weight], self.refine_loss,
                              self.train_indices(task), self.hp["finetune_lr"] / self.ctx.train["lr"], None,
                              epochs=self.hp["finetune_epochs"], lr_milestones=[])
        self.projections, self.class_counts = None, None  # a new pair every task; nothing of them is kept
        super().end_task(task)  # the generator the next task replays from

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.projections is not None:  # mid-task checkpoints: a resumed stage continues with them
            state |= {"projections": self.projections.state_dict(), "class_counts": self.class_counts}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "projections" in state:
            self.projections.load_state_dict(state["projections"])
            self.class_counts.copy_(state["class_counts"])
