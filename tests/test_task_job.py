"""`run.TaskJob`, what `dfcil train-task` runs: its named steps called one by one make the job `run()` makes, its
metrics.json keeps its keys, and the command ends its process without the interpreter's teardown, losing no output."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_settings
from dfcil_core.config import ConfigError, StateError
from dfcil_core.run import TaskJob

BIN = Path(sys.executable).parent
QUIET = dict(device="cpu", log=lambda m: None)
# metrics.json's keys, as the reports and the MLflow import read them (the per-epoch losses are not among them)
METRICS_KEYS = [
    "experiment", "method", "seed", "task", "n_tasks", "fingerprint", "parent_fingerprint", "accuracy_per_task",
    "accuracy_seen", "train_steps", "train_images", "train_seconds", "images_per_second", "end_task_seconds",
    "final_losses", "current_task_loss", "current_task_accuracy", "current_task_chance_loss", "diverged",
    "wall_seconds", "finished_at", "peak_memory_mb", "stored_memory", "device", "class_order", "seeds", "settings",
    "versions", "git_commit", "code_digest", "shared_stage_code_digest",
]
TIMES = ("train_seconds", "images_per_second", "end_task_seconds", "wall_seconds", "finished_at", "peak_memory_mb")


def test_the_steps_one_by_one_make_the_job_that_run_makes(mnist_file, tmp_path):
    settings = tiny_settings("base")
    task0 = TaskJob(settings, "tiny", 0, 0, tmp_path / "task0", None, mnist_file, **QUIET).run()
    whole = TaskJob(settings, "tiny", 0, 1, tmp_path / "whole", tmp_path / "task0", mnist_file, **QUIET).run()
    assert list(whole) == METRICS_KEYS
    assert list(json.loads((tmp_path / "whole" / "metrics.json").read_text())) == METRICS_KEYS

    job = TaskJob(settings, "tiny", 0, 1, tmp_path / "steps", tmp_path / "task0", mnist_file, **QUIET)
    assert job.chain == [task0["fingerprint"], whole["fingerprint"]]
    assert job.already_finished() is None
    job.build()
    job.load_parent_state()
    metrics = job.train()
    assert len(metrics["epoch_losses"]) == settings["train"]["epochs"]
    job.check_divergence(metrics)
    job.save_state()
    record = job.record(metrics, wall=0.0, peak_mb=0.0)
    job.save_metrics(record)
    assert {k: v for k, v in record.items() if k not in TIMES} == {k: v for k, v in whole.items() if k not in TIMES}
    state = torch.load(tmp_path / "steps" / "state.pt", weights_only=True)
    assert state["fingerprint"] == whole["fingerprint"] and state["task"] == 1
    assert not (tmp_path / "steps.checkpoint").exists()
    again = TaskJob(settings, "tiny", 0, 1, tmp_path / "steps", tmp_path / "task0", mnist_file, **QUIET)
    assert again.already_finished() == json.loads((tmp_path / "steps" / "metrics.json").read_text())


def test_the_jobs_refusals_are_those_of_train_node(mnist_file, tmp_path):
    settings = tiny_settings("base")
    with pytest.raises(ConfigError, match="on_divergence must be one of"):
        TaskJob(settings, "tiny", 0, 0, tmp_path / "t", None, mnist_file, on_divergence="ignore", **QUIET)
    with pytest.raises(ConfigError, match="task 7 does not exist: the experiment has 3 tasks"):
        TaskJob(settings, "tiny", 0, 7, tmp_path / "t7", None, mnist_file, **QUIET).run()
    with pytest.raises(StateError, match="task 1 needs the state of task 0"):
        TaskJob(settings, "tiny", 0, 1, tmp_path / "t1", None, mnist_file, **QUIET).run()
    assert not (tmp_path / "t7").exists() and not (tmp_path / "t1").exists()


def train_task_cmd(mnist_file, out, *extra):
    return [str(BIN / "dfcil"), "train-task", "--settings", json.dumps(tiny_settings("base")), "--data",
            str(mnist_file), "--experiment", "tiny", "--seed", "0", "--task", "0", "--out", str(out),
            "--device", "cpu", "--threads", "1", *extra]


def test_a_job_ends_its_process_at_once_and_loses_no_output(mnist_file, tmp_path):
    # `dfcil train-task` is `cli.main()` from the command line; an atexit handler of the interpreter's teardown
    # would leave its marker, the job's `cli.end_process` skips the teardown.
    marker = tmp_path / "teardown-ran"
    code = (f"import atexit, sys; atexit.register(lambda: open({str(marker)!r}, 'w').close()); "
            "from dfcil_core.cli import main; sys.argv = sys.argv[1:]; main()")
    cmd = train_task_cmd(mnist_file, tmp_path / "task0", "--log", str(tmp_path / "job.log"))
    done = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not marker.exists()
    assert done.stdout.splitlines()[-1].startswith("accuracy per seen task"), done.stdout  # a pipe: block-buffered
    assert (tmp_path / "job.log").read_text().splitlines()[-1].startswith("accuracy per seen task")
    assert json.loads((tmp_path / "task0" / "metrics.json").read_text())["task"] == 0

    # A failing job still ends through the interpreter, with its error status.
    failed = subprocess.run([sys.executable, "-c", code, *train_task_cmd(mnist_file, tmp_path / "bad", "--task", "9")],
                            capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2 and "task 9 does not exist" in failed.stderr and marker.exists()
