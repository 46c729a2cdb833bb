TRAIN_RESOURCES = config["resources"]["train_task"]  # from the config, so that a site can size them


# The plain methods' task jobs; the generative methods' are train_generative_task below. Disjoint methods, so
# that Snakemake makes one candidate job per task file, not two settled by a rule order.
rule train_task:
    wildcard_constraints:
        method="|".join(PLAIN_METHODS),
    input:
        # one input function for the three (each function is a call per job when the DAG is built)
        unpack(task_inputs),
    output:
        state=f"{RESULTS}/{{experiment}}/{{method}}/seed{{seed}}/task{{task}}/state.pt",
        metrics=f"{RESULTS}/{{experiment}}/{{method}}/seed{{seed}}/task{{task}}/metrics.json",
    params:
        settings=train_settings,
        parent=parent_arg,
        shared=shared_arg,
        out=lambda wildcards, output: Path(output.state).parent,
    log:
        f"{RESULTS}/logs/{{experiment}}/{{method}}/seed{{seed}}/task{{task}}.log",
    # Snakemake's record of the job from outside (wall clock from the shell's start, peak memory, CPU time):
    # beside metrics.json's wall_seconds (the training only) it shows what a job costs around its training.
    benchmark:
        f"{RESULTS}/benchmarks/{{experiment}}/{{method}}/seed{{seed}}/task{{task}}.tsv"
    threads: TRAIN_RESOURCES["cpus"]  # on Slurm, its --cpus-per-task
    resources:
        gpu=TRAIN_RESOURCES["gpus"],
        runtime=TRAIN_RESOURCES["runtime"],
        mem_mb=TRAIN_RESOURCES["mem_mb"],
    shell:
        "dfcil train-task --settings {params.settings:q} --data {input.data}"
        " --experiment {wildcards.experiment} --seed {wildcards.seed} --task {wildcards.task}"
        " --out {params.out} {params.parent} {params.shared} --threads {threads}"
        # Read from config in the command, not params: they change how a job runs, not its result,
        # so changing them must not retrigger finished jobs.
        " --device {config[device]} --checkpoint-minutes {config[checkpoint_minutes]}"
        " --jobs-per-gpu {config[jobs_per_gpu]} --on-divergence {config[on_divergence]} > {log} 2>&1"
        # Snakemake reruns a job whose shell text changed (its `code` trigger) on every existing results tree:
        # change the command only where the change is meant to rerun the training.


# The generative methods' task jobs also write the grid of generated samples that the paper figures and the
# MLflow import read; otherwise the same job as train_task.
use rule train_task as train_generative_task with:
    output:
        state=f"{RESULTS}/{{experiment}}/{{method}}/seed{{seed}}/task{{task}}/state.pt",
        metrics=f"{RESULTS}/{{experiment}}/{{method}}/seed{{seed}}/task{{task}}/metrics.json",
        samples=f"{RESULTS}/{{experiment}}/{{method}}/seed{{seed}}/task{{task}}/samples.png",
    wildcard_constraints:
        method="|".join(GENERATIVE_METHODS),


rule train_shared_stage:
    input:
        data=lambda wildcards: f"{RESULTS}/data/{dfcil_config.dataset_id(SHARED[wildcards.key]['dataset'])}.npz",
    output:
        f"{RESULTS}/shared/{{learner}}-{{key}}/seed{{seed}}/stage0.done.pt",
    params:
        recipe=lambda wildcards: json.dumps(SHARED[wildcards.key], sort_keys=True),
    log:
        f"{RESULTS}/logs/shared/{{learner}}-{{key}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/shared/{{learner}}-{{key}}/seed{{seed}}.tsv"
    threads: TRAIN_RESOURCES["cpus"]  # on Slurm, its --cpus-per-task
    resources:
        gpu=TRAIN_RESOURCES["gpus"],
        runtime=TRAIN_RESOURCES["runtime"],
        mem_mb=TRAIN_RESOURCES["mem_mb"],
    shell:
        "dfcil train-shared --recipe {params.recipe:q} --seed {wildcards.seed} --data {input.data}"
        " --out $(dirname {output}) --threads {threads} --device {config[device]}"
        " --checkpoint-minutes {config[checkpoint_minutes]}"
        " --jobs-per-gpu {config[jobs_per_gpu]} > {log} 2>&1"
