"""A training job killed (SIGKILL) mid-stage resumes from its checkpoint and ends with exactly the
metrics of an uninterrupted job (CPU, bit-identical)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_settings
from dfcil_core.learners import LEARNERS
from dfcil_core.methods import METHODS

BIN = Path(sys.executable).parent


def job(settings, mnist_file, task, out, parent=None):
    cmd = [str(BIN / "dfcil"), "train-task", "--settings", json.dumps(settings), "--data", str(mnist_file),
           "--experiment", "tiny", "--seed", "0", "--task", str(task), "--out", str(out), "--device", "cpu",
           "--threads", "1", "--checkpoint-minutes", "0"]
    if parent:
        cmd += ["--parent", str(parent)]
    return cmd


def run(cmd):
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def kill_when(cmd, checkpoint: Path, timeout=120):
    """Start the job, SIGKILL it as soon as `checkpoint` exists; the job must not have finished."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not checkpoint.exists():
        assert proc.poll() is None, f"the job ended before {checkpoint.name} was written"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def metrics(task_dir):
    m = json.loads((task_dir / "metrics.json").read_text())
    return m["accuracy_per_task"], m["final_losses"], m["fingerprint"]


# (method, the stage ordinal to interrupt at task 1: 0 = the main stage, 1 = the first end-of-task stage)
CASES = [("base", 0), ("naive_rehearsal", 0)]
CASES += [(m, 1) for m in ("e2e", "bic", "abd", "deep_inversion") if m in LEARNERS]
CASES += [(m, 0) for m in ("dgr", "lwf") if m in LEARNERS]
CASES += [("rdfcil", 0), ("rdfcil", 1)]  # its main stage carries projections and label counts; 1: the head refinement


@pytest.mark.slow
@pytest.mark.parametrize("method, stage", CASES)
def test_killed_job_resumes_to_the_same_metrics(method, stage, mnist_file, tmp_path):
    hp = {"memory_size": 40} if "memory_size" in METHODS[method].defaults else {}
    if method == "bic":  # the 8-image holdout must fill a bias batch, or stage 2 makes no step
        hp["bias_batch_size"] = 4
    hp.update(getattr(LEARNERS[method], "tiny_overrides", {}))
    if method == "rdfcil":
        hp["finetune_epochs"] = 6  # of the 12 below
    settings = tiny_settings(method, **hp)
    settings["train"]["epochs"] = 12  # enough epochs that the kill lands inside the stage
    run(job(settings, mnist_file, 0, tmp_path / "task0"))
    run(job(settings, mnist_file, 1, tmp_path / "uninterrupted", tmp_path / "task0"))

    cmd = job(settings, mnist_file, 1, tmp_path / "task1", tmp_path / "task0")
    kill_when(cmd, tmp_path / "task1.checkpoint" / f"stage{stage}.pt")
    assert not (tmp_path / "task1" / "metrics.json").exists()
    run(cmd)
    assert metrics(tmp_path / "task1") == metrics(tmp_path / "uninterrupted")
    assert not (tmp_path / "task1.checkpoint").exists(), "checkpoints are removed once the task is done"


def test_damaged_or_foreign_checkpoints_are_ignored(mnist_file, tmp_path):
    settings = tiny_settings("base")
    run(job(settings, mnist_file, 0, tmp_path / "reference"))
    checkpoints = tmp_path / "task0.checkpoint"
    checkpoints.mkdir()
    (checkpoints / "stage0.pt").write_bytes(b"PK\x03\x04 truncated")  # killed while writing
    (checkpoints / ".stage0.pt.tmp123").write_bytes(b"partial")
    torch.save({"fingerprint": "0123456789abcdef", "learner": {}, "rng": {}, "result": {}},
               checkpoints / "stage0.done.pt")  # left by a job with other settings
    run(job(settings, mnist_file, 0, tmp_path / "task0"))
    assert metrics(tmp_path / "task0") == metrics(tmp_path / "reference")
