"""Issue #13: what the workflow costs before any job runs, checkout against checkout on the same machine.

    python benchmarks/workflow_parse.py [--repo CHECKOUT ...] [--repeats 5] [--out FILE.json]

For each checkout (default: this one), with the snakemake of the running interpreter's environment and the
checkout's own package first on PYTHONPATH:
- torch at parse: `python -X importtime -m snakemake -n` on the demo (config/config.yaml); does any imported
  module's name begin with `torch`?
- the paper grid's dry run: `snakemake -n -q --configfile config/paper/cifar100.yaml` (wall clock, and the
  number of jobs it plans);
- the demo's no-op run: `snakemake --cores 2` on a results tree where every output of the demo exists (made
  here, once per checkout, from `snakemake --summary`: empty files with one modification time, without
  Snakemake's metadata records, so no params or code check has a record to read); the run must report
  "Nothing to be done".
The checkouts' runs alternate, `--repeats` times, so that a shared machine's load falls on each alike; medians
are printed and, with --out, written with every time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import host  # benchmarks/host.py (the script's folder is on sys.path)

REPO = Path(__file__).resolve().parents[1]
PAPER_GRID = "config/paper/cifar100.yaml"


def run(checkout: Path, *args: str, python_flags: tuple[str, ...] = ()) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *python_flags, "-m", "snakemake", *args], cwd=checkout, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"snakemake {' '.join(args)} failed in {checkout}:\n{done.stderr[-2000:]}")
    return seconds, done


def torch_modules_at_parse(checkout: Path) -> list[str]:
    _, done = run(checkout, "-n", "-q", python_flags=("-X", "importtime"))
    names = (line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:"))
    return sorted({n for n in names if n == "torch" or n.startswith("torch.")})


def planned_jobs(output: str) -> int:
    match = re.search(r"^total\s+(\d+)", output, flags=re.M)
    return int(match.group(1)) if match else -1


def make_outputs_present(checkout: Path) -> int:
    """Every output of the demo as an empty file, all with one modification time (a finished tree to Snakemake)."""
    _, done = run(checkout, "--summary")
    files = [line.split("\t", 1)[0] for line in done.stdout.splitlines()[1:] if line.strip()]
    for f in files:
        path = checkout / f
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    stamp = time.time() - 3600
    for f in files:
        os.utime(checkout / f, (stamp, stamp))
    return len(files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, nargs="+", default=[REPO], help="checkouts to compare")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    checkouts = [c.resolve() for c in args.repo]
    for c in checkouts:
        if (c / "results").exists():
            parser.error(f"{c}/results exists; this benchmark writes a stand-in results tree there, so give it a "
                         "checkout of its own (git clone -q . /tmp/x && git -C /tmp/x checkout -q REV)")
    record = {}
    for c in checkouts:
        commit = subprocess.run(["git", "-C", str(c), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        record[str(c)] = {"commit": commit, "torch_at_parse": torch_modules_at_parse(c),
                          "demo_outputs": make_outputs_present(c), "paper_dry_run_s": [], "demo_noop_s": []}
    for _ in range(args.repeats):
        for c in checkouts:
            r = record[str(c)]
            seconds, done = run(c, "-n", "--configfile", PAPER_GRID)
            r["paper_dry_run_s"].append(round(seconds, 2))
            r["paper_jobs"] = planned_jobs(done.stdout)
            seconds, done = run(c, "--cores", "2")
            if "Nothing to be done" not in done.stdout + done.stderr:
                raise RuntimeError(f"the demo run in {c} was not a no-op:\n{done.stdout[-2000:]}")
            r["demo_noop_s"].append(round(seconds, 2))
    machine = host.describe()
    print(f"machine: {machine}; load average at the end: {os.getloadavg()[0]:.1f}; medians of {args.repeats}")
    for c, r in record.items():
        print(f"{r['commit']} ({c}): torch modules at parse: {len(r['torch_at_parse'])}; paper grid dry run "
              f"{statistics.median(r['paper_dry_run_s']):.2f} s ({r['paper_jobs']} jobs); demo no-op "
              f"{statistics.median(r['demo_noop_s']):.2f} s ({r['demo_outputs']} outputs)")
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "repeats": args.repeats, "checkouts": record},
                                       indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
