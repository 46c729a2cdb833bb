"""Cluster and workstation plumbing: the Slurm profile's resources, GPU slots, determinism."""

import os
import re

import pytest

from conftest import tiny_settings
from dfcil_core import devices
from dfcil_core.run import train_in_process
from test_workflow import REPO, snakemake


def test_slurm_profile_gives_every_training_job_a_gpu_runtime_and_memory(tmp_path):
    out = snakemake(tmp_path, "-n", "--workflow-profile", str(REPO / "profiles/slurm"),
                    configfile=REPO / "config/paper/cifar100.yaml")
    assert out.returncode == 0, out.stderr[-2000:]
    jobs = re.findall(r"rule (train_task|train_shared_stage):.*?resources: ([^\n]*)", out.stdout, flags=re.S)
    assert len(jobs) > 300
    for _, resources in jobs:
        assert "gpu=1" in resources and "runtime=360" in resources and "mem_mb=16000" in resources


def test_gpu_slots_are_claimed_once_and_freed(tmp_path, monkeypatch):
    monkeypatch.setenv("DFCIL_GPU_LOCK_DIR", str(tmp_path))
    try:
        assert devices.claim_slot(2, jobs_per_gpu=2) == 0
        assert devices.claim_slot(2, jobs_per_gpu=2) == 1
        assert devices.claim_slot(2, jobs_per_gpu=2) == 0  # the second job on GPU 0
        assert len(os.listdir(tmp_path)) == 3
    finally:
        devices.release_slots()
    assert devices.claim_slot(2) == 0  # released slots are free again
    devices.release_slots()


def test_same_seed_same_numbers():
    settings = tiny_settings("naive_rehearsal", memory_size=40)
    first = train_in_process(settings, seed=2, n_tasks=2)
    second = train_in_process(settings, seed=2, n_tasks=2)
    strip = lambda runs: [{k: v for k, v in r.items() if "seconds" not in k and k != "images_per_second"}
                          for r in runs]  # noqa: E731
    assert strip(first) == strip(second)


def test_dry_run_shares_first_tasks_only_for_the_methods_that_qualify(tmp_path):
    out = snakemake(tmp_path, "-n", configfile=REPO / "config/paper/cifar100.yaml")
    assert out.returncode == 0, out.stderr[-2000:]
    inputs = {}  # (experiment, method, seed, task) -> the job's input line
    for block in out.stdout.split("rule train_task:")[1:]:
        wildcards = dict(re.findall(r"(\w+)=([^,\s]+)", re.search(r"wildcards: ([^\n]*)", block).group(1)))
        key = (wildcards["experiment"], wildcards["method"], wildcards["seed"], int(wildcards["task"]))
        inputs[key] = re.search(r"input: ([^\n]*)", block).group(1)
    sharing = {"base", "naive_rehearsal", "lwf", "lwf_coreset", "e2e", "bic", "deep_inversion", "lwf_synthetic"}
    for (experiment, method, seed, task), line in inputs.items():
        takes_shared = "results/shared/" in line
        if method == "upper_bound":
            assert takes_shared, (experiment, seed, task)
        elif task == 0:
            assert takes_shared == (method in sharing), (experiment, method, seed)
            if takes_shared:
                assert "results/shared/base-" in line
        else:
            assert not takes_shared, (experiment, method, seed, task)
    # UB's last task is one node for the 5-, 10- and 20-task splits of a seed.
    last = {inputs[(e, "upper_bound", "0", n - 1)] for e, n in
            (("cifar100-5task", 5), ("cifar100-10task", 10), ("cifar100-20task", 20))}
    shared_paths = {re.search(r"results/shared/\S+stage0.done.pt", line).group(0) for line in last}
    assert len(shared_paths) == 1
