import functools
import hashlib
import json
from pathlib import Path

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError

# Torch-free imports: the parse (here, and again inside every cluster job) must stay cheap.
from dfcil_core import config as dfcil_config
from dfcil_core import paper as dfcil_paper
from dfcil_core.methods import GENERATIVE_METHODS, METHODS, Task, resolve, shared_recipe

# Tables name the code versions their runs come from; with refuse_mixed_code they fail on several instead.
MIXED_CODE_FLAG = "--refuse-mixed-code" if config["refuse_mixed_code"] else ""
RESULTS = config["results_dir"]  # "results" unless the configuration names another folder
EXPERIMENTS = dfcil_config.experiments(config)
N_TASKS = {}
DATASETS = {}  # prepared-file id -> dataset settings
# Every key the code reads must be set in the experiment or in `defaults`: checked after merging, so the
# error names the experiment and the key instead of a KeyError deep in a job.
_SCHEMA = yaml.safe_load((Path(workflow.basedir) / "workflow/schemas/config.schema.yaml").read_text())
_RESOLVED = jsonschema.Draft202012Validator({"$ref": "#/$defs/resolved_experiment", "$defs": _SCHEMA["$defs"]})
for _name, _exp in EXPERIMENTS.items():
    for _error in _RESOLVED.iter_errors(_exp):
        _where = ".".join(map(str, _error.absolute_path))
        raise WorkflowError(
            f"experiment {_name!r}{' (' + _where + ')' if _where else ''}: {_error.message} "
            "(set it in the experiment or in `defaults`)"
        )
for _name, _exp in EXPERIMENTS.items():
    # Bad settings fail here, naming the problem, before any job starts.
    try:
        N_TASKS[_name] = dfcil_config.n_tasks(_exp)
        dfcil_config.check_dataset_available(_exp["dataset"])
    except dfcil_config.ConfigError as e:
        raise WorkflowError(f"experiment {_name!r}: {e}")
    # Settings applied after loading (resize, class order, top-k) do not change the prepared file.
    _source = {k: v for k, v in _exp["dataset"].items() if k not in ("resolution", "class_order", "top_k")}
    _id = dfcil_config.dataset_id(_source)
    if DATASETS.setdefault(_id, _source) != _source:
        raise WorkflowError(
            f"experiment {_name!r} reads dataset {_id!r} from other files than another experiment: "
            f"{_source} vs {DATASETS[_id]}"
        )


PLAIN_METHODS = [m for m in METHODS if m not in GENERATIVE_METHODS]  # train_task's; train_generative_task the rest


wildcard_constraints:
    experiment=r"[A-Za-z0-9_.-]+",
    method=r"[a-z0-9_]+",
    seed=r"\d+",
    dataset=r"[A-Za-z0-9_.-]+",
    learner=r"[a-z0-9_]+",
    key=r"[0-9a-f]+",
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
    """The run's settings as the job resolves them (every default written out): a changed default changes
    the params of exactly the jobs it affects, and Snakemake reruns those."""
    return resolved_settings(wildcards.experiment, wildcards.method)


@functools.cache  # one resolution per (experiment, method), not one per task job
def resolved_settings(experiment, method):
    exp = EXPERIMENTS[experiment]
    return json.dumps(resolve(dfcil_config.run_settings(exp, method))[0], sort_keys=True)


def task_of(experiment, t):
    exp = EXPERIMENTS[experiment]
    sizes = dfcil_config.task_sizes(
        dfcil_config.n_classes(exp["dataset"]), exp["first_split"], exp["other_split"], exp.get("max_tasks")
    )
    return Task(t, len(sizes), sum(sizes[:t]), sum(sizes[: t + 1]))


# Main stages that several methods or splits compute identically run once, in a shared node
# (the first task of the plain-CE methods; UB, which depends only on the classes seen so far).
SHARED = {}  # recipe key -> recipe settings
SHARED_NODE = {}  # (experiment, method, task) -> recipe key
for _name, _exp in EXPERIMENTS.items():
    for _method in _exp["methods"]:
        _settings = dfcil_config.run_settings(_exp, _method)
        try:  # unknown settings, or ones its tasks cannot run with: refused before any job starts
            resolve(_settings)
        except dfcil_config.ConfigError as e:
            raise WorkflowError(f"experiment {_name!r}, method {_method!r}: {e}")
        for _t in range(N_TASKS[_name]):
            _recipe = shared_recipe(_settings, task_of(_name, _t))
            if _recipe is not None:
                _key = hashlib.sha256(dfcil_config.canonical_json(_recipe).encode()).hexdigest()[:12]
                SHARED[_key] = _recipe
                SHARED_NODE[(_name, _method, _t)] = f"{_recipe['method']}-{_key}"


def shared_stage(wildcards):
    node = SHARED_NODE.get((wildcards.experiment, wildcards.method, int(wildcards.task)))
    return f"{RESULTS}/shared/{node}/seed{wildcards.seed}/stage0.done.pt" if node else []


def task_inputs(wildcards):
    """A task job's inputs: the prepared data, the previous task's state (none for task 0) and the shared
    main stage it restores (if any)."""
    return {"data": prepared_data(wildcards), "parent": parent_state(wildcards), "shared": shared_stage(wildcards)}


def shared_arg(wildcards, input):
    return f"--shared-stage {input.shared}" if input.shared else ""


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


def sample_grids(experiment, method, seed):
    """The generator sample grids a generative method's run leaves (train_generative_task)."""
    if method not in GENERATIVE_METHODS:
        return []
    return [f"{run_dir(experiment, method, seed)}/task{t}/samples.png" for t in range(N_TASKS[experiment])]


def all_sample_grids(wildcards=None):
    return [
        f
        for name, exp in EXPERIMENTS.items()
        for m in exp["methods"]
        for s in exp["seeds"]
        for f in sample_grids(name, m, s)
    ]


def all_summaries(wildcards=None):
    return [p for name in EXPERIMENTS for p in experiment_summaries(name)]


def final_outputs():
    tables = [
        f"{RESULTS}/{name}/{f}"
        for name in EXPERIMENTS
        for f in ("final_accuracy.md", "accuracy_curve.png")
    ]
    return tables + paper_outputs() + [f"{RESULTS}/mlflow/imported.json"]  # paper_outputs: paper.smk
