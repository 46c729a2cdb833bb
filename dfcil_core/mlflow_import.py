"""Import run summaries into MLflow: a parent run per (experiment, method), a child run per seed.

Idempotent: every run carries a deterministic `run_key` tag and a `content_hash` tag of what was imported
into it. A run whose hash matches is left alone; one whose hash differs is deleted (a parent together with
its children) and recreated, so importing twice never duplicates runs or metric history. The content hash
is the last thing written to a run, so a run half-written by an interrupted import never matches and is
replaced by the next import.

MLflow is imported lazily: it is slow to import and only this command needs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dfcil_core.atomic import write_text_atomically
from dfcil_core.config import ConfigError, canonical_json, dataset_id, flatten
from dfcil_core.results import METRICS, code_versions, common_settings, mean_std_of, read_runs, seed_statistics

if TYPE_CHECKING:
    import pandas as pd

# Part of every content hash: bump it when what gets logged changes, so that the next import redoes all runs.
IMPORT_FORMAT = 3  # 2: divergence and code-digest tags; 3: run times from the training jobs

# MLflow 3's UI opens an experiment of this kind on its training runs (a GenAI experiment opens on traces).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"

# MLflow's limits (mlflow.utils.validation): longer param values are refused, larger batches too.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000

PARENT_RUN_TAG = "mlflow.parentRunId"
CURVE_FILE = "accuracy_curve.png"


@dataclass
class SeedRun:
    """One summary.json, the files logged with it and its trust tags."""

    summary_path: Path
    summary: dict
    images: list[tuple[str, Path]]  # (artifact folder "task<t>", PNG file)
    trust_tags: dict[str, str]

    @property
    def run_key(self) -> str:
        return f"{self.summary['experiment']}/{self.summary['method']}/seed{self.summary['seed']}"

    @property
    def content_hash(self) -> str:
        return _hash({"format": IMPORT_FORMAT, "summary": self.summary,
                      "images": [(folder, path.name, _file_hash(path)) for folder, path in self.images]})


def _hash(obj) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:16]


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _seed_run(run) -> SeedRun:
    """The SeedRun of a row of the runs frame."""
    images = [(f"task{t}", png) for t in range(run.n_tasks)
              for png in sorted((run.path.parent / f"task{t}").glob("*.png"))]
    return SeedRun(run.path, run.summary, images, _trust_tags(run.diverged, code_versions([run.code_digests])))


def _disable_telemetry() -> None:
    # No network here; setdefault keeps a user's explicit choice.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")


def artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """`<dir of the SQLite db>/mlflow-artifacts/<experiment>` as a file URI; None (MLflow's default) for
    other stores."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    db_path = tracking_uri[len(prefix):].split("?", 1)[0]
    if db_path in ("", ":memory:"):
        return None
    return (Path(db_path).resolve().parent / "mlflow-artifacts" / experiment).as_uri()


def _experiment_id(client, name: str, tracking_uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=artifact_location(tracking_uri, name),
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    if experiment.lifecycle_stage == "deleted":  # a deleted experiment's name cannot be reused: restore it
        client.restore_experiment(experiment.experiment_id)
    client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def training_times(summaries: list[dict]) -> tuple[int, int] | None:
    """(start, end) in ms of the training behind these runs: end = when the last task job finished, start = end
    minus a run's training time (its tasks' main stages, wherever a shared one ran, and end-of-task stages; the
    longest run's, for a method's parent run), so that the UI's Duration is the training, not the waits between
    jobs. None for results written before task jobs recorded `finished_at`."""
    tasks = [task for summary in summaries for task in summary["tasks"]]
    if any(task.get("finished_at") is None for task in tasks):
        return None
    end = max(task["finished_at"] for task in tasks)
    per_run = [sum(task["train_seconds"] + task.get("end_task_seconds", 0.0) for task in summary["tasks"])
               for summary in summaries]
    return int(1000 * (end - max(per_run))), int(1000 * end)


def _active_runs(client, experiment_id: str) -> list:
    from mlflow.entities import ViewType
    runs, page_token = [], None
    while True:
        page = client.search_runs([experiment_id], run_view_type=ViewType.ACTIVE_ONLY,
                                  max_results=MAX_ENTITIES_PER_BATCH, page_token=page_token)
        runs.extend(page)
        page_token = page.token
        if not page_token:
            return runs


def _param_value(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:MAX_PARAM_VALUE_LENGTH]


def _params(settings: dict, **extra) -> dict[str, str]:
    return {key: _param_value(value) for key, value in {**flatten(settings), **extra}.items()}


def _log_batch(client, run_id: str, metrics: list, params: dict[str, str]) -> None:
    """Everything in as few `log_batch` calls as MLflow's per-batch limits allow (one call per SQLite
    transaction is what makes the import fast)."""
    from mlflow.entities import Param
    pending_params = [Param(key, value) for key, value in params.items()]
    pending_metrics = list(metrics)
    while pending_params or pending_metrics:
        batch_params = pending_params[:MAX_PARAMS_TAGS_PER_BATCH]
        n_metrics = MAX_ENTITIES_PER_BATCH - len(batch_params)
        client.log_batch(run_id, metrics=pending_metrics[:n_metrics], params=batch_params)
        pending_params = pending_params[len(batch_params):]
        pending_metrics = pending_metrics[n_metrics:]


def _metrics(values: dict[str, float | None], step: int = 0) -> list:
    from mlflow.entities import Metric
    timestamp = int(time.time() * 1000)
    return [Metric(key, float(value), timestamp, step) for key, value in values.items() if value is not None]


def _seed_metrics(summary: dict) -> list:
    """Per-task curves at step = task index, and the run's scalars."""
    metrics = []
    matrix = summary["accuracy_matrix"]
    for t, task in enumerate(summary["tasks"]):
        per_task = {f"acc_task_{j}": matrix[j][t] for j in range(t + 1)}
        metrics += _metrics({"accuracy_seen": task.get("accuracy_seen"),
                             "accuracy_global": summary["accuracy_global"][t], **per_task,
                             "train_seconds": task.get("train_seconds"),
                             "images_per_second": task.get("images_per_second")}, step=t)
    metrics += _metrics({key: summary.get(key) for key in (
        "final_accuracy", "average_incremental_accuracy", "forgetting",
        "train_seconds_total", "wall_seconds_total", "peak_memory_mb")})
    return metrics


def _group_metrics(statistics: dict) -> list:
    """The number of seeds and each metric's mean and std over them (a row of seed_statistics)."""
    values: dict[str, float | None] = {"n_seeds": len(statistics["seeds"])}
    for key in METRICS:
        mean, std = mean_std_of(statistics, key) or (None, None)
        values |= {f"{key}_mean": mean, f"{key}_std": std}
    return _metrics(values)


class RunIndex:
    """The experiment's active runs, looked up by their run_key tag; deleting through it keeps it current."""

    def __init__(self, client, experiment_id: str):
        self.client = client
        self.runs = _active_runs(client, experiment_id)

    def find(self, run_key: str, parent_id: str | None = None) -> list:
        return [run for run in self.runs if run.data.tags.get("run_key") == run_key
                and (parent_id is None or run.data.tags.get(PARENT_RUN_TAG) == parent_id)]

    def children(self, parent_id: str) -> list:
        return [run for run in self.runs if run.data.tags.get(PARENT_RUN_TAG) == parent_id]

    def delete(self, run) -> None:
        doomed = [run, *self.children(run.info.run_id)]
        for stale in doomed:
            self.client.delete_run(stale.info.run_id)
        doomed_ids = {stale.info.run_id for stale in doomed}
        self.runs = [kept for kept in self.runs if kept.info.run_id not in doomed_ids]

    def current(self, run_key: str, content_hash: str, parent_id: str | None = None) -> str | None:
        """The id of the one up-to-date run with this key; deletes stale or duplicate ones and returns None."""
        found = self.find(run_key, parent_id)
        if len(found) == 1 and found[0].data.tags.get("content_hash") == content_hash:
            return found[0].info.run_id
        for stale in self.find(run_key):  # also those under another parent: they are orphans now
            self.delete(stale)
        return None


def _trust_tags(diverged: dict[int, list[int]], digests: list[str]) -> dict[str, str]:
    """What the table marks, as tags to filter on: diverged networks (seed -> tasks) and the code that made the
    runs."""
    tags = {"diverged": str(bool(diverged)).lower(), "code_digests": ",".join(digests)}
    if diverged:
        tags["diverged_tasks"] = "; ".join(f"seed {seed}: {', '.join(map(str, tasks))}"
                                           for seed, tasks in diverged.items())
    return tags


def _create_run(client, experiment_id: str, name: str, tags: dict[str, str], times: tuple[int, int] | None) -> str:
    start = times[0] if times else None
    return client.create_run(experiment_id, start_time=start, tags=tags, run_name=name).info.run_id


def _finish_run(client, run_id: str, content_hash: str, times: tuple[int, int] | None) -> None:
    # Last: the hash marks the run as completely imported.
    client.set_tag(run_id, "content_hash", content_hash)
    client.set_terminated(run_id, "FINISHED", end_time=times[1] if times else None)


def _import_seed(client, experiment_id: str, run: SeedRun, parent_id: str, index: RunIndex) -> str:
    summary = run.summary
    run_id = index.current(run.run_key, run.content_hash, parent_id)
    if run_id:
        return run_id
    times = training_times([summary])
    run_id = _create_run(client, experiment_id, f"{summary['method']}-seed{summary['seed']}", {
        PARENT_RUN_TAG: parent_id, "run_key": run.run_key, "level": "seed",
        "experiment": summary["experiment"], "method": summary["method"], "seed": str(summary["seed"]),
        "git_commit": str(summary.get("git_commit")), "fingerprint": summary["fingerprint"],
        **run.trust_tags}, times)
    _log_batch(client, run_id, _seed_metrics(summary), _params(summary["settings"], seed=summary["seed"]))
    client.log_dict(run_id, {"orientation": "accuracy_matrix[j][i]: accuracy on task j after training task i",
                             "accuracy_matrix": summary["accuracy_matrix"]}, "accuracy_matrix.json")
    client.log_artifact(run_id, str(run.summary_path))
    for folder, image in run.images:
        client.log_artifact(run_id, str(image), artifact_path=folder)
    _finish_run(client, run_id, run.content_hash, times)
    return run_id


def paper_figures_for(figures: list[Path], summary: dict) -> list[Path]:
    """The paper-table figures (results/paper/<dataset>/*.png) that concern one run's (experiment, method):
    its dataset's accuracy curves, its method's accuracy-matrix heatmap, its task count's sample grids."""
    wanted = {"accuracy_curves.png", f"accuracy_matrix_{summary['method']}.png",
              f"samples_{summary['n_tasks']}tasks.png"}
    dataset = dataset_id(summary["settings"]["dataset"])
    return sorted(f for f in figures if f.parent.name == dataset and f.name in wanted and f.is_file())


def _import_method(client, experiment_id: str, experiment: str, method: str, group: pd.DataFrame,
                   statistics: dict, index: RunIndex, paper_figures: list[Path]) -> dict[str, str]:
    """The method's parent run and its children (`group`: their rows of the runs frame, `statistics`: their row
    of seed_statistics); returns run_key -> run_id."""
    settings = common_settings(method, group)
    runs = [_seed_run(run) for run in group.itertuples()]
    curve = _experiment_curve(runs)
    run_key = f"{experiment}/{method}"
    # Covers the children: a changed seed changes the means, so the whole group is redone.
    fingerprint = {"format": IMPORT_FORMAT, "children": [run.content_hash for run in runs],
                   "curve": _file_hash(curve) if curve else None}
    if paper_figures:
        fingerprint["paper"] = [(f.name, _file_hash(f)) for f in paper_figures]
    content_hash = _hash(fingerprint)
    parent_id = index.current(run_key, content_hash)
    created = parent_id is None
    times = training_times(list(group.summary))
    if created:
        parent_id = _create_run(client, experiment_id, method, {
            "run_key": run_key, "level": "group", "experiment": experiment, "method": method,
            **_trust_tags(statistics["diverged"], statistics["code_versions"])}, times)
        _log_batch(client, parent_id, _group_metrics(statistics), _params(settings))
        if curve:
            client.log_artifact(parent_id, str(curve))
        for figure in paper_figures:
            client.log_artifact(parent_id, str(figure), artifact_path="paper")
    run_ids = {run_key: parent_id}
    for run in runs:
        run_ids[run.run_key] = _import_seed(client, experiment_id, run, parent_id, index)
    if created:  # after the children, so a parent marked complete always has all of them
        _finish_run(client, parent_id, content_hash, times)
    return run_ids


def _experiment_curve(runs: list[SeedRun]) -> Path | None:
    """results/<experiment>/accuracy_curve.png, written by the tables step next to the method folders."""
    curve = runs[0].summary_path.parent.parent.parent / CURVE_FILE
    return curve if curve.is_file() else None


def import_results(summaries: list[Path], tracking_uri: str, marker: Path,
                   paper_figures: list[Path] = ()) -> None:
    """Import the runs of `summaries` into the MLflow store at `tracking_uri`; write run_key -> run_id
    of every run to `marker` (JSON). `paper_figures` are logged, under `paper/`, on the parent runs they
    concern (`paper_figures_for`)."""
    if not summaries:
        raise ConfigError("no run summaries given")
    _disable_telemetry()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    runs = read_runs(summaries)
    statistics = seed_statistics(runs, ["experiment", "method"]).set_index(["experiment", "method"])

    indexes: dict[str, tuple[str, RunIndex]] = {}
    run_ids: dict[str, str] = {}
    for (experiment, method), group in runs.groupby(["experiment", "method"], sort=False):
        if experiment not in indexes:
            experiment_id = _experiment_id(client, experiment, tracking_uri)
            indexes[experiment] = experiment_id, RunIndex(client, experiment_id)
        experiment_id, index = indexes[experiment]
        group = group.sort_values("seed")
        run_ids |= _import_method(client, experiment_id, experiment, method, group,
                                  statistics.loc[(experiment, method)].to_dict(), index,
                                  paper_figures_for(list(paper_figures), group.summary.iloc[0]))
    write_text_atomically(marker, json.dumps(dict(sorted(run_ids.items())), indent=1) + "\n")
