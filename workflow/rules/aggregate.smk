rule summarize_run:
    input:
        run_metrics,
    output:
        f"{RESULTS}/{{experiment}}/{{method}}/seed{{seed}}/summary.json",
    params:
        n_tasks=lambda wildcards: N_TASKS[wildcards.experiment],
        run_dir=lambda wildcards, output: Path(output[0]).parent,
    log:
        f"{RESULTS}/logs/{{experiment}}/{{method}}/seed{{seed}}/summarize.log",
    localrule: True
    shell:
        "dfcil summarize {params.run_dir} --n-tasks {params.n_tasks} --out {output} > {log} 2>&1"


rule experiment_table:
    input:
        lambda wildcards: experiment_summaries(wildcards.experiment),
    output:
        md=f"{RESULTS}/{{experiment}}/final_accuracy.md",
        tex=f"{RESULTS}/{{experiment}}/final_accuracy.tex",
        csv=f"{RESULTS}/{{experiment}}/final_accuracy.csv",
        curve=f"{RESULTS}/{{experiment}}/accuracy_curve.png",
    params:
        mixed_code=MIXED_CODE_FLAG,
    log:
        f"{RESULTS}/logs/{{experiment}}/experiment_table.log",
    localrule: True
    shell:
        "dfcil tables {input} --out-prefix {RESULTS}/{wildcards.experiment} {params.mixed_code} > {log} 2>&1"
