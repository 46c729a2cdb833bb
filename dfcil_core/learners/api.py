"""The learner interface: what the one shared trainer (`dfcil_core.trainer`) asks of every method.

A method is one small file that subclasses `Learner` and overrides only what differs from plain
fine-tuning: its loss terms (`loss`), the samples it trains on (`train_indices`), and what it does at
the task boundary (`end_task`: memory update, teacher snapshot, generator training, extra stages run
through `trainer.run_stage`). Methods never call `.backward()` or step an optimizer themselves. Its
hyperparameters (the paper's defaults), whether a main stage is shared and the settings it refuses are stated
in `dfcil_core/methods.py`, which the workflow reads without torch.

Vocabulary (the reference's names in brackets, for readers of GT-RIPL/AlwaysBeDreaming-DFCIL):
- `task.n_past_classes`  [last_valid_out_dim]: classes seen before the current task;
- `task.n_seen_classes`  [valid_out_dim]: classes seen up to and including the current task;
- task t owns the contiguous logit block [n_past_classes, n_seen_classes).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from dfcil_core import fast, trainer
from dfcil_core.batch import Batch  # noqa: F401  (re-exported: the learners' batch type)
from dfcil_core.methods import Task  # noqa: F401  (the learners' task type; torch-free, for the workflow's parse)


@dataclass
class Context:
    """Everything a learner may use that is not its own hyperparameters.

    data: `dfcil_core.data.TrainData` (all training images on the device as uint8, remapped labels,
          per-task index lists, the augment/normalize functions).
    make_model: builds a fresh, initialised classifier on the device.
    train: the experiment's training settings (epochs, lr, milestones, batch_size, momentum, weight_decay).
    """

    data: Any
    make_model: Callable[[], nn.Module]
    train: dict
    n_classes: int
    device: torch.device
    seed: int


class Learner:
    """Plain fine-tuning; every method subclasses this. `name` is the method id used everywhere."""

    name = "base"
    # Whether inputs are normalized with the dataset's mean/std (DGR's sigmoid VAE wants [0, 1]).
    normalize_inputs = True
    # Progress lines of extra stages run from `end_task`; the trainer sets it to its own log for each task.
    log: Callable[[str], None] = print

    def __init__(self, hp: dict, ctx: Context):
        self.hp = hp
        self.ctx = ctx
        self.model = ctx.make_model()
        self.task: Task | None = None

    def stream_seed(self, task: Task, seed: int) -> int:
        """Seed of the random streams of a task (the reference reseeds with seed * 100 + t, §3.1)."""
        return seed * 100 + task.index

    # ---- hooks called by the trainer, in this order, once per task ----
    def begin_task(self, task: Task) -> None:
        """Called with the model as it stands after the previous task (loaded from its saved state or
        left by an uninterrupted run). Snapshot teachers here, not in `end_task`, so that a task started
        from a saved state sees exactly the teacher an uninterrupted run would."""
        self.task = task

    def train_indices(self, task: Task) -> Tensor:
        """Indices into the full training set that the main stage iterates over (shuffled, drop_last)."""
        return self.ctx.data.task_indices(task.index)

    def parameters(self) -> list[nn.Parameter]:
        """What the main stage's SGD optimizes."""
        return list(self.model.parameters())

    def main_stage_epochs(self, train: dict) -> int:
        """How many of the task's epochs the main stage takes (the rest are the learner's own stages)."""
        return train["epochs"]

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        """Named loss terms for one batch; the trainer sums them. No host syncs here."""
        return {"ce": F.cross_entropy(self.seen_logits(batch.x), batch.y)}

    def end_task(self, task: Task) -> None:
        """Task boundary: memory update, teacher snapshot, extra stages (via trainer.run_stage)."""

    def artifacts(self, out_dir: Path) -> None:
        """Optional extra files for the task's directory (e.g. a grid of generated samples), written after
        the state is saved. The MLflow import logs any `task<t>/*.png`."""

    # ---- evaluation ----
    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        """Logits over the classes seen so far, for class-incremental evaluation."""
        return self.seen_logits(x)

    # ---- state: tensors and plain Python values only, so it loads with weights_only=True ----
    # The attributes saved with a task's state, under their own names; each has state_dict/load_state_dict
    # (a module, an optimizer, a memory). A method keeping anything else extends the two methods below.
    state_parts: tuple[str, ...] = ("model",)

    def state_dict(self) -> dict:
        return {name: getattr(self, name).state_dict() for name in self.state_parts}

    def load_state_dict(self, state: dict) -> None:
        for name in self.state_parts:
            getattr(self, name).load_state_dict(state[name])

    # ---- the paper's "mem" metric (§7.2), in bytes ----
    def stored_memory(self) -> dict:
        """What the learner keeps between tasks: the parameters of every nn.Module in its state (the model,
        a generator or VAE; BiC's bias parameters) as 4-byte floats, plus coreset images at H x W x C bytes
        (any state entry whose attribute holds an `indices` tensor, i.e. a memory of training-set indices).
        Teachers and optimizer states are not counted, as in the reference. A method storing something else
        extends this. `reference_units` is the reference's own number: parameters + coreset pixels."""
        info = self.ctx.data.info
        image_bytes = info.channels * info.size * info.size
        parameters: dict[str, int] = {}
        coreset_images = 0
        for key in self.state_dict():
            value = getattr(self, key, None)
            if isinstance(value, nn.Module):
                parameters[key] = sum(p.numel() for p in value.parameters())
            elif isinstance(value, (list, tuple)) and value and all(isinstance(v, nn.Parameter) for v in value):
                parameters[key] = sum(v.numel() for v in value)
            elif isinstance(getattr(value, "indices", None), Tensor):
                coreset_images += len(value.indices)
        n_parameters = sum(parameters.values())
        return {"parameters": parameters, "coreset_images": coreset_images, "image_bytes": image_bytes,
                "bytes": 4 * n_parameters + coreset_images * image_bytes,
                "reference_units": n_parameters + coreset_images * image_bytes}

    # ---- helpers shared by methods ----
    def seen_logits(self, x: Tensor, model: nn.Module | None = None) -> Tensor:
        return (model or self.model)(x)[:, : self.task.n_seen_classes]

    def frozen_copy(self, module: nn.Module) -> nn.Module:
        """A teacher: a deep copy in eval mode that no optimizer can reach."""
        teacher = copy.deepcopy(module).eval()
        teacher.requires_grad_(False)
        return teacher

    def second_stage(self, name: str, params: list[nn.Parameter], loss: Callable, indices: Tensor,
                     lr_factor: float, batch_size: int | None, epochs: int | None = None,
                     lr_milestones: list[int] | None = None) -> None:
        """An end-of-task stage (E2E balanced fine-tuning, BiC bias correction, R-DFCIL head refinement) through
        the shared `run_stage`: the experiment's epochs and milestones unless given, its momentum, weight decay and
        fast-path switches, its lr times `lr_factor`, and the reference's loader (batch_size or the experiment's,
        drop_last).

        Fewer samples than one batch make no step at all, as the reference's drop_last loader yields no batch:
        a single step per epoch on a small holdout would still move the BN running statistics in train mode,
        which was most of BiC's gap to the reference (42.7 -> 54.6 vs 59.7 over seeds 0-2, benchmarks/README.md)."""
        train = self.ctx.train
        batch_size = batch_size or train["batch_size"]
        if len(indices) < batch_size:
            self.log(f"[{name}] {len(indices)} samples is fewer than one batch of {batch_size}: no step, "
                     "as the reference's drop_last loader")
            return
        trainer.run_stage(trainer.Stage(
            name=name, params=params, loss=loss, indices=indices, epochs=train["epochs"] if epochs is None else epochs,
            lr=train["lr"] * lr_factor, momentum=train["momentum"],
            lr_milestones=train["lr_milestones"] if lr_milestones is None else lr_milestones,
            weight_decay=train["weight_decay"], batch_size=batch_size,
            log=self.log, **fast.stage_switches(train)), self.ctx.data)


class TeacherLearner(Learner):
    """A learner that learns from `teacher`: a frozen copy of the model as it stood at the start of the task
    (none at task 0). Taken in `begin_task`, so a task started from a saved state sees the same teacher."""

    teacher = None

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self.teacher = self.frozen_copy(self.model) if task.index > 0 else None

    @torch.no_grad()
    def teacher_logits(self, x: Tensor) -> Tensor:
        """The teacher's logits over the old classes [0, n_old), eval mode (reference `generate_scores`)."""
        return self.teacher(x)[:, : self.task.n_past_classes]
