rule prepare_data:
    output:
        f"{RESULTS}/data/{{dataset}}.npz",
    params:
        dataset=lambda wildcards: json.dumps(DATASETS[wildcards.dataset]),
    log:
        f"{RESULTS}/logs/prepare_data/{{dataset}}.log",
    resources:
        runtime=config["resources"]["prepare_data"]["runtime"],
        mem_mb=config["resources"]["prepare_data"]["mem_mb"],
    shell:
        "dfcil prepare-data --dataset {params.dataset:q} --out {output} > {log} 2>&1"
