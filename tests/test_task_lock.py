"""One job at a time trains a task: a duplicate (e.g. the job a restarted Snakemake head submits while its killed
predecessor's job still runs on the cluster) waits for the task's lock instead of training beside it, and takes
the results the first job wrote instead of training again."""

import fcntl
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


from conftest import tiny_settings
from dfcil_core.checkpoint import Checkpointer, lock_path

BIN = Path(sys.executable).parent


def train_task_cmd(mnist_file, out):
    return [str(BIN / "dfcil"), "train-task", "--settings", json.dumps(tiny_settings("base")), "--data",
            str(mnist_file), "--experiment", "tiny", "--seed", "0", "--task", "0", "--out", str(out),
            "--device", "cpu", "--threads", "1", "--checkpoint-minutes", "0"]


def start_while_locked(cmd, lock: Path, log: Path):
    """Hold the task's lock as a running job would, start `cmd`, and return once it says it is waiting."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = open(lock, "a+")
    fcntl.flock(holder, fcntl.LOCK_EX)
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while "waiting for it to end" not in log.read_text():
        assert proc.poll() is None, f"the duplicate did not wait for the lock:\n{log.read_text()}"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return holder, proc


def test_a_duplicate_job_waits_then_takes_the_results_of_the_job_that_held_the_task(tmp_path, mnist_file):
    first = tmp_path / "first" / "task0"
    subprocess.run(train_task_cmd(mnist_file, first), check=True, capture_output=True, timeout=300)
    out = tmp_path / "results" / "task0"
    holder, duplicate = start_while_locked(train_task_cmd(mnist_file, out), lock_path(out), tmp_path / "dup.log")
    time.sleep(1.0)
    assert duplicate.poll() is None, "the duplicate did not wait while the task was locked"
    shutil.copytree(first, out)  # what the job holding the lock writes before it ends
    written = (out / "metrics.json").read_bytes(), (out / "state.pt").stat().st_mtime_ns
    holder.close()
    assert duplicate.wait(timeout=120) == 0
    log = (tmp_path / "dup.log").read_text()
    assert "nothing to do" in log and "epoch" not in log, log  # it did not train
    assert ((out / "metrics.json").read_bytes(), (out / "state.pt").stat().st_mtime_ns) == written
    assert not out.with_name("task0.checkpoint").exists()


def test_a_duplicate_trains_the_task_itself_when_the_lock_holder_died_without_results(tmp_path, mnist_file):
    out = tmp_path / "results" / "task0"
    holder, duplicate = start_while_locked(train_task_cmd(mnist_file, out), lock_path(out), tmp_path / "dup.log")
    holder.close()  # the holder ends (killed) without having written the task
    assert duplicate.wait(timeout=300) == 0, (tmp_path / "dup.log").read_text()
    assert json.loads((out / "metrics.json").read_text())["task"] == 0
    assert "nothing to do" not in (tmp_path / "dup.log").read_text()


def test_a_checkpoint_folder_removed_under_a_running_job_is_made_again(tmp_path):
    class Learner:
        def state_dict(self):
            return {"w": 1}

    checkpointer = Checkpointer(tmp_path / "task0.checkpoint", "fp", Learner(), 0, log=lambda m: None)
    shutil.rmtree(tmp_path / "task0.checkpoint")
    checkpointer.save_progress(0, type("Opt", (), {"state_dict": lambda self: {}})(), 1, {})
    assert (tmp_path / "task0.checkpoint" / "stage0.pt").is_file()


def test_a_file_system_without_locks_runs_the_job_unguarded_and_says_so(tmp_path, monkeypatch):
    import errno
    from dfcil_core import checkpoint

    def no_flock(handle, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")
    monkeypatch.setattr(checkpoint.fcntl, "flock", no_flock)
    said, ran = [], []
    with checkpoint.exclusive(tmp_path / ".task0.lock", log=said.append):
        ran.append(True)
    assert ran and "running without the one-job-per-task guard" in said[0]
