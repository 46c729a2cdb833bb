"""Per-class memory allocation (§6.1) and random class-balanced selection."""

import pytest
import torch

from dfcil_core.memory import RandomMemory, allocation


def counts_after_each_task(n_tasks):
    size = 100 // n_tasks
    return [allocation(size * (t + 1), 2000, [500] * (size * (t + 1))) for t in range(n_tasks)]


def summary(counts):
    """'m (+k)': the base count and how many classes got one more."""
    base = min(counts)
    extra = sum(c > base for c in counts)
    return f"{base} (+{extra})" if extra else f"{base}"


@pytest.mark.parametrize("n_tasks, expected", [
    (5, "100, 50, 33 (+20), 25, 20"),
    (10, "200, 100, 66 (+20), 50, 40, 33 (+20), 28 (+40), 25, 22 (+20), 20"),
    (20, "400, 200, 133 (+5), 100, 80, 66 (+20), 57 (+5), 50, 44 (+20), 40, 36 (+20), 33 (+20), "
         "30 (+50), 28 (+40), 26 (+50), 25, 23 (+45), 22 (+20), 21 (+5), 20"),
])
def test_allocation_per_class_matches_the_reference(n_tasks, expected):
    per_task = counts_after_each_task(n_tasks)
    assert ", ".join(summary(c) for c in per_task) == expected
    assert all(sum(c) == 2000 for c in per_task)


def test_remainder_goes_to_the_newest_classes():
    counts = allocation(60, 2000, [500] * 60)
    assert counts[:40] == [33] * 40 and counts[40:] == [34] * 20


def test_random_memory_is_class_balanced_and_indexes_the_training_set():
    labels = torch.arange(10).repeat_interleave(50)  # 10 classes x 50 samples
    memory = RandomMemory(memory_size=40, oversample=False, seed=0)
    pool = memory.training_pool(torch.nonzero(labels < 4).flatten())
    assert len(pool) == 200  # nothing stored yet: only the task's data
    memory.update(task_index=0, n_seen=4, labels=labels)
    assert torch.bincount(labels[memory.indices], minlength=4).tolist() == [10, 10, 10, 10]
    assert len(torch.unique(memory.indices)) == 40  # without replacement
    pool = memory.training_pool(torch.nonzero((labels >= 4) & (labels < 8)).flatten())
    assert len(pool) == 240  # appended once when not oversampling


def test_oversampled_replay_doubles_the_task():
    labels = torch.arange(4).repeat_interleave(50)
    memory = RandomMemory(memory_size=20, oversample=True, seed=0)
    memory.training_pool(torch.nonzero(labels < 2).flatten())
    memory.update(0, 2, labels)
    torch.manual_seed(0)
    pool = memory.training_pool(torch.nonzero(labels >= 2).flatten())
    assert len(pool) == 200  # |D_t| new + |D_t| draws with replacement from the 20 stored
    assert set(pool[100:].tolist()) <= set(memory.indices.tolist())
