"""MLflow import into a temporary SQLite store: run hierarchy, params, metric history, artifacts, idempotency.

One store for the whole module (creating its tables takes seconds); tests that change results use an
experiment of their own so the others' expectations hold in any order.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from dfcil_core.mlflow_import import import_results
from dfcil_core.report import summarize_run

N_TASKS = 3
SETTINGS = {"dataset": {"name": "mnist5k"}, "model": {"name": "resnet32", "width": 8},
            "train": {"epochs": 1, "batch_size": 64, "lr": 0.1, "lr_milestones": [5, 10]},
            "first_split": 4, "other_split": 3, "max_tasks": None, "augment": True,
            "method_settings": {"memory_size": 200}}


def accuracies(task: int, seed: int, shift: float) -> list[float]:
    """Distinct, recognisable numbers: task i's accuracy on task j."""
    return [90.0 - 10 * (task - j) - seed + shift for j in range(task + 1)]


def finished_at(seed: int, task: int) -> float:
    """When a task job ended (unix seconds): seed 1's jobs after seed 0's."""
    return 1_750_000_000.0 + 100 * seed + 10 * task


def write_run(root: Path, experiment: str, method: str, seed: int, shift: float = 0.0) -> Path:
    run_dir = root / experiment / method / f"seed{seed}"
    for task in range(N_TASKS):
        (run_dir / f"task{task}").mkdir(parents=True, exist_ok=True)
        record = {"experiment": experiment, "method": method, "seed": seed, "task": task, "n_tasks": N_TASKS,
                  "fingerprint": f"{method}{seed}-{task}",
                  "parent_fingerprint": f"{method}{seed}-{task - 1}" if task else None,
                  "accuracy_per_task": accuracies(task, seed, shift), "accuracy_seen": 50.0 + task,
                  "train_steps": 5, "train_images": 640, "train_seconds": 1.5, "images_per_second": 426.0,
                  "wall_seconds": 2.0, "finished_at": finished_at(seed, task), "peak_memory_mb": 100.0, "device": "cpu", "class_order": list(range(10)),
                  "settings": {**SETTINGS, "method": method}, "git_commit": "abc123"}
        (run_dir / f"task{task}" / "metrics.json").write_text(json.dumps(record))
    summary = run_dir / "summary.json"
    summarize_run(run_dir, N_TASKS, summary)
    return summary


def write_experiment(root: Path, experiment: str) -> list[Path]:
    summaries = [write_run(root, experiment, method, seed) for method in ("base", "naive_rehearsal")
                 for seed in (0, 1)]
    (root / experiment / "base" / "seed1" / "task1" / "samples.png").write_bytes(b"\x89PNG not really")
    (root / experiment / "accuracy_curve.png").write_bytes(b"\x89PNG curve")
    return summaries


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A results tree of 2 methods x 2 seeds x 3 tasks imported once into a fresh SQLite store."""
    root = tmp_path_factory.mktemp("results")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    summaries = write_experiment(root, "exp-a")
    import_results(summaries, uri, root / "marker.json")
    return {"root": root, "uri": uri, "summaries": summaries, "client": MlflowClient(tracking_uri=uri)}


def active_runs(client: MlflowClient, experiment: str) -> list:
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs([experiment_id], run_view_type=ViewType.ACTIVE_ONLY)


def run_ids(marker: Path) -> dict[str, str]:
    return json.loads(marker.read_text())


def history_lengths(client: MlflowClient, ids: dict[str, str]) -> dict[str, int]:
    return {key: len(client.get_metric_history(run_id, "accuracy_global"))
            for key, run_id in ids.items() if "/seed" in key}


def test_one_parent_per_method_and_one_child_per_seed(store):
    client = store["client"]
    runs = {run.data.tags["run_key"]: run for run in active_runs(client, "exp-a")}
    assert sorted(runs) == ["exp-a/base", "exp-a/base/seed0", "exp-a/base/seed1", "exp-a/naive_rehearsal",
                            "exp-a/naive_rehearsal/seed0", "exp-a/naive_rehearsal/seed1"]
    assert [runs[key].data.tags["level"] for key in ("exp-a/base", "exp-a/base/seed0")] == ["group", "seed"]
    for method in ("base", "naive_rehearsal"):
        for seed in (0, 1):
            child = runs[f"exp-a/{method}/seed{seed}"]
            assert child.data.tags["mlflow.parentRunId"] == runs[f"exp-a/{method}"].info.run_id
            assert child.data.tags["seed"] == str(seed) and child.data.tags["fingerprint"] == f"{method}{seed}-2"
            assert child.info.status == "FINISHED"
    assert run_ids(store["root"] / "marker.json") == {key: run.info.run_id for key, run in runs.items()}


def test_artifacts_live_next_to_the_database(store):
    experiment = store["client"].get_experiment_by_name("exp-a")
    assert experiment.artifact_location == (store["root"] / "mlflow-artifacts" / "exp-a").as_uri()


def test_params_and_scalar_metrics(store):
    client, ids = store["client"], run_ids(store["root"] / "marker.json")
    child = client.get_run(ids["exp-a/naive_rehearsal/seed1"]).data
    assert child.params["train.lr"] == "0.1"
    assert child.params["train.lr_milestones"] == "[5, 10]"
    assert child.params["method_settings.memory_size"] == "200"
    assert child.params["dataset.name"] == "mnist5k"
    assert child.params["seed"] == "1"
    # Seed 1, after the last task: accuracies 69, 79, 89 on tasks 0, 1, 2.
    assert child.metrics["final_accuracy"] == pytest.approx(79.0)
    parent = client.get_run(ids["exp-a/naive_rehearsal"]).data
    assert parent.params["train.lr"] == "0.1" and "seed" not in parent.params
    # Seeds 0 and 1 end at 80 and 79.
    assert parent.metrics["final_accuracy_mean"] == pytest.approx(79.5)
    assert parent.metrics["final_accuracy_std"] == pytest.approx(0.5)
    assert parent.metrics["n_seeds"] == 2


def test_the_experiment_opens_on_training_runs_whose_times_are_the_training(store):
    """MLflow 3's UI shows an experiment of kind custom_model_development on its runs table; a run starts the
    training time (its stages' seconds) before its last task job ended, and every resolved setting is a param."""
    client = store["client"]
    assert client.get_experiment_by_name("exp-a").tags["mlflow.experimentKind"] == "custom_model_development"
    runs = {run.data.tags["run_key"]: run for run in active_runs(client, "exp-a")}
    for seed in (0, 1):
        child = runs[f"exp-a/base/seed{seed}"]
        assert child.info.end_time == int(1000 * finished_at(seed, N_TASKS - 1))
        assert child.info.end_time - child.info.start_time == 1000 * 1.5 * N_TASKS  # 3 tasks of 1.5 s training
        flat = {"dataset.name", "model.name", "model.width", "train.epochs", "train.batch_size", "train.lr",
                "train.lr_milestones", "first_split", "other_split", "max_tasks", "augment",
                "method_settings.memory_size", "method", "seed"}
        assert set(child.data.params) == flat
    parent = runs["exp-a/base"]
    assert parent.info.end_time == int(1000 * finished_at(1, N_TASKS - 1))
    assert parent.info.end_time - parent.info.start_time == 1000 * 1.5 * N_TASKS


def test_metric_history_has_one_step_per_task(store):
    client, ids = store["client"], run_ids(store["root"] / "marker.json")
    run_id = ids["exp-a/base/seed0"]
    history = sorted(client.get_metric_history(run_id, "accuracy_global"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(0, 90.0), (1, 85.0), (2, 80.0)]
    assert [m.step for m in client.get_metric_history(run_id, "acc_task_0")] == [0, 1, 2]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "acc_task_2")] == [(2, 90.0)]
    assert len(client.get_metric_history(run_id, "accuracy_seen")) == N_TASKS


def test_pngs_and_matrix_are_logged(store):
    client, ids = store["client"], run_ids(store["root"] / "marker.json")
    with_png = ids["exp-a/base/seed1"]
    assert [a.path for a in client.list_artifacts(with_png, "task1")] == ["task1/samples.png"]
    assert {"accuracy_matrix.json", "summary.json"} <= {a.path for a in client.list_artifacts(with_png)}
    matrix_file = client.download_artifacts(with_png, "accuracy_matrix.json", str(store["root"] / "download"))
    assert json.loads(Path(matrix_file).read_text())["accuracy_matrix"][1] == [None, 89.0, 79.0]
    assert client.list_artifacts(ids["exp-a/base/seed0"], "task1") == []
    assert "accuracy_curve.png" in {a.path for a in client.list_artifacts(ids["exp-a/base"])}


def test_second_import_changes_nothing(store):
    client, marker = store["client"], store["root"] / "marker.json"
    before_ids, before_count = run_ids(marker), len(active_runs(client, "exp-a"))
    import_results(store["summaries"], store["uri"], marker)
    after_ids = run_ids(marker)
    assert after_ids == before_ids
    assert len(active_runs(client, "exp-a")) == before_count == 6
    assert set(history_lengths(client, after_ids).values()) == {N_TASKS}


def test_changed_summary_replaces_its_group_only(store):
    client, root, uri = store["client"], store["root"], store["uri"]
    marker = root / "marker-b.json"
    summaries = write_experiment(root, "exp-b")
    import_results(summaries, uri, marker)
    before = run_ids(marker)

    write_run(root, "exp-b", "base", 1, shift=-5.0)  # base seed 1 retrained with other results
    import_results(summaries, uri, marker)
    after = run_ids(marker)

    changed = after["exp-b/base/seed1"]
    assert changed != before["exp-b/base/seed1"] and after["exp-b/base"] != before["exp-b/base"]
    assert all(after[key] == before[key] for key in before if key.startswith("exp-b/naive_rehearsal"))
    assert len(active_runs(client, "exp-b")) == 6
    history = client.get_metric_history(changed, "accuracy_global")
    assert sorted(m.value for m in history) == [74.0, 79.0, 84.0]  # seed 1, 5 points lower, once each
    assert set(history_lengths(client, after).values()) == {N_TASKS}
    assert client.get_run(before["exp-b/base/seed1"]).info.lifecycle_stage == "deleted"
    assert client.get_run(after["exp-b/base/seed0"]).data.tags["mlflow.parentRunId"] == after["exp-b/base"]
