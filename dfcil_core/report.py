"""Run summaries and experiment tables: the accuracy matrix, the paper's metrics, mean ± std over seeds.

Orientation and definitions follow the reference (ABD code, §7): acc[j][i] is the accuracy on task j's
test set after training task i (None where j > i, task j not seen yet);
  accuracy_global[i]           = mean over j <= i of acc[j][i]
  final accuracy               = accuracy_global[T-1]
  average incremental accuracy = mean over i of accuracy_global[i]
  forgetting                   = mean over j < T-1 of (max over j <= i < T-1 of acc[j][i]) - acc[j][T-1]

Neither torch, matplotlib nor pandas is imported at module level: summarizing a run must stay cheap, and only
`experiment_table` needs the results frames (dfcil_core.results) and the plot.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING

from dfcil_core.atomic import write_atomically, write_text_atomically
from dfcil_core.config import ConfigError
from dfcil_core.methods import display_name
from dfcil_core.results import (DIVERGED_MARK, DIVERGENCE_FOOTNOTE, METRICS, UNRECORDED, accuracy_curves,
                                check_code_versions, check_common_settings, code_line, divergence_note, mean_std_of,
                                mean_std_text, read_json, read_runs, seed_statistics, semicolon_list)
from dfcil_core.table import Table

if TYPE_CHECKING:
    import pandas as pd

# Written by dfcil_core.run, not imported from there because that module imports torch.
METRICS_FILE = "metrics.json"

# Keys summarize_run reads from every task's metrics.json.
REQUIRED_TASK_KEYS = ("experiment", "method", "seed", "task", "fingerprint", "parent_fingerprint",
                      "accuracy_per_task", "train_images", "train_seconds", "wall_seconds",
                      "peak_memory_mb", "settings")

Matrix = list[list[float | None]]


# --- metrics ------------------------------------------------------------------------------------------

def accuracy_matrix(accuracy_per_task: list[list[float]]) -> Matrix:
    """acc[j][i] from the per-task records, where `accuracy_per_task[i]` lists task i's accuracies on
    the test sets of tasks 0..i."""
    n = len(accuracy_per_task)
    return [[accuracy_per_task[i][j] if j <= i else None for i in range(n)] for j in range(n)]


def accuracy_global(matrix: Matrix) -> list[float]:
    """Mean accuracy over the tasks seen so far, after each task."""
    return [fmean(matrix[j][i] for j in range(i + 1)) for i in range(len(matrix))]


def final_accuracy(matrix: Matrix) -> float:
    return accuracy_global(matrix)[-1]


def average_incremental_accuracy(matrix: Matrix) -> float:
    return fmean(accuracy_global(matrix))


def forgetting(matrix: Matrix) -> float | None:
    """Mean drop from each earlier task's best accuracy to its final one; None for a single task."""
    last = len(matrix) - 1
    if last < 1:
        return None
    return fmean(max(matrix[j][i] for i in range(j, last)) - matrix[j][last] for j in range(last))


# --- one run ------------------------------------------------------------------------------------------

def _task_metrics_path(run_dir: Path, task: int) -> Path:
    return run_dir / f"task{task}" / METRICS_FILE


def _read_task_record(run_dir: Path, task: int) -> dict:
    path = _task_metrics_path(run_dir, task)
    record = read_json(path, f"metrics of task {task}")
    missing = [key for key in REQUIRED_TASK_KEYS if key not in record]
    if missing:
        raise ConfigError(f"{path} lacks {missing}")
    if record["task"] != task or len(record["accuracy_per_task"]) != task + 1:
        raise ConfigError(f"{path} should hold task {task} with {task + 1} accuracies, but holds task "
                          f"{record['task']} with {len(record['accuracy_per_task'])}")
    return record


def _check_same_run(run_dir: Path, records: list[dict]) -> None:
    """All tasks must come from one run: same identity, and each task trained from its predecessor's state
    (a stale task directory left by other settings would otherwise be summarized silently)."""
    first = records[0]
    for t, record in enumerate(records[1:], start=1):
        path = _task_metrics_path(run_dir, t)
        for key in ("experiment", "method", "seed"):
            if record[key] != first[key]:
                raise ConfigError(f"{path} has {key}={record[key]!r} but task 0 has {first[key]!r}")
        if record["parent_fingerprint"] != records[t - 1]["fingerprint"]:
            raise ConfigError(f"{path} was trained from a state with fingerprint {record['parent_fingerprint']}, "
                              f"not task {t - 1}'s {records[t - 1]['fingerprint']}; rerun task {t}")


def summarize_run(run_dir: Path, n_tasks: int, out: Path) -> dict:
    """Summarize tasks 0..n_tasks-1 of one run (one method and seed) and write the summary to `out`."""
    if n_tasks < 1:
        raise ConfigError(f"n_tasks must be positive, got {n_tasks}")
    records = [_read_task_record(run_dir, t) for t in range(n_tasks)]
    _check_same_run(run_dir, records)
    matrix = accuracy_matrix([r["accuracy_per_task"] for r in records])
    last = records[-1]
    train_seconds = sum(r["train_seconds"] for r in records)
    train_images = sum(r["train_images"] for r in records)
    summary = {
        "experiment": last["experiment"],
        "method": last["method"],
        "seed": last["seed"],
        "n_tasks": n_tasks,
        "fingerprint": last["fingerprint"],
        "accuracy_matrix": matrix,
        "accuracy_global": accuracy_global(matrix),
        "final_accuracy": final_accuracy(matrix),
        "average_incremental_accuracy": average_incremental_accuracy(matrix),
        "forgetting": forgetting(matrix),
        "train_seconds_total": train_seconds,
        "wall_seconds_total": sum(r["wall_seconds"] for r in records),
        "peak_memory_mb": max(r["peak_memory_mb"] for r in records),
        "images_per_second": train_images / train_seconds if train_seconds > 0 else None,
        "device": last.get("device"),
        "git_commit": last.get("git_commit"),
        "class_order": last.get("class_order"),
        # Tasks whose network did not learn them (trainer.current_task_fit), and the code that made the run.
        "diverged_tasks": [r["task"] for r in records if r.get("diverged")],
        "code_digests": sorted({d for r in records for d in task_code_digests(r)}),
        "settings": last["settings"],
        "tasks": [{k: v for k, v in r.items() if k != "settings"} for r in records],
    }
    write_text_atomically(out, json.dumps(summary, indent=1))
    return summary


# --- which code made the results ------------------------------------------------------------------------

def task_code_digests(record: dict) -> list[str]:
    """The code that made one task: its job's, and that of the shared node its main stage came from."""
    shared = record.get("shared_stage_code_digest")
    return sorted({record.get("code_digest") or UNRECORDED, *([shared] if shared else [])})


def stale_results(results_dir: Path) -> list[tuple[Path, list[str]]]:
    """Every task's metrics.json under `results_dir` that was made (wholly or through a shared main stage)
    by other code than the installed package, with the digest(s) that made it."""
    from dfcil_core.provenance import code_digest
    current = code_digest()
    stale = []
    for path in sorted(results_dir.glob(f"*/*/seed*/task*/{METRICS_FILE}")):
        digests = task_code_digests(read_json(path, "task metrics"))
        if digests != [current]:
            stale.append((path, digests))
    return stale


# --- one experiment -----------------------------------------------------------------------------------

TABLE_HEADER = ["Method", "Final accuracy (%)", "Avg. incremental accuracy (%)", "Forgetting (%)", "Seeds",
                "Train s / run"]
CSV_COLUMNS = ["method", "label", "final_accuracy_mean", "final_accuracy_std", "aia_mean", "aia_std",
               "forgetting_mean", "forgetting_std", "n_seeds", "seeds", "train_seconds_mean", "diverged_seeds"]
# seed_statistics' columns that the CSV names shorter.
CSV_NAMES = {"average_incremental_accuracy_mean": "aia_mean", "average_incremental_accuracy_std": "aia_std",
             "train_seconds_total_mean": "train_seconds_mean"}


def protocol_line(settings: dict, n_tasks: int, seeds: list[int]) -> str:
    """One sentence saying how the numbers were obtained, from the settings of the experiment's runs."""
    train, model = settings.get("train", {}), settings.get("model", {})
    model_details = ", ".join(f"{k}={v}" for k, v in model.items() if k != "name")
    model_text = model.get("name", "model") + (f" ({model_details})" if model_details else "")
    return (f"Protocol: {settings.get('dataset', {}).get('name', '?')}, {settings.get('first_split')} classes in "
            f"the first task then {settings.get('other_split')} per task ({n_tasks} tasks), "
            f"{train.get('epochs', '?')} epochs per task, batch size {train.get('batch_size', '?')}, {model_text}; "
            f"mean ± population std over seeds {', '.join(str(s) for s in seeds)}.")


def method_statistics(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per method, in the order the methods first appear: the metrics and the training time over its
    seeds, which must differ in nothing else."""
    check_common_settings(runs, ["method"])
    statistics = seed_statistics(runs, ["method"], [*METRICS, "train_seconds_total"])
    return statistics.assign(label=statistics.method.map(display_name))


def _cells(method: dict) -> list[str]:
    mark = f" {DIVERGED_MARK}" if method["diverged"] else ""
    return [method["label"] + mark, *(mean_std_text(mean_std_of(method, metric), "n/a") + mark for metric in METRICS),
            str(len(method["seeds"])), f"{method['train_seconds_total_mean']:.1f}"]


def footnotes(methods: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    """What the table's reader must know: diverged runs inside the means, and which code made the runs."""
    diverged = [divergence_note(method["label"], method["diverged"])
                for method in methods.to_dict("records") if method["diverged"]]
    return ([DIVERGENCE_FOOTNOTE + "; ".join(diverged) + "."] if diverged else []) + [code_line(runs, display_name)]


def final_accuracy_table(experiment: str, methods: pd.DataFrame, protocol: str, notes: list[str]) -> Table:
    data = methods.assign(n_seeds=methods.seeds.map(len), seeds=methods.seeds.map(semicolon_list),
                          diverged_seeds=methods.diverged.map(semicolon_list))
    return Table(title=f"{experiment}: final accuracy", header=TABLE_HEADER,
                 rows=[_cells(method) for method in methods.to_dict("records")],
                 data=data.rename(columns=CSV_NAMES)[CSV_COLUMNS],
                 caption=f"{experiment}. {' '.join([protocol, *notes])}", label=f"final-accuracy-{experiment}",
                 colspec="l" + "r" * (len(TABLE_HEADER) - 1), notes=[protocol, *notes])


def plot_mean_std(axes, curve: pd.DataFrame, **style) -> None:
    """One method's accuracy curve (a group of accuracy_curves): the mean after each task, in a band of ±std."""
    (line,) = axes.plot(curve.task, curve["mean"], marker="o", **style)
    axes.fill_between(curve.task, curve["mean"] - curve["std"], curve["mean"] + curve["std"], color=line.get_color(),
                      alpha=0.2, linewidth=0)


def plot_accuracy_curves(experiment: str, curves: pd.DataFrame, label_of, out: Path) -> None:
    """accuracy_global after each task, mean over seeds with a ±std band, one line per method."""
    # The object API with an explicit Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for method, curve in curves.groupby("method", sort=False):
        plot_mean_std(axes, curve, label=label_of(method))
    axes.set_xticks(range(1, curves.task.max() + 1))
    axes.set_xlabel("Tasks trained")
    axes.set_ylabel("Accuracy on seen tasks (%)")
    axes.set_title(experiment)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    # No "Software" metadata: the file then depends on the data only, not on the matplotlib version.
    write_atomically(out, lambda tmp: figure.savefig(tmp, format="png", metadata={"Software": None}))


def experiment_table(summaries: list[Path], out_prefix: Path, refuse_mixed_code: bool = False) -> None:
    """Write out_prefix/final_accuracy.{md,tex,csv} and out_prefix/accuracy_curve.png for one experiment.
    Cells that average a diverged run are marked, and the code versions are named (or, with
    `refuse_mixed_code`, runs of several versions are refused)."""
    if not summaries:
        raise ConfigError("no run summaries given")
    runs = read_runs(summaries)
    experiments = sorted(set(runs.experiment))
    if len(experiments) != 1:
        raise ConfigError(f"the summaries belong to several experiments {experiments}; tabulate each on its own")
    experiment = experiments[0]
    check_code_versions(runs, refuse_mixed_code, f"experiment {experiment!r}")
    methods = method_statistics(runs)
    protocol = protocol_line(runs.settings.iloc[0], runs.n_tasks.iloc[0], sorted(set(runs.seed)))
    table = final_accuracy_table(experiment, methods, protocol, footnotes(methods, runs))
    table.write(out_prefix / "final_accuracy", ("md", "tex", "csv"))
    plot_accuracy_curves(experiment, accuracy_curves(runs, ["method"]), display_name, out_prefix / "accuracy_curve.png")
