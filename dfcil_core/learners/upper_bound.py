"""UB: the oracle. At each task, a freshly initialised model is trained on all data seen so far
(§3.2; reference `NormalNN --oracle_flag`; README "UB")."""

from dfcil_core.learners.api import Learner, Task


class UpperBound(Learner):
    name = "upper_bound"
    defaults: dict = {}

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self.model = self.ctx.make_model()  # re-initialised after the per-task reseed, as the reference

    def train_indices(self, task: Task):
        return self.ctx.data.seen_indices(task.index)
