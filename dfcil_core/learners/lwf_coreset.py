"""LwF with a coreset: LwF's loss on new data mixed 50/50 with a random class-balanced memory, exactly
as Naive Rehearsal's; the distillation also covers the replayed images (§4.5; README "LwF", coreset table)."""

from dfcil_core.learners.lwf import LwF
from dfcil_core.learners.naive_rehearsal import NaiveRehearsal


class LwFCoreset(LwF, NaiveRehearsal):
    """LwF's teacher and loss; Naive Rehearsal's memory (train_indices, end_task, state).

    Method resolution order: LwF (begin_task, loss) -> NaiveRehearsal (memory) -> Learner."""

    name = "lwf_coreset"
