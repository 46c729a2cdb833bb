rule train_task:
    input:
        parent=parent_state,
    output:
        state=f"{RESULTS}/{{experiment}}/{{method}}/seed{{seed}}/task{{task}}/state.pt",
        metrics=f"{RESULTS}/{{experiment}}/{{method}}/seed{{seed}}/task{{task}}/metrics.json",
    params:
        run=train_params,
        parent=lambda wildcards, input: f"--parent {Path(input.parent).parent}" if input.parent else "",
        out=lambda wildcards, output: Path(output.state).parent,
        device=config.get("device", "auto"),
    log:
        f"{RESULTS}/logs/{{experiment}}/{{method}}/seed{{seed}}/task{{task}}.log",
    threads: 1
    resources:
        gpu=1,
    shell:
        "dfcil train-task --settings {params.run[settings]:q}"
        " --experiment {wildcards.experiment} --seed {wildcards.seed} --task {wildcards.task}"
        " --out {params.out} {params.parent} --data-root {params.run[data_root]:q} {params.run[download]}"
        " --device {params.device} --threads {threads} > {log} 2>&1"
