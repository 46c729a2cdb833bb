"""UB: the oracle. At each task, a freshly initialised model is trained on all data seen so far
(§3.2; reference `NormalNN --oracle_flag`; README "UB")."""

from dfcil_core.learners.api import Learner, Task


class UpperBound(Learner):
    name = "upper_bound"

    def stream_seed(self, task: Task, seed: int) -> int:
        # Derived from the classes trained on, not the task index, so that the 5-, 10- and 20-task
        # splits of a seed compute identical UB models and share their nodes. n_seen_classes runs up to
        # the dataset's class count, so a stride of one more than that keeps every (seed, classes) apart.
        return seed * (self.ctx.n_classes + 1) + task.n_seen_classes

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self.model = self.ctx.make_model()  # re-initialised after the per-task reseed, as the reference

    def train_indices(self, task: Task):
        return self.ctx.data.seen_indices(task.index)
