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
    log:
        f"{RESULTS}/logs/{{experiment}}/{{method}}/seed{{seed}}/task{{task}}.log",
    threads: 1
    resources:
        gpu=config["resources"]["train_task"]["gpus"],
        runtime=config["resources"]["train_task"]["runtime"],
        mem_mb=config["resources"]["train_task"]["mem_mb"],
    shell:
        "dfcil train-task --settings {params.settings:q} --data {input.data}"
        " --experiment {wildcards.experiment} --seed {wildcards.seed} --task {wildcards.task}"
        " --out {params.out} {params.parent} --threads {threads}"
        # Read from config in the command, not params: they change how a job runs, not its result,
        # so changing them must not retrigger finished jobs.
        " --device {config[device]} --checkpoint-minutes {config[checkpoint_minutes]}"
        " --jobs-per-gpu {config[jobs_per_gpu]} > {log} 2>&1"
