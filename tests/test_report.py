"""Run summaries and experiment tables on hand-made metrics, checked against numbers worked out by hand."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from dfcil_core.config import ConfigError
from dfcil_core.report import (accuracy_global, average_incremental_accuracy, experiment_table, final_accuracy,
                               forgetting, summarize_run)
from dfcil_core.results import mean_std

SETTINGS = {"dataset": {"name": "mnist5k"}, "model": {"name": "resnet32", "width": 8},
            "train": {"epochs": 2, "batch_size": 64, "lr": 0.1}, "first_split": 2, "other_split": 4,
            "max_tasks": None, "augment": True, "method": "base", "method_settings": {"memory_size": 0}}

# accuracy_per_task of tasks 0, 1, 2: task i's accuracies on the test sets of tasks 0..i.
PER_TASK = [[90.0], [60.0, 80.0], [50.0, 60.0, 70.0]]


def write_task(run_dir: Path, task: int, accuracies: list[float], n_tasks: int = 3, **overrides) -> None:
    record = {"experiment": "toy", "method": "base", "seed": 0, "task": task, "n_tasks": n_tasks,
              "fingerprint": f"fp{task}", "parent_fingerprint": f"fp{task - 1}" if task else None,
              "accuracy_per_task": accuracies, "accuracy_seen": sum(accuracies) / len(accuracies),
              "train_steps": 10, "train_images": 1000 * (task + 1), "train_seconds": 2.0 + task,
              "images_per_second": 100.0, "end_task_seconds": 0.1, "final_losses": {"ce": 0.5},
              "wall_seconds": 3.0 + task, "peak_memory_mb": [100.0, 300.0, 200.0][task], "device": "cpu",
              "class_order": [3, 1, 0, 2, 4, 5, 6, 7, 8, 9], "settings": SETTINGS,
              "versions": {"python": "3.11", "torch": "2"}, "git_commit": "abc", **overrides}
    (run_dir / f"task{task}").mkdir(parents=True, exist_ok=True)
    (run_dir / f"task{task}" / "metrics.json").write_text(json.dumps(record))


def write_run(run_dir: Path) -> None:
    for task, accuracies in enumerate(PER_TASK):
        write_task(run_dir, task, accuracies)


def test_summary_matrix_and_metrics(tmp_path):
    write_run(tmp_path / "run")
    out = tmp_path / "run" / "summary.json"
    summary = summarize_run(tmp_path / "run", 3, out)
    assert json.loads(out.read_text()) == summary
    # Row j = test task, column i = after task i.
    assert summary["accuracy_matrix"] == [[90.0, 60.0, 50.0], [None, 80.0, 60.0], [None, None, 70.0]]
    assert summary["accuracy_global"] == pytest.approx([90.0, 70.0, 60.0])
    assert summary["final_accuracy"] == pytest.approx(60.0)
    assert summary["average_incremental_accuracy"] == pytest.approx((90 + 70 + 60) / 3)
    # Task 0: best 90, final 50 -> 40; task 1: best 80, final 60 -> 20.
    assert summary["forgetting"] == pytest.approx(30.0)


def test_summary_totals_and_identity(tmp_path):
    write_run(tmp_path / "run")
    summary = summarize_run(tmp_path / "run", 3, tmp_path / "summary.json")
    assert (summary["experiment"], summary["method"], summary["seed"], summary["n_tasks"]) == ("toy", "base", 0, 3)
    assert summary["fingerprint"] == "fp2"
    assert summary["train_seconds_total"] == pytest.approx(2 + 3 + 4)
    assert summary["wall_seconds_total"] == pytest.approx(3 + 4 + 5)
    assert summary["peak_memory_mb"] == 300.0
    assert summary["images_per_second"] == pytest.approx((1000 + 2000 + 3000) / 9)
    assert summary["settings"] == SETTINGS
    assert [task["task"] for task in summary["tasks"]] == [0, 1, 2]
    assert all("settings" not in task for task in summary["tasks"])


def test_forgetting_uses_the_best_earlier_accuracy():
    matrix = [[50.0, 70.0, 40.0], [None, 60.0, 60.0], [None, None, 80.0]]
    assert forgetting(matrix) == pytest.approx(((70 - 40) + (60 - 60)) / 2)
    assert forgetting([[75.0]]) is None


def test_metric_helpers():
    matrix = [[80.0, 40.0], [None, 90.0]]
    assert accuracy_global(matrix) == pytest.approx([80.0, 65.0])
    assert final_accuracy(matrix) == pytest.approx(65.0)
    assert average_incremental_accuracy(matrix) == pytest.approx(72.5)
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    assert std == pytest.approx(1.25 ** 0.5)  # population std: ddof=0


def test_missing_task_metrics_names_the_file(tmp_path):
    write_task(tmp_path / "run", 0, [90.0])
    write_task(tmp_path / "run", 2, [50.0, 60.0, 70.0])
    with pytest.raises(ConfigError, match=r"task1[/\\]metrics\.json"):
        summarize_run(tmp_path / "run", 3, tmp_path / "summary.json")
    assert not (tmp_path / "summary.json").exists()


def test_task_from_another_parent_is_refused(tmp_path):
    write_run(tmp_path / "run")
    write_task(tmp_path / "run", 2, [50.0, 60.0, 70.0], parent_fingerprint="stale")
    with pytest.raises(ConfigError, match="task2.*rerun task 2"):
        summarize_run(tmp_path / "run", 3, tmp_path / "summary.json")


# --- experiment tables --------------------------------------------------------------------------------

# Final accuracy, average incremental accuracy, forgetting per seed.
BASE_SEEDS = {0: (42.9, 60.0, 30.0), 1: (43.9, 62.0, 31.0), 2: (44.9, 64.0, 32.0)}
REHEARSAL_SEEDS = {0: (70.0, 80.0, 10.0), 1: (72.0, 80.0, 12.0), 2: (74.0, 80.0, 14.0)}


def write_summary(root: Path, method: str, seed: int, values: tuple[float, float, float],
                  settings: dict | None = None) -> Path:
    final, aia, forgetting_value = values
    summary = {"experiment": "toy_exp", "method": method, "seed": seed, "n_tasks": 3,
               "accuracy_global": [aia + 10, aia, final], "final_accuracy": final,
               "average_incremental_accuracy": aia, "forgetting": forgetting_value,
               "train_seconds_total": 10.0 * (seed + 1),
               "settings": settings or {**SETTINGS, "method": method}}
    path = root / "toy_exp" / method / f"seed{seed}" / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary))
    return path


def write_experiment(root: Path) -> list[Path]:
    # Interleaved on purpose: rows follow the order in which methods first appear.
    paths = []
    for seed in (0, 1, 2):
        paths.append(write_summary(root, "naive_rehearsal", seed, REHEARSAL_SEEDS[seed]))
        paths.append(write_summary(root, "base", seed, BASE_SEEDS[seed]))
    return paths


def test_csv_has_means_and_population_stds(tmp_path):
    experiment_table(write_experiment(tmp_path), tmp_path / "tables")
    with open(tmp_path / "tables" / "final_accuracy.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["method"] for row in rows] == ["naive_rehearsal", "base"]
    assert [row["label"] for row in rows] == ["Naive Rehearsal", "Base"]
    rehearsal, base = rows
    assert float(base["final_accuracy_mean"]) == pytest.approx(43.9)
    assert float(base["final_accuracy_std"]) == pytest.approx((2 / 3) ** 0.5)
    assert float(base["aia_mean"]) == pytest.approx(62.0)
    assert float(base["aia_std"]) == pytest.approx((8 / 3) ** 0.5)
    assert float(rehearsal["forgetting_mean"]) == pytest.approx(12.0)
    assert float(rehearsal["forgetting_std"]) == pytest.approx((8 / 3) ** 0.5)
    assert float(rehearsal["aia_std"]) == 0.0
    assert (base["n_seeds"], base["seeds"]) == ("3", "0;1;2")
    assert float(base["train_seconds_mean"]) == pytest.approx(20.0)


def test_markdown_rows_and_protocol(tmp_path):
    experiment_table(write_experiment(tmp_path), tmp_path / "tables")
    markdown = (tmp_path / "tables" / "final_accuracy.md").read_text()
    assert markdown.startswith("# toy_exp")
    assert "| Base | 43.9 ± 0.8 | 62.0 ± 1.6 | 31.0 ± 0.8 | 3 | 20.0 |" in markdown
    assert "| Naive Rehearsal | 72.0 ± 1.6 | 80.0 ± 0.0 | 12.0 ± 1.6 | 3 | 20.0 |" in markdown
    assert markdown.index("| Naive Rehearsal") < markdown.index("| Base")
    assert "mnist5k" in markdown and "batch size 64" in markdown and "2 epochs" in markdown
    assert "mean ± population std over seeds 0, 1, 2" in markdown


def test_latex_is_balanced_booktabs(tmp_path):
    experiment_table(write_experiment(tmp_path), tmp_path / "tables")
    latex = (tmp_path / "tables" / "final_accuracy.tex").read_text()
    for environment in ("table", "tabular"):
        assert latex.count(rf"\begin{{{environment}}}") == latex.count(rf"\end{{{environment}}}") == 1
    assert latex.index(r"\toprule") < latex.index(r"\midrule") < latex.index(r"\bottomrule")
    assert r"Base & 43.9 $\pm$ 0.8 & 62.0 $\pm$ 1.6 & 31.0 $\pm$ 0.8 & 3 & 20.0 \\" in latex
    assert r"toy\_exp" in latex and r"(\%)" in latex
    assert "±" not in latex and "toy_exp." not in latex


def test_accuracy_curve_is_written_deterministically(tmp_path):
    summaries = write_experiment(tmp_path)
    experiment_table(summaries, tmp_path / "a")
    experiment_table(summaries, tmp_path / "b")
    curve = (tmp_path / "a" / "accuracy_curve.png").read_bytes()
    assert curve.startswith(b"\x89PNG") and len(curve) > 1000
    assert curve == (tmp_path / "b" / "accuracy_curve.png").read_bytes()


def test_unknown_method_keeps_its_id_and_undefined_forgetting_shows_na(tmp_path):
    path = write_summary(tmp_path, "my_method", 0, (50.0, 50.0, None))
    experiment_table([path], tmp_path / "tables")
    markdown = (tmp_path / "tables" / "final_accuracy.md").read_text()
    assert "| my_method | 50.0 ± 0.0 | 50.0 ± 0.0 | n/a | 1 |" in markdown


def test_different_settings_within_a_method_are_refused(tmp_path):
    summaries = write_experiment(tmp_path)
    other_lr = {**SETTINGS, "train": {**SETTINGS["train"], "lr": 0.01}}
    summaries.append(write_summary(tmp_path, "base", 3, BASE_SEEDS[0], settings=other_lr))
    with pytest.raises(ConfigError, match="train.lr"):
        experiment_table(summaries, tmp_path / "tables")
    assert not (tmp_path / "tables" / "final_accuracy.csv").exists()


def test_missing_summary_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nowhere.json"):
        experiment_table([tmp_path / "nowhere.json"], tmp_path / "tables")
