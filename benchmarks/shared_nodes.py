"""GPU-hours that shared main-stage nodes save on a configuration (default: the paper's CIFAR-100 grid).

Counts, from the same functions the Snakefile uses, every training job's main stage with and without
sharing, weights each by its training images (epochs x samples per epoch) and by the reference's
per-step cost of its method relative to a Base step (ABD_REFERENCE_SPEC.md §11.2), and converts
Base-step images to GPU-hours at the reference's measured Base speed (5.4k img/s on an H200,
PERFORMANCE_ANCHORS.md). These are estimates of the reference code's cost, not measurements.

    python benchmarks/shared_nodes.py [config/paper/cifar100.yaml]
"""

import hashlib
import sys

import yaml

from dfcil_core import config as C
from dfcil_core.learners.api import Task
from dfcil_core.methods import resolve, shared_recipe

# Per-step cost relative to a Base step at t > 0 (§11.2: midpoints of the ranges given there).
STEP_COST = {"lwf": 1.3, "lwf_coreset": 1.3, "deep_inversion": 2.75, "lwf_synthetic": 2.75, "abd": 3.25,
             "dgr": 3.5, "e2e": 1.3, "bic": 1.3, "lwf_mc": 1.3}
BASE_IMAGES_PER_SECOND = 5_400
TRAIN_IMAGES_PER_CLASS = {"cifar100": 500, "cifar10": 5000, "tinyimagenet": 500, "imagenet50": 1300}


def main(path: str) -> None:
    cfg = yaml.safe_load(open(path))
    total = saved = 0.0
    jobs = shared_jobs = 0
    shared_nodes: dict[str, float] = {}
    for name, exp in C.experiments(cfg).items():
        per_class = TRAIN_IMAGES_PER_CLASS[exp["dataset"]["name"]]
        sizes = C.task_sizes(C.n_classes(exp["dataset"]), exp["first_split"], exp["other_split"], exp.get("max_tasks"))
        for method in exp["methods"]:
            settings = C.run_settings(exp, method)
            epochs = resolve(settings)[2]["epochs"]
            for seed in exp["seeds"]:
                for t, size in enumerate(sizes):
                    task = Task(t, len(sizes), sum(sizes[:t]), sum(sizes[:t + 1]))
                    if method == "upper_bound":
                        images = task.n_seen_classes * per_class * epochs
                    else:
                        replay = 2 if method in ("naive_rehearsal", "lwf_coreset") and t > 0 else 1
                        cost = STEP_COST.get(method, 1.0) if t > 0 else 1.0
                        images = size * per_class * epochs * replay * cost
                    total += images
                    jobs += 1
                    recipe = shared_recipe(settings, task)
                    if recipe is not None:
                        key = hashlib.sha256(C.canonical_json({**recipe, "seed": seed}).encode()).hexdigest()
                        shared_nodes[key] = images
                        saved += images
                        shared_jobs += 1
    saved -= sum(shared_nodes.values())
    hours = lambda images: images / BASE_IMAGES_PER_SECOND / 3600  # noqa: E731
    print(f"{path}: {jobs} training jobs; {shared_jobs} of them take their main stage from "
          f"{len(shared_nodes)} shared nodes")
    print(f"main-stage training: {hours(total):.1f} GPU-hours without sharing, "
          f"{hours(total - saved):.1f} with ({hours(saved):.1f} saved, {100 * saved / total:.0f}%), "
          f"at the reference's Base speed of {BASE_IMAGES_PER_SECOND} img/s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "config/paper/cifar100.yaml")
