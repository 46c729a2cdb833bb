"""Base: plain fine-tuning with cross-entropy over the seen classes (§4.1; README "Base")."""

from dfcil_core.learners.api import Learner, Task


class Base(Learner):
    name = "base"
    defaults: dict = {}

    @classmethod
    def shared_main_stage(cls, task: Task) -> str | None:
        return "base" if task.index == 0 else None
