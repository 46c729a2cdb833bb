"""What DeepInversion, LwF-Synthetic and ABD share (§4.10): a generator trained by model inversion at the end of
every task but the last, and synthetic replay of the old classes drawn from it during the next task.

Re-implements GT-RIPL/AlwaysBeDreaming-DFCIL:learners/datafree.py::DeepInversionGenBN (learn_batch, sample).
A subclass defines only `replay_loss` (and, for ABD, its task-0 loss).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from dfcil_core import fast
from dfcil_core.inversion import invert
from dfcil_core.learners.api import Batch, Task, TeacherLearner
from dfcil_core.models.generator import Generator
from dfcil_core.sample_grid import save_grid

GRID_SEED = 0  # the sample grid uses its own noise, the same for every task, and leaves the run's RNG alone


class DataFreeLearner(TeacherLearner):
    tiny_overrides = {"power_iters": 4, "generator_z_dim": 16, "generator_width": 8}
    state_parts = ("model", "generator", "generator_opt")

    def __init__(self, hp: dict, ctx):
        super().__init__(hp, ctx)
        self.generator, self.generator_opt = self.new_generator()
        self.teacher = None

    def new_generator(self) -> tuple[Generator, torch.optim.Optimizer]:
        info = self.ctx.data.info
        generator = Generator(info.channels, info.size, self.hp["generator_z_dim"], self.hp["generator_width"],
                              self.hp["generator_last_width"]).to(self.ctx.device)
        return generator, torch.optim.Adam(generator.parameters(), lr=self.hp["gen_lr"])

    @torch.no_grad()
    def replay(self, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """n synthetic images (generator in eval mode), the teacher's labels and logits over the old classes."""
        self.generator.eval()
        x = self.generator.sample(n)
        logits = self.teacher(x)[:, : self.task.n_past_classes]
        return x, logits.argmax(dim=1), logits

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        if self.teacher is None:
            return self.first_task_loss(batch)
        return self.replay_loss(batch, *self.replay(len(batch.y)))

    def first_task_loss(self, batch: Batch) -> dict[str, Tensor]:
        return super().loss(batch)

    def replay_loss(self, batch: Batch, x_replay: Tensor, y_replay: Tensor, z_replay: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def end_task(self, task: Task) -> None:
        """Invert the model just trained; not after the last task, whose generator nothing would use."""
        if task.is_last:
            return
        if not self.hp["warm_start"]:
            self.generator, self.generator_opt = self.new_generator()
        invert(self.generator, self.generator_opt, self.frozen_copy(self.model), task.n_seen_classes,
               self.hp["power_iters"], self.ctx.train["batch_size"], self.hp, self.ctx.data,
               name=f"inversion task{task.index}", log=self.log, switches=fast.stage_switches(self.ctx.train))

    def artifacts(self, out_dir: Path) -> None:
        # Every task, the last included (whose grid shows the generator it replayed from, not trained
        # again), so that the workflow can declare samples.png as an output of every generative task.
        self.generator.eval()
        noise = torch.Generator(device=self.ctx.device).manual_seed(GRID_SEED)
        with torch.no_grad():
            x = self.generator.sample(64, generator=noise)
        data = self.ctx.data
        save_grid(x * data.std + data.mean, out_dir / "samples.png")
