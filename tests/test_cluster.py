"""Cluster and workstation plumbing: the Slurm profile's resources, GPU slots, determinism."""

import os
import re

from conftest import tiny_settings
from dfcil_core import devices
from dfcil_core.run import train_in_process
from test_workflow import REPO, snakemake


def slurm_jobs(tmp_path, configfile) -> list[tuple[str, str, str]]:
    """(rule, threads, resources) of every job that goes to Slurm in a dry run through the Slurm profile."""
    # --cores 8: a dry run caps each job's threads at the local cores; a Slurm job gets the rule's threads
    out = snakemake(tmp_path, "-n", "--cores", "8", "--workflow-profile", str(REPO / "profiles/slurm"),
                    configfile=configfile)
    assert out.returncode == 0, out.stderr[-2000:]
    blocks = re.split(r"\n(?=(?:local)?rule \w+:)", out.stdout)
    return [(m[1], (re.search(r"threads: (\d+)", b) or [None, "1"])[1], re.search(r"resources: ([^\n]*)", b)[1])
            for b in blocks if (m := re.match(r"rule (train_task|train_generative_task|train_shared_stage|"
                                              r"prepare_data):", b))]


def test_slurm_profile_sizes_every_job_from_the_config(tmp_path):
    jobs = slurm_jobs(tmp_path, REPO / "config/paper/cifar100.yaml")
    assert len(jobs) > 300
    for rule, threads, resources in jobs:
        if rule == "prepare_data":
            assert "runtime=30" in resources and "mem_mb=4000" in resources and "gpu" not in resources
        else:  # threads: the job's torch threads and its --cpus-per-task
            assert "gpu=1" in resources and "runtime=360" in resources and "mem_mb=16000" in resources
            assert threads == "4"
    # The demo is a CPU demo: no GPU asked for, one core, minutes
    for rule, threads, resources in slurm_jobs(tmp_path, REPO / "config/config.yaml"):
        assert "gpu=0" in resources or rule == "prepare_data", (rule, resources)
        assert threads == "1" and "runtime=" in resources


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
