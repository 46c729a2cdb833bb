"""Issue #13: where the time of one `dfcil train-task` job goes outside the training itself.

    python benchmarks/job_overhead.py [--method base] [--repeats 5] [--data FILE] [--out FILE.json]
                                      [--repo CHECKOUT [CHECKOUT ...]]

On the demo configuration (config/config.yaml, experiment mnist5k-5task, seed 0): prepares the dataset file as
the workflow's prepare_data rule does (or takes --data), runs the method's task 0 once as a job for a parent
state, then runs task 1's job `--repeats` times, each a new interpreter with `--threads 1` as the demo's jobs,
and reports medians of:
- the job's wall clock (process start to exit, seen from here) beside a bare `python -c pass`;
- inside the job: `import torch`, then the package's modules the job imports (`dfcil_core.cli` and
  `dfcil_core.run`), then the time spent in each named function of the job (timed by wrapping it, inclusive of
  what it calls, with how often it was called), and, after the work, how long the process takes to end (as
  `dfcil_core.cli` ends it). The training itself is the job's `train_seconds` (metrics.json: the main stage's
  epochs); the wrapped `trainer.run_stage` also holds the optimizer's construction before them;
- once, `python -X importtime` of the same job, summed per top-level package (self time), to see what the job
  imports and what that costs.
--repo runs other checkouts' package instead (PYTHONPATH), their jobs in turn: a before/after comparison on
the same machine under the same load.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import host  # benchmarks/host.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "mnist5k-5task"
SEED = 0

# "module:function" (or "module:Class.method") timed inside a job when it exists; inclusive times, so nested ones
# overlap (e.g. `build` contains `load_prepared`, `TaskJob.train` contains `train_task`). Wrapped where the job
# looks them up (a module's global, a class attribute), so a function renamed or removed is skipped.
TIMED = [
    "dfcil_core.run:resolve", "dfcil_core.run:fingerprints", "dfcil_core.run:prepared_digest",
    "dfcil_core.run:finished_record", "dfcil_core.run:build", "dfcil_core.run:load_prepared",
    "dfcil_core.run:TrainData", "dfcil_core.run:learner_class", "dfcil_core.run:load_state",
    "dfcil_core.run:train_task", "dfcil_core.trainer:run_stage", "dfcil_core.trainer:make_optimizer",
    "dfcil_core.trainer:evaluate", "dfcil_core.trainer:current_task_fit", "dfcil_core.run:write_atomically",
    "dfcil_core.run:write_text_atomically", "dfcil_core.run:code_digest", "dfcil_core.run:git_commit",
    "dfcil_core.run:Checkpointer", "numpy:load", "torch:load", "torch:save",
    # the job's steps (issue #13: `run.TaskJob`)
    "dfcil_core.run:TaskJob.fingerprint_chain", "dfcil_core.run:TaskJob.already_finished",
    "dfcil_core.run:TaskJob.build", "dfcil_core.run:TaskJob.load_parent_state", "dfcil_core.run:TaskJob.train",
    "dfcil_core.run:TaskJob.save_state", "dfcil_core.run:TaskJob.save_metrics",
]


def demo_settings(method: str) -> tuple[dict, dict]:
    """The job's settings JSON as the workflow passes it (`train_settings` in workflow/rules/common.smk) and the
    dataset settings of its prepare_data rule."""
    import yaml

    from dfcil_core.config import experiments, run_settings
    from dfcil_core.methods import resolve
    exp = experiments(yaml.safe_load((ROOT / "config/config.yaml").read_text()))[EXPERIMENT]
    source = {k: v for k, v in exp["dataset"].items() if k not in ("resolution", "class_order", "top_k")}
    return resolve(run_settings(exp, method))[0], source


def job_command(settings: dict, data: Path, task: int, out: Path, parent: Path | None) -> list[str]:
    cmd = ["train-task", "--settings", json.dumps(settings, sort_keys=True), "--data", str(data),
           "--experiment", EXPERIMENT, "--seed", str(SEED), "--task", str(task), "--out", str(out),
           "--threads", "1", "--device", "cpu", "--checkpoint-minutes", "10"]
    return cmd + (["--parent", str(parent)] if parent else [])


# ------------------------------------------------------------------ inside one job (a child interpreter)

def timed_job(argv: list[str], report: Path) -> None:
    """Run `dfcil <argv>` in this interpreter with the TIMED functions wrapped; write the times to `report`."""
    import importlib

    seconds: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    start = time.perf_counter()
    import torch  # noqa: F401
    seconds["import torch"] = time.perf_counter() - start
    start = time.perf_counter()
    import dfcil_core.cli  # noqa: F401
    import dfcil_core.run  # noqa: F401  (what cmd_train_task imports)
    seconds["import dfcil_core.cli + dfcil_core.run (after torch)"] = time.perf_counter() - start

    def wrap(label: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[label] += time.perf_counter() - t
                calls[label] += 1
        return timed

    for target in TIMED:
        module_name, _, qualname = target.partition(":")
        *owner_path, name = qualname.split(".")
        owner = importlib.import_module(module_name)
        for part in owner_path:
            owner = getattr(owner, part, None)
        if owner is not None and hasattr(owner, name):
            setattr(owner, name, wrap(target.replace(":", "."), getattr(owner, name)))
    start = time.perf_counter()
    dfcil_core.cli.main(argv)
    seconds["dfcil_core.cli.main (the whole job after its imports)"] = time.perf_counter() - start
    report.write_text(json.dumps({"seconds": seconds, "calls": calls, "ended_at": time.time()}))
    end_process = getattr(dfcil_core.cli, "end_process", None)  # how the command line ends a job, if it says
    if end_process is not None:
        end_process()


# ------------------------------------------------------------------ the driver

def wall(cmd: list[str], **kwargs) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, **kwargs)
    return time.perf_counter() - start


def exit_seconds(cmd: list[str], report: Path, **kwargs) -> float:
    """Run a timed job (`--child`): from the end of its work to the end of its process."""
    subprocess.run(cmd, check=True, **kwargs)
    ended = time.time()
    return ended - json.loads(report.read_text())["ended_at"]


def import_summary(stderr: str, top: int = 12) -> list[tuple[str, float]]:
    """`-X importtime` lines summed per top-level package: (package, milliseconds of self time)."""
    per_package: dict[str, float] = defaultdict(float)
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cumulative, name = line[len("import time:"):].split("|")
        per_package[name.strip().split(".")[0]] += int(self_us) / 1000
    return sorted(per_package.items(), key=lambda kv: -kv[1])[:top]


class Checkout:
    """One checkout's package (PYTHONPATH) and the numbers its jobs gave."""

    def __init__(self, repo: Path, work: Path):
        self.repo, self.work = repo.resolve(), work
        work.mkdir(parents=True)
        # Jobs run in `work`: `python -m` puts the working directory first on sys.path, where a checkout's
        # dfcil_core would win over PYTHONPATH's.
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(self.repo),
                                                                             os.environ.get("PYTHONPATH")]))}
        self.code = subprocess.run(["git", "-C", str(self.repo), "rev-parse", "--short=12", "HEAD"],
                                   capture_output=True, text=True).stdout.strip() or str(self.repo)
        self.bare, self.walls, self.trained, self.exits = [], [], [], []
        self.inside, self.calls = defaultdict(list), {}

    def run(self, cmd: list[str], **kwargs) -> float:
        return wall(cmd, env=self.env, cwd=self.work, stdout=subprocess.DEVNULL, **kwargs)

    def job(self, settings: dict, data: Path, r: int) -> None:
        """Task 1's job once as the workflow runs it (`dfcil train-task`, here `python -m dfcil_core.cli`), then
        once with its functions timed from inside."""
        py = [sys.executable]
        out = self.work / f"task1-job{r}"
        self.walls.append(self.run(py + ["-m", "dfcil_core.cli"] + job_command(settings, data, 1, out,
                                                                               self.work / "task0")))
        self.trained.append(json.loads((out / "metrics.json").read_text())["train_seconds"])
        out, report = self.work / f"task1-timed{r}", self.work / f"report-{r}.json"
        self.exits.append(exit_seconds(py + [str(Path(__file__).resolve()), "--child", str(report)]
                                       + job_command(settings, data, 1, out, self.work / "task0"), report,
                                       env=self.env, cwd=self.work, stdout=subprocess.DEVNULL))
        measured = json.loads(report.read_text())
        for label, seconds in measured["seconds"].items():
            self.inside[label].append(seconds)
        self.calls = measured["calls"]

    def summary(self, settings: dict, data: Path) -> dict:
        importtime = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "dfcil_core.cli"]
            + job_command(settings, data, 1, self.work / "task1-importtime", self.work / "task0"),
            env=self.env, cwd=self.work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=True)
        median = statistics.median
        return {"code": self.code, "repo": str(self.repo), "bare_python_s": median(self.bare),
                "job_wall_s": median(self.walls), "main_stage_train_s": median(self.trained),
                "overhead_s": median(w - t for w, t in zip(self.walls, self.trained)),
                "job_wall_each_s": self.walls, "main_stage_train_each_s": self.trained,
                "inside_job_s": {label: median(v) for label, v in self.inside.items()}, "calls": self.calls,
                "process_end_after_the_work_s": median(self.exits),
                "import_self_ms_per_package": import_summary(importtime.stderr)}


def show(result: dict, method: str, repeats: int) -> None:
    print(f"code {result['code']}: {EXPERIMENT}/{method}/seed{SEED}/task1 job, median of {repeats} "
          "(threads 1, device cpu):")
    print(f"  job wall clock            {result['job_wall_s']:7.3f} s   (bare `python -c pass`: "
          f"{result['bare_python_s']:.3f} s)")
    print(f"  main-stage training       {result['main_stage_train_s']:7.3f} s   (metrics.json train_seconds)")
    print(f"  everything else           {result['overhead_s']:7.3f} s")
    print("  inside the job, timed by wrapping (inclusive; nested functions overlap):")
    for label, seconds in result["inside_job_s"].items():
        n = result["calls"].get(label)
        print(f"    {label:58s} {1000 * seconds:8.1f} ms{f'  ({n} calls)' if n and n > 1 else ''}")
    print(f"    {'the process ending after the work':58s} {1000 * result['process_end_after_the_work_s']:8.1f} ms")
    print("  -X importtime, self time summed per top-level package:")
    for package, ms in result["import_self_ms_per_package"]:
        print(f"    {package:30s} {ms:8.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="base")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data", type=Path, help="a prepared mnist5k file (default: prepared here, in a temp folder)")
    ap.add_argument("--out", type=Path, help="also write the numbers as JSON here")
    ap.add_argument("--repo", type=Path, nargs="+", default=[ROOT],
                    help="the checkouts whose dfcil_core the jobs run (PYTHONPATH); with several, their jobs "
                         "alternate, so that a shared machine's changing load falls on each alike")
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:  # --child REPORT.json <dfcil arguments...>
        timed_job(args.child[1:], Path(args.child[0]))
        return

    settings, source = demo_settings(args.method)
    work = Path(tempfile.mkdtemp(prefix="dfcil-job-overhead-"))
    checkouts = [Checkout(repo, work / f"checkout{i}") for i, repo in enumerate(args.repo)]
    data = args.data
    if data is None:
        data = work / "mnist5k.npz"
        checkouts[0].run([sys.executable, "-m", "dfcil_core.cli", "prepare-data", "--dataset", json.dumps(source),
                          "--out", str(data)])
    for c in checkouts:  # each checkout's own parent state (its code may store it otherwise)
        c.run([sys.executable, "-m", "dfcil_core.cli"] + job_command(settings, data, 0, c.work / "task0", None))
    for r in range(args.repeats):
        for c in checkouts:
            c.bare.append(c.run([sys.executable, "-c", "pass"]))
            c.job(settings, data, r)
    results = [c.summary(settings, data) for c in checkouts]
    for result in results:
        show(result, args.method, args.repeats)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "command": "python benchmarks/job_overhead.py " + " ".join(sys.argv[1:]),
            "machine": host.describe(),
            "python": platform.python_version(), "method": args.method, "repeats": args.repeats,
            "checkouts": results}, indent=1))


if __name__ == "__main__":
    main()
