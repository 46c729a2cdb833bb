"""Issue #13: how much of a workflow's training-job time is the training itself.

    python benchmarks/job_times.py [RESULTS] [--out FILE.json]

For every train_task / train_generative_task job of a finished workflow under RESULTS (default `results`), it
pairs Snakemake's record of the job (`RESULTS/benchmarks/<experiment>/<method>/seed<s>/task<t>.tsv`, the `s`
column: the job's wall clock from the shell's start to its end, interpreter start, imports, loading and saving
included) with the job's own clock (`wall_seconds` of its metrics.json: the task's training and evaluation).
It prints the sums, their ratio, and the per-job time outside the job's own clock (median and total), per method
and in all. With --floor-repeats N it also times a new interpreter that only imports torch (median of N, this
interpreter): the least any job spends outside its own clock, since every job is a process of its own that needs
torch, and the ratio that this alone gives these jobs, sum(own + import) / sum(own). A task that a job found
already finished, or resumed from a checkpoint, would pair a short job with an earlier job's clock: run it on a
tree that one uninterrupted workflow wrote.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import host  # benchmarks/host.py (the script's folder is on sys.path)


def job_pairs(results: Path) -> list[dict]:
    """One row per training job that has both a Snakemake benchmark and a metrics.json."""
    rows = []
    bench_root = results / "benchmarks"
    for tsv in sorted(bench_root.glob("*/*/seed*/task*.tsv")):
        experiment, method, seed = tsv.relative_to(bench_root).parts[:3]
        if experiment == "shared":  # the shared first-task stages are their own jobs, not train_task
            continue
        metrics = results / experiment / method / seed / tsv.stem / "metrics.json"
        if not metrics.is_file():
            continue
        with tsv.open() as f:
            job_seconds = float(next(csv.DictReader(f, delimiter="\t"))["s"])
        rows.append({"experiment": experiment, "method": method, "seed": seed, "task": tsv.stem,
                     "job_seconds": job_seconds,
                     "own_seconds": float(json.loads(metrics.read_text())["wall_seconds"])})
    return rows


def summarize(rows: list[dict]) -> dict:
    job, own = sum(r["job_seconds"] for r in rows), sum(r["own_seconds"] for r in rows)
    outside = [r["job_seconds"] - r["own_seconds"] for r in rows]
    return {"jobs": len(rows), "job_seconds": round(job, 1), "own_seconds": round(own, 1),
            "ratio": round(job / own, 3) if own else None,
            "outside_seconds_total": round(sum(outside), 1),
            "outside_seconds_median": round(statistics.median(outside), 2) if outside else None}


def import_torch_seconds(repeats: int) -> float:
    """Median wall clock of `python -c "import torch"` in a new process (this interpreter)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", type=Path, default=Path("results"))
    parser.add_argument("--out", type=Path, help="write the numbers here as JSON")
    parser.add_argument("--floor-repeats", type=int, default=0,
                        help="also time `python -c 'import torch'` this many times and report the ratio it alone gives")
    args = parser.parse_args()
    rows = job_pairs(args.results)
    if not rows:
        parser.error(f"no training job under {args.results} has both benchmarks/<...>.tsv and metrics.json")
    by_method = defaultdict(list)
    for r in rows:
        by_method[r["method"]].append(r)
    report = {"machine": host.describe(),
              "command": " ".join(["python benchmarks/job_times.py", *sys.argv[1:]]),
              "results": str(args.results), "all": summarize(rows),
              "per_method": {m: summarize(rs) for m, rs in sorted(by_method.items())}}
    print(f"{'method':<18} {'jobs':>5} {'job s':>9} {'own s':>9} {'ratio':>7} {'outside, median':>16}")
    for name, s in [*report["per_method"].items(), ("all", report["all"])]:
        print(f"{name:<18} {s['jobs']:>5} {s['job_seconds']:>9.1f} {s['own_seconds']:>9.1f} {s['ratio']:>7.3f} "
              f"{s['outside_seconds_median']:>15.2f}s")
    if args.floor_repeats > 0:
        seconds = import_torch_seconds(args.floor_repeats)
        own = report["all"]["own_seconds"]
        floor = (own + seconds * len(rows)) / own
        report["floor"] = {"import_torch_seconds": round(seconds, 3), "repeats": args.floor_repeats,
                           "ratio_from_import_alone": round(floor, 3)}
        print(f"floor: a new interpreter importing torch takes {seconds:.2f} s (median of {args.floor_repeats}); "
              f"with only that outside each job's own clock the ratio would be {floor:.3f}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
