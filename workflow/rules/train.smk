rule train_task:
    input:
        data=prepared_data,
        parent=parent_state,
    output:
        state=f"{RESULTS}/{{experiment}}/{{method}}/seed{{seed}}/task{{task}}/state.pt",
        metrics=f"{RESULTS}/{{experiment}}/{{method}}/seed{{seed}}/task{{task}}/metrics.json",
    params:
        settings=train_settings,
        parent=parent_arg,
        out=lambda wildcards, output: Path(output.state).parent,
        device=config.get("device", "auto"),
    log:
        f"{RESULTS}/logs/{{experiment}}/{{method}}/seed{{seed}}/task{{task}}.log",
    threads: 1
    resources:
        gpu=1,
    shell:
        "dfcil train-task --settings {params.settings:q} --data {input.data}"
        " --experiment {wildcards.experiment} --seed {wildcards.seed} --task {wildcards.task}"
        " --out {params.out} {params.parent} --device {params.device} --threads {threads} > {log} 2>&1"
