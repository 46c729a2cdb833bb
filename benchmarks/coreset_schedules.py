"""Issue #3's question: under which schedule do E2E and BiC beat Naive Rehearsal on the demo, and LwF with a
coreset beat LwF? Trains the demo experiment (`config/config.yaml`, mnist5k 5 x 2 classes) with the memory
methods at other (epochs, memory size) pairs and prints final accuracy, mean ± population std over seeds.

Each run is the uninterrupted in-process run that the workflow's task chain reproduces
(`run.train_in_process`, tested equal); only `train.epochs`, `train.lr_milestones` (kept at 60% and 80%
of the epochs, as the demo's [6, 8] of 10) and every memory method's `memory_size` change.

    python benchmarks/coreset_schedules.py --grid 10:200 10:2000 20:2000 --seeds 0 1 2 --jobs 2 \\
        --out benchmarks/results/coreset-schedules.json
"""

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

from dfcil_core.config import deep_merge, experiments, run_settings
from dfcil_core.results import mean_std
from sweep import SweepRecord  # benchmarks/sweep.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "mnist5k-5task"
METHODS = ["naive_rehearsal", "lwf", "lwf_coreset", "e2e", "bic"]
MEMORY_METHODS = ["naive_rehearsal", "lwf_coreset", "e2e", "bic"]
# What the issue asks to see, as (better, worse) pairs.
CLAIMS = [("e2e", "naive_rehearsal"), ("bic", "naive_rehearsal"), ("lwf_coreset", "lwf")]


def schedule_settings(epochs: int, memory: int) -> dict:
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    override = {"train": {"epochs": epochs, "lr_milestones": [round(0.6 * epochs), round(0.8 * epochs)]},
                "method_settings": {m: {"memory_size": memory} for m in MEMORY_METHODS}}
    cfg["defaults"] = deep_merge(cfg["defaults"], override)
    return experiments(cfg)[EXPERIMENT]


def one_run(job: tuple[int, int, str, int, str]) -> dict:
    import torch
    from dfcil_core.run import train_in_process
    torch.set_num_threads(1)
    epochs, memory, method, seed, data_root = job
    wall = time.perf_counter()
    tasks = train_in_process(run_settings(schedule_settings(epochs, memory), method), seed, 5, data_root=data_root)
    return {"epochs": epochs, "memory": memory, "method": method, "seed": seed,
            "final_accuracy": tasks[-1]["accuracy_seen"], "seconds": round(time.perf_counter() - wall, 1)}


def table(runs: list[dict]) -> str:
    schedules = sorted({(r["epochs"], r["memory"]) for r in runs})
    lines = ["| epochs | memory | " + " | ".join(METHODS) + " | E2E > NR | BiC > NR | LwF coreset > LwF |",
             "|---:|---:|" + "---:|" * len(METHODS) + ":-:|:-:|:-:|"]
    for epochs, memory in schedules:
        means = {}
        cells = []
        for m in METHODS:
            acc = [r["final_accuracy"] for r in runs if r["method"] == m and r["epochs"] == epochs
                   and (r["memory"] == memory or m not in MEMORY_METHODS)]  # LwF has no memory
            means[m] = mean_std(acc)[0] if acc else None
            cells.append("%.1f ± %.1f" % mean_std(acc) if acc else "–")
        verdicts = ["–" if means[a] is None or means[b] is None else ("yes" if means[a] > means[b] else "no")
                    for a, b in CLAIMS]
        lines.append(f"| {epochs} | {memory} | " + " | ".join(cells + verdicts) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", nargs="+", default=["10:200", "10:2000"], help="EPOCHS:MEMORY pairs")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel, one CPU thread each")
    ap.add_argument("--data-root", default=str(ROOT / "data"), help="where mnist5k is read from")
    ap.add_argument("--out", type=Path, help="JSON file for every run's result; runs it already holds are kept "
                    "and not trained again")
    args = ap.parse_args()
    grid = [tuple(int(v) for v in pair.split(":")) for pair in args.grid]
    jobs = [(e, mem, m, s, args.data_root) for e, mem in grid for m in args.methods for s in args.seeds
            # without memory, LwF's result does not depend on the memory size: run it once per epoch count
            if m in MEMORY_METHODS or (e, mem) == min(g for g in grid if g[0] == e)]
    record = SweepRecord(args.out, "python benchmarks/coreset_schedules.py " + " ".join(
        ["--grid", *args.grid, "--seeds", *map(str, args.seeds), "--jobs", str(args.jobs)]))
    done = {key(r) for r in record.runs}
    jobs = [j for j in jobs if key(dict(zip(("epochs", "memory", "method", "seed"), j))) not in done]
    with ProcessPoolExecutor(args.jobs) as pool:
        for run in pool.map(one_run, jobs):
            record.add(run)
    print(table(record.runs))


def key(run: dict) -> tuple:
    return run["epochs"], run["memory"], run["method"], run["seed"]


if __name__ == "__main__":
    main()
