"""Naive Rehearsal: Base plus a random class-balanced coreset replayed 50/50 (§4.3, §6.2)."""

from dfcil_core.learners.api import Learner, Task
from dfcil_core.memory import RandomMemory


class NaiveRehearsal(Learner):
    name = "naive_rehearsal"
    state_parts = ("model", "memory")

    def __init__(self, hp, ctx):
        super().__init__(hp, ctx)
        self.memory = RandomMemory(hp["memory_size"], hp["replay_oversample"], ctx.seed)

    def train_indices(self, task: Task):
        return self.memory.training_pool(super().train_indices(task))

    def end_task(self, task: Task) -> None:
        self.memory.update(task.index, task.n_seen_classes, self.ctx.data.train_y)
