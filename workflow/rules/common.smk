import json
from pathlib import Path

from snakemake.exceptions import WorkflowError

from dfcil_core import config as dfcil_config

RESULTS = "results"
EXPERIMENTS = dfcil_config.experiments(config)
N_TASKS = {}
DATASETS = {}  # prepared-file id -> dataset settings
for _name, _exp in EXPERIMENTS.items():
    # Bad settings fail here, naming the problem, before any job starts.
    try:
        N_TASKS[_name] = dfcil_config.n_tasks(_exp)
        dfcil_config.check_dataset_available(_exp["dataset"])
    except dfcil_config.ConfigError as e:
        raise WorkflowError(f"experiment {_name!r}: {e}")
    _source = {k: v for k, v in _exp["dataset"].items() if k != "resolution"}
    _id = dfcil_config.dataset_id(_source)
    if DATASETS.setdefault(_id, _source) != _source:
        raise WorkflowError(
            f"experiment {_name!r} reads dataset {_id!r} from other files than another experiment: "
            f"{_source} vs {DATASETS[_id]}"
        )


wildcard_constraints:
    experiment=r"[A-Za-z0-9_.-]+",
    method=r"[a-z0-9_]+",
    seed=r"\d+",
    dataset=r"[A-Za-z0-9_.-]+",
    task=r"\d+",


def run_dir(experiment, method, seed):
    return f"{RESULTS}/{experiment}/{method}/seed{seed}"


def parent_state(wildcards):
    """Task t starts from task t-1's saved state; task 0 from nothing."""
    t = int(wildcards.task)
    if t == 0:
        return []
    return f"{run_dir(wildcards.experiment, wildcards.method, wildcards.seed)}/task{t - 1}/state.pt"


def prepared_data(wildcards):
    dataset = EXPERIMENTS[wildcards.experiment]["dataset"]
    return f"{RESULTS}/data/{dfcil_config.dataset_id(dataset)}.npz"


def train_settings(wildcards):
    exp = EXPERIMENTS[wildcards.experiment]
    return json.dumps(dfcil_config.run_settings(exp, wildcards.method), sort_keys=True)


def parent_arg(wildcards, input):
    return f"--parent {Path(input.parent).parent}" if input.parent else ""


def run_metrics(wildcards):
    d = run_dir(wildcards.experiment, wildcards.method, wildcards.seed)
    return [f"{d}/task{t}/metrics.json" for t in range(N_TASKS[wildcards.experiment])]


def experiment_summaries(experiment):
    exp = EXPERIMENTS[experiment]
    return [
        f"{run_dir(experiment, m, s)}/summary.json"
        for m in exp["methods"]
        for s in exp["seeds"]
    ]


def all_summaries(wildcards=None):
    return [p for name in EXPERIMENTS for p in experiment_summaries(name)]


def final_outputs():
    tables = [
        f"{RESULTS}/{name}/{f}"
        for name in EXPERIMENTS
        for f in ("final_accuracy.md", "accuracy_curve.png")
    ]
    return tables + [f"{RESULTS}/mlflow/imported.json"]
