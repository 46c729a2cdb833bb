"""Issue #16: BiC's own steps beside the reference's, from identical weights and data (one seed).

    python benchmarks/reference_parity/bic_step.py --reference PATH/TO/AlwaysBeDreaming-DFCIL [--seed 0]
                                                   [--out FILE.json]

The parity table compares whole runs, whose random streams (batch order, augmentation) differ between the two
code bases, so a gap there is a difference of code or of luck. This script takes luck out for
the steps that BiC adds to LwF: it builds the reference's `Trainer` (its datasets, class order and `kd.BIC`
learner, on the CPU through `reference_cpu.py`'s shim) and ours on the same files that `parity.py` writes,
copies our initial weights into the reference's model, and then, task after task without training (so that the
weights stay the same on both sides), runs each side's own code for:

1. the class order (the reference's task splits against ours);
2. the end of each task (the reference's `learn_batch` over no batches, so only its end-of-task code runs, its
   stage 2 included; ours `end_task`): the exemplars that herding keeps, class by class, in herding order;
3. the start of each task t > 0 (the reference's `load_dataset`, `load_bic_dataset`, `append_coreset_ic`; ours
   `train_indices`): stage 1's training images and stage 2's held-out images, as multisets of (image, label);
4. one stage-1 step of each task t > 0 on the same batch (its first 128 training images, un-augmented): the
   weighted cross-entropy, the weighted distillation term, their sum, and every parameter's gradient.

Images are compared by their bytes, so an exemplar "equal" on both sides is the same training image. It prints
each check and its largest difference, writes them to --out, and exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import host  # noqa: E402  (benchmarks/host.py: the machine a record names)
import parity  # noqa: E402  (this folder's harness: the protocol, the data, the reference's arguments)
import reference_cpu  # noqa: E402

GRADIENT_TOLERANCE = 1e-5  # relative to the gradient's largest entry; float32 sums in another order
LOSS_TOLERANCE = 1e-5


def reference_side(reference: Path, seed: int, data: Path, log_dir: Path):
    """The reference's Trainer for BiC under the parity protocol (its learner, datasets and task splits)."""
    reference_cpu.enter(str(reference))
    from run_dfcil import get_args  # the reference's modules, importable after enter()
    from trainer import Trainer
    command = parity.reference_command(reference, "bic", seed, data, log_dir)
    args = get_args(command[3:])  # [python, reference_cpu.py, checkout, *arguments]
    return Trainer(args, seed, ["acc", "time"], ["acc", "time"])


def copy_weights(our_model, ref_model) -> None:
    """Our initial weights into the reference's model: the same ResNet-32, its state in the same order."""
    ref_state = ref_model.state_dict()
    ours = list(our_model.state_dict().values())
    if [v.shape for v in ref_state.values()] != [v.shape for v in ours]:
        raise SystemExit("the two ResNet-32s' state dicts do not line up; the weight copy would be wrong")
    ref_model.load_state_dict(dict(zip(ref_state, (v.clone() for v in ours))))


def image_keys(images_hwc: np.ndarray, labels) -> list[tuple[bytes, int]]:
    return [(img.tobytes(), int(y)) for img, y in zip(images_hwc, labels)]


def ours_hwc(data, index: torch.Tensor) -> np.ndarray:
    return data.train_x[index].permute(0, 2, 3, 1).contiguous().numpy()


def check(name: str, ok: bool, detail: str, results: list) -> None:
    print(f"[{'ok' if ok else 'DIFFERS'}] {name}: {detail}")
    results.append({"check": name, "ok": bool(ok), "detail": detail})


def compare_training_sets(t, ref_data, mapped, data, learner, results) -> None:
    """Stage 1's training images and stage 2's holdout, as multisets of (image, label)."""
    index = learner.train_indices(learner.task)
    ref_train = collections.Counter(image_keys(ref_data.data, mapped(ref_data.targets)))
    our_train = collections.Counter(image_keys(ours_hwc(data, index), data.train_y[index]))
    check(f"task {t}: stage-1 training set", ref_train == our_train,
          f"{sum(ref_train.values())} vs {sum(our_train.values())} images", results)
    held = ref_data.coreset_sample_a_idx
    ref_holdout = collections.Counter(image_keys(
        np.concatenate([ref_data.data_a, ref_data.coreset[0][held]]),
        mapped(np.concatenate([ref_data.targets_a, ref_data.coreset[1][held]]))))
    our_holdout = collections.Counter(image_keys(ours_hwc(data, learner.holdout), data.train_y[learner.holdout]))
    per_class = collections.Counter(y for _, y in our_holdout.elements())
    check(f"task {t}: stage-2 holdout", ref_holdout == our_holdout,
          f"{sum(ref_holdout.values())} vs {sum(our_holdout.values())} images, per class "
          f"{dict(sorted(per_class.items()))}", results)


def compare_first_step(t, ref_learner, ref_data, data, learner, results) -> None:
    """One stage-1 step on the same batch (the first 128 training images, un-augmented) from the same weights:
    the loss terms and every gradient. Both models are put back afterwards (the step and the train-mode
    forward's BN statistics), so that the next task starts from the same weights again."""
    from dfcil_core.learners.api import Batch
    saved = [copy.deepcopy(m.state_dict()) for m in (ref_learner.model, learner.model)]
    index = learner.train_indices(learner.task)[:128]
    x, y = data.plain_images(index), data.train_y[index]
    ref_learner.data_weighting(ref_data)
    ref_learner.init_optimizer()
    ref_learner.model.train()
    teacher_scores, _ = ref_learner.previous_teacher.generate_scores(
        x, allowed_predictions=list(range(ref_learner.last_valid_out_dim)))
    ref_total, ref_ce, ref_kd, _ = ref_learner.update_model(x, y, teacher_scores)
    ref_grads = [p.grad for p in ref_learner.model.parameters()]  # left by its backward before its SGD step
    mu = ref_learner.last_valid_out_dim / ref_learner.valid_out_dim

    learner.model.train()
    learner.model.zero_grad(set_to_none=True)
    terms = learner.loss(Batch(x=x, y=y, index=index))
    total = sum(terms.values())
    total.backward()
    pairs = {"weighted CE": ((1 - mu) * ref_ce, terms["ce"]), "weighted KD": (mu * ref_kd, terms["kd"]),
             "total": (ref_total, total)}
    for name, (r, o) in pairs.items():
        r, o = float(r.detach().sum()), float(o.detach())
        check(f"task {t}: first step, loss {name}", abs(r - o) <= LOSS_TOLERANCE * max(1.0, abs(r)),
              f"reference {r:.7f}, ours {o:.7f}", results)
    our_grads = [p.grad for p in learner.model.parameters()]
    worst = max(float((a - b).abs().max() / a.abs().max().clamp_min(1e-12)) for a, b in zip(ref_grads, our_grads))
    check(f"task {t}: first step, gradients", worst <= GRADIENT_TOLERANCE,
          f"{len(our_grads)} tensors, largest difference {worst:.2e} of the tensor's largest entry", results)
    for model, state in zip((ref_learner.model, learner.model), saved):
        model.load_state_dict(state)
        model.zero_grad(set_to_none=True)


def arguments(doc: str) -> argparse.Namespace:
    """The command line of this folder's one-seed BiC scripts (this one and bic_lockstep.py); one thread."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--reference", type=Path, required=True, help="a checkout of GT-RIPL/AlwaysBeDreaming-DFCIL")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("benchmarks/results/reference-parity"),
                    help="folder for the data files (shared with parity.py); bic_step.py keeps the "
                         "reference's log here")
    ap.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = ap.parse_args()
    if not (args.reference / "run_dfcil.py").is_file():
        ap.error(f"{args.reference} is not a checkout of GT-RIPL/AlwaysBeDreaming-DFCIL (no run_dfcil.py)")
    torch.set_num_threads(1)
    return args


def main() -> int:
    args = arguments(__doc__)
    data_root = parity.write_data(args.work / "data")
    trainer = reference_side(args.reference.resolve(), args.seed, data_root, args.work / "bic-step-log")
    ref_learner, ref_data = trainer.learner, trainer.train_dataset

    from dfcil_core.learners.api import Task
    from dfcil_core.run import build
    _, _, data, learner = build(parity.our_settings("bic"), args.seed, "cpu", data_root=str(data_root))
    results: list[dict] = []

    # the class order
    ours_tasks = [data.class_order[a:b] for a, b in zip(data.bounds, data.bounds[1:])]
    check("class order", [list(t) for t in trainer.tasks] == ours_tasks, f"reference {trainer.tasks}", results)

    copy_weights(learner.model, ref_learner.model)

    n_tasks = len(trainer.tasks)
    tasks = [Task(t, data.n_tasks, data.bounds[t], data.bounds[t + 1]) for t in range(n_tasks)]
    mapped = lambda targets: [ref_data.class_mapping[y] for y in targets]  # noqa: E731
    for t, task in enumerate(tasks):
        # the start of task t: what the reference's Trainer and BiC's learn_batch do before their first batch
        ref_data.load_dataset(t, train=True)
        ref_learner.add_valid_output_dim(len(trainer.tasks_logits[t]))
        learner.begin_task(task)
        if t > 0:
            ref_data.load_bic_dataset()
            ref_data.append_coreset_ic()
            compare_training_sets(t, ref_data, mapped, data, learner, results)
            compare_first_step(t, ref_learner, ref_data, data, learner, results)
        else:
            ref_data.append_coreset(only=False)
        # the end of task t without training: the reference's learn_batch over no batches runs only its
        # end-of-task code (stage 2 makes no step on a holdout smaller than a batch, on both sides)
        save_dir = args.work / "bic-step-log" / f"task{t}"
        save_dir.mkdir(parents=True, exist_ok=True)
        ref_learner.learn_batch([], ref_data, f"{save_dir}/")
        learner.end_task(task)
        ref_memory = image_keys(ref_data.coreset[0], mapped(ref_data.coreset[1]))
        our_memory = image_keys(ours_hwc(data, learner.memory.indices), data.train_y[learner.memory.indices])
        per_class = collections.Counter(y for _, y in our_memory)
        check(f"task {t}: exemplars after the task (herding order)", ref_memory == our_memory,
              f"{len(ref_memory)} vs {len(our_memory)} images, per class {dict(sorted(per_class.items()))}",
              results)

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {"seed": args.seed, "machine": host.describe(), "command": "python " + " ".join(sys.argv),
                  "checks": results}
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
