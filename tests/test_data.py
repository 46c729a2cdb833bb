"""Class orders, task splits, label remapping, the CIFAR loading path and per-sample augmentation."""

import numpy as np
import pytest
import torch

from dfcil_core.config import ConfigError, check_dataset_available, class_order, task_sizes
from dfcil_core.data import DataError, TrainData, augment, load_prepared, save_prepared

# ABD_REFERENCE_SPEC.md §1.2 (identical to R-DFCIL's "used by ABD" class_order lists).
ORDERS = {
    0: "23 8 11 7 48 13 1 91 94 54 16 63 52 41 80 2 47 87 78 66 19 6 24 10 59 30 22 29 83 37 93 81 43 99 86 28 34 "
       "88 44 14 84 70 4 20 15 21 31 76 57 67 73 50 69 25 98 46 96 0 72 35 58 92 3 95 56 90 26 40 55 89 75 71 60 42 "
       "9 82 39 18 77 68 32 79 12 85 36 17 64 27 74 45 61 38 51 62 65 33 5 53 97 49",
    1: "53 37 65 51 4 20 38 9 10 81 44 36 84 50 96 90 66 16 80 33 24 52 91 99 64 5 58 76 39 79 23 94 30 73 25 47 31 "
       "45 19 87 42 68 95 21 7 67 46 82 11 6 41 86 88 70 18 78 71 59 43 61 22 14 35 93 56 28 98 54 27 89 1 69 74 2 "
       "85 40 13 75 29 34 92 0 77 55 49 3 62 12 26 48 83 60 57 63 15 32 8 97 72 17",
    2: "0 76 61 63 1 71 2 6 16 19 13 24 49 12 75 9 83 72 5 41 99 45 89 53 79 18 52 92 14 42 68 44 38 84 36 17 31 15 "
       "70 88 25 97 51 73 66 37 78 33 80 26 82 28 60 35 43 57 23 58 91 8 62 93 98 86 29 30 22 95 67 54 48 40 59 96 3 "
       "87 34 64 56 69 47 65 50 81 55 20 74 4 90 27 77 32 39 85 94 21 46 10 11 7",
}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cifar100_class_orders_match_the_reference(seed):
    assert class_order(100, seed) == [int(c) for c in ORDERS[seed].split()]


def test_task_sizes():
    assert task_sizes(100, 20, 20) == [20] * 5
    assert task_sizes(100, 5, 5) == [5] * 20
    assert task_sizes(100, 50, 10) == [50] + [10] * 5
    assert task_sizes(1000, 10, 10, max_tasks=5) == [10] * 5
    with pytest.raises(ConfigError, match="do not split"):
        task_sizes(100, 20, 30)


def cifar_data(root, seed=0, device="cpu", **kw):
    cfg = {"name": "cifar100", "root": str(root)}
    return TrainData(cfg, seed, 20, 20, torch.device(device), **kw)


def test_cifar_pickle_loading_and_label_remapping(cifar_root):
    data = cifar_data(cifar_root, seed=1)
    assert data.train_x.shape == (500, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (200, 3, 32, 32)
    order = class_order(100, 1)
    # The first original class of the shuffled order is logit 0, the 21st is logit 20 (task 1's first).
    import pickle
    raw = pickle.load(open(cifar_root / "cifar-100-python" / "train", "rb"), encoding="bytes")
    fine = np.array(raw[b"fine_labels"])
    first = int(np.flatnonzero(fine == order[0])[0])
    assert data.train_y[first] == 0
    assert torch.equal(data.train_x[first], torch.as_tensor(raw[b"data"][first].reshape(3, 32, 32)))
    twenty_first = int(np.flatnonzero(fine == order[20])[0])
    assert data.train_y[twenty_first] == 20
    # Task t owns the contiguous logit block [20t, 20t + 20).
    for t in range(5):
        labels = data.train_y[data.task_indices(t)]
        assert labels.min() == 20 * t and labels.max() == 20 * t + 19 and len(labels) == 100
        assert set(data.test_task(t)[1].tolist()) == set(range(20 * t, 20 * t + 20))
    assert len(data.seen_indices(2)) == 300


def test_missing_cifar_files_name_the_expected_path(tmp_path):
    with pytest.raises(ConfigError, match=str(tmp_path / "cifar-100-python")):
        check_dataset_available({"name": "cifar100", "root": str(tmp_path), "download": False})
    with pytest.raises(DataError, match="cifar-100-python"):
        cifar_data(tmp_path)


def test_prepared_file_round_trip(cifar_root, tmp_path):
    out = tmp_path / "prep" / "cifar100.npz"
    save_prepared({"name": "cifar100", "root": str(cifar_root)}, out)
    direct = cifar_data(cifar_root)
    prepared = cifar_data(cifar_root, arrays=load_prepared(out))
    assert torch.equal(direct.train_x, prepared.train_x) and torch.equal(direct.test_y, prepared.test_y)


def test_augmentation_draws_per_sample():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32).repeat(64, 1, 1, 1)  # 64 copies of one image
    out = augment(x)
    assert out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1
    distinct = {tuple(o.flatten()[:50].tolist()) for o in out.round(decimals=5)}
    assert len(distinct) > 32, "every sample must get its own crop / flip / jitter draw"


def test_crop_keeps_pixels_and_zero_pads():
    """With brightness/contrast at their identity, the crop only shifts the image within a zero border."""
    torch.manual_seed(1)
    x = torch.full((256, 1, 8, 8), 0.5)
    out = augment(x, padding=4)
    zero_rows = (out == 0).all(dim=3).any(dim=(1, 2))
    assert zero_rows.any() and (~zero_rows).any(), "some crops are shifted into the padding, some not"


def test_written_cifar_files_read_as_the_real_archive_by_torchvision(tmp_path, monkeypatch):
    """`write_cifar` writes Python 2 strings, as the real archives: torchvision (and the reference code,
    which reads with encoding="latin1") finds its str keys, our loader its bytes keys, the same arrays."""
    import torchvision.datasets.cifar as tv_cifar
    from dfcil_core.data import _cifar_arrays, write_cifar
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # only the md5 sums differ
    rng = np.random.default_rng(3)
    for k, cls in ((10, tv_cifar.CIFAR10), (100, tv_cifar.CIFAR100)):
        x_train, x_test = (rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8) for n in (30, 12))
        y_train, y_test = rng.integers(0, k, 30), rng.integers(0, k, 12)
        root = tmp_path / str(k)
        write_cifar(root, k, x_train, y_train, x_test, y_test)
        for train, x, y in ((True, x_train, y_train), (False, x_test, y_test)):
            theirs = cls(str(root), train=train)
            assert np.array_equal(theirs.data, x) and theirs.targets == y.tolist()
        ours = _cifar_arrays({"root": str(root)}, k)
        for a, b in zip(ours, (x_train, y_train, x_test, y_test)):
            assert np.array_equal(a, b)


def test_horizontal_flip_can_be_left_out_of_the_augmentation():
    """`horizontal_flip: false` (the digit demo) keeps every image's orientation; the default flips about half."""
    x = torch.zeros(256, 1, 8, 8)
    x[:, :, :, :2] = 1.0  # a bright stripe on the left edge only
    left = lambda batch: (batch[..., :4].sum(dim=(1, 2, 3)) > batch[..., 4:].sum(dim=(1, 2, 3)))  # noqa: E731
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert left(augment(x, padding=0, generator=gen(), horizontal_flip=False)).all()
    flipped = (~left(augment(x, padding=0, generator=gen()))).float().mean()
    assert 0.35 < flipped < 0.65
