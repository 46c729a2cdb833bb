rule prepare_data:
    output:
        f"{RESULTS}/data/{{dataset}}.npz",
    params:
        dataset=lambda wildcards: json.dumps(DATASETS[wildcards.dataset]),
    log:
        f"{RESULTS}/logs/prepare_data/{{dataset}}.log",
    shell:
        "dfcil prepare-data --dataset {params.dataset:q} --out {output} > {log} 2>&1"
