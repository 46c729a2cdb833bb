# The paper's result tables (ABD README, ABD_REFERENCE_SPEC.md §9), one set per dataset, rebuilt from the run
# summaries with the published numbers next to ours (dfcil_core/published/abd_iccv2021.yaml):
#   paper_tables   results/paper/{dataset}/{no_coreset,coreset,extras}.{md,tex,csv,html}
#   paper_curves   results/paper/{dataset}/accuracy_curves.{png,svg}
#   paper_matrix   results/paper/{dataset}/accuracy_matrix_{method}.{png,svg}
#   paper_samples  results/paper/{dataset}/samples_{n}tasks.{png,svg}  (only where a generative method runs)
# Columns are the task counts of the dataset's configured experiments; a method that is not configured
# reads "–". Experiments of one dataset and task count share a column only if their protocols are equal.
if "paper" in EXPERIMENTS:
    raise WorkflowError("experiment name 'paper' is reserved: results/paper/ holds the paper tables")
try:
    PAPER_SETS = dfcil_paper.table_sets(EXPERIMENTS, N_TASKS)
except dfcil_config.ConfigError as e:
    raise WorkflowError(str(e))

PAPER = f"{RESULTS}/paper"


def paper_summaries(dataset, methods=None, n_tasks=None):
    """The summaries of the dataset's configured runs: every cell's inputs."""
    return [
        f"{run_dir(name, m, s)}/summary.json"
        for n, names in PAPER_SETS[dataset].columns.items()
        if n_tasks is None or n == n_tasks
        for name in names
        for m in EXPERIMENTS[name]["methods"]
        if methods is None or m in methods
        for s in EXPERIMENTS[name]["seeds"]
    ]


def paper_figures(dataset):
    table_set = PAPER_SETS[dataset]
    return (
        [f"{PAPER}/{dataset}/accuracy_curves.png"]
        + [f"{PAPER}/{dataset}/accuracy_matrix_{m}.png" for m in table_set.methods]
        + [f"{PAPER}/{dataset}/samples_{n}tasks.png" for n in table_set.sample_columns(EXPERIMENTS)]
    )


def paper_outputs():
    return [
        f"{PAPER}/{dataset}/{table}.{ext}"
        for dataset in PAPER_SETS
        for table in (*dfcil_paper.TABLES, dfcil_paper.EXTRAS)
        for ext in dfcil_paper.FORMATS
    ] + [f for dataset in PAPER_SETS for f in paper_figures(dataset)]


def all_paper_figures(wildcards=None):
    return [f for dataset in PAPER_SETS for f in paper_figures(dataset)]


def paper_table_output(table, ext, caption):
    path = f"{PAPER}/{{dataset}}/{table}.{ext}"
    if ext != "html":
        return path
    return report(
        path,
        caption=f"../report/{caption}.rst",
        category="Paper tables",
        subcategory="{dataset}",
        labels={"dataset": "{dataset}", "table": table.replace("_", " ")},
    )


rule paper_tables:
    input:
        lambda wildcards: paper_summaries(wildcards.dataset),
    output:
        **{
            f"{table}_{ext}": paper_table_output(table, ext, "paper_extras" if table == "extras" else "paper_table")
            for table in (*dfcil_paper.TABLES, dfcil_paper.EXTRAS)
            for ext in dfcil_paper.FORMATS
        },
    params:
        tasks=lambda wildcards: " ".join(map(str, PAPER_SETS[wildcards.dataset].columns)),
        methods=lambda wildcards: " ".join(PAPER_SETS[wildcards.dataset].methods),
        mixed_code=MIXED_CODE_FLAG,
    log:
        f"{RESULTS}/logs/paper/{{dataset}}/paper_tables.log",
    localrule: True
    shell:
        "dfcil paper-tables {input} --dataset {wildcards.dataset} --tasks {params.tasks}"
        " --methods {params.methods} --out-dir {PAPER}/{wildcards.dataset} {params.mixed_code} > {log} 2>&1"


rule paper_curves:
    input:
        lambda wildcards: paper_summaries(wildcards.dataset),
    output:
        png=report(
            f"{PAPER}/{{dataset}}/accuracy_curves.png",
            caption="../report/accuracy_curves.rst",
            category="Paper figures",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "accuracy after each task"},
        ),
        svg=f"{PAPER}/{{dataset}}/accuracy_curves.svg",
    params:
        tasks=lambda wildcards: " ".join(map(str, PAPER_SETS[wildcards.dataset].columns)),
        methods=lambda wildcards: " ".join(PAPER_SETS[wildcards.dataset].methods),
    log:
        f"{RESULTS}/logs/paper/{{dataset}}/accuracy_curves.log",
    localrule: True
    shell:
        "dfcil paper-plot curves {input} --dataset {wildcards.dataset} --tasks {params.tasks}"
        " --methods {params.methods} --out {output.png} > {log} 2>&1"


rule paper_matrix:
    input:
        lambda wildcards: paper_summaries(wildcards.dataset, methods=[wildcards.method]),
    output:
        png=report(
            f"{PAPER}/{{dataset}}/accuracy_matrix_{{method}}.png",
            caption="../report/accuracy_matrix.rst",
            category="Paper figures",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "accuracy matrix: {method}"},
        ),
        svg=f"{PAPER}/{{dataset}}/accuracy_matrix_{{method}}.svg",
    params:
        tasks=lambda wildcards: " ".join(map(str, PAPER_SETS[wildcards.dataset].columns)),
    log:
        f"{RESULTS}/logs/paper/{{dataset}}/accuracy_matrix_{{method}}.log",
    localrule: True
    shell:
        "dfcil paper-plot matrix {input} --dataset {wildcards.dataset} --tasks {params.tasks}"
        " --methods {wildcards.method} --out {output.png} > {log} 2>&1"


def paper_sample_grids(wildcards):
    """Every sample grid of the column's generative runs (plot_samples shows each method's lowest seed)."""
    return [
        f
        for n, names in PAPER_SETS[wildcards.dataset].columns.items()
        if n == int(wildcards.n)
        for name in names
        for m in EXPERIMENTS[name]["methods"]
        for s in EXPERIMENTS[name]["seeds"]
        for f in sample_grids(name, m, s)
    ]


rule paper_samples:
    input:
        summaries=lambda wildcards: paper_summaries(
            wildcards.dataset, methods=GENERATIVE_METHODS, n_tasks=int(wildcards.n)
        ),
        grids=paper_sample_grids,
    output:
        png=report(
            f"{PAPER}/{{dataset}}/samples_{{n}}tasks.png",
            caption="../report/samples.rst",
            category="Paper figures",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "generated samples, {n} tasks"},
        ),
        svg=f"{PAPER}/{{dataset}}/samples_{{n}}tasks.svg",
    wildcard_constraints:
        n=r"\d+",
    log:
        f"{RESULTS}/logs/paper/{{dataset}}/samples_{{n}}tasks.log",
    localrule: True
    shell:
        "dfcil paper-plot samples {input.summaries} --dataset {wildcards.dataset} --tasks {wildcards.n}"
        " --out {output.png} > {log} 2>&1"
