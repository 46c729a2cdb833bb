"""The methods as the workflow, the schema and the tables see them, without torch: each method's id, display name,
the paper's hyperparameters (with their sources in the reference code, ABD_REFERENCE_SPEC.md's sections), which
main stage is another method's computation, and the settings it refuses before any job starts.

What a method computes, its losses and its end-of-task step, is in `dfcil_core/learners/<id>.py`; a learner reads
its resolved hyperparameters from `resolve` below. Reading this module imports no torch, so the Snakefile's parse
(on a workstation, and again inside every Slurm job) stays cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from dfcil_core.config import (AUGMENT_DEFAULTS, ConfigError, deep_merge, n_classes, task_sizes,
                               with_defaults)


@dataclass(frozen=True)
class Task:
    """Task `index` of `n_tasks`; it owns the contiguous logit block [n_past_classes, n_seen_classes)."""

    index: int
    n_tasks: int
    n_past_classes: int
    n_seen_classes: int

    @property
    def classes(self) -> range:
        return range(self.n_past_classes, self.n_seen_classes)

    @property
    def is_last(self) -> bool:
        return self.index == self.n_tasks - 1


def first_task_is_base(task: Task) -> str | None:
    """No teacher, memory or generator yet at task 0: the main stage is Base's plain CE (§7.3)."""
    return "base" if task.index == 0 else None


def own_main_stage(task: Task) -> str | None:
    return None


def no_check(hp: dict, sizes: list[int], train: dict) -> None:
    pass


@dataclass(frozen=True)
class Method:
    display_name: str
    defaults: dict = field(default_factory=dict)
    # The id of the method whose main stage this task's main stage is identical to (same data, loss, parameters,
    # initialisation and random streams), so that one DAG node computes it for every method and split that
    # qualifies; None when the stage is the method's own.
    shared_main_stage: Callable[[Task], str | None] = own_main_stage
    # Raises ConfigError for hyperparameters that cannot run on these tasks (class counts per task), so that the
    # workflow refuses them before any job starts rather than failing at a later task.
    check: Callable[[dict, list[int], dict], None] = no_check
    generative: bool = False  # trains a generator or VAE, and leaves a grid of its samples after every task


def holdout_per_class(memory_len: int, n_old: int, fraction: float = 0.1) -> int:
    """BiC's k = floor(floor(fraction * |M|) / n_old) held-out images per seen class (loader.py VAL_HOLD)."""
    return int(fraction * memory_len) // n_old


def require_one_of(method_id: str, hp: dict, key: str, allowed: tuple) -> None:
    if hp[key] not in allowed:
        raise ConfigError(f"{method_id} {key} must be one of {allowed}, got {hp[key]!r}")


LWF_MC_VARIANTS = ("softmax", "bce")
E2E_NEW_KD_TARGETS = ("previous_teacher", "stage_a")


def check_lwf_mc(hp: dict, sizes: list[int], train: dict) -> None:
    require_one_of("lwf_mc", hp, "variant", LWF_MC_VARIANTS)


def check_e2e(hp: dict, sizes: list[int], train: dict) -> None:
    require_one_of("e2e", hp, "balanced_new_kd", E2E_NEW_KD_TARGETS)
    # the reference's target takes the previous model's first |C_t| logits: it needs |C_t| <= n_old
    if hp["balanced_new_kd"] == "previous_teacher":
        for t in range(1, len(sizes)):
            if sizes[t] > sum(sizes[:t]):
                raise ConfigError(
                    f"e2e balanced_new_kd 'previous_teacher' (the reference's stage-B target) needs each task's "
                    f"classes to fit in the old ones; task {t} has {sizes[t]} new and {sum(sizes[:t])} "
                    "old classes: use balanced_new_kd 'stage_a' or a larger first task")


def check_bic(hp: dict, sizes: list[int], train: dict) -> None:
    most_old = sum(sizes[:-1])  # classes seen before the last task
    if len(sizes) > 1 and holdout_per_class(hp["memory_size"], most_old, hp["holdout_fraction"]) < 1:
        raise ConfigError(
            f"bic: memory_size {hp['memory_size']} x holdout_fraction {hp['holdout_fraction']} leaves no held-out "
            f"image per class for the bias layer once {most_old} classes are old; memory_size must be at least "
            f"{math.ceil(most_old / hp['holdout_fraction'])}")



def check_rdfcil(hp: dict, sizes: list[int], train: dict) -> None:
    if not 0 <= hp["finetune_epochs"] < train["epochs"]:
        raise ConfigError(f"rdfcil: finetune_epochs {hp['finetune_epochs']} must be at least 0 and fewer than the "
                          f"{train['epochs']} epochs of a task (its head refinement is the last finetune_epochs)")

MEMORY = {
    "memory_size": 2000,        # experiments/cifar100-*.sh: --memory 2000
    "replay_oversample": True,  # reference: |D_t| draws with replacement, re-selected from them (quirk 8)
}
LWF = {
    "mu": 1.0,           # experiments/cifar100-*.sh: --mu 1 for lwf and lwf_coreset (§8.1)
    "temperature": 2.0,  # run.py --temp default; no script overrides it (§0)
}
DATA_FREE = {  # §4.10, shared by DeepInversion, LwF-Synthetic and ABD
    "temperature": 2.0,           # --temp default (no script overrides it)
    "power_iters": 10000,         # experiments/cifar100-*.sh --power_iters
    # --deep_inv_params 1e-3 5e1 1e-3 1e3 1, by name (§5.5)
    "gen_lr": 1e-3,
    "bn_stat_weight": 50.0,
    "smoothness_weight": 1e-3,
    "content_temperature": 1000.0,
    "content_weight": 1.0,
    "generator_z_dim": 1000,      # models/generator.py CIFAR_GEN
    "generator_width": 128,
    "generator_last_width": None,  # None: half the width (CIFAR_GEN, TINYIMNET_GEN); 64 with width 64: IMNET_GEN
    # Reference: one generator and its Adam state carried across tasks (quirk 15); false: a fresh generator
    # every task, as R-DFCIL and gqk/ABD.
    "warm_start": True,
}

METHODS: dict[str, Method] = {
    # UB depends only on the classes seen so far, not on the split: every task is a shared node
    "upper_bound": Method("UB", shared_main_stage=lambda task: "upper_bound"),
    "base": Method("Base", shared_main_stage=first_task_is_base),
    "naive_rehearsal": Method("Naive Rehearsal", MEMORY, first_task_is_base),
    "lwf": Method("LwF", LWF, first_task_is_base),
    "lwf_mc": Method("LwF.MC", {
        "variant": "softmax",  # §4.6 / quirk 18: ICCV-time code (1f3e2d7); "bce" = HEAD code and iCaRL
    }, check=check_lwf_mc),  # its own loss from task 0 on (the softmax variant computes CE by its own formula)
    "lwf_coreset": Method("LwF (coreset)", {**LWF, **MEMORY}, first_task_is_base),  # --mu 1 --memory 2000 (§8.1)
    "e2e": Method("E2E", {
        "mu": 1.0,                   # experiments/cifar100-*.sh: --mu 1 (§8.1)
        "temperature": 2.0,          # --temp default (§0)
        "memory_size": 2000,         # --memory 2000 (§8.1)
        "balanced_lr_factor": 0.01,  # kd.py ETE.learn_batch: stage B lr = config lr / 1e2 (§4.8)
        # Quirk 6 (§4.8): the reference optimizes only the head `last` in stage B; false = the whole
        # network at the small lr, as the E2E paper.
        "balanced_head_only": True,
        # Quirk 6 (§4.8): the model is in train mode in stage B, so BN running statistics are re-estimated
        # on the memory; false = eval mode (statistics frozen).
        "balanced_bn_train": True,
        # Quirk 5 (§4.8): the new-class KD target in stage B. "previous_teacher" (reference bug): the
        # previous model's logits of classes [0, |C_t|); "stage_a": the new classes' logits of the model
        # after stage A, as the E2E paper.
        "balanced_new_kd": "previous_teacher",
        # Stage B batch; null = the experiment's batch (reference: 128 on 2,000 images, 15 steps per epoch).
        "balanced_batch_size": None,
    }, first_task_is_base, check_e2e),
    "bic": Method("BiC", {
        "temperature": 2.0,        # --temp default (§0); --mu is ignored by kd.BIC (§8.1)
        "memory_size": 2000,       # --memory 2000 (§8.1)
        "holdout_fraction": 0.1,   # dataloaders/loader.py VAL_HOLD: |V| ~ 0.1 |M| (§4.9)
        "bias_lr_factor": 0.01,    # kd.py BIC.learn_batch: stage 2 lr = config lr / 1e2 (§4.9)
        # Quirk 2 (§4.9): the model is in train mode in stage 2, so BN running statistics are re-estimated
        # on V; false = eval mode (the BiC paper only fits alpha and beta).
        "bias_bn_train": True,
        # Quirk 1 (§4.9): the reference evaluates without the bias layers (validation() calls
        # model.forward); true = corrected logits at test time, as the BiC paper.
        "bias_at_eval": False,
        # Stage 2 batch; null = the experiment's batch (reference: 128 with drop_last on 150-400 images;
        # a holdout smaller than one batch makes no step, as the reference's loader yields no batch).
        "bias_batch_size": None,
    }, first_task_is_base, check_bic),
    "dgr": Method("DGR", {  # its VAE trains with the classifier from task 0 on: no shared stage
        "mu": 1.0,              # experiments/cifar100-*.sh dgr: --mu 1
        "temperature": 2.0,     # --temp default
        "vae_z_dim": 1024,      # models/autoencoder.py CIFAR_GEN: z_size=1024
        "vae_width": 64,        # encoder 64-128-512, decoder 512-256-64 channels
        "train": {"weight_decay": 0.0},  # experiments/cifar100-*.sh dgr: --weight_decay 0, classifier too (quirk 23)
    }, generative=True),
    # Task 0 trains with Base's loss; the generator is trained after the main stage.
    "deep_inversion": Method("DeepInversion", {**DATA_FREE,
                                               "mu": 1.0},  # experiments/cifar100-*.sh deepinv: --mu 1
                             first_task_is_base, generative=True),
    "lwf_synthetic": Method("LwF-Synthetic", {**DATA_FREE,
                                              "mu": 0.1},  # experiments/cifar100-*.sh lwf_synthetic: --mu 1e-1
                            first_task_is_base, generative=True),
    "abd": Method("ABD", {  # task 0's CE covers all K logits, unlike Base's: no shared stage (quirk 13)
        **DATA_FREE,
        "mu": 0.1,                 # experiments/cifar100-*.sh abd: --mu 1e-1 (--beta 1 is unused)
        "local_ce_scale": True,    # reference: local CE weighted by 1 - r (quirk 12); false: weight 1
        "ft_second_forward": True,  # reference: FT features from a 2nd no-grad forward, which updates
                                    # BN running stats twice per step (quirk 14); false: reuse h.detach()
        # Reference: task 0's CE and the fine-tuning CE take their softmax over all K logits, unseen classes
        # included (quirk 13); true: over the seen classes only (R-DFCIL's author, ABD repository issue #6, reports
        # about 45 % instead of 42 % on CIFAR-100 with this fixed; setting not stated there).
        "seen_classes_only": False,
    }, generative=True),
    # R-DFCIL (Gao et al., ECCV 2022; gqk/R-DFCIL f47e123 module.py, on gqk/cl-lite v0.5.0). Its task 0 trains
    # fewer epochs than Base's (the head refinement takes the last finetune_epochs, idle at task 0): no shared stage.
    "rdfcil": Method("R-DFCIL", {
        **DATA_FREE,
        "power_iters": 5000,   # module.py num_inv_iters
        "warm_start": False,   # update_old_model: a new GenerativeInversion, so a fresh generator, every task
        "lambda_ce": 0.5,      # module.py lambda_ce, lambda_hkd, lambda_rkd
        "lambda_hkd": 0.15,
        "lambda_rkd": 0.5,
        "rkd_projection_factor": 2,  # update_old_model: RKDAngleLoss(d, proj_dim=2 * d), both sides projected
        "finetune_epochs": 40,       # module.py finetuning_epochs: the last 40 of the task's epochs (200 there)
        "finetune_lr": 0.005,        # module.py finetuning_lr: constant, no milestones (ConstantLR in SequentialLR)
        "train": {"weight_decay": 5e-4},  # module.py weight_decay; its lr 0.1 and momentum 0.9 are the paper's too
    }, check=check_rdfcil, generative=True),
}
GENERATIVE_METHODS = tuple(m for m, spec in METHODS.items() if spec.generative)


def method(method_id: str) -> Method:
    if method_id not in METHODS:
        raise ConfigError(f"unknown method {method_id!r}; expected one of {sorted(METHODS)}")
    return METHODS[method_id]


def display_name(method_id: str) -> str:
    """Labels for tables and plots only; everything else uses the id."""
    return METHODS[method_id].display_name if method_id in METHODS else method_id


def resolve_hyperparameters(method_id: str, overrides: dict) -> dict:
    """The method's paper defaults with the experiment's overrides; unknown keys are errors.
    A nested `train` dict overrides the experiment's training settings for this method only."""
    defaults = method(method_id).defaults
    unknown = sorted(set(overrides) - set(defaults) - {"train"})
    if unknown:
        raise ConfigError(f"method {method_id!r} has no setting(s) {unknown}; known: {sorted(defaults)}")
    return deep_merge(defaults, overrides)


def resolve(settings: dict) -> tuple[dict, dict, dict]:
    """(settings with the method's resolved hyperparameters, hyperparameters, training settings).
    Raises ConfigError for an unknown method or setting, or hyperparameters its tasks cannot run with."""
    settings = with_defaults(settings)
    hp = resolve_hyperparameters(settings["method"], settings.get("method_settings") or {})
    sizes = task_sizes(n_classes(settings["dataset"]), settings["first_split"], settings["other_split"],
                       settings.get("max_tasks"))
    train = deep_merge(settings["train"], hp.get("train", {}))
    method(settings["method"]).check(hp, sizes, train)
    return {**settings, "method_settings": hp}, hp, train


def shared_recipe(settings: dict, task: Task) -> dict | None:
    """Settings of the shared node that computes this task's main stage, or None if it is the method's
    own. They hold only what that stage depends on, so every method and split that qualifies (e.g. the
    first task of Base, LwF, E2E, ...; UB at any task) maps to the same node."""
    settings, hp, train = resolve(settings)
    learner_id = method(settings["method"]).shared_main_stage(task)
    if learner_id is None:
        return None
    return {"dataset": settings["dataset"], "model": settings["model"], "train": train,
            **{k: settings[k] for k in AUGMENT_DEFAULTS},
            "first_split": task.n_seen_classes, "other_split": 1, "max_tasks": 1,
            "method": learner_id, "method_settings": {}}
