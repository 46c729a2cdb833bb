"""Tiny-ImageNet and ImageNet-50 preparation on small JPEG trees written in the real folder layouts: class ids,
validation labels, the ImageNet-50 class order, the prepared file the training jobs read, top-5 accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dfcil_core.config import ConfigError, check_dataset_available, class_order, n_tasks
from dfcil_core.data import DataError, TrainData, load_arrays, load_prepared, save_prepared

# The reference's ImageNet order starts 54 7 894 512 126 337 988 11 284 493 (ABD_REFERENCE_SPEC.md §1.2).
IMAGENET_ORDER_HEAD = [54, 7, 894, 512, 126, 337, 988, 11, 284, 493]


def color(label: int) -> tuple[int, int, int]:
    """A flat colour that identifies a class id and survives JPEG compression."""
    return (label * 37 % 256, label * 91 % 256, label * 13 % 256)


def jpeg(path, label: int, size=(64, 64), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, color(label))
    (img.convert("L") if mode == "L" else img).save(path, "JPEG", quality=95)


def assert_colors(x: np.ndarray, y: np.ndarray) -> None:
    """Every image's mean colour is its label's colour (so images and labels were not shuffled apart);
    a grayscale file reads as its luminance in all three channels."""
    for image, label in zip(x, y):
        mean, expected = image.reshape(-1, 3).mean(0), np.array(color(int(label)), dtype=float)
        if np.ptp(mean) == 0:
            expected = np.full(3, expected @ [0.299, 0.587, 0.114])
        assert np.abs(mean - expected).max() < 4, label


# --- Tiny-ImageNet -------------------------------------------------------------------------------------

TINY_WNIDS = [f"n{(7919 * k) % 100000:08d}" for k in range(200)]  # not created in sorted order


def write_tinyimagenet(root, per_class=2):
    base = root / "tiny-imagenet-200"
    label = {wnid: i for i, wnid in enumerate(sorted(TINY_WNIDS))}
    for wnid in TINY_WNIDS:
        for k in range(per_class):
            jpeg(base / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", label[wnid])
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")  # the archive has these too
    val = [(f"val_{k}.JPEG", TINY_WNIDS[(5 * k) % 200]) for k in range(12)]
    for name, wnid in val:
        jpeg(base / "val" / "images" / name, label[wnid], mode="L" if name == "val_3.JPEG" else "RGB")
    (base / "val" / "val_annotations.txt").write_text(
        "".join(f"{name}\t{wnid}\t0\t0\t63\t63\n" for name, wnid in val))
    return label, val


def test_tinyimagenet_class_ids_are_sorted_wnids_and_val_labels_come_from_annotations(tmp_path):
    label, val = write_tinyimagenet(tmp_path)
    check_dataset_available({"name": "tinyimagenet", "root": str(tmp_path)})
    x_train, y_train, x_test, y_test = load_arrays({"name": "tinyimagenet", "root": str(tmp_path)})
    assert x_train.shape == (400, 64, 64, 3) and x_train.dtype == np.uint8
    assert np.array_equal(np.bincount(y_train), np.full(200, 2))
    assert y_train[0] == 0 and y_train[-1] == 199  # sorted wnid order, not creation order
    assert_colors(x_train, y_train)
    assert y_test.tolist() == [label[wnid] for _, wnid in val]
    assert x_test.shape == (12, 64, 64, 3)  # the grayscale JPEG became RGB
    assert_colors(x_test, y_test)


def test_tinyimagenet_prepared_file_feeds_training_data(tmp_path):
    write_tinyimagenet(tmp_path, per_class=1)
    cfg = {"name": "tinyimagenet", "root": str(tmp_path)}
    save_prepared(cfg, tmp_path / "tinyimagenet.npz")
    arrays = load_prepared(tmp_path / "tinyimagenet.npz")
    data = TrainData({"name": "tinyimagenet"}, 1, 10, 10, torch.device("cpu"), arrays=arrays)
    assert data.n_tasks == 20 and data.info.size == 64 and data.top_k == 1
    assert data.class_order == class_order(200, 1)  # Python random.seed(seed), as CIFAR
    first = data.class_order[:10]  # task 0 = the first 10 classes of the order, remapped to 0..9
    assert sorted(arrays[1][data.task_indices(0).numpy()].tolist()) == sorted(first)


def test_tinyimagenet_errors_name_what_is_missing(tmp_path):
    with pytest.raises(ConfigError, match="tiny-imagenet-200"):
        check_dataset_available({"name": "tinyimagenet", "root": str(tmp_path)})
    label, _ = write_tinyimagenet(tmp_path, per_class=1)
    annotations = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text() + "val_99.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match=r"val_annotations.txt:13"):
        load_arrays({"name": "tinyimagenet", "root": str(tmp_path)})


# --- ImageNet-50 -----------------------------------------------------------------------------------------

IMAGENET_WNIDS = sorted(f"n{(104729 * k) % 10**8:08d}" for k in range(1000))


def write_imagenet(root, chosen):
    for wnid in IMAGENET_WNIDS:
        (root / "train" / wnid).mkdir(parents=True)
    for c in chosen:
        for k in range(2):
            jpeg(root / "train" / IMAGENET_WNIDS[c] / f"{IMAGENET_WNIDS[c]}_{k}.JPEG", c, size=(48, 36))
        jpeg(root / "val" / IMAGENET_WNIDS[c] / f"ILSVRC2012_val_{c:08d}.JPEG", c, size=(30, 40),
             mode="L" if c == chosen[0] else "RGB")
    # A class outside the 50 has images too; it must not be read.
    outsider = next(c for c in range(1000) if c not in chosen)
    jpeg(root / "train" / IMAGENET_WNIDS[outsider] / "x.JPEG", outsider)
    return outsider


def test_imagenet50_reads_the_numpy1993_classes_with_their_1000_class_ids(tmp_path):
    order = class_order(1000, 0, "numpy1993")
    assert order[:10] == IMAGENET_ORDER_HEAD
    assert class_order(1000, 2, "numpy1993") == order  # the same order for every seed
    chosen = order[:50]
    outsider = write_imagenet(tmp_path, chosen)
    cfg = {"name": "imagenet50", "root": str(tmp_path), "prepared_resolution": 16, "class_order": "numpy1993",
           "top_k": 5}
    check_dataset_available(cfg)
    save_prepared({k: v for k, v in cfg.items() if k not in ("class_order", "top_k")}, tmp_path / "in50.npz")
    x_train, y_train, x_test, y_test = arrays = load_prepared(tmp_path / "in50.npz")
    assert x_train.shape == (100, 16, 16, 3) and x_test.shape == (50, 16, 16, 3)
    assert sorted(set(y_train.tolist())) == sorted(chosen) and outsider not in y_train
    assert sorted(y_test.tolist()) == sorted(chosen)
    assert_colors(x_train, y_train)
    assert_colors(x_test, y_test)

    exp = {"dataset": cfg, "first_split": 10, "other_split": 10, "max_tasks": 5}
    assert n_tasks(exp) == 5
    data = TrainData(cfg, 0, 10, 10, torch.device("cpu"), max_tasks=5, arrays=arrays)
    assert data.info.n_classes == 1000 and data.info.size == 16 and data.top_k == 5
    assert data.class_order[:10] == IMAGENET_ORDER_HEAD
    for t in range(5):  # task t = the classes at positions 10t..10t+9 of the order, 2 images each
        index = data.task_indices(t).numpy()
        assert sorted(set(y_train[index].tolist())) == sorted(chosen[10 * t:10 * t + 10]) and len(index) == 20


def test_imagenet50_settings_are_checked_before_any_job(tmp_path):
    base = {"dataset": {"name": "imagenet50"}, "first_split": 10, "other_split": 10}
    with pytest.raises(ConfigError, match="max_tasks"):
        n_tasks(base)
    with pytest.raises(ConfigError, match="numpy1993"):
        n_tasks({**base, "max_tasks": 5, "dataset": {"name": "imagenet50", "class_order": "python_random"}})
    with pytest.raises(ConfigError, match="train"):
        check_dataset_available({"name": "imagenet50", "root": str(tmp_path)})
    (tmp_path / "train" / "n00000001").mkdir(parents=True)
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError, match="1 class folders, expected 1000"):
        load_arrays({"name": "imagenet50", "root": str(tmp_path)})


# --- top-5 accuracy --------------------------------------------------------------------------------------

def test_top_k_accuracy_counts_a_hit_among_the_k_largest_logits():
    from dfcil_core.learners.api import Task
    from dfcil_core.trainer import evaluate

    class Data:
        device = torch.device("cpu")

        def __init__(self, top_k):
            self.top_k = top_k

        def test_task(self, j):
            return torch.zeros(4, 1), torch.tensor([0, 1, 2, 3])

        def normalize(self, x, enabled=True):
            return x

    class Learner:
        normalize_inputs = True
        model = torch.nn.Identity()

        def logits(self, x):
            # The true classes 0..3 rank 1st, 3rd, 5th and 6th among 8 logits.
            scores = torch.tensor([8.0, 7, 6, 5, 4, 3, 2, 1])
            ranks = {0: [0], 1: [5, 6, 1], 2: [4, 5, 6, 7, 2], 3: [4, 5, 6, 7, 0, 3]}
            rows = []
            for y in range(4):
                order = ranks[y] + [c for c in range(8) if c not in ranks[y]]
                row = torch.empty(8)
                row[order] = scores
                rows.append(row)
            return torch.stack(rows)

    task = Task(0, 1, 0, 8)
    assert evaluate(Learner(), task, Data(1))[0] == [25.0]
    assert evaluate(Learner(), task, Data(5))[0] == [75.0]


# --- the paper configs of these datasets -----------------------------------------------------------------

@pytest.mark.parametrize("name, n_tasks, n_methods", [("tinyimagenet", 20, 11), ("imagenet50", 5, 7)])
def test_paper_config_dry_run_prepares_the_folder_tree_once_and_builds_its_tables(tmp_path, name, n_tasks,
                                                                                 n_methods):
    import yaml

    from test_workflow import REPO, job_counts, snakemake

    if name == "tinyimagenet":
        write_tinyimagenet(tmp_path / "data", per_class=1)
    else:
        write_imagenet(tmp_path / "data", class_order(1000, 0, "numpy1993")[:50])
    cfg = yaml.safe_load((REPO / f"config/paper/{name}.yaml").read_text())
    cfg["defaults"]["dataset"]["root"] = str(tmp_path / "data")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = snakemake(tmp_path, "-n", configfile=path)
    assert out.returncode == 0, out.stderr[-3000:]
    counts = job_counts(out.stdout)
    assert counts["prepare_data"] == 1 and counts["paper_table"] == 3 and counts["paper_samples"] == 1
    assert counts["summarize_run"] == n_methods * 3
    assert f"results/paper/{name}/samples_{n_tasks}tasks.png" in out.stdout
    assert len(cfg["defaults"]["methods"]) == n_methods
