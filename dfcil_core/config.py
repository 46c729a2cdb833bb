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
# ImageNet-50 keeps the reference's 1000-way head (§8.3), but its prepared file holds only the 50 classes
# that lead the numpy seed-1993 order (IMAGENET50_CLASSES).
N_CLASSES = {"cifar10": 10, "cifar100": 100, "mnist5k": 10, "tinyimagenet": 200, "imagenet50": 1000}
IMAGENET50_CLASSES = 50

# How the seed becomes a class order (dataset setting `class_order`, §1.2):
#   python_random  random.seed(seed); random.shuffle(range(K)): a different order per seed (CIFAR, Tiny-ImageNet)
#   numpy1993      numpy.random.seed(1993); numpy.random.shuffle(range(K)): one order for every seed (ImageNet)
CLASS_ORDERS = ("python_random", "numpy1993")
DEFAULT_CLASS_ORDER = {"imagenet50": "numpy1993"}


class ConfigError(ValueError):
    """A setting that cannot work; raised before any job starts."""


class StateError(ConfigError):
    """A saved state that cannot be used by the job asking for it (wrong fingerprint, method, corrupt)."""


class Diverged(RuntimeError):
    """A task's network did not learn the task, and the configuration says to fail the job
    (`on_divergence: fail`)."""


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
    sizes = task_sizes(n_classes(exp["dataset"]), exp["first_split"], exp["other_split"], exp.get("max_tasks"))
    if exp["dataset"]["name"] == "imagenet50":
        if class_order_family(exp["dataset"]) != "numpy1993":
            raise ConfigError("imagenet50 holds the first 50 classes of the numpy1993 order; "
                              "its class_order must be numpy1993")
        if sum(sizes) > IMAGENET50_CLASSES:
            raise ConfigError(f"imagenet50 holds {IMAGENET50_CLASSES} classes but the tasks cover {sum(sizes)}; "
                              "set max_tasks (5 tasks of 10 in the reference)")
    return len(sizes)


def class_order_family(dataset: dict) -> str:
    family = dataset.get("class_order") or DEFAULT_CLASS_ORDER.get(dataset["name"], "python_random")
    if family not in CLASS_ORDERS:
        raise ConfigError(f"unknown class_order {family!r}; expected one of {list(CLASS_ORDERS)}")
    return family


def class_order(n_classes: int, seed: int, family: str = "python_random") -> list[int]:
    """The reference's `--rand_split` order (§1.2): Python's `random` seeded with the repeat index, or for
    ImageNet NumPy's legacy RNG seeded with 1993 whatever the seed (a private RandomState draws the same
    permutation as the reference's `np.random.seed(1993); np.random.shuffle(order)`, without reseeding
    NumPy's global RNG)."""
    order = list(range(n_classes))
    if family == "python_random":
        random.seed(seed)
        random.shuffle(order)
    elif family == "numpy1993":
        import numpy as np
        np.random.RandomState(1993).shuffle(order)
    else:
        raise ConfigError(f"unknown class_order {family!r}; expected one of {list(CLASS_ORDERS)}")
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
    if name == "tinyimagenet":
        root = Path(dataset.get("root", "data")).expanduser() / "tiny-imagenet-200"
        missing = [p for p in ("train", "val/images", "val/val_annotations.txt") if not (root / p).exists()]
        if missing:
            raise ConfigError(f"tinyimagenet files not found under {root} (missing {missing}); point dataset.root "
                              "at the folder holding the extracted tiny-imagenet-200/")
    if name == "imagenet50":
        root = Path(dataset.get("root", "data")).expanduser()
        missing = [p for p in ("train", "val") if not (root / p).is_dir()]
        if missing:
            raise ConfigError(f"imagenet50 folders not found under {root} (missing {missing}); point dataset.root "
                              "at the folder holding train/<wnid>/ and val/<wnid>/ (val sorted into class folders)")
    if name == "npz" and not Path(dataset.get("path", "")).expanduser().is_file():
        raise ConfigError(f"npz dataset file not found: {dataset.get('path')!r}")


def dataset_id(dataset: dict) -> str:
    """The name of a dataset's prepared array file; resizing happens later, on the device."""
    if dataset["name"] == "npz":
        return f"npz-{Path(dataset.get('path', 'data')).stem}"
    return dataset["name"]


# Settings a run reads with a default when the configuration omits them. `run_settings` writes them out,
# so that what a job receives, what its fingerprint hashes and what Snakemake compares as the rule's params
# is the whole of what decides its result: changing one of these defaults reruns the jobs it changes.
MODEL_DEFAULTS = {"name": "resnet32", "blocks_per_stage": 5, "width": 16}
TRAIN_DEFAULTS = {"precision": "fp32", "channels_last": False, "cuda_graphs": False}
# The reference's train transform: jitter, horizontal flip, random crop after 4 pixels of zero padding.
AUGMENT_DEFAULTS = {"augment": True, "crop_padding": 4, "horizontal_flip": True}


def with_defaults(settings: dict) -> dict:
    """Run settings with every model, training, augmentation and dataset default written out (idempotent)."""
    dataset = dict(settings["dataset"])
    dataset.setdefault("class_order", class_order_family(dataset))
    dataset.setdefault("top_k", 1)
    return {**AUGMENT_DEFAULTS, **settings, "dataset": dataset, "model": {**MODEL_DEFAULTS, **settings["model"]},
            "train": {**TRAIN_DEFAULTS, **settings["train"]}}


def run_settings(exp: dict, method: str) -> dict:
    """Everything that determines one run's results (device and paths excluded), defaults written out
    (the method's own are added by `run.resolve`).

    This is what a training job receives, what its fingerprint hashes, and what MLflow logs as params."""
    return with_defaults({
        "dataset": {k: v for k, v in exp["dataset"].items() if k not in ("root", "download")},
        "model": exp["model"],
        "train": exp["train"],
        "first_split": exp["first_split"],
        "other_split": exp["other_split"],
        "max_tasks": exp.get("max_tasks"),
        **{k: exp[k] for k in AUGMENT_DEFAULTS if k in exp},
        "method": method,
        "method_settings": (exp.get("method_settings") or {}).get(method, {}),
    })


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def fingerprint(settings: dict, seed: int, task: int, parent: str | None, identity: dict | None = None) -> str:
    """Hash of everything that determined a task's state: its settings, seed, index, its parent's hash
    and `identity` (the prepared dataset's digest). The code is not part of it: results of other code are
    recorded as such (`code_digest` in every task's metrics) and listed by `dfcil stale`, not refused."""
    payload = canonical_json({"settings": settings, "seed": seed, "task": task, "parent": parent,
                              "identity": identity})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def flatten(obj, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}"""
    if not isinstance(obj, dict):
        return {prefix: obj}
    out = {}
    for key, value in obj.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def differences(a: dict, b: dict) -> list[str]:
    """Dotted keys whose values differ between two nested dicts, e.g. ['settings.train.lr']."""
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))


def first_difference(a: dict, b: dict) -> tuple[str, object, object] | None:
    """The first of `differences(a, b)` with its value in each (None where absent), or None where they agree."""
    keys = differences(a, b)
    return (keys[0], flatten(a).get(keys[0]), flatten(b).get(keys[0])) if keys else None
