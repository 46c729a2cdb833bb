"""`python -m dfcil_core.bench parity` judges the fast path against eager fp32 and fails the command (and
thus benchmarks/gpu_check.sh) when a comparison is outside the tolerances."""

import pytest

from dfcil_core import bench

EAGER_ACCURACY = [60.0, 40.0]


def fake_training(fast_accuracy: list[float]):
    """Stands in for `train_in_process`: logs two epochs of main-stage losses per task and returns the tasks'
    metrics; the eager fp32 run reaches EAGER_ACCURACY, every other mode `fast_accuracy`."""

    def train_in_process(settings, seed, n_tasks, device, data_root, log):
        eager = settings["train"]["precision"] == "fp32" and not settings["train"]["channels_last"]
        accuracy = EAGER_ACCURACY if eager else fast_accuracy
        for t in range(n_tasks):
            for epoch in (1, 2):
                log(f"[task{t}] epoch {epoch}/2 ce={1.0 / epoch:.4f}")
        return [{"accuracy_seen": a, "accuracy_per_task": [a], "images_per_second": 1.0, "end_task_seconds": 0.0}
                for a in accuracy]
    return train_in_process


def run_parity_command(monkeypatch, tmp_path, fast_accuracy):
    from dfcil_core import run
    monkeypatch.setattr(run, "train_in_process", fake_training(fast_accuracy))
    monkeypatch.setattr(bench, "draw_parity", lambda report, out_dir, log: None)
    bench.main(["parity", "--out-dir", str(tmp_path), "--device", "cpu", "--methods", "base", "--per-class", "1"])


def test_parity_outside_tolerance_fails_the_command(monkeypatch, tmp_path):
    off_by = bench.PARITY_ACCURACY_POINTS + 1
    with pytest.raises(SystemExit) as exit_:
        run_parity_command(monkeypatch, tmp_path, [EAGER_ACCURACY[0], EAGER_ACCURACY[1] - off_by])
    assert exit_.value.code not in (0, None)


def test_parity_within_tolerance_exits_0(monkeypatch, tmp_path):
    run_parity_command(monkeypatch, tmp_path, [a - bench.PARITY_ACCURACY_POINTS / 2 for a in EAGER_ACCURACY])
    assert (tmp_path / "parity.json").exists()
