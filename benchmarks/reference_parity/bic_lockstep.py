"""Issue #16: whole BiC runs of both code bases on one stream of batches, from identical weights (one seed).

    python benchmarks/reference_parity/bic_lockstep.py --reference PATH/TO/AlwaysBeDreaming-DFCIL [--seed 0]
                                                       [--out FILE.json]

The parity table compares runs whose random streams differ (batch order and augmentation: torchvision's per-image
transforms in the reference's loader, ours batched on the device), so a gap there is code or luck. `bic_step.py`
checks single steps from identical weights. This script checks the whole run with the luck taken out: under the
parity protocol it copies our initial weights into the reference's ResNet-32, then for each task

1. runs the reference's own task: its Trainer's per-task seeding and data loading, and `BIC.learn_batch` over a
   DataLoader built as its Trainer builds it, recording every batch that loader yields (already augmented and
   normalized by the reference's transforms);
2. runs our own task, `trainer.train_task` (the loop every job runs: our optimizer, `run_stage`, the learner's
   loss and end of task, our evaluation), on a view of our data whose `train_batch` returns the reference's
   recorded batches in order instead of drawing its own. Our herding and evaluation read our own data;
3. compares: each task's test accuracy (the reference's `task_eval`, ours `evaluate`), the largest difference of
   any weight or BN statistic relative to that tensor's largest entry, and the exemplars each side keeps (how many
   of them are the same image in the same place of the herding order).

What remains between the two sides is the code and float32 rounding (`bic_step.py`: gradients equal to ~4e-6 of
their largest entry). How much rounding alone moves a run is measured beside them: a third side, our code again on
the same batches from the same weights with every initial weight moved by one float32 ulp (up or down at random),
the one-bit change of Summers & Dinneen (ICML 2021). If the reference's accuracies differ from ours by about as
much as that twin's do, the two code bases differ by no more than rounding does.

Stage 2 (the bias layer) draws no batch at this protocol on any side (its holdout of 20-40 images is smaller than
one batch of 128 and both loaders drop the last partial batch); the script stops with an error if the reference's
loader yields more batches than our stage 1 takes, since those would be stage-2 batches this comparison does not
share.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bic_step  # noqa: E402  (the reference's Trainer for BiC, our weights into it, image keys)
import host  # noqa: E402  (benchmarks/host.py: the machine a record names)
import parity  # noqa: E402


class RecordingLoader:
    """A DataLoader that keeps a copy of every batch it yields."""

    def __init__(self, loader):
        self.loader, self.batches = loader, []

    def __iter__(self):
        for x, y, task in self.loader:
            self.batches.append((x.clone(), y.clone()))
            yield x, y, task

    def __len__(self):
        return len(self.loader)


class ReplayedBatches:
    """Our training data, except that `train_batch` returns the reference's recorded batches in order. Those come
    normalized by the reference's transform, which is what BiC's main stage asks for (`normalize=True`)."""

    def __init__(self, data, batches):
        self.data, self.batches, self.taken = data, batches, 0

    def __getattr__(self, name):
        return getattr(self.data, name)

    def train_batch(self, index, normalize=True):
        from dfcil_core.learners.api import Batch
        if not normalize:
            raise RuntimeError("a stage asked for unnormalized batches; the reference's recorded ones are normalized")
        if self.taken == len(self.batches):
            raise RuntimeError(f"our stage asked for batch {self.taken + 1}; the reference's loader yielded "
                               f"{len(self.batches)}")
        x, y = self.batches[self.taken]
        self.taken += 1
        return Batch(x=x, y=y, index=index)


def largest_weight_difference(ref_model, our_model) -> float:
    """Over every floating-point tensor of the state dicts (parameters and BN statistics): max |a - b| / max |a|."""
    pairs = zip(ref_model.state_dict().values(), our_model.state_dict().values())
    return max(float((a - b).abs().max() / a.abs().max().clamp_min(1e-12)) for a, b in pairs if a.is_floating_point())


@torch.no_grad()
def nudge_one_ulp(model, seed: int) -> None:
    """Every parameter moved to the next float32 value up or down (a coin flip each, from its own generator)."""
    coins = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        up = torch.rand(p.shape, generator=coins) < 0.5
        p.copy_(torch.nextafter(p, torch.where(up, torch.inf, -torch.inf)))


def same_place(a: list, b: list) -> str:
    return f"{sum(x == y for x, y in zip(a, b))} of {len(a)}"


def main() -> int:
    args = bic_step.arguments(__doc__)
    started = time.perf_counter()
    data_root = parity.write_data(args.work / "data")
    # a fresh log folder (not --work's): the reference skips training where it finds a saved model
    log_dir = Path(tempfile.mkdtemp(prefix="bic-lockstep-"))
    trainer = bic_step.reference_side(args.reference.resolve(), args.seed, data_root, log_dir)
    ref_learner, ref_data = trainer.learner, trainer.train_dataset
    from torch.utils.data import DataLoader

    from dfcil_core.learners.api import Task
    from dfcil_core.run import build
    from dfcil_core.trainer import seed_everything, train_task
    ours = {side: build(parity.our_settings("bic"), args.seed, "cpu", data_root=str(data_root))[1:]
            for side in ("ours", "ours_one_ulp")}  # (train settings, data, learner); the same seed: the same weights
    train = ours["ours"][0]
    bic_step.copy_weights(ours["ours"][2].model, ref_learner.model)
    nudge_one_ulp(ours["ours_one_ulp"][2].model, args.seed)
    mapped = lambda targets: [ref_data.class_mapping[y] for y in targets]  # noqa: E731

    tasks = []
    for t in range(len(trainer.tasks)):
        # the reference's task t, as its Trainer.train runs it (seeds, datasets, loader), recording the batches
        seed_everything(args.seed * 100 + t)  # the three generators, as its Trainer seeds them
        ref_data.load_dataset(t, train=True)
        ref_learner.add_valid_output_dim(len(trainer.tasks_logits[t]))
        ref_data.append_coreset(only=False)
        loader = RecordingLoader(DataLoader(ref_data, batch_size=trainer.batch_size, shuffle=True, drop_last=True,
                                            num_workers=int(trainer.workers)))
        save_dir = log_dir / f"task{t}"
        save_dir.mkdir()
        ref_learner.learn_batch(loader, ref_data, f"{save_dir}/", None)
        accuracy = {"reference": [float(trainer.task_eval(j)) for j in range(t + 1)]}
        memory = {"reference": bic_step.image_keys(ref_data.coreset[0], mapped(ref_data.coreset[1]))}

        # our task t on those batches, for each of our two sides
        for side, (_, data, learner) in ours.items():
            replay = ReplayedBatches(data, loader.batches)
            task = Task(t, data.n_tasks, data.bounds[t], data.bounds[t + 1])
            accuracy[side] = train_task(learner, task, replay, train, args.seed, log=lambda line: None)[
                "accuracy_per_task"]
            if replay.taken != len(loader.batches):
                raise SystemExit(f"task {t}: the reference's loader yielded {len(loader.batches)} batches, our stage 1 "
                                 f"took {replay.taken}; the extra batches are outside this comparison")
            memory[side] = bic_step.image_keys(bic_step.ours_hwc(data, learner.memory.indices),
                                               data.train_y[learner.memory.indices])

        our_model, twin_model = ours["ours"][2].model, ours["ours_one_ulp"][2].model
        row = {"task": t, "batches": len(loader.batches), "accuracy": accuracy,
               "mean_accuracy": {side: float(np.mean(a)) for side, a in accuracy.items()},
               "largest_weight_difference": {
                   "reference_vs_ours": largest_weight_difference(ref_learner.model, our_model),
                   "ours_vs_one_ulp": largest_weight_difference(our_model, twin_model)},
               "exemplars_in_same_place": {"reference_vs_ours": same_place(memory["reference"], memory["ours"]),
                                           "ours_vs_one_ulp": same_place(memory["ours"], memory["ours_one_ulp"])}}
        tasks.append(row)
        print(f"task {t}: {row['batches']} batches; mean accuracy "
              + ", ".join(f"{side} {a:.2f}" for side, a in row["mean_accuracy"].items())
              + "; largest weight difference " + ", ".join(f"{k} {v:.2e}" for k, v in
                                                          row["largest_weight_difference"].items())
              + "; exemplars in the same place " + ", ".join(f"{k} {v}" for k, v in
                                                            row["exemplars_in_same_place"].items()), flush=True)

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {"seed": args.seed, "machine": host.describe(), "command": "python " + " ".join(sys.argv),
                  "seconds": round(time.perf_counter() - started, 1), "tasks": tasks}
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
