"""Model inversion: train a generator so that a frozen classifier "recognises" its samples (§5).

Re-implements GT-RIPL/AlwaysBeDreaming-DFCIL:learners/datafree_helper.py (`Teacher.get_images`,
`DeepInversionFeatureHook`, `Gaussiansmoothing`). One iteration draws a batch from the generator, runs the
frozen teacher (eval mode, so its BatchNorm layers hold the statistics of the real data) and minimises

  content_weight · CE(o/τ, argmax o)        (τ = 1000 makes this nearly inert; quirk 17)
  + class balance 1 − H(mean softmax(o)) / log n
  + bn_stat_weight · mean over BN layers of KL(N(μ_run, σ²_run) ‖ N(μ_batch, σ²_batch))   (a KL, not DeepInversion's L2)
  + smoothness_weight · mean((x − blur(x))²)  (5×5 Gaussian, reflect padding, effective σ = √2)

with Adam on the generator only. The iterations run through `trainer.run_stage` (no loop of its own).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfcil_core.trainer import Stage, run_stage

EPS = 1e-8  # datafree_helper.py DeepInversionFeatureHook: added to both variances


def gaussian_kernel(size: int = 5, sigma: float = 1.0) -> Tensor:
    """(size, size) kernel summing to 1. The reference writes exp(-((u - m) / (2σ))²), i.e. a Gaussian of
    standard deviation σ·√2 (quirk 17); kept as is."""
    u = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(u / (2 * sigma)) ** 2)
    k = torch.outer(g, g)
    return k / k.sum()


def smoothness_loss(x: Tensor, kernel: Tensor) -> Tensor:
    """mean((x − blur(x))²) with a depthwise blur after reflect padding (datafree_helper.py `Gaussiansmoothing`)."""
    c, pad = x.shape[1], kernel.shape[-1] // 2
    weight = kernel.to(x)[None, None].expand(c, 1, *kernel.shape)
    blurred = F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), weight, groups=c)
    return (x - blurred).pow(2).mean()


def class_balance_loss(logits: Tensor) -> Tensor:
    """1 − H(p̄)/log n with p̄ the batch-mean softmax: 0 when predictions are uniform on average, 1 when the
    whole batch is sure of one class."""
    p = F.softmax(logits, dim=1).mean(dim=0)
    return 1 + (p * torch.log(p.clamp_min(1e-30))).sum() / math.log(logits.shape[1])  # 0·log 0 = 0, not NaN


def bn_stat_loss(x: Tensor, running_mean: Tensor, running_var: Tensor) -> Tensor:
    """Mean over channels of KL(N(μ_run, σ²_run) ‖ N(μ_batch, σ²_batch)) for a BN input x (B, C, H, W), in fp32."""
    x = x.float().flatten(2)  # (B, C, HW); two passes, ~2x faster on the CPU than var_mean over (0, 2, 3)
    mean = x.mean(dim=(0, 2))
    var = (x - mean[:, None]).pow(2).mean(dim=(0, 2)) + EPS  # biased
    run_var = running_var.float() + EPS
    return (0.5 * torch.log(var / run_var)).mean() - 0.5 * (1 - (run_var + (running_mean - mean) ** 2) / var).mean()


class BNStatistics:
    """Forward hooks on every BatchNorm2d of `model`, active inside `with`. Each forward appends one loss term
    per layer; `pop()` returns their mean and forgets them, so no tensor outlives its step. Leaving the
    block removes the hooks (the reference never does: every later teacher forward paid for them)."""

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        self.terms: list[Tensor] = []
        self.handles = []

    def _hook(self, module: nn.BatchNorm2d, inputs, output) -> None:
        self.terms.append(bn_stat_loss(inputs[0], module.running_mean, module.running_var))

    def __enter__(self) -> BNStatistics:
        self.handles = [m.register_forward_hook(self._hook) for m in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles, self.terms = [], []

    def pop(self) -> Tensor:
        loss = torch.stack(self.terms).mean()
        self.terms = []
        return loss


def _chunks(iters: int, most: int = 10) -> int:
    """How many logged chunks `iters` splits into evenly (at most `most`)."""
    return next(d for d in range(min(most, iters), 0, -1) if iters % d == 0)


def inversion_step(generator: nn.Module, teacher: nn.Module, stats: BNStatistics, kernel: Tensor,
                   n_classes: int, batch_size: int, hp: dict) -> Callable[[object], dict[str, Tensor]]:
    """The loss of one inversion iteration (§5.3), as a stage loss: fresh noise -> images -> the four terms."""

    def step(_batch) -> dict[str, Tensor]:
        x = generator.sample(batch_size)
        out = teacher(x)[:, :n_classes]
        return {
            "content": hp["content_weight"] * F.cross_entropy(out / hp["content_temperature"], out.argmax(dim=1)),
            "balance": class_balance_loss(out),
            "bn_stats": hp["bn_stat_weight"] * stats.pop(),
            "smoothness": hp["smoothness_weight"] * smoothness_loss(x, kernel),
        }
    return step


def invert(generator: nn.Module, opt: torch.optim.Optimizer, teacher: nn.Module, n_classes: int, iters: int,
           batch_size: int, hp: dict, data, name: str = "inversion", log: Callable[[str], None] = print,
           switches: dict | None = None) -> dict:
    """Train `generator` for `iters` Adam steps against the frozen `teacher`'s first `n_classes` logits.

    hp: gen_lr, bn_stat_weight, smoothness_weight, content_temperature, content_weight (the reference's
    `deep_inv_params`, by name). `opt` carries Adam's state across tasks when the caller keeps it.
    switches: how the iteration runs (`fast.stage_switches` of the experiment's `train`); None = fp32 eager."""

    chunks = _chunks(iters)
    done = 0

    def progress(msg: str) -> None:  # run_stage logs once per chunk ("epoch"); say which iteration that is
        nonlocal done
        done += iters // chunks
        log(f"{msg} (iteration {done}/{iters})")

    teacher.eval()
    generator.train()
    with BNStatistics(teacher) as stats:
        step = inversion_step(generator, teacher, stats, gaussian_kernel().to(data.device), n_classes, batch_size, hp)
        stage = Stage(name=name, params=list(generator.parameters()), loss=step, epochs=chunks, lr=hp["gen_lr"],
                      optimizer="adam", batch_size=batch_size, indices=None, steps_per_epoch=iters // chunks,
                      log_every_epochs=1, log=progress, opt=opt, **(switches or {}))
        result = run_stage(stage, data)
    generator.eval()
    return result
