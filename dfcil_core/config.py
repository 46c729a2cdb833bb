"""Experiment settings: merging defaults, the per-run settings of one DAG node, fingerprints.

Kept free of torch so the Snakefile can import it cheaply.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from pathlib import Path

# Dataset facts the DAG needs before any file is read: class count and the tasks they split into.
N_CLASSES = {"cifar10": 10, "cifar100": 100, "mnist5k": 10}


class ConfigError(ValueError):
    """A setting that cannot work; raised before any job starts."""


class StateError(ConfigError):
    """A saved state that cannot be used by the job asking for it (wrong fingerprint, method, corrupt)."""


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def experiments(config: dict) -> dict[str, dict]:
    """Each experiment's settings: `defaults` with the experiment's own entries merged over them."""
    return {name: deep_merge(config.get("defaults", {}), exp or {})
            for name, exp in config["experiments"].items()}


def n_classes(dataset: dict) -> int:
    if dataset["name"] == "npz":
        if "n_classes" not in dataset:
            raise ConfigError("dataset 'npz' needs 'n_classes'")
        return dataset["n_classes"]
    if dataset["name"] not in N_CLASSES:
        raise ConfigError(f"unknown dataset {dataset['name']!r}; expected one of {sorted([*N_CLASSES, 'npz'])}")
    return N_CLASSES[dataset["name"]]


def task_sizes(n_classes: int, first_split: int, other_split: int, max_tasks: int | None = None) -> list[int]:
    """Classes per task: `first_split`, then `other_split` until the classes run out (§1.2)."""
    if first_split < 1 or other_split < 1:
        raise ConfigError("first_split and other_split must be positive")
    rest = n_classes - first_split
    if rest < 0 or rest % other_split:
        raise ConfigError(f"{n_classes} classes do not split into a first task of {first_split} "
                          f"and further tasks of {other_split}")
    sizes = [first_split] + [other_split] * (rest // other_split)
    if max_tasks:
        if max_tasks > len(sizes):
            raise ConfigError(f"max_tasks={max_tasks} but only {len(sizes)} tasks fit in {n_classes} classes")
        sizes = sizes[:max_tasks]
    return sizes


def n_tasks(exp: dict) -> int:
    return len(task_sizes(n_classes(exp["dataset"]), exp["first_split"], exp["other_split"], exp.get("max_tasks")))


def class_order(n_classes: int, seed: int) -> list[int]:
    """The reference's `--rand_split` order: Python's `random`, seeded with the repeat index (§1.2)."""
    order = list(range(n_classes))
    random.seed(seed)
    random.shuffle(order)
    return order


def check_dataset_available(dataset: dict) -> None:
    """Fail early, naming the expected path, when a dataset's files are missing and cannot be fetched."""
    name = dataset["name"]
    if name in ("cifar10", "cifar100") and not dataset.get("download", False):
        folder, files = (("cifar-10-batches-py", ["data_batch_1", "test_batch"]) if name == "cifar10"
                         else ("cifar-100-python", ["train", "test"]))
        root = Path(dataset.get("root", "data")).expanduser() / folder
        missing = [f for f in files if not (root / f).is_file()]
        if missing:
            raise ConfigError(f"{name} files not found under {root} (missing {missing}) and download is off; "
                              "set dataset.download: true or point dataset.root at the extracted archive")
    if name == "npz" and not Path(dataset.get("path", "")).expanduser().is_file():
        raise ConfigError(f"npz dataset file not found: {dataset.get('path')!r}")


def dataset_id(dataset: dict) -> str:
    """The name of a dataset's prepared array file; resizing happens later, on the device."""
    if dataset["name"] == "npz":
        return f"npz-{Path(dataset.get('path', 'data')).stem}"
    return dataset["name"]


def run_settings(exp: dict, method: str) -> dict:
    """Everything that determines one run's results (device and paths excluded).

    This is what a training job receives, what its fingerprint hashes, and what MLflow logs as params."""
    return {
        "dataset": {k: v for k, v in exp["dataset"].items() if k not in ("root", "download")},
        "model": exp["model"],
        "train": exp["train"],
        "first_split": exp["first_split"],
        "other_split": exp["other_split"],
        "max_tasks": exp.get("max_tasks"),
        "augment": exp.get("augment", True),
        "crop_padding": exp.get("crop_padding", 4),
        "method": method,
        "method_settings": (exp.get("method_settings") or {}).get(method, {}),
    }


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def fingerprint(settings: dict, seed: int, task: int, parent: str | None) -> str:
    """Hash of everything that determined a task's state: its settings, seed, index and its parent's hash."""
    payload = canonical_json({"settings": settings, "seed": seed, "task": task, "parent": parent})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
