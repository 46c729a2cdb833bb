"""Shared fixtures: tiny settings that train in seconds on the CPU."""

import numpy as np
import pytest
import torch

from dfcil_core.data import save_prepared, write_cifar

torch.set_num_threads(1)

pytest_plugins = ["slurm_cluster"]  # the private Slurm cluster fixture of tests/test_slurm.py


def tiny_settings(method: str, **method_settings) -> dict:
    """mnist5k at 8x8, a one-block ResNet of width 4, 1 epoch, 3 tasks of 2 classes (+ a partial split)."""
    return {
        "dataset": {"name": "mnist5k", "resolution": 8},
        "model": {"name": "resnet32", "blocks_per_stage": 1, "width": 4},
        "train": {"epochs": 1, "lr": 0.05, "lr_milestones": [], "batch_size": 32, "momentum": 0.9,
                  "weight_decay": 0.0002},
        "first_split": 2, "other_split": 2, "max_tasks": 3, "augment": True, "crop_padding": 1,
        "method": method, "method_settings": method_settings,
    }


def write_cifar100(root, n_per_class_train=5, n_per_class_test=2, seed=0):
    """Random images in the exact CIFAR-100 python-pickle layout under root/cifar-100-python/."""
    rng = np.random.default_rng(seed)
    arrays = []
    for n in (n_per_class_train, n_per_class_test):
        fine = np.repeat(np.arange(100), n)
        rng.shuffle(fine)
        arrays += [rng.integers(0, 256, size=(len(fine), 32, 32, 3), dtype=np.uint8), fine]
    return write_cifar(root, 100, *arrays)


@pytest.fixture(scope="session")
def mnist_file(tmp_path_factory):
    """mnist5k prepared once (`dfcil prepare-data`'s file) for the tests that run task jobs on it."""
    path = tmp_path_factory.mktemp("data") / "mnist5k.npz"
    save_prepared({"name": "mnist5k"}, path)
    return path


@pytest.fixture
def cifar_root(tmp_path):
    write_cifar100(tmp_path)
    return tmp_path
