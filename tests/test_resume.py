"""Every method: a chain of task jobs, each started from the saved state of the last, reproduces an
uninterrupted in-process run exactly (on the CPU)."""

import pytest

from conftest import tiny_settings
from dfcil_core.learners import LEARNERS
from dfcil_core.run import train_in_process, train_node

# Memory-based methods get a memory that fits the tiny data set.
SMALL = {"memory_size": 40}


def settings_for(method):
    hp = {k: v for k, v in SMALL.items() if k in LEARNERS[method].defaults}
    hp.update(LEARNERS[method].tiny_overrides if hasattr(LEARNERS[method], "tiny_overrides") else {})
    return tiny_settings(method, **hp)


@pytest.mark.parametrize("method", sorted(LEARNERS))
def test_resumed_chain_equals_uninterrupted_run(method, tmp_path):
    settings = settings_for(method)
    uninterrupted = train_in_process(settings, seed=1, n_tasks=3)
    parent = None
    for t in range(3):
        out = tmp_path / f"task{t}"
        record = train_node(settings, "tiny", 1, t, out, parent, device="cpu", log=lambda m: None)
        parent = out
        assert record["accuracy_per_task"] == uninterrupted[t]["accuracy_per_task"], f"task {t}"
        assert record["final_losses"] == uninterrupted[t]["final_losses"], f"task {t}"
