"""The Slurm profile on a real (private, single-node) Slurm cluster: jobs go through sbatch and give the results
of a local run; a cancelled job is retried and resumes; a killed Snakemake head, run again, loses nothing and does
not train a task twice at once. The cluster comes from tests/slurm_cluster.py (skipped where it cannot run).

The commands are what a user types (README, "Slurm"), plus two options that only make the tests fast (see
`slurm_cmd`). Job ids and states come from the head's output ("Job N has been submitted with SLURM jobid X
(log: .../rule_<rule>/<wildcards>/X.log)") and from squeue, which keeps finished jobs for MinJobAge (300 s).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import write_cifar100
from test_workflow import tiny_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TABLE = "results/tiny/final_accuracy.md"
RESOURCES = {"train_task": {"gpus": 0, "cpus": 1, "runtime": 10, "mem_mb": 1000},
             "prepare_data": {"runtime": 10, "mem_mb": 1000}}
LONG_EPOCHS = 200  # a task of a few seconds: long enough to be caught between two checkpoints
COMPARED = ("accuracy_per_task", "final_losses", "fingerprint", "train_steps", "current_task_loss")


def slurm_cmd(workdir: Path, config: Path, *args: str) -> list[str]:
    return [str(BIN / "snakemake"), "--workflow-profile", str(REPO / "profiles/slurm"), "--configfile", str(config),
            "--directory", str(workdir), "--snakefile", str(REPO / "Snakefile"),
            # Only to make the tests fast. The plugin first asks for job states after 40 s, then after 10 s more
            # each time a check finds nothing finished (so 5, 20, 45 s here); these jobs take 10-20 s.
            "--slurm-init-seconds-before-status-checks", "5",
            # The profile's 60 s is for shared file systems; here every file is local.
            "--latency-wait", "5",
            *args]


def local_cmd(workdir: Path, config: Path, *args: str) -> list[str]:
    return [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--cores", "2", *args, "--configfile", str(config)]  # --configfile takes every word after it


def local_env() -> dict:
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}


def write_config(root: Path, **top) -> Path:
    """tests/test_workflow.py's tiny configuration (cifar100 at 8 px, width 4, seed 0, two tasks of 50 classes)
    with the keys a CPU-only Slurm cluster needs, and `top` (top-level keys) or `defaults` changes."""
    defaults = top.pop("defaults", {})
    write_cifar100(root / "data")
    path = tiny_config(root, **defaults)
    cfg = yaml.safe_load(path.read_text())
    cfg.update({"device": "cpu", "resources": RESOURCES, **top})
    path.write_text(yaml.safe_dump(cfg))
    return path


def submissions(output: str) -> list[tuple[str, str, str]]:
    """(slurm job id, rule, wildcards) of every job the head submitted, in order."""
    return [(m[1], m[2], m[3]) for m in
            re.finditer(r"has been submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+?)/(\S+)/\d+\.log\)", output)]


def task_jobs(output: str, wildcards: str) -> list[str]:
    return [job for job, rule, wc in submissions(output) if rule == "train_task" and wc == wildcards]


def metrics(workdir: Path, method: str, task: int) -> dict:
    return json.loads((workdir / f"results/tiny/{method}/seed0/task{task}/metrics.json").read_text())


def states(cluster) -> dict:
    return {j["id"]: j["state"] for j in cluster.jobs()}


def wait_until(predicate, timeout: float, what: str, proc=None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"snakemake ended (status {proc.returncode}) before {what}:\n"
                        + (log.read_text()[-4000:] if log else ""))
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout:.0f} s:\n" + (log.read_text()[-4000:] if log else ""))
        time.sleep(0.1)
    return value


@pytest.fixture
def heads(slurm_cluster):
    """Start Snakemake heads in their own process group; whatever a test leaves behind is stopped."""
    started = []

    def start(cmd, log: Path):
        proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=slurm_cluster.env,
                                start_new_session=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    slurm_cluster.scancel_all()  # suspended or orphaned jobs of a failed test must not run into the next one


def test_jobs_go_through_sbatch_and_give_the_local_results(slurm_cluster, heads, tmp_path):
    config = write_config(tmp_path)
    work, log = tmp_path / "slurm", tmp_path / "slurm.out"
    work.mkdir()
    head = heads(slurm_cmd(work, config, TABLE), log)
    assert head.wait(timeout=600) == 0, log.read_text()[-4000:]
    local = tmp_path / "local"  # after, not beside it: on 2 cores that slows every job past a status check
    reference = subprocess.run(local_cmd(local, config, TABLE), capture_output=True, text=True, env=local_env(),
                               timeout=600)
    assert reference.returncode == 0, reference.stderr[-4000:]

    output = log.read_text()
    jobs = submissions(output)
    train = {wc: job for job, rule, wc in jobs if rule == "train_task"}
    assert set(train) == {f"tiny_{m}_0_{t}" for m in ("base", "naive_rehearsal") for t in (0, 1)}, jobs
    assert {rule for _, rule, _ in jobs} == {"prepare_data", "train_shared_stage", "train_task"}, jobs
    known = states(slurm_cluster)
    assert all(known.get(job) == "COMPLETED" for job, _, _ in jobs), (jobs, known)
    assert (work / "results/tiny/final_accuracy.md").is_file()
    table = (work / TABLE).read_text()
    assert re.search(r"^\| Base", table, flags=re.M) and re.search(r"^\| Naive Rehearsal", table, flags=re.M)
    for method in ("base", "naive_rehearsal"):
        for t in (0, 1):
            on_slurm, here = metrics(work, method, t), metrics(local, method, t)
            assert {k: on_slurm[k] for k in COMPARED} == {k: here[k] for k in COMPARED}, (method, t)


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    """A one-method configuration whose task 1 trains for a few seconds, checkpointing every epoch; `prepared`
    holds everything up to task 0 (made locally), `reference` the uninterrupted local run of task 1."""
    root = tmp_path_factory.mktemp("long")
    config = write_config(root, checkpoint_minutes=0, defaults={
        "methods": ["base"],
        "train": {"epochs": LONG_EPOCHS, "lr": 0.05, "lr_milestones": [], "batch_size": 32, "momentum": 0.9,
                  "weight_decay": 0.0002}})
    prepared, reference = root / "prepared", root / "reference"
    out = subprocess.run(local_cmd(prepared, config, "results/tiny/base/seed0/task0/metrics.json"),
                         capture_output=True, text=True, env=local_env(), timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    shutil.copytree(prepared, reference)
    out = subprocess.run(local_cmd(reference, config, "results/tiny/base/seed0/task1/metrics.json"),
                         capture_output=True, text=True, env=local_env(), timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return {"config": config, "prepared": prepared, "reference": metrics(reference, "base", 1)}


def copy_prepared(long_run, tmp_path) -> Path:
    work = tmp_path / "work"
    shutil.copytree(long_run["prepared"], work)
    return work


CHECKPOINT = "results/tiny/base/seed0/task1.checkpoint/stage0.pt"  # progress of task 1's main stage
TASK_LOG = "results/logs/tiny/base/seed0/task1.log"


def start_until_checkpoint(heads, work, config, log):
    """Start the Slurm run of the long configuration; return (head, job id of task 1) once that job has
    written its first progress checkpoint."""
    head = heads(slurm_cmd(work, config, TABLE), log)
    job = wait_until(lambda: task_jobs(log.read_text(), "tiny_base_0_1"), 300, "submission of task 1",
                     head, log)[0]
    wait_until((work / CHECKPOINT).exists, 300, "checkpoint of task 1", head, log)
    return head, job


def assert_same_as_uninterrupted(work, long_run):
    got = metrics(work, "base", 1)
    assert {k: got[k] for k in COMPARED} == {k: long_run["reference"][k] for k in COMPARED}
    assert not (work / CHECKPOINT).parent.exists()
    assert (work / "results/tiny/base/seed0/summary.json").is_file() and (work / TABLE).is_file()


def test_a_cancelled_job_is_retried_and_resumes_from_its_checkpoint(slurm_cluster, heads, long_run,
                                                                    tmp_path):
    work, log = copy_prepared(long_run, tmp_path), tmp_path / "slurm.out"
    head, job = start_until_checkpoint(heads, work, long_run["config"], log)
    slurm_cluster.scancel(job)
    assert head.wait(timeout=600) == 0, log.read_text()[-4000:]

    output = log.read_text()
    attempts = task_jobs(output, "tiny_base_0_1")
    assert attempts[0] == job and len(attempts) == 2, output[-4000:]  # the profile's retries
    known = states(slurm_cluster)
    assert known[job] == "CANCELLED" and known[attempts[1]] == "COMPLETED", known
    task_log = (work / TASK_LOG).read_text()  # the retry's log
    assert re.search(r"resuming stage 0 at epoch [1-9]\d*", task_log), task_log
    assert_same_as_uninterrupted(work, long_run)


def rerun_after_kill(heads, cluster, work, config, tmp_path):
    """Run the same command again after the head was killed: (head, its log, whether --unlock was needed).
    Snakemake 9.27 leaves the killed head's lock on the working directory, so the user runs `--unlock` first."""
    relog = tmp_path / "rerun.out"
    head = heads(slurm_cmd(work, config, TABLE), relog)
    locked = "Directory cannot be locked"
    wait_until(lambda: head.poll() is not None or locked in relog.read_text()
               or task_jobs(relog.read_text(), "tiny_base_0_1"), 300, "rerun's first steps")
    if locked not in relog.read_text():
        return head, relog, False
    assert head.wait(timeout=60) != 0
    unlock = subprocess.run(slurm_cmd(work, config, "--unlock"), capture_output=True, text=True, env=cluster.env,
                            timeout=300)
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    relog = tmp_path / "rerun-unlocked.out"
    return heads(slurm_cmd(work, config, TABLE), relog), relog, True


def test_a_rerun_after_the_head_was_killed_neither_loses_output_nor_trains_a_task_twice(
        slurm_cluster, heads, long_run, tmp_path):
    work, log = copy_prepared(long_run, tmp_path), tmp_path / "first.out"
    head, orphan = start_until_checkpoint(heads, work, long_run["config"], log)
    os.kill(head.pid, signal.SIGKILL)  # the head only: its training job runs on, an orphan
    head.wait()
    # Freeze the orphan until the rerun's job of the same task has started, so that the two surely overlap
    # (on a busy cluster the orphan may run for hours after its head died).
    assert slurm_cluster.run("scontrol", "suspend", orphan).returncode == 0
    assert states(slurm_cluster)[orphan] == "SUSPENDED"

    config = long_run["config"]
    second, relog, unlocked = rerun_after_kill(heads, slurm_cluster, work, config, tmp_path)
    print(f"--unlock was needed before the rerun: {unlocked}")
    duplicate = wait_until(lambda: task_jobs(relog.read_text(), "tiny_base_0_1"), 300,
                           "resubmission of task 1", second, relog)[0]
    # The duplicate job's Snakemake replaced the task's log; its training command has begun once it waits for
    # the task's lock, or trains. Then the orphan goes on.
    marks = ("waiting for it to end", "resuming stage", "] epoch ")
    wait_until(lambda: (work / TASK_LOG).exists() and any(m in (work / TASK_LOG).read_text() for m in marks),
               300, "start of the duplicate job's training command", second, relog)
    assert slurm_cluster.run("scontrol", "resume", orphan).returncode == 0
    status = second.wait(timeout=600)

    duplicate_log = (work / TASK_LOG).read_text()
    assert "resuming stage" not in duplicate_log and "] epoch " not in duplicate_log, (
        f"task 1 trained in the rerun's job {duplicate} while the orphan {orphan} trained it:\n{duplicate_log}")
    assert "waiting for it to end" in duplicate_log, duplicate_log
    assert status == 0, relog.read_text()[-4000:]
    assert submissions(relog.read_text()) == [(duplicate, "train_task", "tiny_base_0_1")]  # nothing else again
    known = states(slurm_cluster)
    assert known[orphan] == "COMPLETED" and known[duplicate] == "COMPLETED", known
    assert_same_as_uninterrupted(work, long_run)
    assert metrics(work, "base", 0)["task"] == 0


def test_a_rerun_takes_the_task_an_orphan_finished_after_the_head_was_killed(slurm_cluster, heads,
                                                                             long_run, tmp_path):
    work, log = copy_prepared(long_run, tmp_path), tmp_path / "first.out"
    head, orphan = start_until_checkpoint(heads, work, long_run["config"], log)
    os.kill(head.pid, signal.SIGKILL)
    head.wait()
    wait_until(lambda: states(slurm_cluster)[orphan] not in ("RUNNING", "COMPLETING"), 300, "end of the orphan")
    assert states(slurm_cluster)[orphan] == "COMPLETED"
    written = metrics(work, "base", 1)
    state_mtime = (work / "results/tiny/base/seed0/task1/state.pt").stat().st_mtime_ns

    second, relog, unlocked = rerun_after_kill(heads, slurm_cluster, work, long_run["config"], tmp_path)
    assert second.wait(timeout=600) == 0, relog.read_text()[-4000:]
    # The orphan's own Snakemake cleared the "incomplete" mark of its outputs (it writes no metadata record for
    # them: only a head does): the rerun keeps them and submits nothing.
    assert submissions(relog.read_text()) == [], relog.read_text()[-4000:]
    assert metrics(work, "base", 1) == written
    assert (work / "results/tiny/base/seed0/task1/state.pt").stat().st_mtime_ns == state_mtime
    assert_same_as_uninterrupted(work, long_run)
