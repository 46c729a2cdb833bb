"""The one training loop shared by every method.

`train_task` runs one task: the learner's main stage (SGD over its parameters, on its training
indices, with its loss), then its `end_task`, then one evaluation. Secondary stages (E2E balanced
fine-tuning, BiC bias correction, generator inversion) go through the same `run_stage` from the
learner's `end_task`; no method writes a loop of its own.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from dfcil_core import checkpoint
from dfcil_core.learners.api import Batch, Learner, Task

LossFn = Callable[[Batch | None], dict[str, Tensor]]


@dataclass
class Stage:
    """One optimisation stage.

    indices: training-set samples to iterate over (shuffled each epoch, drop_last); None means a
             data-free stage that calls `loss(None)` `steps_per_epoch` times per epoch (inversion).
    lr_milestones: epochs at which the learning rate is multiplied by 0.1 (MultiStepLR, §3.1).
    """

    name: str
    params: list[nn.Parameter]
    loss: LossFn
    epochs: int
    lr: float
    lr_milestones: list[int] = field(default_factory=list)
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 128
    indices: Tensor | None = None
    steps_per_epoch: int = 1
    normalize: bool = True
    log_every_epochs: int = 0  # 0: only the last epoch's mean losses are logged
    log: Callable[[str], None] = print
    opt: torch.optim.Optimizer | None = None  # pass to keep optimizer state across calls (warm start)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(stage: Stage) -> torch.optim.Optimizer:
    if stage.optimizer == "sgd":
        return torch.optim.SGD(stage.params, lr=stage.lr, momentum=stage.momentum,
                               weight_decay=stage.weight_decay)
    if stage.optimizer == "adam":
        return torch.optim.Adam(stage.params, lr=stage.lr, weight_decay=stage.weight_decay)
    raise ValueError(f"unknown optimizer {stage.optimizer!r} (expected 'sgd' or 'adam')")


def lr_factor(epoch: int, milestones: list[int]) -> float:
    """MultiStepLR with gamma 0.1: the factor applied during `epoch` (0-based)."""
    return 0.1 ** sum(epoch >= m for m in milestones)


def run_stage(stage: Stage, data) -> dict:
    """Optimise `stage.loss` over `stage.params`; returns step/sample counts and the last mean losses.

    The step has a fixed batch shape and makes no host syncs: loss values are accumulated on the
    device and read once per logged epoch. Inside a checkpointed job (`checkpoint.checkpointing`),
    progress is saved at epoch boundaries and a restarted job continues where it stopped."""
    ckpt = checkpoint.active()
    ordinal = ckpt.claim_ordinal() if ckpt else None
    if ckpt and (done := ckpt.completed(ordinal)) is not None:
        return done["result"]
    opt = stage.opt or make_optimizer(stage)
    device = data.device
    n = 0 if stage.indices is None else len(stage.indices)
    steps = stage.steps_per_epoch if stage.indices is None else n // stage.batch_size
    if stage.indices is not None and steps == 0:
        raise ValueError(f"stage {stage.name!r}: {n} samples is fewer than one batch of {stage.batch_size}")
    sums: dict[str, Tensor] = {}
    last: dict[str, float] = {}
    samples, first_epoch, earlier_seconds = 0, 0, 0.0
    if ckpt and (resumed := ckpt.progress(ordinal, opt)) is not None:
        first_epoch, samples, last = resumed["epoch"], resumed["samples"], resumed["last"]
        earlier_seconds = resumed["seconds"]
    start = time.perf_counter()
    for epoch in range(first_epoch, stage.epochs):
        for group in opt.param_groups:
            group["lr"] = stage.lr * lr_factor(epoch, stage.lr_milestones)
        order = None if stage.indices is None else stage.indices[torch.randperm(n, device=device)]
        for step in range(steps):
            batch = None
            if order is not None:
                index = order[step * stage.batch_size:(step + 1) * stage.batch_size]
                batch = data.train_batch(index, normalize=stage.normalize)
            terms = stage.loss(batch)
            total = sum(terms.values())
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0) + v.detach()
        samples += steps * (stage.batch_size if order is not None else 1)
        logged = stage.log_every_epochs and (epoch + 1) % stage.log_every_epochs == 0
        if logged or epoch == stage.epochs - 1:
            last = {k: float(v) / steps for k, v in sums.items()}  # this epoch's mean of each term
            if not all(math.isfinite(v) for v in last.values()):
                raise FloatingPointError(f"stage {stage.name!r} epoch {epoch}: non-finite loss {last}")
            stage.log(f"[{stage.name}] epoch {epoch + 1}/{stage.epochs} "
                      + " ".join(f"{k}={v:.4f}" for k, v in last.items()))
        sums = {}
        if ckpt and epoch + 1 < stage.epochs and ckpt.due():
            ckpt.save_progress(ordinal, opt, epoch + 1, {"samples": samples, "last": last,
                                                        "seconds": earlier_seconds + time.perf_counter() - start})
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    # `seconds` is the stage's compute time over every attempt (and wherever a shared stage ran).
    result = {"steps": steps * stage.epochs, "samples": samples, "losses": last,
              "seconds": earlier_seconds + time.perf_counter() - start}
    if ckpt:
        ckpt.save_completed(ordinal, result)
    return result


@torch.no_grad()
def evaluate(learner: Learner, task: Task, data, batch_size: int = 1000) -> tuple[list[float], list[int]]:
    """Top-1 accuracy (%) on each seen task's test set, argmax over all seen classes (§7.1),
    and the size of each test set. A dataset's `top_k` (ImageNet: 5) counts a hit among the k largest."""
    learner.model.eval()
    top_k = getattr(data, "top_k", 1)
    accuracies, sizes = [], []
    for j in range(task.index + 1):
        x_all, y_all = data.test_task(j)
        correct = torch.zeros((), device=data.device)
        for start in range(0, len(y_all), batch_size):
            x = data.normalize(x_all[start:start + batch_size], learner.normalize_inputs)
            y = y_all[start:start + batch_size]
            logits = learner.logits(x)
            if top_k == 1:
                correct += (logits.argmax(dim=1) == y).sum()
            else:
                top = logits.topk(min(top_k, logits.shape[1]), dim=1).indices
                correct += (top == y[:, None]).any(dim=1).sum()
        accuracies.append(100.0 * float(correct) / len(y_all))
        sizes.append(len(y_all))
    return accuracies, sizes


def train_task(learner: Learner, task: Task, data, train: dict, seed: int,
               log: Callable[[str], None] = print) -> dict:
    """Train one task end to end and evaluate it. Returns the task's metrics (accuracy and timing)."""
    seed_everything(learner.stream_seed(task, seed))
    if data.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(data.device)
    learner.log = log
    learner.begin_task(task)
    learner.model.train()
    main = Stage(
        name=f"task{task.index}", params=learner.parameters(), loss=learner.loss,
        indices=learner.train_indices(task), epochs=train["epochs"], lr=train["lr"],
        lr_milestones=train["lr_milestones"], momentum=train["momentum"],
        weight_decay=train["weight_decay"], batch_size=train["batch_size"],
        normalize=learner.normalize_inputs, log_every_epochs=train.get("log_every_epochs", 0), log=log)
    counts = run_stage(main, data)
    start = time.perf_counter()
    learner.end_task(task)
    if data.device.type == "cuda":
        torch.cuda.synchronize(data.device)
    end_task_seconds = time.perf_counter() - start
    accuracy, sizes = evaluate(learner, task, data)
    train_seconds = counts["seconds"]
    return {
        "accuracy_per_task": accuracy,
        "accuracy_seen": sum(a * n for a, n in zip(accuracy, sizes)) / sum(sizes),
        "train_steps": counts["steps"],
        "train_images": counts["samples"],
        "train_seconds": train_seconds,
        "images_per_second": counts["samples"] / train_seconds if train_seconds > 0 else None,
        "end_task_seconds": end_task_seconds,
        "final_losses": counts["losses"],
    }
