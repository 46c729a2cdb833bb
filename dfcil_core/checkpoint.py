"""Resuming a training job inside a task.

A task is a fixed sequence of stages (`trainer.run_stage` calls: the main stage, then whatever the
learner's `end_task` runs: E2E's balanced fine-tuning, BiC's bias correction, generator inversion).
While a job runs, each stage leaves
- a progress checkpoint every `every_seconds`, at an epoch boundary: the whole learner state, the
  stage's optimizer, every RNG state, the epoch reached and the mean loss terms of every epoch so far;
- a completion snapshot when it ends: the learner state and RNG states right after it.

Started again, the job replays the task from its beginning: a completed stage is skipped by loading
its snapshot, the interrupted stage continues from its last checkpoint, and the code between stages
runs again on exactly the state and random streams it saw the first time. The result equals an
uninterrupted run bit for bit on the CPU. Checkpoints carry the task's fingerprint and the code digest:
one made with other settings or other code is ignored (and replaced), never resumed. A shared node's
snapshot is taken whatever code made it (the consuming task records that code's digest).
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import os
import random
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import torch

from dfcil_core.atomic import write_atomically
from dfcil_core.provenance import code_digest

_active: contextvars.ContextVar["Checkpointer | None"] = contextvars.ContextVar("checkpointer", default=None)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.as_tensor(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": list(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _save(obj, path: Path) -> None:
    write_atomically(path, lambda tmp: torch.save(obj, tmp))  # a folder removed under a running job is remade


class Checkpointer:
    def __init__(self, directory: Path, fingerprint: str, learner, every_seconds: float, log=print):
        self.directory = directory
        self.fingerprint = fingerprint
        self.learner = learner
        self.every_seconds = every_seconds
        self.log = log
        self.next_ordinal = 0
        self.shared: dict[int, tuple[Path, str]] = {}
        self.shared_digests: dict[int, str | None] = {}
        self._last_save = time.monotonic()
        self.directory.mkdir(parents=True, exist_ok=True)

    def _load(self, path: Path) -> dict | None:
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location=self.learner.ctx.device, weights_only=True)
        except Exception as e:  # a damaged checkpoint only costs the progress it held
            self.log(f"ignoring unreadable checkpoint {path}: {e}")
            return None
        if state.get("fingerprint") != self.fingerprint:
            self.log(f"ignoring checkpoint {path}: it belongs to other settings")
            return None
        if state.get("code_digest") != code_digest():
            self.log(f"ignoring checkpoint {path}: it was made by other code ({state.get('code_digest')})")
            return None
        return state

    def claim_ordinal(self) -> int:
        ordinal = self.next_ordinal
        self.next_ordinal += 1
        return ordinal

    def use_shared(self, ordinal: int, snapshot: Path, fingerprint: str) -> None:
        """Stage `ordinal` was computed by a shared node: take its model and random streams from
        `snapshot` (which must carry `fingerprint`) instead of training it again."""
        self.shared[ordinal] = (snapshot, fingerprint)

    def _restore_shared(self, ordinal: int) -> dict | None:
        """The shared node's snapshot, or None when it is unreadable: like a damaged checkpoint, that only
        costs the computation, which this job then does itself (it is the same computation)."""
        path, expected = self.shared[ordinal]
        try:
            state = torch.load(path, map_location=self.learner.ctx.device, weights_only=True)
        except Exception as e:
            self.log(f"shared stage {path} is unreadable ({e}); computing stage {ordinal} in this job")
            del self.shared[ordinal]
            return None
        if state.get("fingerprint") != expected:
            from dfcil_core.config import StateError
            raise StateError(f"shared stage {path} has fingerprint {state.get('fingerprint')}, "
                             f"this job expects {expected}: it was computed with other settings")
        self.learner.model.load_state_dict(state["learner"]["model"])
        set_rng_state(state["rng"])
        self.shared_digests[ordinal] = state.get("code_digest")
        self.log(f"stage {ordinal} restored from the shared node {path}")
        return state

    def shared_code_digest(self, ordinal: int) -> str | None:
        """The code digest of the shared node stage `ordinal` came from; this job's own if it computed it."""
        return self.shared_digests.get(ordinal, code_digest())

    def completed(self, ordinal: int) -> dict | None:
        """If stage `ordinal` finished in an earlier attempt or in a shared node: restore the state
        right after it."""
        if ordinal in self.shared and (state := self._restore_shared(ordinal)) is not None:
            return state
        state = self._load(self.directory / f"stage{ordinal}.done.pt")
        if state is not None:
            self.learner.load_state_dict(state["learner"])
            set_rng_state(state["rng"])
            self.log(f"stage {ordinal} was completed by an earlier attempt; restored its result")
        return state

    def progress(self, ordinal: int, optimizer: torch.optim.Optimizer) -> dict | None:
        """If stage `ordinal` was interrupted: restore its last checkpoint; returns the epoch reached and the
        samples, seconds and per-epoch losses up to it."""
        state = self._load(self.directory / f"stage{ordinal}.pt")
        if state is not None:
            self.learner.load_state_dict(state["learner"])
            optimizer.load_state_dict(state["optimizer"])
            set_rng_state(state["rng"])
            self.log(f"resuming stage {ordinal} at epoch {state['epoch']}")
        return state

    def due(self) -> bool:
        return time.monotonic() - self._last_save >= self.every_seconds

    def save_progress(self, ordinal: int, optimizer, epoch: int, counts: dict) -> None:
        _save({"fingerprint": self.fingerprint, "code_digest": code_digest(), "learner": self.learner.state_dict(),
               "optimizer": optimizer.state_dict(), "rng": rng_state(), "epoch": epoch, **counts},
              self.directory / f"stage{ordinal}.pt")
        self._last_save = time.monotonic()

    def save_completed(self, ordinal: int, result: dict) -> None:
        _save({"fingerprint": self.fingerprint, "code_digest": code_digest(), "learner": self.learner.state_dict(),
               "rng": rng_state(), "result": result}, self.directory / f"stage{ordinal}.done.pt")
        (self.directory / f"stage{ordinal}.pt").unlink(missing_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def active() -> Checkpointer | None:
    return _active.get()


@contextlib.contextmanager
def checkpointing(checkpointer: Checkpointer | None):
    token = _active.set(checkpointer)
    try:
        yield checkpointer
    finally:
        _active.reset(token)


def lock_path(out_dir: Path) -> Path:
    """The lock file of the job that writes `out_dir` (beside it, hidden, never a rule's output)."""
    return out_dir.with_name(f".{out_dir.name}.lock")


@contextlib.contextmanager
def exclusive(lock: Path, log=print):
    """Hold `lock` (flock) for the block: one job at a time trains a task. A second job of the same task, e.g. the
    one a restarted Snakemake submits while the job of its killed predecessor still runs on the cluster, waits
    here instead of training beside it (and deleting its checkpoints). The lock ends with the process, so a
    killed job never leaves it held; the file stays (removing it would let two jobs lock two different files)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            log(f"another job ({handle.read().strip() or 'unknown'}) holds {lock}; waiting for it to end")
            fcntl.flock(handle, fcntl.LOCK_EX)
            log(f"{lock} is free")
        except OSError as e:  # e.g. Lustre mounted without flock support: ENOSYS
            log(f"cannot lock {lock} ({e}); running without the one-job-per-task guard")
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        yield
