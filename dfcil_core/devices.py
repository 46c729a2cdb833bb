"""Choosing the training device, including a GPU slot per job on a multi-GPU workstation.

Snakemake counts GPUs (`--resources gpu=N`) but does not say which one a job should use, so each
training job claims a slot by locking a file: slot s runs on GPU s mod n_gpus. The lock lives as
long as the process, so a killed job frees its slot. Under Slurm each job sees one GPU and no lock
is taken.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from pathlib import Path

import torch

_held_slots: list = []  # open lock files, kept for the life of the process


def lock_dir() -> Path:
    return Path(os.environ.get("DFCIL_GPU_LOCK_DIR", Path(tempfile.gettempdir()) / f"dfcil-gpu-slots-{os.getuid()}"))


def claim_slot(n_gpus: int, jobs_per_gpu: int = 1, poll_seconds: float = 5.0, log=print) -> int:
    """Lock the first free slot of n_gpus * jobs_per_gpu and return its GPU index; wait if all are taken."""
    directory = lock_dir()
    directory.mkdir(parents=True, exist_ok=True)
    n_slots = n_gpus * jobs_per_gpu
    waited = False
    while True:
        for slot in range(n_slots):
            handle = open(directory / f"slot{slot}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            _held_slots.append(handle)
            return slot % n_gpus
        if not waited:
            log(f"all {n_slots} GPU slots in {directory} are taken; waiting")
            waited = True
        time.sleep(poll_seconds)


def release_slots() -> None:
    while _held_slots:
        _held_slots.pop().close()


def pick_device(name: str = "auto", jobs_per_gpu: int = 1, log=print) -> torch.device:
    """`auto`: CUDA when available (a claimed slot when several GPUs are visible), else the CPU."""
    if name != "auto":
        return torch.device(name)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    n_gpus = torch.cuda.device_count()
    return torch.device(f"cuda:{claim_slot(n_gpus, jobs_per_gpu, log=log) if n_gpus > 1 else 0}")
