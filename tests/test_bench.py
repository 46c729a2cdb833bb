"""`python benchmarks/bench.py parity` judges the fast path against eager fp32 from the per-epoch main-stage losses
that training returns (not from log text), and fails the command (and thus benchmarks/gpu_check.sh) when a
comparison is outside the tolerances."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"
sys.path.insert(0, str(SCRIPT.parent))  # bench.py imports its sibling host.py, as when run as a script
spec = importlib.util.spec_from_file_location("bench", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

EAGER_ACCURACY = [60.0, 40.0]
# Two tasks of three epochs: each epoch's mean loss terms, as `train_task` returns them in `epoch_losses`.
EAGER_LOSSES = [[{"ce": 2.0, "kd": 0.5}, {"ce": 1.5, "kd": 0.4}, {"ce": 1.0, "kd": 0.3}],
                [{"ce": 1.8, "kd": 0.6}, {"ce": 1.2, "kd": 0.5}, {"ce": 0.9, "kd": 0.4}]]


def fake_training(fast_accuracy=EAGER_ACCURACY, fast_losses=EAGER_LOSSES):
    """Stands in for `train_in_process`: logs nothing and returns each task's metrics with its main stage's
    `epoch_losses`; the eager fp32 run returns EAGER_*, every other mode `fast_*`."""

    def train_in_process(settings, seed, n_tasks, device, data_root, log):
        eager = settings["train"]["precision"] == "fp32" and not settings["train"]["channels_last"]
        accuracy, losses = (EAGER_ACCURACY, EAGER_LOSSES) if eager else (fast_accuracy, fast_losses)
        return [{"accuracy_seen": a, "accuracy_per_task": [a], "images_per_second": 1.0, "end_task_seconds": 0.0,
                 "epoch_losses": curve} for a, curve in zip(accuracy, losses)]
    return train_in_process


def run_parity_command(monkeypatch, tmp_path, **fast):
    from dfcil_core import run
    monkeypatch.setattr(run, "train_in_process", fake_training(**fast))
    monkeypatch.setattr(bench, "draw_parity", lambda report, out_dir, log: None)
    bench.main(["parity", "--out-dir", str(tmp_path), "--device", "cpu", "--methods", "base", "--per-class", "1"])


def scaled(curves, task, epoch, factor):
    out = [[dict(terms) for terms in curve] for curve in curves]
    out[task][epoch] = {k: v * factor for k, v in out[task][epoch].items()}
    return out


def test_parity_within_tolerance_exits_0_and_records_the_returned_loss_curves(monkeypatch, tmp_path):
    run_parity_command(monkeypatch, tmp_path,
                       fast_accuracy=[a - bench.PARITY_ACCURACY_POINTS / 2 for a in EAGER_ACCURACY],
                       fast_losses=scaled(EAGER_LOSSES, 1, 2, 1 + bench.PARITY_LOSS_RELATIVE / 2))
    report = json.loads((tmp_path / "parity.json").read_text())
    losses = report["runs"]["base/eager_fp32"]["losses"]
    assert [(e["task"], e["epoch"]) for e in losses] == [(t, e) for t in (0, 1) for e in (1, 2, 3)]
    assert [e["terms"] for e in losses] == EAGER_LOSSES[0] + EAGER_LOSSES[1]
    assert losses[0]["total"] == pytest.approx(2.5)
    comparison = report["comparisons"]["base/fast"]
    assert comparison["within_tolerance"] and report["all_within_tolerance"]
    assert comparison["max_loss_relative_diff"] == pytest.approx(bench.PARITY_LOSS_RELATIVE / 2)


def test_parity_accuracy_outside_tolerance_fails_the_command(monkeypatch, tmp_path):
    off_by = bench.PARITY_ACCURACY_POINTS + 1
    with pytest.raises(SystemExit) as exit_:
        run_parity_command(monkeypatch, tmp_path, fast_accuracy=[EAGER_ACCURACY[0], EAGER_ACCURACY[1] - off_by])
    assert exit_.value.code not in (0, None)


def test_parity_a_later_epochs_loss_outside_tolerance_fails_the_command(monkeypatch, tmp_path):
    # Same accuracies: only the loss curve of task 1's second epoch differs, by more than the tolerance.
    with pytest.raises(SystemExit) as exit_:
        run_parity_command(monkeypatch, tmp_path, fast_losses=scaled(EAGER_LOSSES, 1, 1, 1.5))
    assert exit_.value.code not in (0, None)
    comparison = json.loads((tmp_path / "parity.json").read_text())["comparisons"]["base/fast"]
    assert comparison["max_loss_relative_diff"] == pytest.approx(0.5)
    assert comparison["first_epoch_loss_relative_diff"] == 0.0


def test_parity_the_first_epochs_loss_has_the_tight_tolerance(monkeypatch, tmp_path):
    factor = 1 + 2 * bench.PARITY_FIRST_EPOCH_RELATIVE  # within the later epochs' tolerance, not the first's
    with pytest.raises(SystemExit):
        run_parity_command(monkeypatch, tmp_path, fast_losses=scaled(EAGER_LOSSES, 0, 0, factor))


def test_parity_loss_curves_of_different_lengths_are_outside_tolerance():
    reference = {"accuracy_seen": EAGER_ACCURACY, "losses": bench.main_stage_losses(
        [{"epoch_losses": curve} for curve in EAGER_LOSSES])}
    short = {"accuracy_seen": EAGER_ACCURACY, "losses": bench.main_stage_losses(
        [{"epoch_losses": curve[:2]} for curve in EAGER_LOSSES])}
    assert bench.compare(reference, reference)["within_tolerance"]
    assert not bench.compare(short, reference)["within_tolerance"]
    with pytest.raises(ValueError, match="no per-epoch losses"):
        bench.main_stage_losses([{"epoch_losses": None}])


def test_parity_reads_the_loss_curves_a_real_training_returns(tmp_path):
    """The real `train_in_process` (tiny settings, no log lines asked for) returns every epoch's means."""
    from conftest import tiny_settings
    from dfcil_core.run import train_in_process
    settings = tiny_settings("base")
    settings["train"]["epochs"] = 3
    lines = []
    tasks = train_in_process(settings, seed=0, n_tasks=2, log=lines.append)
    losses = bench.main_stage_losses(tasks)
    assert [(e["task"], e["epoch"]) for e in losses] == [(t, e) for t in (0, 1) for e in (1, 2, 3)]
    assert all(set(e["terms"]) == {"ce"} and e["total"] > 0 for e in losses)
    assert tasks[1]["final_losses"] == tasks[1]["epoch_losses"][-1]
    assert sum("epoch" in line for line in lines) == 2  # only each task's last epoch was logged
