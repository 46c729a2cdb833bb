# A paper's result tables, one set per paper and dataset (an experiment's `paper`, default ABD's README tables,
# ABD_REFERENCE_SPEC.md §9), rebuilt from the run summaries with the published numbers next to ours
# (dfcil_core/published/<paper>.yaml). {table_set} is the dataset id, followed by the paper unless it is ABD's:
#   paper_table    results/paper/{table_set}/{table}.{md,tex,csv,html}  (the paper's tables, and extras)
#   paper_curves   results/paper/{table_set}/accuracy_curves.{png,svg}
#   paper_matrix   results/paper/{table_set}/accuracy_matrix_{method}.{png,svg}
#   paper_samples  results/paper/{table_set}/samples_{n}tasks.{png,svg}  (only where a generative method runs)
# Columns are the task counts of the set's configured experiments; a method that is not configured
# reads "–". Experiments of one set and task count share a column only if their protocols are equal.
if "paper" in EXPERIMENTS:
    raise WorkflowError("experiment name 'paper' is reserved: results/paper/ holds the paper tables")
try:
    PAPER_SETS = dfcil_paper.table_sets(EXPERIMENTS, N_TASKS)
except dfcil_config.ConfigError as e:
    raise WorkflowError(str(e))

PAPER = f"{RESULTS}/paper"


def paper_summaries(table_set, methods=None, n_tasks=None):
    """The summaries of the set's configured runs: every cell's inputs."""
    return [
        f"{run_dir(name, m, s)}/summary.json"
        for n, names in PAPER_SETS[table_set].columns.items()
        if n_tasks is None or n == n_tasks
        for name in names
        for m in EXPERIMENTS[name]["methods"]
        if methods is None or m in methods
        for s in EXPERIMENTS[name]["seeds"]
    ]


def paper_figures(table_set):
    paper_set = PAPER_SETS[table_set]
    return (
        [f"{PAPER}/{table_set}/accuracy_curves.png"]
        + [f"{PAPER}/{table_set}/accuracy_matrix_{m}.png" for m in paper_set.methods]
        + [f"{PAPER}/{table_set}/samples_{n}tasks.png" for n in paper_set.sample_columns(EXPERIMENTS)]
    )


def paper_outputs():
    return [
        f"{PAPER}/{table_set}/{table}.{ext}"
        for table_set, paper_set in PAPER_SETS.items()
        for table in (*paper_set.tables, dfcil_paper.EXTRAS)
        for ext in dfcil_paper.FORMATS
    ] + all_paper_figures()


def all_paper_figures(wildcards=None):
    return [f for table_set in PAPER_SETS for f in paper_figures(table_set)]


def paper_set_param(key):
    """A param of the set's: its dataset id, paper, task counts or methods, as the command line takes it."""

    def value(wildcards):
        v = getattr(PAPER_SETS[wildcards.table_set], key)
        return " ".join(map(str, v)) if isinstance(v, (list, dict)) else v

    return value


rule paper_table:
    input:
        lambda wildcards: paper_summaries(wildcards.table_set),
    output:
        md=f"{PAPER}/{{table_set}}/{{table}}.md",
        tex=f"{PAPER}/{{table_set}}/{{table}}.tex",
        csv=f"{PAPER}/{{table_set}}/{{table}}.csv",
        html=report(
            f"{PAPER}/{{table_set}}/{{table}}.html",
            caption="../report/paper_table.rst",
            category="Paper tables",
            subcategory="{table_set}",
            labels={"table set": "{table_set}", "table": "{table}"},
        ),
    wildcard_constraints:
        table=r"[a-z0-9_]+",
    params:
        dataset=paper_set_param("dataset"),
        paper=paper_set_param("paper"),
        tasks=paper_set_param("columns"),
        methods=paper_set_param("methods"),
        mixed_code=MIXED_CODE_FLAG,
    log:
        f"{RESULTS}/logs/paper/{{table_set}}/{{table}}.log",
    localrule: True
    shell:
        "dfcil paper-tables {input} --dataset {params.dataset} --paper {params.paper} --tables {wildcards.table}"
        " --tasks {params.tasks} --methods {params.methods} --out-dir {PAPER}/{wildcards.table_set}"
        " {params.mixed_code} > {log} 2>&1"


rule paper_curves:
    input:
        lambda wildcards: paper_summaries(wildcards.table_set),
    output:
        png=report(
            f"{PAPER}/{{table_set}}/accuracy_curves.png",
            caption="../report/accuracy_curves.rst",
            category="Paper figures",
            subcategory="{table_set}",
            labels={"table set": "{table_set}", "figure": "accuracy after each task"},
        ),
        svg=f"{PAPER}/{{table_set}}/accuracy_curves.svg",
    params:
        dataset=paper_set_param("dataset"),
        tasks=paper_set_param("columns"),
        methods=paper_set_param("methods"),
    log:
        f"{RESULTS}/logs/paper/{{table_set}}/accuracy_curves.log",
    localrule: True
    shell:
        "dfcil paper-plot curves {input} --dataset {params.dataset} --tasks {params.tasks}"
        " --methods {params.methods} --out {output.png} > {log} 2>&1"


rule paper_matrix:
    input:
        lambda wildcards: paper_summaries(wildcards.table_set, methods=[wildcards.method]),
    output:
        png=report(
            f"{PAPER}/{{table_set}}/accuracy_matrix_{{method}}.png",
            caption="../report/accuracy_matrix.rst",
            category="Paper figures",
            subcategory="{table_set}",
            labels={"table set": "{table_set}", "figure": "accuracy matrix: {method}"},
        ),
        svg=f"{PAPER}/{{table_set}}/accuracy_matrix_{{method}}.svg",
    params:
        dataset=paper_set_param("dataset"),
        tasks=paper_set_param("columns"),
    log:
        f"{RESULTS}/logs/paper/{{table_set}}/accuracy_matrix_{{method}}.log",
    localrule: True
    shell:
        "dfcil paper-plot matrix {input} --dataset {params.dataset} --tasks {params.tasks}"
        " --methods {wildcards.method} --out {output.png} > {log} 2>&1"


def paper_sample_grids(wildcards):
    """Every sample grid of the column's generative runs (plot_samples shows each method's lowest seed)."""
    return [
        f
        for n, names in PAPER_SETS[wildcards.table_set].columns.items()
        if n == int(wildcards.n)
        for name in names
        for m in EXPERIMENTS[name]["methods"]
        for s in EXPERIMENTS[name]["seeds"]
        for f in sample_grids(name, m, s)
    ]


rule paper_samples:
    input:
        summaries=lambda wildcards: paper_summaries(
            wildcards.table_set, methods=GENERATIVE_METHODS, n_tasks=int(wildcards.n)
        ),
        grids=paper_sample_grids,
    output:
        png=report(
            f"{PAPER}/{{table_set}}/samples_{{n}}tasks.png",
            caption="../report/samples.rst",
            category="Paper figures",
            subcategory="{table_set}",
            labels={"table set": "{table_set}", "figure": "generated samples, {n} tasks"},
        ),
        svg=f"{PAPER}/{{table_set}}/samples_{{n}}tasks.svg",
    wildcard_constraints:
        n=r"\d+",
    params:
        dataset=paper_set_param("dataset"),
    log:
        f"{RESULTS}/logs/paper/{{table_set}}/samples_{{n}}tasks.log",
    localrule: True
    shell:
        "dfcil paper-plot samples {input.summaries} --dataset {params.dataset} --tasks {wildcards.n}"
        " --out {output.png} > {log} 2>&1"
