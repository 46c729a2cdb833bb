"""Speed of the training steps, eager fp32 against the fast path, and a short accuracy-parity run.

    python benchmarks/bench.py speed [--quick] [--device auto|cpu|cuda:N] [--out FILE.json] ...
    python benchmarks/bench.py parity --out-dir D [--device ...] [--epochs 6] [--methods base abd] ...
    python benchmarks/bench.py figures D

`speed` times, on the machine it runs on, with random images in
the CIFAR-100 layout (32x32x3, 100 classes, ResNet-32) generated in memory:
- the Base step (task 0: gather, augment, forward, CE, backward, SGD) in images/s;
- the ABD step at task 1 (the real learner: 128 real images + 128 synthetic ones from an untrained paper-size
  generator, student twice, frozen teacher) in real images/s;
- the model-inversion iteration (the paper-size generator against a frozen ResNet-32 teacher with the
  BatchNorm-statistics hooks, Adam; the step of `inversion.invert`) in ms/iteration;
each for `eager_fp32` (the reference path) and `fast` (bf16 autocast + channels_last, plus the whole step in a
CUDA graph on a GPU), with their ratio. Warm-up steps (and, for the fast path, the graph capture) are excluded;
windows are timed between device synchronisations and the median window is reported.

`parity` trains Base and ABD for two tasks on generated, learnable images written in the CIFAR-100
python-pickle layout (read by the real `cifar100` loader), in each mode, and compares the main stages' loss
curves (every epoch's mean loss terms, as training returns them: `run.train_in_process` -> `trainer.train_task`
-> `trainer.run_stage`) and the accuracies (D/parity.json, D/parity_losses.png, D/parity_accuracy.png);
it exits with status 1 when a comparison is outside the tolerances (`PARITY_*`).
`figures D` draws D/bench.png from D/bench.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import host  # benchmarks/host.py (the script's folder is on sys.path)

N_CLASSES, CHANNELS, SIZE = 100, 3, 32
FIRST_SPLIT = 20  # the benchmark's tasks: 20 classes each (the 5-task CIFAR-100 split)
CIFAR_TRAIN = {"lr": 0.1, "momentum": 0.9, "weight_decay": 2e-4}  # the reference's CIFAR-100 SGD


def modes(device: torch.device) -> dict[str, dict]:
    """The two configurations compared: the reference path and everything the device supports."""
    return {"eager_fp32": {"precision": "fp32", "channels_last": False, "cuda_graphs": False},
            "fast": {"precision": "bf16", "channels_last": True, "cuda_graphs": device.type == "cuda"}}


def describe(switches: dict) -> str:
    parts = [switches["precision"]] + [k for k in ("channels_last", "cuda_graphs") if switches[k]]
    return "+".join(parts)


# ------------------------------------------------------------------ data in the CIFAR-100 layout

def cifar_layout_arrays(n_train_per_class: int, n_test_per_class: int, seed: int = 0, signal: float = 0.0):
    """(x_train, y_train, x_test, y_test): uint8 (N, 32, 32, 3) images and labels in [0, 100).
    signal 0: uniform random pixels (for timing). signal > 0: each class has a blocky 4x4 colour template,
    each image is that template (contrast `signal`) plus Gaussian pixel noise, so a network can learn it."""
    rng = np.random.default_rng(seed)
    templates = rng.random((N_CLASSES, 4, 4, CHANNELS), dtype=np.float32)
    templates = templates.repeat(SIZE // 4, axis=1).repeat(SIZE // 4, axis=2)

    def draw(n_per_class):
        y = np.repeat(np.arange(N_CLASSES), n_per_class)
        rng.shuffle(y)
        if signal == 0:
            return rng.integers(0, 256, size=(len(y), SIZE, SIZE, CHANNELS), dtype=np.uint8), y
        x = np.empty((len(y), SIZE, SIZE, CHANNELS), dtype=np.uint8)
        for start in range(0, len(y), 4096):  # in chunks: float32 of 50k images would be 600 MB
            part = y[start:start + 4096]
            noise = rng.standard_normal((len(part), SIZE, SIZE, CHANNELS), dtype=np.float32)
            img = 0.5 + signal * (templates[part] - 0.5) + 0.25 * noise
            x[start:start + 4096] = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
        return x, y

    return (*draw(n_train_per_class), *draw(n_test_per_class))


def write_cifar100_layout(root: Path, arrays) -> Path:
    """Store (x_train, y_train, x_test, y_test) as the CIFAR-100 python pickles under root/cifar-100-python/,
    so that the real `cifar100` loader (and class-order remapping) reads them."""
    import pickle
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = arrays
    for name, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        with open(folder / name, "wb") as f:
            pickle.dump({b"filenames": [b"synthetic"] * len(y), b"fine_labels": y.tolist(),
                         b"coarse_labels": (y // 5).tolist(),
                         b"data": np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(len(y), -1)}, f)
    return folder


def dataset_config() -> dict:
    """The in-memory benchmark data's settings: CIFAR-100's shape and normalization."""
    from dfcil_core.data import DATASETS
    info = DATASETS["cifar100"]
    return {"name": "npz", "n_classes": N_CLASSES, "channels": CHANNELS, "size": SIZE,
            "mean": list(info.mean), "std": list(info.std)}


# ------------------------------------------------------------------ the timed workloads

def _context(data, device):
    from dfcil_core.learners.api import Context
    from dfcil_core.models.resnet import build_model
    train = {"epochs": 1, "lr_milestones": [], "batch_size": 128, **CIFAR_TRAIN}
    return Context(data=data, train=train, n_classes=N_CLASSES, device=device, seed=0,
                   make_model=lambda: build_model({"name": "resnet32"}, N_CLASSES, CHANNELS).to(device))


def _learner_workload(method: str, task_index: int, data, device, switches: dict, batch_size: int):
    """The real learner's main stage at `task_index` (its teacher a copy of the untrained model)."""
    from dfcil_core.learners import learner_class
    from dfcil_core.methods import Task, resolve_hyperparameters
    from dfcil_core.trainer import Stage, make_optimizer
    from dfcil_core import fast

    learner = learner_class(method)(resolve_hyperparameters(method, {}), _context(data, device))
    if switches["channels_last"]:  # in a run, the previous task's stage left the model (and the teacher
        fast.channels_last_(learner.model.parameters())  # copied from it) in channels_last
    n_tasks = N_CLASSES // FIRST_SPLIT
    task = Task(task_index, n_tasks, FIRST_SPLIT * task_index, FIRST_SPLIT * (task_index + 1))
    learner.log = lambda msg: None
    learner.begin_task(task)
    learner.model.train()
    stage = Stage(name=f"bench {method}", params=learner.parameters(), loss=learner.loss,
                  indices=learner.train_indices(task), epochs=1, lr=CIFAR_TRAIN["lr"],
                  momentum=CIFAR_TRAIN["momentum"], weight_decay=CIFAR_TRAIN["weight_decay"],
                  batch_size=batch_size, **switches)
    return stage, make_optimizer(stage), lambda: None


def _inversion_workload(data, device, switches: dict, batch_size: int):
    """One iteration of `inversion.invert` for the paper-size generator and a ResNet-32 teacher (task 0's
    20 classes): `invert`'s loss (`inversion_step`) in a one-epoch stage that the timer can step by itself."""
    from dfcil_core import fast
    from dfcil_core.inversion import BNStatistics, gaussian_kernel, inversion_step
    from dfcil_core.methods import resolve_hyperparameters
    from dfcil_core.models.generator import Generator
    from dfcil_core.models.resnet import build_model
    from dfcil_core.trainer import Stage, make_optimizer

    hp = resolve_hyperparameters("abd", {})
    teacher = build_model({"name": "resnet32"}, N_CLASSES, CHANNELS).to(device).eval().requires_grad_(False)
    if switches["channels_last"]:
        fast.channels_last_(teacher.parameters())
    generator = Generator(CHANNELS, SIZE, hp["generator_z_dim"], hp["generator_width"]).to(device).train()
    stats = BNStatistics(teacher).__enter__()
    step = inversion_step(generator, teacher, stats, gaussian_kernel().to(device), FIRST_SPLIT, batch_size, hp)

    stage = Stage(name="bench inversion", params=list(generator.parameters()), loss=step, epochs=1,
                  lr=hp["gen_lr"], optimizer="adam", batch_size=batch_size, indices=None, **switches)
    return stage, make_optimizer(stage), lambda: stats.__exit__(None, None, None)


WORKLOADS = {
    "base": ("Base step (task 0)", "img/s"),
    "abd": ("ABD step (task 1, real + synthetic)", "real img/s"),
    "inversion": ("inversion iteration", "it/s"),
}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_workload(name: str, data, device, switches: dict, batch_size: int, warmup: int, iters: int,
                  repeats: int) -> dict:
    from dfcil_core import fast

    torch.manual_seed(0)
    if name == "inversion":
        stage, opt, cleanup = _inversion_workload(data, device, switches, batch_size)
    else:
        stage, opt, cleanup = _learner_workload(name, 1 if name == "abd" else 0, data, device, switches,
                                                batch_size)
    messages: list[str] = []
    stage.log = messages.append
    runner = fast.make_runner(stage, data, opt)
    runner.set_lr(stage.lr)
    total = warmup + iters * repeats
    order = None
    if stage.indices is not None:
        order = stage.indices[torch.randint(len(stage.indices), (total * batch_size,), device=device)]

    def run(first: int, count: int) -> None:
        for s in range(first, first + count):
            runner.step(None if order is None else order[s * batch_size:(s + 1) * batch_size])

    try:
        run(0, warmup)
        _sync(device)
        windows = []
        for r in range(repeats):
            start = time.perf_counter()
            run(warmup + r * iters, iters)
            _sync(device)
            windows.append((time.perf_counter() - start) / iters)
        sums = {k: float(v) / total for k, v in runner.take_sums().items()}
    finally:
        runner.close()
        cleanup()
    seconds = statistics.median(windows)
    per_step = 1 if name == "inversion" else batch_size
    graphed = isinstance(runner, fast.GraphedRunner) and not runner.eager
    return {"ms_per_step": 1000 * seconds, "per_second": per_step / seconds,
            "windows_ms": [1000 * w for w in windows], "mean_losses": sums,
            "switches": switches, "graphed": graphed, "messages": messages}


def machine_info(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cudnn"] = torch.backends.cudnn.version()
    else:
        info["gpu"] = None
        info["cpu"] = host.cpu_model()
    return info


def run_benchmark(device: str = "auto", quick: bool = False, batch_size: int = 128, warmup: int | None = None,
                  iters: int | None = None, repeats: int | None = None, workloads=tuple(WORKLOADS),
                  out: Path | None = None, command: str | None = None, log=print) -> dict:
    from dfcil_core.data import TrainData
    from dfcil_core.learners import LEARNERS

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    on_gpu = dev.type == "cuda"
    # Warm-up covers the fast path's 3 eager warm-up steps and its capture.
    warmup = warmup if warmup is not None else (2 if quick else 10 if on_gpu else 5)
    iters = iters if iters is not None else (3 if quick else 100 if on_gpu else 10)
    repeats = repeats if repeats is not None else (1 if quick else 3)
    if "abd" in workloads and "abd" not in LEARNERS:
        log("abd: the ABD learner is not registered in dfcil_core.learners.LEARNERS; skipped")
        workloads = [w for w in workloads if w != "abd"]
    per_class = max(2 * batch_size // FIRST_SPLIT + 1, 10 if quick else 500 if on_gpu else 50)
    arrays = cifar_layout_arrays(per_class, 2)
    data = TrainData(dataset_config(), 0, FIRST_SPLIT, FIRST_SPLIT, dev, arrays=arrays)
    result = {"command": command or shlex.join(sys.argv), **machine_info(dev), "batch_size": batch_size,
              "warmup_steps": warmup, "timed_steps": iters, "windows": repeats, "quick": quick,
              "data": f"random uint8 images in the CIFAR-100 layout, {per_class} per class, on {dev}",
              "model": "ResNet-32 (470k parameters), generator: the paper's CIFAR generator (8.4M)",
              "results": {}}
    log(f"bench on {result['gpu'] or 'CPU (' + str(result['cpu_threads']) + ' threads)'}: "
        f"torch {result['torch']}, CUDA {result['cuda']}, batch {batch_size}, "
        f"{warmup} warm-up + {repeats} x {iters} timed steps")
    for name in workloads:
        label, unit = WORKLOADS[name]
        entry = {}
        for mode, switches in modes(dev).items():
            entry[mode] = time_workload(name, data, dev, switches, batch_size, warmup, iters, repeats)
            for msg in entry[mode]["messages"]:
                log(f"  {msg}")
            if on_gpu:
                torch.cuda.empty_cache()
        entry["speedup"] = entry["eager_fp32"]["ms_per_step"] / entry["fast"]["ms_per_step"]
        entry["unit"] = unit
        result["results"][name] = entry
        e, f = entry["eager_fp32"], entry["fast"]
        fell_back = f["switches"]["cuda_graphs"] and not f["graphed"]
        log(f"{label:38s} eager fp32 {e['ms_per_step']:8.2f} ms {e['per_second']:9.1f} {unit} | "
            f"fast {describe(f['switches'])}{' (fell back to eager)' if fell_back else ''}"
            f" {f['ms_per_step']:8.2f} ms {f['per_second']:9.1f} {unit} | x{entry['speedup']:.2f}")
    if out:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        log(f"wrote {out}")
    return result


# ------------------------------------------------------------------ parity: eager fp32 against the fast path

def main_stage_losses(tasks: list[dict]) -> list[dict]:
    """Every epoch's mean loss terms of the main stages, task after task, from what training returned
    (`train_task`'s `epoch_losses`): [{"task", "epoch" (1-based), "terms", "total"}]."""
    out = []
    for t, task in enumerate(tasks):
        if task.get("epoch_losses") is None:
            raise ValueError(f"task {t}: training returned no per-epoch losses")
        for epoch, terms in enumerate(task["epoch_losses"], 1):
            out.append({"task": t, "epoch": epoch, "terms": terms, "total": sum(terms.values())})
    return out


def parity_settings(method: str, switches: dict, epochs: int, power_iters: int) -> dict:
    milestones = [max(1, (2 * epochs) // 3)]  # one LR drop: the graphed path captures again after it
    return {
        "dataset": {"name": "cifar100"},
        "model": {"name": "resnet32"},
        "train": {"epochs": epochs, "lr": 0.1, "lr_milestones": milestones, "batch_size": 128,
                  "momentum": 0.9, "weight_decay": 2e-4, **switches},
        "first_split": 50, "other_split": 50, "max_tasks": 2, "augment": True, "crop_padding": 4,
        "method": method, "method_settings": {"power_iters": power_iters} if method == "abd" else {},
    }


# Tolerances of the GPU parity run (each mode against eager fp32, same seed, same data). The first epoch from
# identical weights measures the numerics; after it, bf16 rounding (and cuDNN's non-deterministic kernels) make
# runs drift apart like runs of different seeds (ABD's feature distillation term most of all), so the later
# bounds are loose; a broken step (stale batches, a learning rate that does not change) misses them by far.
PARITY_FIRST_EPOCH_RELATIVE = 0.02  # task 0's first-epoch mean loss, relative to eager fp32
PARITY_ACCURACY_POINTS = 5.0        # accuracy over the seen classes after each task, absolute percentage points
PARITY_LOSS_RELATIVE = 0.25         # every epoch's total main-stage loss, relative to eager fp32


def compare(run: dict, reference: dict) -> dict:
    """One mode's run against eager fp32's: the largest differences and whether they are within the tolerances.
    Loss curves of different lengths (a missing epoch or task) are never within them."""
    acc_diff = max(abs(a - b) for a, b in zip(run["accuracy_seen"], reference["accuracy_seen"]))
    same_epochs = [(a["task"], a["epoch"]) for a in run["losses"]] == \
        [(b["task"], b["epoch"]) for b in reference["losses"]] and len(reference["losses"]) > 0
    loss_rel = first_rel = float("inf")
    if same_epochs:
        loss_rel = max(abs(a["total"] - b["total"]) / max(abs(b["total"]), 1e-8)
                       for a, b in zip(run["losses"], reference["losses"]))
        first, first_ref = run["losses"][0]["total"], reference["losses"][0]["total"]
        first_rel = abs(first - first_ref) / max(abs(first_ref), 1e-8)
    ok = (len(run["accuracy_seen"]) == len(reference["accuracy_seen"]) and acc_diff <= PARITY_ACCURACY_POINTS
          and first_rel <= PARITY_FIRST_EPOCH_RELATIVE and loss_rel <= PARITY_LOSS_RELATIVE)
    return {"max_accuracy_diff_points": acc_diff, "max_loss_relative_diff": loss_rel,
            "first_epoch_loss_relative_diff": first_rel, "same_epochs": same_epochs, "within_tolerance": ok}


def run_parity(out_dir: Path, device: str = "auto", epochs: int = 6, methods=("base", "abd"),
               power_iters: int = 200, n_train_per_class: int = 100, seed: int = 0, log=print) -> dict:
    import tempfile

    from dfcil_core.run import train_in_process

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    data_root = tempfile.TemporaryDirectory(prefix="dfcil-parity-")
    write_cifar100_layout(Path(data_root.name), cifar_layout_arrays(n_train_per_class, 20, seed=1, signal=0.35))
    all_modes = {"eager_fp32": modes(dev)["eager_fp32"]}
    if dev.type == "cuda":  # the graph machinery alone, then everything
        all_modes["graphs_fp32"] = {"precision": "fp32", "channels_last": False, "cuda_graphs": True}
    all_modes["fast"] = modes(dev)["fast"]
    report = {**machine_info(dev), "epochs": epochs, "seed": seed,
              "data": f"learnable synthetic images in the CIFAR-100 pickle layout, {n_train_per_class} train and "
                      "20 test per class; 2 tasks of 50 classes; ResNet-32; batch 128",
              "tolerance": {"first_epoch_loss_relative": PARITY_FIRST_EPOCH_RELATIVE,
                            "accuracy_points": PARITY_ACCURACY_POINTS, "loss_relative": PARITY_LOSS_RELATIVE},
              "runs": {}, "comparisons": {}}
    for method in methods:
        for mode, switches in all_modes.items():
            graph_messages: list[str] = []

            def collect(msg: str) -> None:
                if "cuda_graphs" in msg:
                    graph_messages.append(msg)
                    log(f"  {msg}")

            torch.manual_seed(seed)
            start = time.perf_counter()
            tasks = train_in_process(parity_settings(method, switches, epochs, power_iters), seed,
                                     n_tasks=2, device=str(dev), data_root=data_root.name, log=collect)
            seconds = time.perf_counter() - start
            run = {"switches": switches, "seconds": seconds, "losses": main_stage_losses(tasks),
                   "accuracy_seen": [t["accuracy_seen"] for t in tasks],
                   "accuracy_per_task": [t["accuracy_per_task"] for t in tasks],
                   "images_per_second": [t["images_per_second"] for t in tasks],
                   "end_task_seconds": [t["end_task_seconds"] for t in tasks],
                   "graph_messages": graph_messages}
            report["runs"][f"{method}/{mode}"] = run
            log(f"{method:5s} {mode:11s} accuracy after each task {['%.2f' % a for a in run['accuracy_seen']]}, "
                f"main-stage img/s {['%.0f' % v for v in run['images_per_second']]}, {seconds:.1f} s")
        reference = report["runs"][f"{method}/eager_fp32"]
        for mode in all_modes:
            if mode == "eager_fp32":
                continue
            c = report["comparisons"][f"{method}/{mode}"] = compare(report["runs"][f"{method}/{mode}"], reference)
            log(f"{method:5s} {mode} vs eager_fp32: accuracy differs by at most {c['max_accuracy_diff_points']:.2f} "
                f"points, epoch losses by at most {100 * c['max_loss_relative_diff']:.1f}% (first epoch "
                f"{100 * c['first_epoch_loss_relative_diff']:.2f}%)"
                f"{'' if c['same_epochs'] else ', the loss curves cover different epochs'} -> "
                f"{'OK' if c['within_tolerance'] else 'OUTSIDE TOLERANCE'}")
    data_root.cleanup()
    report["all_within_tolerance"] = all(c["within_tolerance"] for c in report["comparisons"].values())
    (out_dir / "parity.json").write_text(json.dumps(report, indent=1))
    draw_parity(report, out_dir, log)
    return report


# ------------------------------------------------------------------ figures (matplotlib only when drawing)

def _figure(n_axes: int, width: float = 5.0, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width * n_axes, height))
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, n_axes, i + 1) for i in range(n_axes)]


def draw_parity(report: dict, out_dir: Path, log=print) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log("matplotlib is not installed: no parity figures")
        return
    methods = sorted({key.split("/")[0] for key in report["runs"]})
    fig, axes = _figure(len(methods))
    for ax, method in zip(axes, methods):
        for key, run in report["runs"].items():
            if key.startswith(method + "/"):
                ax.plot(range(1, len(run["losses"]) + 1), [e["total"] for e in run["losses"]], marker="o",
                        ms=3, label=key.split("/")[1])
        ax.set(title=f"{method}: main-stage loss per epoch (2 tasks)", xlabel="epoch (both tasks)", ylabel="loss")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "parity_losses.png", dpi=120)
    fig, axes = _figure(len(methods))
    for ax, method in zip(axes, methods):
        keys = [k for k in report["runs"] if k.startswith(method + "/")]
        for i, key in enumerate(keys):
            accs = report["runs"][key]["accuracy_seen"]
            ax.bar([t + (i - (len(keys) - 1) / 2) * 0.25 for t in range(len(accs))], accs, width=0.25,
                   label=key.split("/")[1])
        ax.set(title=f"{method}: accuracy on the seen classes", xlabel="task", ylabel="accuracy (%)",
               xticks=range(2))
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "parity_accuracy.png", dpi=120)
    log(f"wrote {out_dir / 'parity_losses.png'} and {out_dir / 'parity_accuracy.png'}")


def draw_bench(bench_json: Path, out_png: Path, log=print) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log("matplotlib is not installed: no bench figure")
        return
    result = json.loads(Path(bench_json).read_text())
    names = list(result["results"])
    fig, axes = _figure(len(names), 3.6)
    for ax, name in zip(axes, names):
        entry = result["results"][name]
        values = [entry["eager_fp32"]["per_second"], entry["fast"]["per_second"]]
        ax.bar(["eager fp32", describe(entry["fast"]["switches"]).replace("+", "+\n")], values,
               color=["tab:gray", "tab:blue"])
        ax.set(title=f"{WORKLOADS[name][0]}\nx{entry['speedup']:.2f}", ylabel=entry["unit"])
    fig.suptitle(f"{result['gpu'] or 'CPU'}, torch {result['torch']}, batch {result['batch_size']}")
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    log(f"wrote {out_png}")


# ------------------------------------------------------------------ command line

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("speed", help="images/s of the Base and ABD steps and ms per inversion iteration on this "
                                     "machine, eager fp32 against the fast path (random CIFAR-100-layout data)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--quick", action="store_true", help="few iterations (a CPU smoke run)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--warmup", type=int, help="untimed steps first (default 10 on a GPU, 5 on the CPU, 2 quick)")
    p.add_argument("--iters", type=int, help="timed steps per window (default 100 on a GPU, 10 on the CPU, 3 quick)")
    p.add_argument("--repeats", type=int, help="timed windows, the median is reported (default 3, 1 quick)")
    p.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--out", help="also write the results (machine, versions, command, numbers) as JSON here")
    p = sub.add_parser("parity", help="eager fp32 against the fast path: loss curves and final accuracy")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--methods", nargs="+", default=["base", "abd"])
    p.add_argument("--power-iters", type=int, default=200, help="ABD's inversion iterations after task 0")
    p.add_argument("--per-class", type=int, default=100, help="training images per class (test: 20)")
    p.add_argument("--threads", type=int, default=0)
    p = sub.add_parser("figures", help="draw DIR/bench.png from DIR/bench.json")
    p.add_argument("out_dir")
    a = parser.parse_args(argv)
    if getattr(a, "threads", 0):
        torch.set_num_threads(a.threads)
    if a.command == "speed":
        run_benchmark(a.device, a.quick, a.batch_size, a.warmup, a.iters, a.repeats, a.workloads,
                      Path(a.out) if a.out else None)
    elif a.command == "parity":
        report = run_parity(Path(a.out_dir), a.device, a.epochs, tuple(a.methods), a.power_iters, a.per_class)
        if not report["all_within_tolerance"]:  # a failed check, for benchmarks/gpu_check.sh and any CI
            sys.exit("parity: FAILED, some comparisons are outside the tolerance (see parity.json)")
    else:
        draw_bench(Path(a.out_dir) / "bench.json", Path(a.out_dir) / "bench.png")


if __name__ == "__main__":
    main()
