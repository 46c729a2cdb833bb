"""Issue #11's review findings outside the fast path: shared stages checkpoint and survive a damaged snapshot,
the prepared dataset's digest is stored once and read by each job, resolved settings, the code digest,
a diverged task recorded in its metrics."""

import numpy as np
import pytest

from conftest import tiny_settings
from dfcil_core import checkpoint, data as data_module
from dfcil_core.config import Diverged
from dfcil_core.data import arrays_digest, load_prepared, prepared_digest
from dfcil_core.learners.api import Task
from dfcil_core.provenance import code_digest
from dfcil_core.methods import resolve, shared_recipe
from dfcil_core.run import train_node, train_shared_stage

QUIET = dict(device="cpu", log=lambda m: None)


def test_a_shared_stage_saves_progress_as_often_as_checkpoint_minutes_says(mnist_file, tmp_path, monkeypatch):
    settings = tiny_settings("base")
    settings["train"] = {**settings["train"], "epochs": 3}
    saved = []
    original = checkpoint.Checkpointer.save_progress
    monkeypatch.setattr(checkpoint.Checkpointer, "save_progress",
                        lambda self, ordinal, opt, epoch, counts: (saved.append(epoch),
                                                                   original(self, ordinal, opt, epoch, counts)))
    recipe = shared_recipe(settings, Task(0, 3, 0, 2))
    train_shared_stage(recipe, 0, tmp_path / "shared", mnist_file, checkpoint_minutes=0, **QUIET)
    assert saved == [1, 2]  # every epoch boundary but the last (0 minutes: every epoch)


def test_a_damaged_shared_snapshot_is_recomputed_by_the_consuming_job(mnist_file, tmp_path):
    settings = tiny_settings("base")
    own = train_node(settings, "tiny", 0, 0, tmp_path / "own", None, mnist_file, **QUIET)
    shared_dir = tmp_path / "shared"
    train_shared_stage(shared_recipe(settings, Task(0, 3, 0, 2)), 0, shared_dir, mnist_file, **QUIET)
    snapshot = shared_dir / "stage0.done.pt"
    snapshot.write_bytes(snapshot.read_bytes()[:200])  # truncated, as by a full disk or a killed copy
    lines = []
    taken = train_node(settings, "tiny", 0, 0, tmp_path / "with", None, mnist_file, shared_stage=snapshot,
                       device="cpu", log=lines.append)
    assert taken["accuracy_per_task"] == own["accuracy_per_task"]
    assert taken["final_losses"] == own["final_losses"]
    assert any("unreadable" in line and "computing stage 0 in this job" in line for line in lines)


def test_the_prepared_file_carries_its_digest_and_jobs_do_not_hash_it(mnist_file, tmp_path, monkeypatch):
    arrays = load_prepared(mnist_file)
    assert prepared_digest(mnist_file) == arrays_digest(arrays)
    changed = [a.copy() for a in arrays]
    changed[0][0, 0, 0] ^= 1
    assert arrays_digest(changed) != arrays_digest(arrays)

    def no_hashing(path):
        raise AssertionError(f"{path} was hashed whole")
    monkeypatch.setattr(data_module, "file_digest", no_hashing)
    record = train_node(tiny_settings("base"), "tiny", 0, 0, tmp_path / "task0", None, mnist_file, **QUIET)
    assert record["task"] == 0

    # A file prepared before digests were stored is hashed whole, as then.
    old = tmp_path / "old.npz"
    np.savez(old, **dict(zip(data_module.ARRAY_NAMES, arrays)))
    monkeypatch.undo()
    assert prepared_digest(old) == data_module.file_digest(old)


def test_jobs_record_the_code_that_made_them_and_their_resolved_settings(tmp_path):
    settings = tiny_settings("lwf")
    record = train_node(settings, "tiny", 0, 0, tmp_path / "task0", None, **QUIET)
    assert record["code_digest"] == code_digest() and len(code_digest()) == 16
    assert record["shared_stage_code_digest"] is None
    # every default written out: the method's, the model's and the training loop's
    assert record["settings"]["method_settings"]["temperature"] == 2.0
    assert record["settings"]["train"]["precision"] == "fp32"
    assert record["settings"] == resolve(record["settings"])[0]


def test_a_task_that_did_not_learn_is_recorded_or_fails_its_job(tmp_path):
    dead = tiny_settings("base")
    dead["train"] = {**dead["train"], "lr": 1.0e6}
    record = train_node(dead, "tiny", 0, 0, tmp_path / "dead", None, **QUIET)
    assert record["diverged"] is True
    healthy = tiny_settings("base")
    healthy["train"] = {**healthy["train"], "epochs": 8}
    fit = train_node(healthy, "tiny", 0, 0, tmp_path / "healthy", None, **QUIET)
    assert fit["diverged"] is False and fit["current_task_loss"] < 0.5 * fit["current_task_chance_loss"]
    with pytest.raises(Diverged, match="diverged"):
        train_node(dead, "tiny", 0, 0, tmp_path / "failing", None, on_divergence="fail", **QUIET)
    assert not (tmp_path / "failing" / "metrics.json").exists()
