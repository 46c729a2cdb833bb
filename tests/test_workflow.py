"""The Snakemake workflow: dry-run job counts, a tiny real run end to end, resumption, bad input."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import write_cifar100

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def snakemake(workdir, *args, configfile=None):
    cmd = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", *args]
    if configfile:  # one file or a list of them, merged by Snakemake in order
        cmd += ["--configfile", *map(str, configfile if isinstance(configfile, list) else [configfile])]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def job_counts(output: str) -> dict:
    block = output[output.index("Job stats"):]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, flags=re.M)}


def training_jobs(counts: dict) -> int:
    """Task jobs of every method (the generative methods' task jobs also write their sample grid)."""
    return counts.get("train_task", 0) + counts.get("train_generative_task", 0)


def planned_jobs(output: str) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job a dry run lists."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        wildcards = re.search(r"^\s*wildcards: (.*)$", block, flags=re.M)
        if rule:
            jobs.append((rule[1], dict(w.split("=", 1) for w in wildcards[1].split(", ")) if wildcards else {}))
    return jobs


def test_dry_run_default_config(tmp_path):
    demo = yaml.safe_load((REPO / "config/config.yaml").read_text())
    exp = {**demo["defaults"], **demo["experiments"]["mnist5k-5task"]}
    out = snakemake(tmp_path, "-n", configfile=REPO / "config/config.yaml")
    assert out.returncode == 0, out.stderr
    counts = job_counts(out.stdout)
    assert training_jobs(counts) == len(exp["methods"]) * len(exp["seeds"]) * 5
    assert counts["summarize_run"] == len(exp["methods"]) * len(exp["seeds"])


def test_the_workflow_parses_without_torch(tmp_path):
    """The parse runs on every `snakemake` call and again inside every cluster job: it must not import torch
    (about 2-5 s on a 2-core machine). Here `import torch` fails, and the paper grid still plans every job."""
    no_torch = ("import sys; sys.modules['torch'] = None; "  # a None entry makes `import torch` raise ImportError
                "from snakemake.cli import main; sys.argv[0] = 'snakemake'; main()")
    out = subprocess.run([sys.executable, "-c", no_torch, "--snakefile", str(REPO / "Snakefile"), "--directory",
                          str(tmp_path), "--cores", "2", "-n", "--configfile", str(REPO / "config/paper/cifar100.yaml")],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert training_jobs(job_counts(out.stdout)) > 1000


def test_every_file_a_rule_reads_is_some_rule_s_output(tmp_path):
    """The sample grids the paper figure and the MLflow import read are declared outputs of the generative
    methods' task jobs (no rule may read a file that Snakemake does not know how to make)."""
    out = snakemake(tmp_path, "-n", configfile=REPO / "config/config.yaml")
    assert out.returncode == 0, out.stderr[-2000:]
    blocks = re.split(r"\n(?=(?:local)?rule \w+:)", out.stdout)
    files = lambda block, kind: (re.search(rf"^\s*{kind}: (.*)$", block, flags=re.M) or [None, ""])[1].split(", ")
    outputs = {f for block in blocks for f in files(block, "output")}
    inputs = {f for block in blocks for f in files(block, "input") if f.startswith("results/")}
    assert inputs <= outputs, sorted(inputs - outputs)[:5]
    grids = {f for f in inputs if f.endswith("samples.png")}
    assert "results/mnist5k-5task/abd/seed0/task4/samples.png" in grids
    assert len(grids) == 5 * 3 * 5  # dgr, deep_inversion, lwf_synthetic, abd, rdfcil x 3 seeds x 5 tasks


def test_long_coreset_layer_changes_the_schedule_and_writes_to_its_own_folder(tmp_path):
    """config/demo_long_coreset.yaml over the demo: 7 methods at 50 epochs and memory 2000, every artifact
    under results/long-coreset/ (the demo's results/ tables and paper columns stay the demo's)."""
    out = snakemake(tmp_path, "-n", "-p",
                    configfile=[REPO / "config/config.yaml", REPO / "config/demo_long_coreset.yaml"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert training_jobs(job_counts(out.stdout)) == 7 * 3 * 5
    outputs = re.findall(r"^\s*output: (.*)$", out.stdout, flags=re.M)
    assert outputs and all(path.startswith("results/long-coreset/") for line in outputs
                           for path in line.split(", ")), outputs[:3]
    commands = [line for line in out.stdout.splitlines() if "dfcil train-task" in line]
    assert commands and all('"epochs": 50' in c and '"lr_milestones": [30, 40]' in c for c in commands)
    assert all('"memory_size": 2000' in c for c in commands if '"method": "bic"' in c or '"method": "e2e"' in c)


def test_dry_run_paper_config_lists_the_whole_grid(tmp_path):
    paper = yaml.safe_load((REPO / "config/paper/cifar100.yaml").read_text())
    n_methods, n_seeds = len(paper["defaults"]["methods"]), len(paper["defaults"]["seeds"])
    out = snakemake(tmp_path, "-n", configfile=REPO / "config/paper/cifar100.yaml")
    assert out.returncode == 0, out.stderr
    assert training_jobs(job_counts(out.stdout)) == n_methods * n_seeds * (5 + 10 + 20)


def tiny_config(root, **overrides):
    cfg = {
        "device": "cpu",
        "defaults": {
            "dataset": {"name": "cifar100", "root": str(root / "data"), "download": False, "resolution": 8},
            "model": {"name": "resnet32", "blocks_per_stage": 1, "width": 4},
            "train": {"epochs": 1, "lr": 0.05, "lr_milestones": [], "batch_size": 32, "momentum": 0.9,
                      "weight_decay": 0.0002},
            "crop_padding": 1,
            "seeds": [0],
            "methods": ["base", "naive_rehearsal"],
            "method_settings": {"naive_rehearsal": {"memory_size": 100}},
        },
        "experiments": {"tiny": {"first_split": 50, "other_split": 50}},
    }
    for key, value in overrides.items():
        cfg["defaults"][key] = value
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_tiny_run_end_to_end_then_nothing_to_do(tmp_path, monkeypatch):
    write_cifar100(tmp_path / "data")
    config = tiny_config(tmp_path)
    out = snakemake(tmp_path, configfile=config)
    assert out.returncode == 0, out.stderr[-3000:]
    results = tmp_path / "results"
    for method in ("base", "naive_rehearsal"):
        run = results / "tiny" / method / "seed0"
        for t in (0, 1):
            metrics = json.loads((run / f"task{t}" / "metrics.json").read_text())
            assert len(metrics["accuracy_per_task"]) == t + 1 and metrics["task"] == t
            assert metrics["settings"]["method"] == method
            state = torch.load(run / f"task{t}" / "state.pt", weights_only=True)
            assert state["fingerprint"] == metrics["fingerprint"]
            assert (results / "logs" / "tiny" / method / "seed0" / f"task{t}.log").is_file()
        summary = json.loads((run / "summary.json").read_text())
        assert len(summary["accuracy_matrix"]) == 2
    # Snakemake's benchmark of each training job holds the job's own clock (benchmarks/job_times.py)
    job_times = subprocess.run([sys.executable, str(REPO / "benchmarks" / "job_times.py"), str(results),
                                "--floor-repeats", "1", "--out", str(tmp_path / "job_times.json")],
                               capture_output=True, text=True)
    assert job_times.returncode == 0, job_times.stderr
    timed = json.loads((tmp_path / "job_times.json").read_text())
    assert timed["all"]["jobs"] == 4 and timed["floor"]["import_torch_seconds"] > 0
    assert " cores, torch " in timed["machine"]  # benchmarks/host.py: CPU model, cores, torch build
    own = timed["all"]["own_seconds"]
    assert timed["floor"]["ratio_from_import_alone"] == pytest.approx(
        (own + 4 * timed["floor"]["import_torch_seconds"]) / own, abs=2e-3)
    # A script, not a package: loaded from its file, with its folder on sys.path for its sibling host.py
    monkeypatch.syspath_prepend(REPO / "benchmarks")
    spec = importlib.util.spec_from_file_location("job_times", REPO / "benchmarks" / "job_times.py")
    job_times_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job_times_module)
    pairs = job_times_module.job_pairs(results)
    assert {(r["method"], r["task"]) for r in pairs} == {(m, f"task{t}") for m in ("base", "naive_rehearsal")
                                                        for t in (0, 1)}
    assert all(r["job_seconds"] > r["own_seconds"] > 0 for r in pairs), pairs
    for ext in ("md", "tex", "csv"):
        assert (results / "tiny" / f"final_accuracy.{ext}").is_file()
    assert (results / "tiny" / "accuracy_curve.png").stat().st_size > 0
    report = snakemake(tmp_path, "--report", "results/report.html", configfile=config)
    assert report.returncode == 0, report.stderr[-2000:]
    assert (results / "report.html").stat().st_size > 0
    table = (results / "tiny" / "final_accuracy.md").read_text()
    assert re.search(r"^\| Base( †)? \| \d+\.\d ± 0\.0( †)? \|", table, flags=re.M)
    assert re.search(r"^\| Naive Rehearsal( †)? \| \d+\.\d ± 0\.0( †)? \|", table, flags=re.M)

    import mlflow
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 4  # a parent per method, a child per seed
    child = next(r for r in runs if r.data.tags.get("level") == "seed" and r.data.tags["method"] == "base")
    assert child.data.params["train.epochs"] == "1"
    history = client.get_metric_history(child.info.run_id, "accuracy_global")
    assert [m.step for m in history] == [0, 1]

    again = snakemake(tmp_path, configfile=config)
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr

    # A changed setting is reported by a dry run: exactly the jobs it invalidates, nothing else.
    changed = yaml.safe_load(config.read_text())
    changed["defaults"]["method_settings"]["naive_rehearsal"]["memory_size"] = 60
    changed_path = tmp_path / "changed.yaml"
    changed_path.write_text(yaml.safe_dump(changed))
    dry = job_counts(snakemake(tmp_path, "-n", configfile=changed_path).stdout)
    assert dry["train_task"] == 2 and "train_shared_stage" not in dry  # naive_rehearsal's two tasks

    # A changed method default (not a setting in the config) reruns exactly that method's task jobs.
    patched = ("import sys; from dfcil_core.methods import METHODS; "
               "METHODS['naive_rehearsal'].defaults['replay_oversample'] = False; "
               "from snakemake.cli import main; sys.argv[0] = 'snakemake'; main()")
    out = subprocess.run([sys.executable, "-c", patched, "--snakefile", str(REPO / "Snakefile"), "--directory",
                          str(tmp_path), "--cores", "2", "-n", "--configfile", str(config)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})
    assert out.returncode == 0, out.stderr[-2000:]
    trained = sorted((w["method"], w["task"]) for rule, w in planned_jobs(out.stdout)
                     if rule in ("train_task", "train_generative_task", "train_shared_stage"))
    assert trained == [("naive_rehearsal", "0"), ("naive_rehearsal", "1")], trained

    # Results of other code: listed by `dfcil stale`, named in the table's card, or refused on request.
    metrics_path = results / "tiny" / "base" / "seed0" / "task1" / "metrics.json"
    stale = subprocess.run([str(BIN / "dfcil"), "stale", str(results)], capture_output=True, text=True)
    assert stale.returncode == 0 and stale.stdout == "", stale.stdout + stale.stderr
    record = json.loads(metrics_path.read_text())
    record["code_digest"] = "0123456789abcdef"  # as if made by an older checkout
    metrics_path.write_text(json.dumps(record))
    stale = subprocess.run([str(BIN / "dfcil"), "stale", str(results)], capture_output=True, text=True)
    assert stale.stdout.splitlines() == [f"{metrics_path}\t0123456789abcdef"], stale.stdout
    refused = yaml.safe_load(config.read_text())
    refused["refuse_mixed_code"] = True
    refused_path = tmp_path / "refused.yaml"
    refused_path.write_text(yaml.safe_dump(refused))
    out = snakemake(tmp_path, configfile=refused_path)
    assert out.returncode != 0
    assert "refuse_mixed_code is set" in (results / "logs" / "tiny" / "experiment_table.log").read_text()
    out = snakemake(tmp_path, configfile=config)  # the summaries are redone: the metrics changed
    assert out.returncode == 0, out.stderr[-2000:]
    table = (results / "tiny" / "final_accuracy.md").read_text()
    assert "Code: MIXED" in table and "0123456789abcdef: Base seed 0" in table, table
    assert "Code: MIXED" in (results / "paper" / "cifar100" / "no_coreset.md").read_text()

    # A second import (forced) changes nothing in MLflow.
    forced = snakemake(tmp_path, "--forcerun", "import_mlflow", configfile=config)
    assert forced.returncode == 0, forced.stderr[-2000:]
    runs_after = client.search_runs([experiment.experiment_id])
    base_runs = [r for r in runs_after if r.data.tags["method"] == "base"]
    assert all(r.data.tags["code_digests"].startswith("0123456789abcdef,") for r in base_runs), base_runs
    assert sorted(r.info.run_id for r in runs_after if r.data.tags["method"] != "base") == sorted(
        r.info.run_id for r in runs if r.data.tags["method"] != "base")
    assert len(runs_after) == len(runs)


@pytest.mark.slow
def test_a_dead_network_is_marked_in_tables_and_mlflow_or_fails_its_job(tmp_path):
    """An absurd learning rate kills the network: its tasks are recorded as diverged, the table cells that
    average them carry the marker and a footnote naming the seed, MLflow tags the runs; with
    on_divergence: fail the job fails instead and writes nothing."""
    write_cifar100(tmp_path / "data")
    config = tiny_config(tmp_path, methods=["base"], train={
        "epochs": 1, "lr": 1.0e6, "lr_milestones": [], "batch_size": 32, "momentum": 0.9, "weight_decay": 0.0})
    out = snakemake(tmp_path, configfile=config)
    assert out.returncode == 0, out.stderr[-3000:]
    results = tmp_path / "results"
    metrics = json.loads((results / "tiny/base/seed0/task1/metrics.json").read_text())
    assert metrics["diverged"] is True
    assert json.loads((results / "tiny/base/seed0/summary.json").read_text())["diverged_tasks"] == [0, 1]
    table = (results / "tiny" / "final_accuracy.md").read_text()
    assert re.search(r"^\| Base † \| \d+\.\d ± 0\.0 † \|", table, flags=re.M), table
    assert "Base: seed 0 (tasks 0, 1)" in table
    card = (results / "paper" / "cifar100" / "no_coreset.md").read_text()
    assert "Diverged runs: 1 of 1" in card and " † |" in card

    import mlflow
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert {r.data.tags["level"]: r.data.tags["diverged"] for r in runs} == {"group": "true", "seed": "true"}

    failing = yaml.safe_load(config.read_text())
    failing["on_divergence"] = "fail"
    failing["results_dir"] = "failing"
    failing_path = tmp_path / "failing.yaml"
    failing_path.write_text(yaml.safe_dump(failing))
    out = snakemake(tmp_path, configfile=failing_path)
    assert out.returncode != 0
    log = (tmp_path / "failing/logs/tiny/base/seed0/task0.log").read_text()
    assert "diverged" in log and "on_divergence: fail" in log, log[-2000:]
    assert not (tmp_path / "failing/tiny/base/seed0/task0/metrics.json").exists()


@pytest.mark.slow
def test_interrupted_run_resumes_after_the_last_completed_task(tmp_path):
    write_cifar100(tmp_path / "data")
    config = tiny_config(tmp_path, methods=["base"])
    first = snakemake(tmp_path, "results/tiny/base/seed0/task0/metrics.json", configfile=config)
    assert first.returncode == 0, first.stderr[-2000:]
    task0 = tmp_path / "results/tiny/base/seed0/task0/state.pt"
    mtime = task0.stat().st_mtime_ns
    dry = snakemake(tmp_path, "-n", configfile=config)
    assert job_counts(dry.stdout)["train_task"] == 1  # only task 1 is left
    rest = snakemake(tmp_path, configfile=config)
    assert rest.returncode == 0, rest.stderr[-2000:]
    assert task0.stat().st_mtime_ns == mtime, "a completed task was retrained"


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["defaults"].update(methods=["base", "no_such_method"]), "no_such_method"),
    (lambda c: c["experiments"]["tiny"].update(other_split=30), "do not split"),
    # BiC's holdout would be empty at a later task: refused at parse time, not when that task's job runs
    (lambda c: c["defaults"].update(methods=["bic"], method_settings={"bic": {"memory_size": 10}}),
     "'bic': bic: memory_size 10 x holdout_fraction 0.1 leaves no held-out image"),
    (lambda c: c["defaults"]["dataset"].update(root="/nonexistent/cifar"), "/nonexistent/cifar/cifar-100-python"),
    # a key the code reads, set neither in the experiment nor in `defaults`: named, not a KeyError traceback
    (lambda c: c["experiments"]["tiny"].pop("first_split"), "experiment 'tiny': 'first_split' is a required property"),
    (lambda c: c["defaults"]["train"].pop("momentum"), "experiment 'tiny' (train): 'momentum' is a required property"),
])
def test_bad_config_fails_before_any_job(tmp_path, mutate, message):
    write_cifar100(tmp_path / "data")
    path = tiny_config(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    mutate(cfg)
    path.write_text(yaml.safe_dump(cfg))
    out = snakemake(tmp_path, configfile=path)
    assert out.returncode != 0
    assert message in out.stdout + out.stderr
    assert not (tmp_path / "results" / "tiny").exists()


def test_malformed_yaml_is_reported(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("experiments:\n  tiny: {first_split: 50, other_split: [\n")
    out = snakemake(tmp_path, "-n", configfile=path)
    assert out.returncode != 0
    assert "Config file is not valid JSON or YAML" in out.stdout + out.stderr


def test_parent_state_with_another_fingerprint_is_refused(tmp_path):
    from conftest import tiny_settings
    from dfcil_core.config import StateError
    from dfcil_core.run import train_node

    settings = tiny_settings("base")
    train_node(settings, "tiny", 0, 0, tmp_path / "task0", None, device="cpu", log=lambda m: None)
    changed = {**settings, "train": {**settings["train"], "lr": 0.01}}
    with pytest.raises(StateError, match="differs in settings.train.lr"):
        train_node(changed, "tiny", 0, 1, tmp_path / "task1", tmp_path / "task0", device="cpu", log=lambda m: None)
    other_method = tiny_settings("naive_rehearsal", memory_size=40)
    with pytest.raises(StateError, match="belongs to method 'base'"):
        train_node(other_method, "tiny", 0, 1, tmp_path / "t1", tmp_path / "task0", device="cpu", log=lambda m: None)
    (tmp_path / "task0" / "state.pt").write_bytes((tmp_path / "task0" / "state.pt").read_bytes()[:100])
    with pytest.raises(StateError, match="unreadable"):
        train_node(settings, "tiny", 0, 1, tmp_path / "task1", tmp_path / "task0", device="cpu", log=lambda m: None)
    assert not (tmp_path / "task1").exists()
