"""Every method: a chain of task jobs, each started from the saved state of the last, reproduces an
uninterrupted in-process run exactly (on the CPU)."""

import pytest
import torch

from conftest import tiny_settings
from dfcil_core.learners import LEARNERS
from dfcil_core.learners.api import Task
from dfcil_core.methods import METHODS, shared_recipe
from dfcil_core.run import train_in_process, train_node, train_shared_stage

# Memory-based methods get a memory that fits the tiny data set.
SMALL = {"memory_size": 40}


def settings_for(method):
    hp = {k: v for k, v in SMALL.items() if k in METHODS[method].defaults}
    hp.update(LEARNERS[method].tiny_overrides if hasattr(LEARNERS[method], "tiny_overrides") else {})
    settings = tiny_settings(method, **hp)
    if method == "rdfcil":  # an epoch for its head refinement too
        settings["method_settings"]["finetune_epochs"] = 1
        settings["train"]["epochs"] = 2
    return settings


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


SHARING = [m for m in sorted(LEARNERS) if any(METHODS[m].shared_main_stage(Task(t, 3, 2 * t, 2 * t + 2))
                                               for t in range(3))]


@pytest.mark.parametrize("method", SHARING)
def test_a_shared_main_stage_changes_no_result(method, mnist_file, tmp_path):
    settings = settings_for(method)
    quiet = dict(device="cpu", log=lambda m: None)
    parent_own = parent_shared = None
    for t in range(3):
        task = Task(t, 3, 2 * t, 2 * t + 2)
        own = train_node(settings, "tiny", 1, t, tmp_path / f"own{t}", parent_own, mnist_file, **quiet)
        parent_own = tmp_path / f"own{t}"
        recipe = shared_recipe(settings, task)
        shared_dir = None
        if recipe is not None:
            shared_dir = tmp_path / f"shared{t}"
            train_shared_stage(recipe, 1, shared_dir, mnist_file, device="cpu", log=lambda m: None)
        shared = train_node(settings, "tiny", 1, t, tmp_path / f"with{t}", parent_shared, mnist_file,
                            shared_stage=shared_dir / "stage0.done.pt" if shared_dir else None, **quiet)
        parent_shared = tmp_path / f"with{t}"
        assert shared["accuracy_per_task"] == own["accuracy_per_task"], f"task {t}"
        assert shared["fingerprint"] == own["fingerprint"]


def test_upper_bound_nodes_are_shared_across_splits():
    five = tiny_settings("upper_bound")
    other = {**five, "first_split": 4, "other_split": 3}
    assert shared_recipe(five, Task(1, 3, 2, 4)) == shared_recipe(other, Task(0, 3, 0, 4))
    assert shared_recipe(five, Task(1, 3, 2, 4)) != shared_recipe(five, Task(2, 3, 4, 6))


def test_methods_with_their_own_first_task_do_not_share():
    first = Task(0, 3, 0, 2)
    own = {m for m in LEARNERS if METHODS[m].shared_main_stage(first) is None}
    # ABD (softmax over all K logits), LwF.MC (BCE) and DGR (unnormalised inputs) train task 0 their own way (§7.3).
    assert {"abd", "lwf_mc", "dgr"} & set(LEARNERS) <= own


def test_upper_bound_stream_seeds_are_unique_for_any_class_count():
    from types import SimpleNamespace

    from dfcil_core.learners.upper_bound import UpperBound
    n_classes = 200  # Tiny-ImageNet: more classes than the reference's seed * 100 leaves room for
    learner = UpperBound({}, SimpleNamespace(n_classes=n_classes, make_model=lambda: None))
    seeds = [learner.stream_seed(Task(0, 1, 0, n_seen), seed) for seed in range(5)
             for n_seen in range(1, n_classes + 1)]
    assert len(set(seeds)) == len(seeds)


class Interrupt(Exception):
    pass


def assert_same_state(state, reference, path="learner"):
    """Equal tensors (values) in the same nested layout of dicts and lists."""
    if isinstance(reference, torch.Tensor):
        assert torch.equal(state, reference), path
    elif isinstance(reference, dict):
        assert state.keys() == reference.keys(), path
        for key in reference:
            assert_same_state(state[key], reference[key], f"{path}.{key}")
    elif isinstance(reference, (list, tuple)):
        assert len(state) == len(reference), path
        for i, (a, b) in enumerate(zip(state, reference)):
            assert_same_state(a, b, f"{path}[{i}]")
    else:
        assert state == reference, path


def test_restored_channels_last_stages_change_no_result(mnist_file, tmp_path):
    """DeepInversion's task 0 with `channels_last`: its main stage restored from an earlier attempt's snapshot
    or from the shared Base node leaves the model's conv weights channels_last, as training them does, so the
    rest of the task (the inversion against the model, the evaluation) computes what an uninterrupted job does."""
    settings = settings_for("deep_inversion")
    settings["train"]["channels_last"] = True
    quiet = dict(data_file=mnist_file, device="cpu", checkpoint_minutes=0)
    own = train_node(settings, "tiny", 1, 0, tmp_path / "own", None, log=lambda m: None, **quiet)

    def dies_in_the_inversion(msg):
        if msg.startswith("[inversion task0]"):
            raise Interrupt

    with pytest.raises(Interrupt):
        train_node(settings, "tiny", 1, 0, tmp_path / "resumed", None, log=dies_in_the_inversion, **quiet)
    lines: list[str] = []
    resumed = train_node(settings, "tiny", 1, 0, tmp_path / "resumed", None, log=lines.append, **quiet)
    assert any("stage 0 was completed by an earlier attempt" in line for line in lines)

    recipe = shared_recipe(settings, Task(0, 3, 0, 2))
    train_shared_stage(recipe, 1, tmp_path / "shared", mnist_file, device="cpu", log=lambda m: None)
    shared = train_node(settings, "tiny", 1, 0, tmp_path / "with_shared", None, log=lambda m: None,
                        shared_stage=tmp_path / "shared" / "stage0.done.pt", **quiet)

    reference = torch.load(tmp_path / "own" / "state.pt", weights_only=True)["learner"]
    for name, record in (("resumed", resumed), ("with_shared", shared)):
        for key in ("accuracy_per_task", "final_losses", "current_task_loss"):
            assert record[key] == own[key], (name, key)
        state = torch.load(tmp_path / name / "state.pt", weights_only=True)["learner"]
        assert_same_state(state, reference, name)
        convs = [w for w in state["model"].values() if w.dim() == 4 and w.shape[-1] > 1]
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs), name
