# Data-free class-incremental learning: every (experiment, method, seed, task) is one node.
#   prepare_data    results/data/{dataset}.npz (read once through the real loader)
#   train_task      results/{experiment}/{method}/seed{seed}/task{task}/{state.pt,metrics.json}
#   summarize_run   results/{experiment}/{method}/seed{seed}/summary.json
#   experiment_table results/{experiment}/final_accuracy.{md,tex,csv}, accuracy_curve.png
#   paper_*         results/paper/{dataset}/: the paper's two tables + extra columns, curves, heatmaps, samples
#   import_mlflow   results/mlflow.db (a view rebuilt from results/; marker results/mlflow/imported.json)
from snakemake.utils import min_version, validate

min_version("9.0")


# The demo is the default; `--configfile X` replaces it rather than being merged into it.
if not config.get("experiments"):

    configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/paper.smk"
include: "workflow/rules/mlflow.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
