# MLflow is a view of results/: one local job imports every run summary (training jobs never
# touch the SQLite store, which is unsafe under concurrent writers and on network file systems).
rule import_mlflow:
    input:
        summaries=all_summaries,
        grids=all_sample_grids,
        curves=expand(f"{RESULTS}/{{experiment}}/accuracy_curve.png", experiment=EXPERIMENTS),
        paper=all_paper_figures,
    output:
        f"{RESULTS}/mlflow/imported.json",
    params:
        uri=f"sqlite:///{RESULTS}/mlflow.db",
    log:
        f"{RESULTS}/logs/import_mlflow.log",
    localrule: True
    shell:
        "dfcil mlflow-import {input.summaries} --tracking-uri {params.uri} --marker {output}"
        " --paper-figures {input.paper} > {log} 2>&1"
