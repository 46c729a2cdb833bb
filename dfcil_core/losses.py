"""Loss terms shared by several methods."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def kd_loss(student: Tensor, teacher: Tensor, temperature: float = 2.0, teacher_probs: bool = False) -> Tensor:
    """The reference's `loss_fn_kd`: -(1/N) sum_i sum_c softmax(teacher/T)_c log softmax(student/T)_c.

    Both logit sets must already be restricted to the same classes. No T^2 factor (reference
    learners/default.py; quirk 22). With `teacher_probs`, `teacher` holds target probabilities that are
    already normalized (the reference's "soft targets" variant, e.g. DeepInversion's zero-padded targets)."""
    target = teacher if teacher_probs else F.softmax(teacher / temperature, dim=1)
    return -(target * F.log_softmax(student / temperature, dim=1)).sum(dim=1).mean()
