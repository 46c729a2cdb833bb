"""One DAG node: load the previous task's state, train task t, save the state and the task's metrics."""

from __future__ import annotations

import json
import platform
import resource
import time
from pathlib import Path

import torch

from dfcil_core.config import ConfigError, Diverged, StateError, differences, fingerprint
from dfcil_core.atomic import write_atomically, write_text_atomically
from dfcil_core.checkpoint import Checkpointer, checkpointing, exclusive, lock_path
from dfcil_core.data import TrainData, load_prepared, prepared_digest
from dfcil_core.devices import pick_device
from dfcil_core.learners import learner_class
from dfcil_core.learners.api import Context
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


def train_node(settings: dict, experiment: str, seed: int, task_index: int, out_dir: Path,
               parent_dir: Path | None, data_file: Path | None = None, device: str = "auto",
               checkpoint_minutes: float = 10.0, jobs_per_gpu: int = 1, shared_stage: Path | None = None,
               on_divergence: str = "record", log=print) -> dict:
    """Run one (experiment, method, seed, task) node and write `state.pt` and `metrics.json` to out_dir.

    Progress is checkpointed to `<out_dir>.checkpoint/` every `checkpoint_minutes`; a job started again
    after a kill resumes from there (when the fingerprint and the code match) and ends with the same result.
    A task that diverged (`trainer.current_task_fit`) is recorded as such in its metrics, or with
    `on_divergence="fail"` raises `Diverged` and writes nothing.

    One job at a time runs a task (`checkpoint.exclusive`): a second one waits, and if the first wrote the
    task's results (same fingerprint, same code) it returns them without training."""
    if on_divergence not in ON_DIVERGENCE:
        raise ConfigError(f"on_divergence must be one of {ON_DIVERGENCE}, got {on_divergence!r}")
    identity = {"data": prepared_digest(data_file) if data_file else None}
    chain = fingerprints(resolve(settings)[0], seed, task_index + 1, identity)
    with exclusive(lock_path(out_dir), log):
        if (finished := finished_record(out_dir, chain[-1])) is not None:
            log(f"{out_dir} was written by another job of this task (fingerprint {chain[-1]}, this code); "
                "nothing to do")
            return finished
        settings, train, data, learner = build(settings, seed, device, data_file, jobs_per_gpu=jobs_per_gpu)
        method, dev = settings["method"], data.device
        if not 0 <= task_index < data.n_tasks:
            raise ConfigError(f"task {task_index} does not exist: the experiment has {data.n_tasks} tasks")
        if task_index > 0:
            if parent_dir is None:
                raise StateError(f"task {task_index} needs the state of task {task_index - 1}")
            parent_provenance = {"settings": settings, "seed": seed, "task": task_index - 1, "identity": identity}
            learner.load_state_dict(load_state(parent_dir, chain[task_index - 1], parent_provenance, dev)["learner"])
        task = Task(task_index, data.n_tasks, data.bounds[task_index], data.bounds[task_index + 1])

        log(f"{experiment}/{method}/seed{seed}/task{task_index}: {len(data.task_classes(task_index))} new classes, "
            f"{task.n_seen_classes} seen, device {dev}, fingerprint {chain[-1]}")
        wall = time.perf_counter()
        checkpointer = Checkpointer(out_dir.with_name(out_dir.name + ".checkpoint"), chain[-1], learner,
                                    60 * checkpoint_minutes, log)
        if shared_stage is not None:
            recipe = shared_recipe(settings, task)
            if recipe is None:
                raise ConfigError(f"method {method!r} computes task {task_index}'s main stage itself; "
                                  "it cannot take a shared stage")
            checkpointer.use_shared(0, shared_stage, fingerprint(recipe, seed, 0, None, identity))
        with checkpointing(checkpointer):
            metrics = train_task(learner, task, data, train, seed, log=log)
        wall = time.perf_counter() - wall
        if metrics["diverged"] and on_divergence == "fail":
            raise Diverged(f"{experiment}/{method}/seed{seed}/task{task_index} diverged: its current-task loss is "
                           f"{metrics['current_task_loss']:.3f} (chance {metrics['current_task_chance_loss']:.3f}), "
                           f"accuracy on its own training images {metrics['current_task_accuracy']:.1f}%; "
                           "nothing was written (on_divergence: fail)")
        peak_mb = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
                   else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20

        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(out_dir / STATE_FILE, lambda p: torch.save(
            {"fingerprint": chain[-1], "method": method, "seed": seed, "task": task_index,
             "provenance": {"settings": settings, "seed": seed, "task": task_index, "identity": identity},
             "learner": learner.state_dict()}, p))
        learner.artifacts(out_dir)
        record = {
            "experiment": experiment, "method": method, "seed": seed, "task": task_index,
            "n_tasks": data.n_tasks, "fingerprint": chain[-1],
            "parent_fingerprint": chain[-2] if task_index else None,
            # the per-epoch loss curve is returned to in-process callers (benchmarks/bench.py), not stored
            **{k: v for k, v in metrics.items() if k != "epoch_losses"},
            "wall_seconds": wall, "finished_at": time.time(), "peak_memory_mb": peak_mb,
            "stored_memory": learner.stored_memory(),
            "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
            "class_order": data.class_order,
            # Three separate random streams: the class order (random.seed(seed)), the initial weights
            # (seeded with `seed` before the learner is built) and this task's data order / augmentation.
            "seeds": {"class_order": seed, "init": seed, "task_stream": learner.stream_seed(task, seed)},
            "settings": settings,
            "versions": {"python": platform.python_version(), "torch": torch.__version__},
            "git_commit": git_commit(),
            "code_digest": code_digest(),
            # A main stage restored from a shared node was computed by the code that ran there.
            "shared_stage_code_digest": checkpointer.shared_code_digest(0) if shared_stage is not None else None,
        }
        write_text_atomically(out_dir / METRICS_FILE, json.dumps(record, indent=1))
        checkpointer.remove()
        log(f"accuracy per seen task {['%.1f' % a for a in metrics['accuracy_per_task']]}, "
            f"seen classes {metrics['accuracy_seen']:.2f}%, {wall:.1f}s")
        return record


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
