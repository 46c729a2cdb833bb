"""Run summaries and experiment tables: the accuracy matrix, the paper's metrics, mean ± std over seeds.

Orientation and definitions follow the reference (ABD code, §7): acc[j][i] is the accuracy on task j's
test set after training task i (None where j > i, task j not seen yet);
  accuracy_global[i]           = mean over j <= i of acc[j][i]
  final accuracy               = accuracy_global[T-1]
  average incremental accuracy = mean over i of accuracy_global[i]
  forgetting                   = mean over j < T-1 of (max over j <= i < T-1 of acc[j][i]) - acc[j][T-1]

Neither torch nor matplotlib is imported at module level: summarizing a run must stay cheap, and only
`experiment_table` needs the method labels (which live next to the torch learners) and the plot.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean, pstdev
from typing import Iterable

from dfcil_core.atomic import write_atomically, write_text_atomically
from dfcil_core.config import ConfigError, flatten
from dfcil_core.methods import display_name

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


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and population standard deviation (ddof=0), as the tables report them."""
    values = list(values)
    if not values:
        raise ValueError("mean_std needs at least one value")
    return fmean(values), pstdev(values)


# --- one run ------------------------------------------------------------------------------------------

def _task_metrics_path(run_dir: Path, task: int) -> Path:
    return run_dir / f"task{task}" / METRICS_FILE


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} is not valid JSON (truncated?): {path}: {e}") from None


def _read_task_record(run_dir: Path, task: int) -> dict:
    path = _task_metrics_path(run_dir, task)
    record = _read_json(path, f"metrics of task {task}")
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


# --- what a reader must be told about a group of runs ---------------------------------------------------

UNRECORDED = "unrecorded"  # a result written before code digests were recorded
DIVERGED_MARK = "†"


def diverged_seeds(runs: list[dict]) -> dict[int, list[int]]:
    """seed -> the tasks at which its network diverged, for the runs that have any."""
    return {run["seed"]: run["diverged_tasks"] for run in sorted(runs, key=lambda r: r["seed"])
            if run.get("diverged_tasks")}


def divergence_note(label: str, diverged: dict[int, list[int]]) -> str:
    """e.g. 'LwF: seed 0 (task 4), seed 7 (tasks 3, 4)'."""
    return f"{label}: " + ", ".join(
        f"seed {seed} (task{'s' if len(tasks) > 1 else ''} {', '.join(map(str, tasks))})"
        for seed, tasks in diverged.items())


DIVERGENCE_FOOTNOTE = (f"{DIVERGED_MARK} The mean includes runs whose network diverged at a task (its loss on that "
                       "task's own training images, over that task's classes, ended near chance or non-finite): ")


def code_line(runs: list[dict], label_of=lambda method: method) -> str:
    """Which code made the runs: one package digest, or each digest with the runs it made."""
    by_digest: dict[str, list[str]] = {}
    for run in sorted(runs, key=lambda r: (r["method"], r["seed"])):
        for digest in run.get("code_digests") or [UNRECORDED]:
            by_digest.setdefault(digest, []).append(f"{label_of(run['method'])} seed {run['seed']}")
    if len(by_digest) == 1:
        return f"Code: package digest {next(iter(by_digest))} (every run)."
    return ("Code: MIXED, the runs come from different versions of the code (`dfcil stale` lists them): "
            + "; ".join(f"{digest}: {', '.join(names)}" for digest, names in by_digest.items()) + ".")


def check_code_versions(runs: list[dict], refuse_mixed: bool, what: str) -> None:
    digests = {d for run in runs for d in run.get("code_digests") or [UNRECORDED]}
    if refuse_mixed and len(digests) > 1:
        raise ConfigError(f"{what}: the runs come from {len(digests)} versions of the code ({sorted(digests)}) and "
                          "refuse_mixed_code is set; rerun the stale ones (`dfcil stale`)")


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
        digests = task_code_digests(_read_json(path, "task metrics"))
        if digests != [current]:
            stale.append((path, digests))
    return stale


# --- one experiment -----------------------------------------------------------------------------------

def read_summary(path: Path) -> dict:
    return _read_json(path, "run summary")


def group_by_method(runs: list[dict]) -> dict[str, list[dict]]:
    """Runs per method, methods in the order they first appear."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(run["method"], []).append(run)
    return groups


def common_settings(method: str, runs: list[dict]) -> dict:
    """The settings shared by one method's runs; refuses runs that differ in anything but the seed,
    since averaging them would report a mean over different experiments."""
    seeds = [run["seed"] for run in runs]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"method {method!r} has several runs with the same seed: {sorted(seeds)}")
    reference = flatten(runs[0]["settings"])
    for run in runs[1:]:
        other = flatten(run["settings"])
        for key in sorted(reference.keys() | other.keys()):
            if reference.get(key) != other.get(key):
                raise ConfigError(f"method {method!r}: seeds {runs[0]['seed']} and {run['seed']} differ in "
                                  f"setting {key!r} ({reference.get(key)!r} vs {other.get(key)!r}); "
                                  "refusing to average runs with different settings")
        if run["n_tasks"] != runs[0]["n_tasks"]:
            raise ConfigError(f"method {method!r}: seeds {runs[0]['seed']} and {run['seed']} have "
                              f"{runs[0]['n_tasks']} and {run['n_tasks']} tasks")
    return runs[0]["settings"]


@dataclass
class MethodRow:
    """One table row: a method's metrics as mean and population std over its seeds."""

    method: str
    label: str
    final_accuracy: tuple[float, float]
    average_incremental_accuracy: tuple[float, float]
    forgetting: tuple[float, float] | None  # None for single-task experiments
    seeds: list[int]
    train_seconds_mean: float
    accuracy_global: list[tuple[float, float]]  # per task, for the curve
    diverged: dict[int, list[int]]  # seed -> tasks at which its network diverged


def method_row(method: str, runs: list[dict]) -> MethodRow:
    common_settings(method, runs)
    forgetting_values = [run["forgetting"] for run in runs]
    return MethodRow(
        method=method,
        label=display_name(method),
        final_accuracy=mean_std(run["final_accuracy"] for run in runs),
        average_incremental_accuracy=mean_std(run["average_incremental_accuracy"] for run in runs),
        forgetting=None if None in forgetting_values else mean_std(forgetting_values),
        seeds=sorted(run["seed"] for run in runs),
        train_seconds_mean=fmean(run["train_seconds_total"] for run in runs),
        accuracy_global=[mean_std(values) for values in zip(*(run["accuracy_global"] for run in runs))],
        diverged=diverged_seeds(runs),
    )


def format_mean_std(value: tuple[float, float] | None) -> str:
    return "n/a" if value is None else f"{value[0]:.1f} ± {value[1]:.1f}"


def protocol_line(settings: dict, n_tasks: int, seeds: list[int]) -> str:
    """One sentence saying how the numbers were obtained, from the settings of the experiment's runs."""
    train, model = settings.get("train", {}), settings.get("model", {})
    model_details = ", ".join(f"{k}={v}" for k, v in model.items() if k != "name")
    model_text = model.get("name", "model") + (f" ({model_details})" if model_details else "")
    return (f"Protocol: {settings.get('dataset', {}).get('name', '?')}, {settings.get('first_split')} classes in "
            f"the first task then {settings.get('other_split')} per task ({n_tasks} tasks), "
            f"{train.get('epochs', '?')} epochs per task, batch size {train.get('batch_size', '?')}, {model_text}; "
            f"mean ± population std over seeds {', '.join(str(s) for s in seeds)}.")


TABLE_HEADER = ("Method", "Final accuracy (%)", "Avg. incremental accuracy (%)", "Forgetting (%)",
                "Seeds", "Train s / run")


def _table_cells(row: MethodRow) -> list[str]:
    mark = f" {DIVERGED_MARK}" if row.diverged else ""
    return [row.label + mark, format_mean_std(row.final_accuracy) + mark,
            format_mean_std(row.average_incremental_accuracy) + mark, format_mean_std(row.forgetting) + mark,
            str(len(row.seeds)), f"{row.train_seconds_mean:.1f}"]


def footnotes(rows: list[MethodRow], runs: list[dict]) -> list[str]:
    """What the table's reader must know: diverged runs inside the means, and which code made the runs."""
    notes = []
    if any(row.diverged for row in rows):
        notes.append(DIVERGENCE_FOOTNOTE + "; ".join(divergence_note(row.label, row.diverged)
                                                    for row in rows if row.diverged) + ".")
    return notes + [code_line(runs, display_name)]


def markdown_table(experiment: str, rows: list[MethodRow], protocol: str, notes: list[str] = ()) -> str:
    lines = [f"# {experiment}: final accuracy", "",
             "| " + " | ".join(TABLE_HEADER) + " |",
             "|---|" + "---:|" * (len(TABLE_HEADER) - 1)]
    lines += ["| " + " | ".join(_table_cells(row)) + " |" for row in rows]
    return "\n".join(lines + ["", protocol, *(f"\n{note}" for note in notes), ""])


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$",
                  "†": r"\dag{}"}


def latex_escape(text: str) -> str:
    # Character by character, so an inserted escape is never escaped again.
    return "".join(_LATEX_ESCAPES.get(char, char) for char in text)


def latex_table(experiment: str, rows: list[MethodRow], protocol: str, notes: list[str] = ()) -> str:
    def line(cells) -> str:
        return " & ".join(latex_escape(cell) for cell in cells) + r" \\"

    label = "".join(c if c.isalnum() else "-" for c in experiment)
    return "\n".join([
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{latex_escape(experiment)}. {latex_escape(' '.join([protocol, *notes]))}}}",
        rf"\label{{tab:final-accuracy-{label}}}",
        r"\begin{tabular}{l" + "r" * (len(TABLE_HEADER) - 1) + "}",
        r"\toprule",
        line(TABLE_HEADER),
        r"\midrule",
        *(line(_table_cells(row)) for row in rows),
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
        "",
    ])


CSV_COLUMNS = ("method", "label", "final_accuracy_mean", "final_accuracy_std", "aia_mean", "aia_std",
               "forgetting_mean", "forgetting_std", "n_seeds", "seeds", "train_seconds_mean", "diverged_seeds")


def csv_table(rows: list[MethodRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        forgetting_cells = row.forgetting if row.forgetting is not None else ("", "")
        writer.writerow([row.method, row.label, *row.final_accuracy, *row.average_incremental_accuracy,
                         *forgetting_cells, len(row.seeds), ";".join(str(s) for s in row.seeds),
                         row.train_seconds_mean, ";".join(str(s) for s in row.diverged)])
    return buffer.getvalue()


def plot_accuracy_curves(experiment: str, rows: list[MethodRow], out: Path) -> None:
    """accuracy_global after each task, mean over seeds with a ±std band, one line per method."""
    # The object API with an explicit Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    n_tasks = max(len(row.accuracy_global) for row in rows)
    for row in rows:
        tasks = range(1, len(row.accuracy_global) + 1)
        means = [mean for mean, _ in row.accuracy_global]
        (line,) = axes.plot(tasks, means, marker="o", label=row.label)
        axes.fill_between(tasks, [m - s for m, s in row.accuracy_global], [m + s for m, s in row.accuracy_global],
                          color=line.get_color(), alpha=0.2, linewidth=0)
    axes.set_xticks(range(1, n_tasks + 1))
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
    runs = [read_summary(path) for path in summaries]
    experiments = sorted({run["experiment"] for run in runs})
    if len(experiments) != 1:
        raise ConfigError(f"the summaries belong to several experiments {experiments}; tabulate each on its own")
    experiment = experiments[0]
    check_code_versions(runs, refuse_mixed_code, f"experiment {experiment!r}")
    rows = [method_row(method, group) for method, group in group_by_method(runs).items()]
    seeds = sorted({run["seed"] for run in runs})
    protocol = protocol_line(runs[0]["settings"], runs[0]["n_tasks"], seeds)
    notes = footnotes(rows, runs)
    out_prefix.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out_prefix / "final_accuracy.md", markdown_table(experiment, rows, protocol, notes))
    write_text_atomically(out_prefix / "final_accuracy.tex", latex_table(experiment, rows, protocol, notes))
    write_text_atomically(out_prefix / "final_accuracy.csv", csv_table(rows))
    plot_accuracy_curves(experiment, rows, out_prefix / "accuracy_curve.png")
