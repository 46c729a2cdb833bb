"""Loss terms shared by several methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def kd_loss(student: Tensor, teacher: Tensor, temperature: float = 2.0, teacher_probs: bool = False) -> Tensor:
    """The reference's `loss_fn_kd`: -(1/N) sum_i sum_c softmax(teacher/T)_c log softmax(student/T)_c.

    Both logit sets must already be restricted to the same classes. No T^2 factor (reference
    learners/default.py; quirk 22). With `teacher_probs`, `teacher` holds target probabilities that are
    already normalized (the reference's "soft targets" variant, e.g. DeepInversion's zero-padded targets)."""
    target = teacher if teacher_probs else F.softmax(teacher / temperature, dim=1)
    return -(target * F.log_softmax(student / temperature, dim=1)).sum(dim=1).mean()


def old_new_class_weights(n_past: int, n_seen: int, n_classes: int, device=None) -> Tensor:
    """Per-class weights (K,) of ABD and DGR: r = n_past / n_seen for old classes, 1 - r for the others
    (datafree.py `AlwaysBeDreaming.update_model`, dgr.py `learn_batch`). Index it with labels. The reference
    sizes this vector by the batch, not the class count (quirk 11); sized by classes it works for any batch."""
    r = n_past / n_seen
    w = torch.full((n_classes,), 1 - r, device=device)
    w[:n_past] = r
    return w


def weighted_ce(logits: Tensor, y: Tensor, class_weights: Tensor) -> Tensor:
    """The reference's `criterion`: mean over the batch of w_y · CE, normalised by N, not by the sum of w."""
    return (F.cross_entropy(logits, y, reduction="none") * class_weights[y]).mean()


def angle_relations(e: Tensor) -> Tensor:
    """cos of the angle at vertex j between samples i and k, for every (i, j, k) of a batch of embeddings (N, d):
    <(e_i - e_j)/|e_i - e_j|, (e_k - e_j)/|e_k - e_j|>, flattened to N³ (a zero difference has cosine 0)."""
    d = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # d[j, i] = unit(e_i - e_j)
    return torch.bmm(d, d.transpose(1, 2)).flatten()


def rkd_angle_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Angle-wise relational KD (Park et al., CVPR 2019): mean |angle relations of the student - the teacher's|
    over every triplet of the batch (cl-lite nn/loss/distill_relation.py `RKDAngleLoss`, without its projections)."""
    return F.l1_loss(angle_relations(student), angle_relations(teacher))
