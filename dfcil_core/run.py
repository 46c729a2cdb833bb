"""One DAG node (`TaskJob`): load the previous task's state, train task t, save the state and the task's metrics."""

from __future__ import annotations

import json
import platform
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from dfcil_core.config import ConfigError, Diverged, StateError, differences, fingerprint
from dfcil_core.atomic import write_atomically, write_text_atomically
from dfcil_core.checkpoint import Checkpointer, checkpointing, exclusive, lock_path
from dfcil_core.data import TrainData, load_prepared, prepared_digest
from dfcil_core.devices import pick_device
from dfcil_core.learners import learner_class
from dfcil_core.learners.api import Context, Learner
from dfcil_core.methods import Task, resolve, shared_recipe
from dfcil_core.models.resnet import build_model
from dfcil_core.provenance import code_digest, git_commit
from dfcil_core.trainer import seed_everything, train_task

STATE_FILE = "state.pt"
METRICS_FILE = "metrics.json"
ON_DIVERGENCE = ("record", "fail")


def fingerprints(settings: dict, seed: int, n: int, identity: dict) -> list[str]:
    """Fingerprints of tasks 0..n-1 of one run; each chains its parent's."""
    chain, parent = [], None
    for t in range(n):
        parent = fingerprint(settings, seed, t, parent, identity)
        chain.append(parent)
    return chain


def load_state(parent_dir: Path, expected_fp: str, provenance: dict, device: torch.device) -> dict:
    """The parent task's state, refused with a message naming the difference if it was produced by
    other settings, another method, other data or other code."""
    path = parent_dir / STATE_FILE
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise StateError(f"parent state {path} does not exist") from None
    except Exception as e:  # a truncated or corrupted file fails to unpickle/unzip
        raise StateError(f"parent state {path} is unreadable (truncated or corrupted?): {e}") from None
    method = provenance["settings"]["method"]
    if state.get("method") != method:
        raise StateError(f"parent state {path} belongs to method {state.get('method')!r}, not {method!r}")
    if state.get("fingerprint") != expected_fp:
        changed = differences(state.get("provenance", {}), provenance) or ["(unrecorded)"]
        raise StateError(f"parent state {path} has fingerprint {state.get('fingerprint')} but this job expects "
                         f"{expected_fp}: it differs in {', '.join(changed)}; rerun its task first")
    return state


def build(settings: dict, seed: int, device: str = "auto", data_file: Path | None = None,
          data_root: str = "data", jobs_per_gpu: int = 1):
    """Resolve a run's settings, load its data onto the device and construct its learner (task 0 weights).
    The data comes from a prepared array file (`dfcil prepare-data`) or, without one, its loader."""
    settings, hp, train = resolve(settings)
    dev = pick_device(device, jobs_per_gpu)
    data = TrainData({**settings["dataset"], "root": data_root}, seed,
                     settings["first_split"], settings["other_split"], dev, settings.get("max_tasks"),
                     settings["augment"], settings["crop_padding"], settings["horizontal_flip"],
                     arrays=load_prepared(data_file) if data_file else None)
    info = data.info
    ctx = Context(data=data, train=train, n_classes=info.n_classes, device=dev, seed=seed,
                  make_model=lambda: build_model(settings["model"], info.n_classes, info.channels).to(dev))
    seed_everything(seed)  # model initialisation draws from the run's seed, before any per-task reseed
    return settings, train, data, learner_class(settings["method"])(hp, ctx)


def train_shared_stage(recipe: dict, seed: int, out_dir: Path, data_file: Path, device: str = "auto",
                       checkpoint_minutes: float = 10.0, jobs_per_gpu: int = 1, log=print) -> None:
    """Compute a shared main stage once: `out_dir/stage0.done.pt` holds the model and random streams
    right after it, which the consuming task jobs restore instead of training. Progress is checkpointed
    every `checkpoint_minutes` in `out_dir`, as a task job's is."""
    with exclusive(lock_path(out_dir), log):  # a duplicate job waits, then finds the snapshot and restores it
        recipe, train, data, learner = build(recipe, seed, device, data_file, jobs_per_gpu=jobs_per_gpu)
        task = Task(0, 1, 0, recipe["first_split"])
        out_dir.mkdir(parents=True, exist_ok=True)
        fp = fingerprint(recipe, seed, 0, None, {"data": prepared_digest(data_file)})
        with checkpointing(Checkpointer(out_dir, fp, learner, 60 * checkpoint_minutes, log)):
            train_task(learner, task, data, train, seed, log=log)


def finished_record(out_dir: Path, expected_fp: str) -> dict | None:
    """The metrics of a task already written by this code with this fingerprint, or None."""
    try:
        record = json.loads((out_dir / METRICS_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    complete = (out_dir / STATE_FILE).is_file()
    return record if complete and record.get("fingerprint") == expected_fp and \
        record.get("code_digest") == code_digest() else None


@dataclass
class TaskJob:
    """One (experiment, method, seed, task) node, as `dfcil train-task` runs it: `run()` loads the previous task's
    state, trains task `task_index`, and writes `state.pt` and `metrics.json` to `out_dir`, in these steps:

    - `fingerprint_chain` (at construction): the fingerprints of tasks 0..task_index, from the resolved settings,
      the seed and the prepared dataset's stored digest; bad `on_divergence` is refused first;
    - under the task's lock (`checkpoint.exclusive`; a second job of the task waits for it):
      `already_finished` (the task's results written by this code with this fingerprint: returned as they are),
      `build` (data on the device, the learner), `load_parent_state`, `train` (checkpointed to
      `<out_dir>.checkpoint/` every `checkpoint_minutes`; a job started again after a kill resumes from there
      and ends with the same result; a shared node's snapshot replaces the main stage), `check_divergence`
      (with `on_divergence="fail"` a task that did not learn raises `Diverged` and writes nothing), `save_state`,
      `save_metrics` (the `record`), after which the checkpoints are removed."""

    settings: dict
    experiment: str
    seed: int
    task_index: int
    out_dir: Path
    parent_dir: Path | None = None
    data_file: Path | None = None
    device: str = "auto"
    checkpoint_minutes: float = 10.0
    jobs_per_gpu: int = 1
    shared_stage: Path | None = None
    on_divergence: str = "record"
    log: Callable[[str], None] = print
    # What the steps make: the chain at construction, the rest in `build` and `train`.
    identity: dict = field(init=False, repr=False)
    chain: list[str] = field(init=False, repr=False)
    resolved: dict = field(init=False, repr=False)  # the settings with every default written out
    train_settings: dict = field(init=False, repr=False)
    data: TrainData = field(init=False, repr=False)
    learner: Learner = field(init=False, repr=False)
    task: Task = field(init=False, repr=False)
    checkpointer: Checkpointer = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.on_divergence not in ON_DIVERGENCE:
            raise ConfigError(f"on_divergence must be one of {ON_DIVERGENCE}, got {self.on_divergence!r}")
        self.identity, self.chain = self.fingerprint_chain()

    # ---------------------------------------------------------------- the steps

    def fingerprint_chain(self) -> tuple[dict, list[str]]:
        """What identifies the data (the prepared file's stored digest, not a hash of the file) and the
        fingerprints of tasks 0..task_index, each chaining its parent's."""
        identity = {"data": prepared_digest(self.data_file) if self.data_file else None}
        return identity, fingerprints(resolve(self.settings)[0], self.seed, self.task_index + 1, identity)

    @property
    def fingerprint(self) -> str:
        return self.chain[-1]

    @property
    def name(self) -> str:
        """experiment/method/seed/task, as the log and errors name the job (the method as resolved, once built)."""
        method = getattr(self, "resolved", self.settings)["method"]
        return f"{self.experiment}/{method}/seed{self.seed}/task{self.task_index}"

    def already_finished(self) -> dict | None:
        """The record of this task if a job with this fingerprint and this code already wrote it."""
        finished = finished_record(self.out_dir, self.fingerprint)
        if finished is not None:
            self.log(f"{self.out_dir} was written by another job of this task (fingerprint {self.fingerprint}, "
                     "this code); nothing to do")
        return finished

    def build(self) -> None:
        """Resolve the settings, load the data onto the device and construct the learner (task 0 weights)."""
        self.resolved, self.train_settings, self.data, self.learner = build(
            self.settings, self.seed, self.device, self.data_file, jobs_per_gpu=self.jobs_per_gpu)
        data = self.data
        if not 0 <= self.task_index < data.n_tasks:
            raise ConfigError(f"task {self.task_index} does not exist: the experiment has {data.n_tasks} tasks")
        self.task = Task(self.task_index, data.n_tasks, data.bounds[self.task_index],
                         data.bounds[self.task_index + 1])

    def load_parent_state(self) -> None:
        """Task t > 0 starts from task t-1's saved learner state, refused if other settings, data or code made it."""
        t = self.task_index
        if t == 0:
            return
        if self.parent_dir is None:
            raise StateError(f"task {t} needs the state of task {t - 1}")
        provenance = {"settings": self.resolved, "seed": self.seed, "task": t - 1, "identity": self.identity}
        state = load_state(self.parent_dir, self.chain[t - 1], provenance, self.data.device)
        self.learner.load_state_dict(state["learner"])

    def train(self) -> dict:
        """Train and evaluate the task, checkpointed; the main stage taken from a shared node if one is given."""
        self.checkpointer = Checkpointer(self.out_dir.with_name(self.out_dir.name + ".checkpoint"), self.fingerprint,
                                         self.learner, 60 * self.checkpoint_minutes, self.log)
        if self.shared_stage is not None:
            recipe = shared_recipe(self.resolved, self.task)
            if recipe is None:
                raise ConfigError(f"method {self.resolved['method']!r} computes task {self.task_index}'s main stage "
                                  "itself; it cannot take a shared stage")
            self.checkpointer.use_shared(0, self.shared_stage, fingerprint(recipe, self.seed, 0, None, self.identity))
        with checkpointing(self.checkpointer):
            return train_task(self.learner, self.task, self.data, self.train_settings, self.seed, log=self.log)

    def check_divergence(self, metrics: dict) -> None:
        if metrics["diverged"] and self.on_divergence == "fail":
            raise Diverged(f"{self.name} diverged: its current-task loss is {metrics['current_task_loss']:.3f} "
                           f"(chance {metrics['current_task_chance_loss']:.3f}), accuracy on its own training "
                           f"images {metrics['current_task_accuracy']:.1f}%; nothing was written (on_divergence: fail)")

    def save_state(self) -> None:
        """The learner's state for the next task, with the provenance `load_parent_state` checks; and the
        learner's own artifacts (e.g. a generator's sample grid)."""
        t = self.task_index
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(self.out_dir / STATE_FILE, lambda p: torch.save(
            {"fingerprint": self.fingerprint, "method": self.resolved["method"], "seed": self.seed, "task": t,
             "provenance": {"settings": self.resolved, "seed": self.seed, "task": t, "identity": self.identity},
             "learner": self.learner.state_dict()}, p))
        self.learner.artifacts(self.out_dir)

    def record(self, metrics: dict, wall: float, peak_mb: float) -> dict:
        """The task's metrics.json: its results, what made them and how long it took."""
        t, dev, data, learner = self.task_index, self.data.device, self.data, self.learner
        return {
            "experiment": self.experiment, "method": self.resolved["method"], "seed": self.seed, "task": t,
            "n_tasks": data.n_tasks, "fingerprint": self.fingerprint,
            "parent_fingerprint": self.chain[-2] if t else None,
            # the per-epoch loss curve is returned to in-process callers (benchmarks/bench.py), not stored
            **{k: v for k, v in metrics.items() if k != "epoch_losses"},
            "wall_seconds": wall, "finished_at": time.time(), "peak_memory_mb": peak_mb,
            "stored_memory": learner.stored_memory(),
            "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
            "class_order": data.class_order,
            # Three separate random streams: the class order (random.seed(seed)), the initial weights
            # (seeded with `seed` before the learner is built) and this task's data order / augmentation.
            "seeds": {"class_order": self.seed, "init": self.seed,
                      "task_stream": learner.stream_seed(self.task, self.seed)},
            "settings": self.resolved,
            "versions": {"python": platform.python_version(), "torch": torch.__version__},
            "git_commit": git_commit(),
            "code_digest": code_digest(),
            # A main stage restored from a shared node was computed by the code that ran there.
            "shared_stage_code_digest":
                self.checkpointer.shared_code_digest(0) if self.shared_stage is not None else None,
        }

    def save_metrics(self, record: dict) -> None:
        """metrics.json, written last: with state.pt it marks the task done; the checkpoints are no longer needed."""
        write_text_atomically(self.out_dir / METRICS_FILE, json.dumps(record, indent=1))
        self.checkpointer.remove()

    # ---------------------------------------------------------------- all of them

    def run(self) -> dict:
        with exclusive(lock_path(self.out_dir), self.log):
            if (finished := self.already_finished()) is not None:
                return finished
            self.build()
            self.load_parent_state()
            self.log(f"{self.name}: {len(self.data.task_classes(self.task_index))} new classes, "
                     f"{self.task.n_seen_classes} seen, device {self.data.device}, fingerprint {self.fingerprint}")
            wall = time.perf_counter()
            metrics = self.train()
            wall = time.perf_counter() - wall
            self.check_divergence(metrics)
            peak_mb = peak_memory_mb(self.data.device)
            self.save_state()
            record = self.record(metrics, wall, peak_mb)
            self.save_metrics(record)
            self.log(f"accuracy per seen task {['%.1f' % a for a in metrics['accuracy_per_task']]}, "
                     f"seen classes {metrics['accuracy_seen']:.2f}%, {wall:.1f}s")
            return record


def peak_memory_mb(device: torch.device) -> float:
    """The job's peak memory so far: allocated on the GPU, or the process's resident set on the CPU."""
    return (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20


def train_node(settings: dict, experiment: str, seed: int, task_index: int, out_dir: Path,
               parent_dir: Path | None, data_file: Path | None = None, device: str = "auto",
               checkpoint_minutes: float = 10.0, jobs_per_gpu: int = 1, shared_stage: Path | None = None,
               on_divergence: str = "record", log=print) -> dict:
    """Run one (experiment, method, seed, task) node (`TaskJob`) and return its metrics.json record."""
    return TaskJob(settings, experiment, seed, task_index, out_dir, parent_dir, data_file, device,
                   checkpoint_minutes, jobs_per_gpu, shared_stage, on_divergence, log).run()


def train_in_process(settings: dict, seed: int, n_tasks: int, device: str = "cpu", data_root: str = "data",
                     log=lambda msg: None) -> list[dict]:
    """Train tasks 0..n_tasks-1 with one learner object and no state files: the uninterrupted run that
    a chain of `train_node` jobs (each starting from the saved state of the last) must reproduce."""
    settings, train, data, learner = build(settings, seed, device, data_root=data_root)
    results = []
    for t in range(n_tasks):
        task = Task(t, data.n_tasks, data.bounds[t], data.bounds[t + 1])
        results.append(train_task(learner, task, data, train, seed, log=log))
    return results
