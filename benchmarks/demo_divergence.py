"""Issue #11's question: with which demo settings does no method's network die, for seeds 0-9?

Trains the demo experiment (`config/config.yaml`, mnist5k 5 x 2 classes) in process (`run.train_in_process`,
the run the workflow's task chain reproduces, tested equal) with layers of setting overrides, and records
for every (setting, method, seed, task) the current-task fit the trainer measures (`trainer.current_task_fit`:
cross-entropy over the task's own logits on its training images; "diverged" at >= 80% of chance) and the
final accuracy.

    python benchmarks/demo_divergence.py --variant batch128 demo --methods base lwf \\
        --seeds 0 1 2 3 4 5 6 7 8 9 --jobs 2 --out benchmarks/results/demo-divergence.json

A variant is a name in VARIANTS: overrides merged over the demo's `defaults`.
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
# Overrides over config/config.yaml's `defaults` (whose batch size is 32 since this sweep; the first five
# variants were the demo before it, at batch 128). Every variant reads today's defaults: since 2026-12-08 the
# shared lr is 0.03 and LwF-Synthetic's mu 1; `demo-2026-12-07` restores the values the runs before used.
AT_128 = {"batch_size": 128}
VARIANTS = {
    "demo": {},
    "demo-2026-12-07": {"train": {"lr": 0.05}, "method_settings": {"lwf_synthetic": {"mu": 0.1}}},
    "batch128": {"train": AT_128},
    "batch128-lr0.02": {"train": {**AT_128, "lr": 0.02}},
    "batch128-lr0.01": {"train": {**AT_128, "lr": 0.01}},
    "batch128-width16": {"train": AT_128, "model": {"width": 16}},
    "batch64": {"train": {"batch_size": 64}},
    # At batch 32 the 10-seed workflow run still lost the last task of DGR (seed 8) and LwF-Synthetic (seeds 7, 8).
    "generative-lr0.02": {"method_settings": {m: {"train": {"lr": 0.02}} for m in ("dgr", "lwf_synthetic")}},
    "generative-lr0.1": {"method_settings": {m: {"train": {"lr": 0.1}} for m in ("dgr", "lwf_synthetic")}},
    # The seeds that lost their last task (0, 7, 8) end on 9/6, 2/5 and 5/3: digits whose mirror images are close
    # to each other (2 and 5 are mirrors), which the reference's flip (made for CIFAR) asks the network to confuse.
    "no-flip": {"horizontal_flip": False},
    # Without flips (the demo since), LwF-Synthetic seed 8 still lost its last task (5 vs 3, loss 0.64). On that
    # seed its lr 0.02 or 0.1, mu 1 or 300 inversion iterations each rescued it; these two are checked over seeds 0-9.
    "lwf-synthetic-lr0.1": {"method_settings": {"lwf_synthetic": {"train": {"lr": 0.1}}}},
    "lwf-synthetic-mu1": {"method_settings": {"lwf_synthetic": {"mu": 1.0}}},
    # R-DFCIL's demo lr: its paper's 0.1 (the demo's setting) against the demo's default then, 0.05.
    "rdfcil-lr0.05": {"method_settings": {"rdfcil": {"train": {"lr": 0.05}}}},
    # With AVX2 kernels Base seed 8 lost its last task at the demo's lr 0.05 (5 vs 3; none did with AVX-512).
    "lr0.03": {"train": {"lr": 0.03}},
    "lr0.1": {"train": {"lr": 0.1}},
}


def variant_settings(variant: str) -> dict:
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["defaults"] = deep_merge(cfg["defaults"], VARIANTS[variant])
    return experiments(cfg)[EXPERIMENT]


def one_run(job: tuple[str, str, int, str]) -> dict:
    import torch
    from dfcil_core.run import train_in_process
    torch.set_num_threads(1)
    variant, method, seed, data_root = job
    wall = time.perf_counter()
    tasks = train_in_process(run_settings(variant_settings(variant), method), seed, 5, data_root=data_root)
    return {"variant": variant, "method": method, "seed": seed,
            "final_accuracy": tasks[-1]["accuracy_seen"],
            "current_task_loss": [t["current_task_loss"] for t in tasks],
            "diverged_tasks": [i for i, t in enumerate(tasks) if t["diverged"]],
            "seconds": round(time.perf_counter() - wall, 1)}


def table(runs: list[dict]) -> str:
    lines = ["| variant | method | final accuracy | diverged (seed: tasks) | worst current-task loss |",
             "|---|---|---:|---|---:|"]
    for variant in dict.fromkeys(r["variant"] for r in runs):
        for method in dict.fromkeys(r["method"] for r in runs if r["variant"] == variant):
            group = sorted((r for r in runs if r["variant"] == variant and r["method"] == method),
                           key=lambda r: r["seed"])
            dead = ", ".join(f"{r['seed']}: {r['diverged_tasks']}" for r in group if r["diverged_tasks"]) or "none"
            worst = max(max(r["current_task_loss"]) for r in group)
            lines.append(f"| {variant} | {method} | %.1f ± %.1f | {dead} | {worst:.3f} |"
                         % mean_std(r["final_accuracy"] for r in group))
    return "\n".join(lines)


def key(run: dict) -> tuple:
    return run["variant"], run["method"], run["seed"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", nargs="+", default=["demo"], choices=sorted(VARIANTS))
    ap.add_argument("--methods", nargs="+", default=["base", "lwf"])
    ap.add_argument("--seeds", nargs="+", type=int, default=list(range(10)))
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel, one CPU thread each")
    ap.add_argument("--data-root", default=str(ROOT / "data"), help="where mnist5k is read from")
    ap.add_argument("--out", type=Path, help="JSON file for every run's result; runs it already holds are kept "
                    "and not trained again")
    args = ap.parse_args()
    record = SweepRecord(args.out, "python benchmarks/demo_divergence.py " + " ".join(
        ["--variant", *args.variant, "--methods", *args.methods, "--seeds", *map(str, args.seeds),
         "--jobs", str(args.jobs)]))
    done = {key(r) for r in record.runs}
    jobs = [(v, m, s, args.data_root) for v in args.variant for m in args.methods for s in args.seeds
            if (v, m, s) not in done]
    with ProcessPoolExecutor(args.jobs) as pool:
        for run in pool.map(one_run, jobs):
            record.add(run)
    print(table([r for r in record.runs if r["variant"] in args.variant and r["method"] in args.methods]))


if __name__ == "__main__":
    main()
