"""`dfcil`: the commands the Snakemake rules run (and that users can run by hand)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _log_to(path: str | None):
    if not path:
        return print
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a", buffering=1)

    def log(msg: str) -> None:
        print(msg, file=handle)
        print(msg, flush=True)
    return log


def cmd_train_task(a) -> None:
    import torch
    from dfcil_core.run import TaskJob
    if a.threads:
        torch.set_num_threads(a.threads)
    TaskJob(settings=json.loads(a.settings), experiment=a.experiment, seed=a.seed, task_index=a.task,
            out_dir=Path(a.out), parent_dir=Path(a.parent) if a.parent else None, data_file=Path(a.data),
            device=a.device, checkpoint_minutes=a.checkpoint_minutes, jobs_per_gpu=a.jobs_per_gpu,
            shared_stage=Path(a.shared_stage) if a.shared_stage else None, on_divergence=a.on_divergence,
            log=_log_to(a.log)).run()


def cmd_train_shared(a) -> None:
    import torch
    from dfcil_core.run import train_shared_stage
    if a.threads:
        torch.set_num_threads(a.threads)
    train_shared_stage(json.loads(a.recipe), a.seed, Path(a.out), Path(a.data), a.device, a.checkpoint_minutes,
                       a.jobs_per_gpu)


def cmd_stale(a) -> None:
    from dfcil_core.report import stale_results
    for path, digests in stale_results(Path(a.results_dir)):
        print(path if a.paths_only else f"{path}\t{', '.join(sorted(map(str, digests)))}")


def cmd_prepare_data(a) -> None:
    from dfcil_core.data import save_prepared
    save_prepared(json.loads(a.dataset), Path(a.out))


def cmd_summarize(a) -> None:
    from dfcil_core.report import summarize_run
    summarize_run(Path(a.run_dir), a.n_tasks, Path(a.out))


def cmd_tables(a) -> None:
    from dfcil_core.report import experiment_table
    experiment_table([Path(p) for p in a.summaries], Path(a.out_prefix), a.refuse_mixed_code)


def cmd_mlflow_import(a) -> None:
    from dfcil_core.mlflow_import import import_results
    import_results([Path(p) for p in a.summaries], a.tracking_uri, Path(a.marker),
                   paper_figures=[Path(p) for p in a.paper_figures])


def cmd_paper_tables(a) -> None:
    from dfcil_core.paper import paper_tables
    paper_tables([Path(p) for p in a.summaries], a.dataset, a.tasks, a.methods, Path(a.out_dir), a.paper, a.tables,
                 refuse_mixed_code=a.refuse_mixed_code)


def cmd_paper_plot(a) -> None:
    from dfcil_core import paper
    summaries = [Path(p) for p in a.summaries]
    if a.kind == "curves":
        paper.plot_curves(summaries, a.dataset, a.tasks, a.methods, Path(a.out))
    elif a.kind == "matrix":
        if len(a.methods) != 1:
            raise SystemExit("dfcil paper-plot matrix: give exactly one --methods")
        paper.plot_matrix(summaries, a.dataset, a.tasks, a.methods[0], Path(a.out))
    else:
        if len(a.tasks) != 1:
            raise SystemExit("dfcil paper-plot samples: give exactly one --tasks")
        paper.plot_samples(summaries, a.dataset, a.tasks[0], Path(a.out))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dfcil", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train-task", help="train one (experiment, method, seed, task) node")
    p.add_argument("--settings", required=True, help="JSON of the run's settings (config.run_settings)")
    p.add_argument("--experiment", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--task", type=int, required=True)
    p.add_argument("--out", required=True, help="task directory to write state.pt and metrics.json to")
    p.add_argument("--parent", help="the previous task's directory (omit for task 0)")
    p.add_argument("--data", required=True, help="the prepared dataset file (dfcil prepare-data)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--checkpoint-minutes", type=float, default=10.0,
                   help="save resumable progress this often (at epoch boundaries; 0: every epoch)")
    p.add_argument("--jobs-per-gpu", type=int, default=1,
                   help="with several visible GPUs, how many jobs share one (each claims a slot)")
    p.add_argument("--shared-stage", help="stage0.done.pt of the shared node computing this task's main stage")
    p.add_argument("--on-divergence", choices=["record", "fail"], default="record",
                   help="a task whose network did not learn it: record it in the metrics, or fail the job")
    p.add_argument("--log", help="append progress lines to this file too")
    p.set_defaults(func=cmd_train_task, end_without_teardown=True)

    p = sub.add_parser("train-shared", help="compute a main stage shared by several methods or splits")
    p.add_argument("--recipe", required=True, help="JSON from run.shared_recipe")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="directory for stage0.done.pt")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--checkpoint-minutes", type=float, default=10.0)
    p.add_argument("--jobs-per-gpu", type=int, default=1)
    p.set_defaults(func=cmd_train_shared, end_without_teardown=True)

    p = sub.add_parser("stale", help="task results made by other code than the installed package: one "
                                     "metrics.json per line with the code digest(s) that made it")
    p.add_argument("results_dir", nargs="?", default="results")
    p.add_argument("--paths-only", action="store_true",
                   help="only the paths (e.g. for snakemake --forcerun $(dfcil stale --paths-only))")
    p.set_defaults(func=cmd_stale)

    p = sub.add_parser("prepare-data", help="read a dataset once into a compact array file")
    p.add_argument("--dataset", required=True, help="JSON of the dataset settings (name, root, download, ...)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_prepare_data, end_without_teardown=True)

    p = sub.add_parser("summarize", help="accuracy matrix and metrics of one run (all its tasks)")
    p.add_argument("run_dir")
    p.add_argument("--n-tasks", type=int, required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_summarize)

    p = sub.add_parser("tables", help="mean ± std tables and the accuracy curve of one experiment")
    p.add_argument("summaries", nargs="+", help="summary.json files of the experiment's runs")
    p.add_argument("--out-prefix", required=True, help="writes PREFIX/final_accuracy.{md,tex,csv} and "
                                                       "PREFIX/accuracy_curve.png")
    p.add_argument("--refuse-mixed-code", action="store_true",
                   help="fail when the runs come from different versions of the code (default: say so)")
    p.set_defaults(func=cmd_tables)

    p = sub.add_parser("mlflow-import", help="import run summaries into MLflow (idempotent)")
    p.add_argument("summaries", nargs="+")
    p.add_argument("--tracking-uri", default="sqlite:///results/mlflow.db")
    p.add_argument("--marker", required=True, help="JSON file listing the imported run ids")
    p.add_argument("--paper-figures", nargs="*", default=[],
                   help="results/paper/<dataset>/*.png to log on the matching parent runs")
    p.set_defaults(func=cmd_mlflow_import)

    p = sub.add_parser("paper-tables", help="a paper's tables (+ extra columns) for one dataset, with "
                                            "the published numbers; missing summaries read '-'")
    p.add_argument("summaries", nargs="*", help="summary.json files (missing ones are cells not computed yet)")
    p.add_argument("--dataset", required=True, help="dataset id, e.g. cifar100")
    p.add_argument("--paper", default="abd_iccv2021", help="dfcil_core/published/<paper>.yaml: layout and numbers")
    p.add_argument("--tables", nargs="*", help="only these tables (default: the paper's and 'extras')")
    p.add_argument("--tasks", type=int, nargs="*", default=[], help="task counts to show as columns")
    p.add_argument("--methods", nargs="*", default=[], help="configured methods, in display order")
    p.add_argument("--out-dir", required=True, help="writes <table>.{md,tex,csv,html} here")
    p.add_argument("--refuse-mixed-code", action="store_true",
                   help="fail when the runs come from different versions of the code (default: say so)")
    p.set_defaults(func=cmd_paper_tables)

    p = sub.add_parser("paper-plot", help="a figure of the paper tables (PNG and SVG)")
    p.add_argument("kind", choices=["curves", "matrix", "samples"])
    p.add_argument("summaries", nargs="*")
    p.add_argument("--dataset", required=True)
    p.add_argument("--tasks", type=int, nargs="*", default=[])
    p.add_argument("--methods", nargs="*", default=[])
    p.add_argument("--out", required=True, help="the PNG; the SVG goes next to it")
    p.set_defaults(func=cmd_paper_plot)

    args = parser.parse_args(argv)
    from dfcil_core.config import ConfigError, Diverged
    try:
        args.func(args)
    except ConfigError as e:  # bad settings, data or parent state: a message, not a traceback
        print(f"dfcil {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Diverged as e:  # the task's network did not learn it and on_divergence is "fail"
        print(f"dfcil {args.command}: error: {e}", file=sys.stderr)
        sys.exit(3)
    if argv is None and getattr(args, "end_without_teardown", False):
        end_process()


def end_process() -> None:
    """End a torch job that succeeded at once, without the interpreter's teardown: after `import torch` (and the
    `torch._dynamo` that every torch optimizer imports) freeing every module and object takes about a second per
    job on a 2-core CPU (benchmarks/job_overhead.py), and a job has nothing left to clean up: its files are
    written, closed and renamed into place, its task lock goes with the process. Buffered output is flushed
    first. Only from the command line (`main()` without `argv`): a caller of `main` in Python keeps its process."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
