"""The results layer: run summaries as tidy pandas frames, their statistics over seeds, and what a reader must be
told about a group of runs. The experiment tables (report.py), the paper tables (paper.py) and the MLflow view
(mlflow_import.py) all read runs through it:

  read_runs        one row per run (experiment, method, seed): its metrics, settings and records
  task_frame       one row per run and task: the accuracy on the tasks seen after it
  seed_statistics  one row per group of runs (a method; a method in a column of the paper tables): each metric's
                   mean and population std over seeds, the seeds, the diverged runs, the code versions
  accuracy_curves  per group and task: the mean and population std over seeds of the accuracy on the seen tasks

The statistics are statistics.fmean and pstdev applied by groupby, not pandas' own mean and std, which round
differently: a table's numbers do not change in the last digit with the library that computes them.

pandas is imported by the function that builds the frame, not here: the workflow's parse imports dfcil_core.paper,
which imports this module, and it must stay fast.
"""

from __future__ import annotations

import json
import math
from operator import itemgetter
from pathlib import Path
from statistics import fmean, pstdev
from typing import TYPE_CHECKING, Callable, Iterable

from dfcil_core.config import ConfigError, first_difference

if TYPE_CHECKING:
    import pandas as pd

METRICS = ("final_accuracy", "average_incremental_accuracy", "forgetting")
UNRECORDED = "unrecorded"  # a result written before code digests were recorded
DIVERGED_MARK = "†"
DIVERGENCE_FOOTNOTE = (f"{DIVERGED_MARK} The mean includes runs whose network diverged at a task (its loss on that "
                       "task's own training images, over that task's classes, ended near chance or non-finite): ")


# --- reading ------------------------------------------------------------------------------------------------

def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} is not valid JSON (truncated?): {path}: {e}") from None


def read_summary(path: Path) -> dict:
    return read_json(path, "run summary")


def job_seconds(summary: dict) -> float:
    """The run's training jobs' own time: the sum over tasks of each task's wall time. A task whose training ran
    in a stage shared between runs (`train_shared_stage`) and was only loaded by its job counts the training time
    the stage recorded, so that every run pays for all of its tasks."""
    if not summary.get("tasks"):
        return summary.get("wall_seconds_total", 0.0)
    return sum(max(task.get("wall_seconds") or 0.0,
                   (task.get("train_seconds") or 0.0) + (task.get("end_task_seconds") or 0.0))
               for task in summary["tasks"])


def _last_task(summary: dict) -> dict:
    return (summary.get("tasks") or [{}])[-1]


# The runs frame's columns, each read from a run's summary.
RUN_COLUMNS: dict[str, Callable[[dict], object]] = {
    **{key: itemgetter(key) for key in ("experiment", "method", "seed", "n_tasks", *METRICS, "accuracy_global",
                                          "settings")},
    "train_seconds_total": lambda summary: summary.get("train_seconds_total"),
    "job_seconds": job_seconds,
    "device": lambda summary: str(summary.get("device")),
    # What the method keeps at the end (seeds agree on it; None in runs that predate the record).
    "stored_memory": lambda summary: _last_task(summary).get("stored_memory"),
    # seed -> tasks, the shape of a group's (diverged_seeds): a group merges its runs' records.
    "diverged": lambda summary: ({summary["seed"]: summary["diverged_tasks"]} if summary.get("diverged_tasks")
                                 else {}),
    "code_digests": lambda summary: summary.get("code_digests") or [UNRECORDED],
    "summary": lambda summary: summary,
}


def read_runs(paths: Iterable[Path]) -> pd.DataFrame:
    """The runs frame: one row per summary.json (and its `path`), in the order given (the order of a table's
    rows)."""
    import pandas as pd
    records = []
    for path in map(Path, paths):
        summary = read_summary(path)
        records.append({**{column: read(summary) for column, read in RUN_COLUMNS.items()}, "path": path})
    return pd.DataFrame(records, columns=[*RUN_COLUMNS, "path"])


def task_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run and task (counted from 1): the run's identity and `accuracy_global` after that task."""
    tasks = runs[["experiment", "method", "seed", "n_tasks", "accuracy_global"]].explode("accuracy_global")
    tasks["task"] = tasks.groupby(level=0).cumcount() + 1
    return tasks.astype({"accuracy_global": float}).reset_index(drop=True)


# --- statistics over seeds ----------------------------------------------------------------------------------

def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and population standard deviation (ddof=0), as the tables report them."""
    values = list(values)
    if not values:
        raise ValueError("mean_std needs at least one value")
    return fmean(values), pstdev(values)


def _over_seeds(statistic: Callable[[list], float]) -> Callable[[pd.Series], float]:
    """A groupby aggregation by `statistic`, NaN where a run lacks the value: the tables then say n/a rather than
    give a mean over fewer seeds."""
    def aggregate(values: pd.Series) -> float:
        return math.nan if values.isna().any() else statistic(values.tolist())
    return aggregate


MEAN, POPULATION_STD = _over_seeds(fmean), _over_seeds(pstdev)


def first(values: pd.Series):
    """A groupby aggregation: the group's first value (settings its runs share, checked by common_settings)."""
    return values.iloc[0]


def distinct(values: pd.Series) -> list:
    """A groupby aggregation: the sorted distinct values."""
    return sorted(set(values))


def diverged_seeds(diverged: Iterable[dict]) -> dict[int, list[int]]:
    """seed -> the tasks at which its network diverged, merged from runs' records, by seed."""
    return dict(sorted(item for record in diverged for item in record.items()))


def code_versions(code_digests: Iterable[list[str]]) -> list[str]:
    """The sorted package digests of the code that made the runs."""
    return sorted({digest for digests in code_digests for digest in digests})


def seed_statistics(runs: pd.DataFrame, by: list[str], metrics: Iterable[str] = METRICS, **more) -> pd.DataFrame:
    """One row per group of `runs` by the columns `by`, in order of first appearance: `<metric>_mean` and
    `<metric>_std` over the group's runs, its `seeds`, its `diverged` seeds (seed -> tasks), its `code_versions`,
    and the `more` named aggregations (pandas' `name=(column, function)`)."""
    statistics = {f"{metric}_{name}": (metric, aggregate) for metric in metrics
                  for name, aggregate in (("mean", MEAN), ("std", POPULATION_STD))}
    return runs.groupby(by, sort=False).agg(
        seeds=("seed", distinct), diverged=("diverged", diverged_seeds), code_versions=("code_digests", code_versions),
        **statistics, **more).reset_index()


def accuracy_curves(runs: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per group of `by` and task: the mean and population std over seeds of the accuracy on the seen tasks."""
    return task_frame(runs).groupby([*by, "task"], sort=False).agg(
        mean=("accuracy_global", MEAN), std=("accuracy_global", POPULATION_STD)).reset_index()


def mean_std_of(stats, metric: str) -> tuple[float, float] | None:
    """A metric's (mean, std) from a row of seed_statistics; None where it is undefined."""
    mean = stats[f"{metric}_mean"]
    return None if math.isnan(mean) else (mean, stats[f"{metric}_std"])


def semicolon_list(values: Iterable) -> str:
    """A list in one CSV field: '0;1;2'."""
    return ";".join(map(str, values))


def mean_std_text(value: tuple[float, float] | None, missing: str) -> str:
    return missing if value is None else f"{value[0]:.1f} ± {value[1]:.1f}"


def common_settings(method: str, runs: pd.DataFrame) -> dict:
    """The settings shared by one method's runs; refuses runs that differ in anything but the seed, since
    averaging them would report a mean over different experiments."""
    seeds = list(runs.seed)
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"method {method!r} has several runs with the same seed: {sorted(seeds)}")
    reference = runs.iloc[0]
    for run in runs.iloc[1:].itertuples():
        difference = first_difference(reference.settings, run.settings)
        if difference:
            key, ours, theirs = difference
            raise ConfigError(f"method {method!r}: seeds {reference.seed} and {run.seed} differ in setting {key!r} "
                              f"({ours!r} vs {theirs!r}); refusing to average runs with different settings")
        if run.n_tasks != reference.n_tasks:
            raise ConfigError(f"method {method!r}: seeds {reference.seed} and {run.seed} have "
                              f"{reference.n_tasks} and {run.n_tasks} tasks")
    return reference.settings


def check_common_settings(runs: pd.DataFrame, by: list[str]) -> None:
    """common_settings for each group of runs by `by` (which includes the method)."""
    for _, group in runs.groupby(by, sort=False):
        common_settings(group.method.iloc[0], group)


# --- what a reader must be told about a group of runs -------------------------------------------------------

def divergence_note(label: str, diverged: dict[int, list[int]]) -> str:
    """e.g. 'LwF: seed 0 (task 4), seed 7 (tasks 3, 4)'."""
    return f"{label}: " + ", ".join(
        f"seed {seed} (task{'s' if len(tasks) > 1 else ''} {', '.join(map(str, tasks))})"
        for seed, tasks in diverged.items())


def code_line(runs: pd.DataFrame, label_of: Callable[[str], str]) -> str:
    """Which code made the runs: one package digest, or each digest with the runs it made."""
    by_digest: dict[str, list[str]] = {}
    for method, seed, digests in sorted(zip(runs.method, runs.seed, runs.code_digests), key=lambda r: r[:2]):
        for digest in digests:
            by_digest.setdefault(digest, []).append(f"{label_of(method)} seed {seed}")
    if len(by_digest) == 1:
        return f"Code: package digest {next(iter(by_digest))} (every run)."
    return ("Code: MIXED, the runs come from different versions of the code (`dfcil stale` lists them): "
            + "; ".join(f"{digest}: {', '.join(names)}" for digest, names in by_digest.items()) + ".")


def check_code_versions(runs: pd.DataFrame, refuse_mixed: bool, what: str) -> None:
    digests = code_versions(runs.code_digests)
    if refuse_mixed and len(digests) > 1:
        raise ConfigError(f"{what}: the runs come from {len(digests)} versions of the code ({digests}) and "
                          "refuse_mixed_code is set; rerun the stale ones (`dfcil stale`)")
