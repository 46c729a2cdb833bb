"""Issue #12: the tiny configuration through the README's Slurm command and nothing else, on a private single-node
Slurm without accounting (tests/slurm_cluster.py; as root), then each job's elapsed time as Slurm recorded it
beside the task's own wall clock. The difference is the per-job overhead: the Snakemake inside the job (start,
workflow parse), srun, and the training command's start (imports, data loading).

    python benchmarks/slurm_overhead.py [--repo PATH]

--repo runs another checkout's Snakefile and profile (with PYTHONPATH=PATH to use its package too), for a
before/after comparison on the same machine.
"""

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from slurm_cluster import start_cluster  # noqa: E402
from test_slurm import write_config  # noqa: E402  (the Slurm tests' tiny configuration)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=HERE.parent)
    args = ap.parse_args()
    os.environ["PYTHONPATH"] = str(args.repo.resolve())
    work = Path(tempfile.mkdtemp(prefix="dfcil-slurm-overhead-"))
    config = write_config(work)
    cluster, munged, error = start_cluster()
    if error:
        sys.exit(error)
    try:
        cmd = [str(Path(sys.executable).parent / "snakemake"), "--workflow-profile", str(args.repo / "profiles/slurm"),
               "--configfile", config.name, "--snakefile", str(args.repo / "Snakefile")]
        start = time.perf_counter()
        out = subprocess.run(cmd, cwd=work, env=cluster.env, capture_output=True, text=True, timeout=1800)
        print(f"{' '.join(cmd)}\nexit {out.returncode}, {time.perf_counter() - start:.0f} s in all")
        if out.returncode:
            sys.exit(out.stderr[-3000:])
        jobs = cluster.run("squeue", "-h", "-t", "all", "-o", "%S|%e|%k").stdout.split()
        elapsed = {}
        for line in jobs:
            started, ended, comment = line.split("|")
            elapsed[comment] = (dt.datetime.fromisoformat(ended) - dt.datetime.fromisoformat(started)).seconds
        walls = {m.parent.relative_to(work).as_posix(): json.loads(m.read_text())["wall_seconds"]
                 for m in sorted(work.glob("results/tiny/*/seed0/task*/metrics.json"))}
        print(json.dumps({"job_elapsed_s": elapsed, "task_wall_s": walls,
                          "mean_job_elapsed_s": sum(elapsed.values()) / len(elapsed)}, indent=1))
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
