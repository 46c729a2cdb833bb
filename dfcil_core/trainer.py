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
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import Tensor, nn
import torch.nn.functional as F

from dfcil_core import checkpoint, fast
from dfcil_core.batch import Batch
from dfcil_core.methods import Task

if TYPE_CHECKING:  # for annotations only: the learners import this module for their own stages
    from dfcil_core.learners.api import Learner

LossFn = Callable[[Batch | None], dict[str, Tensor]]


@dataclass
class Stage:
    """One optimisation stage.

    indices: training-set samples to iterate over (shuffled each epoch, drop_last); None means a
             data-free stage that calls `loss(None)` `steps_per_epoch` times per epoch (inversion).
    lr_milestones: epochs at which the learning rate is multiplied by 0.1 (MultiStepLR, §3.1).
    precision, channels_last, cuda_graphs: how the step runs (`dfcil_core.fast`); the defaults are the
             fp32 eager reference path. The main stage takes them from the `train` settings; a learner's
             own stage opts in with `**fast.stage_switches(ctx.train)`.
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
    precision: str = "fp32"  # or "bf16": autocast around the loss
    channels_last: bool = False
    cuda_graphs: bool = False  # capture the whole step in a CUDA graph (CUDA only; else eager)


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
    """Optimise `stage.loss` over `stage.params`; returns step/sample counts, the mean of each loss term in
    every epoch (`epoch_losses`, one dict per epoch) and in the last one (`losses`), and the seconds it took.

    The step has a fixed batch shape and makes no host syncs: each epoch's loss sums stay on the device and
    are read on the host at a logged epoch, at a checkpoint and at the stage's end. `fast.make_runner` decides
    how each step executes (eager or a CUDA graph replay). Inside a checkpointed job
    (`checkpoint.checkpointing`), progress is saved at epoch boundaries (with the epoch losses so far) and a
    restarted job continues where it stopped, returning what an uninterrupted stage returns."""
    ckpt = checkpoint.active()
    ordinal = ckpt.claim_ordinal() if ckpt else None
    if ckpt and (done := ckpt.completed(ordinal)) is not None:
        if stage.channels_last:  # the layout the runner leaves the parameters in: later steps compute with it
            fast.channels_last_(stage.params)
        return done["result"]
    opt = stage.opt or make_optimizer(stage)
    device = data.device
    n = 0 if stage.indices is None else len(stage.indices)
    steps = stage.steps_per_epoch if stage.indices is None else n // stage.batch_size
    if stage.indices is not None and steps == 0:
        raise ValueError(f"stage {stage.name!r}: {n} samples is fewer than one batch of {stage.batch_size}")
    epoch_losses = EpochLosses(steps)
    samples, first_epoch, earlier_seconds = 0, 0, 0.0
    if ckpt and (resumed := ckpt.progress(ordinal, opt)) is not None:
        first_epoch, samples, earlier_seconds = resumed["epoch"], resumed["samples"], resumed["seconds"]
        epoch_losses.extend_read(resumed["epoch_losses"])
    runner = fast.make_runner(stage, data, opt)  # after any restore: a graph captures the restored tensors
    start = time.perf_counter()
    for epoch in range(first_epoch, stage.epochs):
        runner.set_lr(stage.lr * lr_factor(epoch, stage.lr_milestones))
        order = None if stage.indices is None else stage.indices[torch.randperm(n, device=device)]
        for step in range(steps):
            runner.step(None if order is None else order[step * stage.batch_size:(step + 1) * stage.batch_size])
        epoch_losses.append(runner.take_sums())
        samples += steps * (stage.batch_size if order is not None else 1)
        logged = stage.log_every_epochs and (epoch + 1) % stage.log_every_epochs == 0
        if logged or epoch == stage.epochs - 1:
            # this epoch's mean of each term; a non-finite one is recorded, not raised (see `train_task`)
            stage.log(f"[{stage.name}] epoch {epoch + 1}/{stage.epochs} "
                      + " ".join(f"{k}={v:.4f}" for k, v in epoch_losses.read()[-1].items()))
        if ckpt and epoch + 1 < stage.epochs and ckpt.due():
            ckpt.save_progress(ordinal, opt, epoch + 1, {"samples": samples, "epoch_losses": epoch_losses.read(),
                                                        "seconds": earlier_seconds + time.perf_counter() - start})
    runner.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    # `seconds` is the stage's compute time over every attempt (and wherever a shared stage ran).
    means = list(epoch_losses.read())
    result = {"steps": steps * stage.epochs, "samples": samples, "losses": means[-1] if means else {},
              "epoch_losses": means, "seconds": earlier_seconds + time.perf_counter() - start}
    if ckpt:
        ckpt.save_completed(ordinal, result)
    return result


class EpochLosses:
    """The mean of each loss term per epoch of one stage. An epoch's sums are kept as the device tensors the
    runner returns and divided by the step count on the host when read, so that recording them costs no sync."""

    def __init__(self, steps: int):
        self.steps = steps
        self.means: list[dict[str, float]] = []  # the epochs already read on the host
        self.pending: list[dict[str, Tensor]] = []  # later epochs' sums, still on the device

    def append(self, sums: dict[str, Tensor]) -> None:
        self.pending.append(sums)

    def extend_read(self, means: list[dict[str, float]]) -> None:
        self.means.extend(means)

    def read(self) -> list[dict[str, float]]:
        for sums in self.pending:
            self.means.append({k: float(v) / self.steps for k, v in sums.items()})
        self.pending.clear()
        return self.means


@torch.no_grad()
def evaluate(learner: Learner, task: Task, data, batch_size: int = 1000, precision: str = "fp32",
             channels_last: bool = False) -> tuple[list[float], list[int]]:
    """Top-1 accuracy (%) on each seen task's test set, argmax over all seen classes (§7.1),
    and the size of each test set. A dataset's `top_k` (ImageNet: 5) counts a hit among the k largest.
    The test images stay on the device; `precision` and `channels_last` as in training (`train` settings)."""
    learner.model.eval()
    top_k = getattr(data, "top_k", 1)
    accuracies, sizes = [], []
    for j in range(task.index + 1):
        x_all, y_all = data.test_task(j)
        correct = torch.zeros((), device=data.device)
        for start in range(0, len(y_all), batch_size):
            x = data.normalize(x_all[start:start + batch_size], learner.normalize_inputs)
            y = y_all[start:start + batch_size]
            if channels_last:
                x = fast.as_channels_last(x)
            with fast.autocast(data.device, precision):
                logits = learner.logits(x)
            if top_k == 1:
                correct += (logits.argmax(dim=1) == y).sum()
            else:
                top = logits.topk(min(top_k, logits.shape[1]), dim=1).indices
                correct += (top == y[:, None]).any(dim=1).sum()
        accuracies.append(100.0 * float(correct) / len(y_all))
        sizes.append(len(y_all))
    return accuracies, sizes


# A task "diverged" when, after it, the model fits its own training images no better than a constant
# guess: the cross-entropy over the task's own logit block is at least this fraction of the chance level
# ln(classes in the task), or not finite. A dead network sits at chance (e.g. 0.69 = ln 2 on a 2-class task);
# a network that learned its task, even one that forgets older tasks, sits far below it.
DIVERGENCE_FRACTION_OF_CHANCE = 0.8


@torch.no_grad()
def current_task_fit(learner: Learner, task: Task, data, batch_size: int = 1000) -> dict:
    """How well the model, as evaluated (eval mode), fits the current task's training images without
    augmentation, over the task's own logits only: whether it learned the task at all, whatever it forgot.
    The same measure for every method, independent of how its loss is composed."""
    learner.model.eval()
    index = data.task_indices(task.index)
    loss_sum = torch.zeros((), device=data.device)
    correct = torch.zeros((), device=data.device)
    for start in range(0, len(index), batch_size):
        chunk = index[start:start + batch_size]
        x = data.plain_images(chunk, learner.normalize_inputs)
        own = learner.logits(x)[:, task.n_past_classes:task.n_seen_classes].float()
        y = data.train_y[chunk] - task.n_past_classes
        loss_sum += F.cross_entropy(own, y, reduction="sum")
        correct += (own.argmax(dim=1) == y).sum()
    n_classes = task.n_seen_classes - task.n_past_classes
    loss = float(loss_sum) / len(index)
    chance = math.log(n_classes)
    return {"current_task_loss": loss, "current_task_accuracy": 100.0 * float(correct) / len(index),
            "current_task_chance_loss": chance,
            "diverged": not math.isfinite(loss) or (n_classes > 1 and loss >= DIVERGENCE_FRACTION_OF_CHANCE * chance)}


def train_task(learner: Learner, task: Task, data, train: dict, seed: int,
               log: Callable[[str], None] = print) -> dict:
    """Train one task end to end and evaluate it. Returns the task's metrics (accuracy and timing) and its
    main stage's loss means per epoch (`epoch_losses`)."""
    seed_everything(learner.stream_seed(task, seed))
    if data.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(data.device)
    learner.log = log
    learner.begin_task(task)
    learner.model.train()
    switches = fast.stage_switches(train)
    main = Stage(
        name=f"task{task.index}", params=learner.parameters(), loss=learner.loss,
        indices=learner.train_indices(task), epochs=learner.main_stage_epochs(train), lr=train["lr"],
        lr_milestones=train["lr_milestones"], momentum=train["momentum"],
        weight_decay=train["weight_decay"], batch_size=train["batch_size"],
        normalize=learner.normalize_inputs, log_every_epochs=train.get("log_every_epochs", 0), log=log,
        **switches)
    counts = run_stage(main, data)
    start = time.perf_counter()
    learner.end_task(task)
    if data.device.type == "cuda":
        torch.cuda.synchronize(data.device)
    end_task_seconds = time.perf_counter() - start
    accuracy, sizes = evaluate(learner, task, data, train.get("eval_batch_size", 1000),
                               switches["precision"], switches["channels_last"])
    fit = current_task_fit(learner, task, data, train.get("eval_batch_size", 1000))
    if not all(math.isfinite(v) for v in counts["losses"].values()):
        fit["diverged"] = True
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
        # every epoch's means of the main stage (None: restored from a shared node made before they were kept)
        "epoch_losses": counts.get("epoch_losses"),
        **fit,
    }
