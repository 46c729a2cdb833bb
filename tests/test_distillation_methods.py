"""LwF, LwF.MC, E2E, BiC: their loss terms, targets, holdouts and bias layers, and the ranked memory
(nearest-to-mean, herding), checked against hand-computed values (spec §0, §4.4-4.9, §6)."""

import math

import pytest
import torch
from torch import nn

from conftest import tiny_settings
from dfcil_core.learners import LEARNERS
from dfcil_core.learners.api import Task
from dfcil_core.learners.bic import apply_bias, first_k_per_class
from dfcil_core.methods import holdout_per_class, resolve_hyperparameters
from dfcil_core.learners.e2e import task_blocks, taskwise_kd, taskwise_weights
from dfcil_core.learners.lwf_mc import lwf_mc_loss, lwf_mc_targets
from dfcil_core.losses import kd_loss
from dfcil_core.memory import RankedMemory, herding, nearest_to_mean
from dfcil_core.run import build
from dfcil_core.trainer import train_task


@pytest.fixture(scope="module")
def tiny():
    """The tiny run's training settings, data and context, loaded once for the module."""
    _, train, data, learner = build(tiny_settings("base"), seed=0, device="cpu")
    return train, data, learner.ctx


def make(tiny, method, **overrides):
    """A fresh learner of `method` (seeded init) on the shared tiny data."""
    torch.manual_seed(0)
    return LEARNERS[method](resolve_hyperparameters(method, overrides), tiny[2])


def softmax(row, t=1.0):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


# ---------------------------------------------------------------- KD (§0)

def test_kd_loss_value_and_gradient_match_the_formula():
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    teacher = [[2.0, 0.0, 1.0], [1.0, 1.0, -2.0]]
    t = 2.0
    expected = -sum(sum(p * math.log(q) for p, q in zip(softmax(tr, t), softmax(sr, t)))
                    for sr, tr in zip(student, teacher)) / 2
    # d/dz of -(1/N) sum p log softmax(z/T) = (softmax(z/T) - p) / (N T), since sum p = 1 (no T^2 factor)
    expected_grad = [[(q - p) / (2 * t) for p, q in zip(softmax(tr, t), softmax(sr, t))]
                     for sr, tr in zip(student, teacher)]
    z = torch.tensor(student, dtype=torch.float64, requires_grad=True)
    loss = kd_loss(z, torch.tensor(teacher, dtype=torch.float64), temperature=t)
    loss.backward()
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert torch.allclose(z.grad, torch.tensor(expected_grad, dtype=torch.float64), atol=1e-12)


# ---------------------------------------------------------------- LwF.MC (§4.6)

def test_lwf_mc_targets_and_losses_for_both_variants():
    y = torch.tensor([2, 3])
    z_teacher = torch.tensor([[1.0, -1.0], [0.0, 2.0]], dtype=torch.float64)
    sm = lwf_mc_targets(y, z_teacher, 4, "softmax")
    bce = lwf_mc_targets(y, z_teacher, 4, "bce")
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    assert torch.allclose(sm, torch.tensor([softmax([1, -1]) + [1, 0], softmax([0, 2]) + [0, 1]], dtype=sm.dtype))
    assert torch.allclose(bce, torch.tensor([[sig(1), sig(-1), 1, 0], [sig(0), sig(2), 0, 1]], dtype=bce.dtype))
    assert torch.allclose(sm.sum(dim=1), torch.tensor([2.0, 2.0], dtype=sm.dtype))  # rows sum to 2 (ICCV code)
    # task 0: one-hot targets
    assert torch.equal(lwf_mc_targets(y, None, 4, "bce"), torch.eye(4)[[2, 3]])

    z = torch.tensor([[0.5, -0.2, 1.0, 0.0], [1.5, 0.3, -1.0, 2.0]], dtype=torch.float64)
    ls = [math.log(p) for p in softmax(z[0].tolist())], [math.log(p) for p in softmax(z[1].tolist())]
    expected_sm = -sum(sum(a * b for a, b in zip(sm[i].tolist(), ls[i])) for i in range(2)) / 2
    assert lwf_mc_loss(z, sm, "softmax").item() == pytest.approx(expected_sm, rel=1e-12)
    expected_bce = -sum(tg * math.log(sig(v)) + (1 - tg) * math.log(1 - sig(v))
                        for zr, tr in zip(z.tolist(), bce.tolist()) for v, tg in zip(zr, tr)) / 2
    assert lwf_mc_loss(z, bce, "bce").item() == pytest.approx(expected_bce, rel=1e-12)


# ---------------------------------------------------------------- E2E (§4.8)

def test_e2e_taskwise_weights():
    bounds = [0, 20, 40, 60, 80, 100]
    blocks = task_blocks(bounds, 3)
    assert blocks == [range(0, 20), range(20, 40), range(40, 60)]
    assert taskwise_weights(blocks, 60) == pytest.approx([1 / 3] * 3)  # stage A: |C_s| / n_old
    assert taskwise_weights(blocks, 80) == pytest.approx([0.25] * 3)   # stage B: |C_s| / n_all
    assert taskwise_weights(task_blocks([0, 50, 60, 70], 2), 60) == pytest.approx([50 / 60, 10 / 60])


def test_e2e_taskwise_kd_is_one_softmax_per_task():
    g = torch.Generator().manual_seed(0)
    z, zt = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    blocks = task_blocks([0, 2, 6], 2)
    expected = 2 / 6 * kd_loss(z[:, :2], zt[:, :2]) + 4 / 6 * kd_loss(z[:, 2:6], zt[:, 2:6])
    assert torch.allclose(taskwise_kd(z, zt, blocks, 6, 2.0), expected)
    assert not torch.allclose(taskwise_kd(z, zt, blocks, 6, 2.0), kd_loss(z, zt))


class FixedLogits(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.z = logits

    def forward(self, x):
        return self.z[: len(x)]


@pytest.mark.parametrize("target", ["previous_teacher", "stage_a"])
def test_e2e_balanced_new_class_kd_target(tiny, target):
    data, learner = tiny[1], make(tiny, "e2e", balanced_new_kd=target)
    learner.task = Task(2, 3, 4, 6)  # two past tasks of 2 classes, new classes 4, 5
    g = torch.Generator().manual_seed(1)
    old, after_a = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    learner.teacher, learner.stage_a = FixedLogits(old), (FixedLogits(after_a) if target == "stage_a" else None)
    batch = data.train_batch(torch.nonzero(data.train_y < 6).flatten()[:8])
    terms = learner.balanced_loss(batch)
    with torch.no_grad():
        z = learner.model(batch.x)[:, :6]
    new_target = old[:, :2] if target == "previous_teacher" else after_a[:, 4:6]
    expected = (2 / 6 * kd_loss(z[:, :2], old[:, :2]) + 2 / 6 * kd_loss(z[:, 2:4], old[:, 2:4])
                + 2 / 6 * kd_loss(z[:, 4:6], new_target))
    assert torch.allclose(terms["kd"], expected, atol=1e-6)


@pytest.mark.parametrize("bn_train", [True, False])
def test_e2e_balanced_stage_trains_only_the_head_and_bn_statistics_per_switch(tiny, bn_train):
    (train, data, _), learner = tiny, make(tiny, "e2e", memory_size=40, balanced_bn_train=bn_train)
    train_task(learner, Task(0, 3, 0, 2), data, train, seed=0, log=lambda m: None)
    task = Task(1, 3, 2, 4)
    learner.begin_task(task)  # skip stage A: only the balanced stage runs in end_task
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    learner.end_task(task)
    after = learner.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {"last.weight", "last.bias"} <= changed
    assert not any(k.endswith(("conv1.weight", "conv2.weight")) for k in changed)
    assert any("running_mean" in k for k in changed) == bn_train


# ---------------------------------------------------------------- BiC (§4.9)

@pytest.mark.parametrize("n_old, k", [(20, 10), (40, 5), (60, 3), (80, 2), (70, 2), (95, 2)])
def test_bic_holdout_per_class(n_old, k):
    assert holdout_per_class(2000, n_old) == k  # k = floor(200 / n_old); 5x20 split: 10/5/3/2


def test_first_k_per_class_follows_the_given_order():
    labels = torch.tensor([0, 1, 0, 1, 0, 2, 2, 1])
    index = torch.tensor([7, 0, 1, 2, 3, 4, 5])  # labels 1 0 1 0 1 0 2
    assert first_k_per_class(index, labels, 2).tolist() == [True, True, True, True, False, False, True]


def test_e2e_reference_target_needs_new_classes_to_fit_in_the_old_ones():
    """First task of 2 classes, then 4: the previous model has too few logits for the reference's target."""
    from dfcil_core.config import ConfigError
    settings = {**tiny_settings("e2e"), "other_split": 4, "max_tasks": 2}
    with pytest.raises(ConfigError, match="task 1 has 4 new and 2 old classes"):
        build(settings, 0, "cpu")
    build({**settings, "method_settings": {"balanced_new_kd": "stage_a"}}, 0, "cpu")


def test_bic_memory_too_small_for_a_holdout_is_refused_before_training():
    """3 tasks of 2 classes: 4 classes are old at the last task, so 10% of the memory must be >= 4 images."""
    from dfcil_core.config import ConfigError
    with pytest.raises(ConfigError, match="memory_size must be at least 40"):
        build(tiny_settings("bic", memory_size=39), 0, "cpu")
    build(tiny_settings("bic", memory_size=40), 0, "cpu")


def test_bic_holdout_split_is_first_k_new_in_storage_order_and_first_k_old_in_memory_order(tiny):
    (train, data, _), learner = tiny, make(tiny, "bic", memory_size=40)
    train_task(learner, Task(0, 3, 0, 2), data, train, seed=0, log=lambda m: None)
    memory = learner.memory.indices.clone()
    task = Task(1, 3, 2, 4)
    learner.begin_task(task)
    train_idx, holdout = learner.train_indices(task), learner.holdout
    k = 40 // 10 // 2
    new = data.task_indices(1)
    y = data.train_y
    assert sorted(train_idx.tolist() + holdout.tolist()) == sorted(new.tolist() + memory.tolist())
    assert torch.bincount(y[holdout], minlength=4).tolist() == [k] * 4
    for c in range(4):
        source = new if c >= 2 else memory  # memory is stored by class, each class in herding order
        assert holdout[y[holdout] == c].tolist() == source[y[source] == c][:k].tolist()


def test_apply_bias_scales_each_later_task_block():
    z = torch.arange(1.0, 9.0).view(1, 8)  # blocks [0,2) [2,4) [4,6) [6,8)
    layers = [torch.tensor([2.0, 1.0]), torch.tensor([0.5, -1.0])]
    assert apply_bias(z, layers, [0, 2, 4, 6, 8]).tolist() == [[1, 2, 7, 9, 1.5, 2, 7, 8]]
    assert apply_bias(z[:, :6], layers, [0, 2, 4, 6, 8]).tolist() == [[1, 2, 7, 9, 1.5, 2]]
    assert torch.equal(apply_bias(z, [], [0, 2, 4, 6, 8]), z)


@pytest.mark.parametrize("at_eval", [False, True])
def test_bic_bias_layers_in_training_always_and_at_evaluation_per_switch(tiny, at_eval):
    data, learner = tiny[1], make(tiny, "bic", bias_at_eval=at_eval)
    learner.task = Task(2, 3, 4, 6)
    learner.bias = [nn.Parameter(torch.tensor([3.0, 0.5])), nn.Parameter(torch.tensor([0.5, -2.0]))]
    learner.model.eval()
    x = data.plain_images(torch.arange(4))
    raw = learner.model(x)[:, :6]
    corrected = torch.cat([raw[:, :2], 3 * raw[:, 2:4] + 0.5, 0.5 * raw[:, 4:6] - 2], dim=1)
    assert torch.allclose(learner.logits(x), corrected if at_eval else raw)
    # training (stage 1): corrected logits; the teacher's targets are corrected by its own layers
    learner.teacher, learner.teacher_bias = FixedLogits(raw.detach()), [torch.tensor([2.0, 0.0])]
    batch = data.train_batch(torch.nonzero(data.train_y < 6).flatten()[:4])
    terms = learner.loss(batch)
    with torch.no_grad():
        zb = learner.model(batch.x)[:, :6]
        zb = torch.cat([zb[:, :2], 3 * zb[:, 2:4] + 0.5, 0.5 * zb[:, 4:6] - 2], dim=1)
    teacher = torch.cat([raw[:, :2], 2 * raw[:, 2:4]], dim=1)
    r = 4 / 6
    assert torch.allclose(terms["ce"], (1 - r) * nn.functional.cross_entropy(zb, batch.y), atol=1e-6)
    assert torch.allclose(terms["kd"], r * kd_loss(zb[:, :4], teacher), atol=1e-6)


@pytest.mark.parametrize("bn_train", [True, False])
def test_bic_bias_stage_fits_only_alpha_beta_and_bn_statistics_per_switch(tiny, bn_train):
    (train, data, _), learner = tiny, make(tiny, "bic", memory_size=40, bias_bn_train=bn_train, bias_batch_size=4)
    train_task(learner, Task(0, 3, 0, 2), data, train, seed=0, log=lambda m: None)
    task = Task(1, 3, 2, 4)
    learner.begin_task(task)
    learner.train_indices(task)  # sets the holdout; stage 1 skipped
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    learner.end_task(task)
    after = learner.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not any(k.endswith(("weight", "bias")) for k in changed)  # the network's parameters are frozen
    assert bool(changed) == bn_train and all("running" in k or "num_batches" in k for k in changed)
    assert len(learner.bias) == 1 and not torch.equal(learner.bias[0].detach(), torch.tensor([1.0, 0.0]))


def test_bic_bias_stage_on_a_holdout_smaller_than_a_batch_makes_no_step(tiny):
    """The reference's stage-2 loader drops the last partial batch: an 8-image holdout with batches of 32
    yields no batch, so neither alpha/beta nor the BN running statistics move (bias_bn_train is on)."""
    (train, data, _), learner = tiny, make(tiny, "bic", memory_size=40)
    train_task(learner, Task(0, 3, 0, 2), data, train, seed=0, log=lambda m: None)
    task = Task(1, 3, 2, 4)
    learner.begin_task(task)
    learner.train_indices(task)
    assert len(learner.holdout) == 8 and train["batch_size"] == 32
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    lines = []
    learner.log = lines.append
    learner.end_task(task)
    assert all(torch.equal(v, learner.model.state_dict()[k]) for k, v in before.items())
    assert learner.bias[0].tolist() == [1.0, 0.0]
    assert any("no step" in line for line in lines)


# ---------------------------------------------------------------- memory selection (§6.3-6.4)

FEATS = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [9.0, 0.0]])  # mean (3, 0)


def test_nearest_to_mean_ranks_by_distance_to_the_class_mean():
    assert nearest_to_mean(FEATS, 5).tolist() == [3, 2, 1, 0, 4]
    assert nearest_to_mean(FEATS, 2).tolist() == [3, 2]


def test_herding_keeps_the_running_mean_close_to_the_class_mean():
    # picks 3 (=3), 2 (mean 2.5), 1 (mean 2); then 9 brings the mean to 3.75, closer than 0 (1.5)
    assert herding(FEATS, 5).tolist() == [3, 2, 1, 4, 0]
    assert herding(FEATS, 3).tolist() == [3, 2, 1]


class FeatureIdentity(nn.Module):
    def features(self, x):
        return x


class FeatureScaled(nn.Module):
    def features(self, x):
        return x * torch.tensor([1.0, -3.0])


class FakeData:
    """Each 'image' is its own 2-d feature; labels: `per_class` samples per class, in storage order."""

    def __init__(self, n_classes, per_class, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.train_y = torch.arange(n_classes).repeat_interleave(per_class)
        self.x = torch.randn(len(self.train_y), 2, generator=g)

    def plain_images(self, index, normalize=True):
        return self.x[index]


@pytest.mark.parametrize("n_tasks, first_and_last", [
    (5, ([100] * 20, [20] * 100)),
    (10, ([200] * 10, [20] * 100)),
    (20, ([400] * 5, [20] * 100)),
])
def test_ranked_memory_counts_follow_the_allocation_and_truncate_the_cached_ranking(n_tasks, first_and_last):
    data, size = FakeData(100, 500), 100 // n_tasks
    memory = RankedMemory(2000, "nearest_to_mean")
    counts = []
    for t in range(n_tasks):
        rankings_before = [r.clone() for r in memory.rankings]
        memory.update(FeatureIdentity(), data, size * (t + 1))
        counts.append(torch.bincount(data.train_y[memory.indices], minlength=size * (t + 1)).tolist())
        assert all(torch.equal(a, b) for a, b in zip(rankings_before, memory.rankings))  # cached, not redone
        for c in range(size * (t + 1)):  # each class keeps a prefix of its ranking, classes ascending
            stored = memory.indices[data.train_y[memory.indices] == c]
            assert torch.equal(stored, memory.rankings[c][:len(stored)])
        assert torch.equal(data.train_y[memory.indices], data.train_y[memory.indices].sort().values)
    assert counts[0] == first_and_last[0] and counts[-1] == first_and_last[1]
    if n_tasks == 5:  # §6.1: 100, 50, 33 (newest 20 get 34), 25, 20
        assert counts[2] == [33] * 40 + [34] * 20 and counts[3] == [25] * 80
    assert all(sum(c) == 2000 for c in counts)


def test_ranked_memory_ranks_new_classes_with_the_given_model_and_is_restored_from_state():
    data = FakeData(4, 30)
    memory = RankedMemory(20, "herding")
    memory.update(FeatureIdentity(), data, 2)
    cls0 = torch.arange(30)
    assert memory.rankings[0].tolist() == cls0[herding(data.x[cls0], 10)].tolist()
    restored = RankedMemory(20, "herding")
    restored.load_state_dict(memory.state_dict())
    memory.update(FeatureIdentity(), data, 4)
    other = FeatureScaled()  # the next task's model: another feature map
    restored.update(other, data, 4)
    for c in (0, 1):  # old classes keep their saved ranking (not re-ranked with the new model)
        assert restored.rankings[c].tolist() == memory.rankings[c].tolist()
    for c in (2, 3):  # new classes are ranked with the model given
        cands = torch.arange(30 * c, 30 * (c + 1))
        assert restored.rankings[c].tolist() == cands[herding(other.features(data.x[cands]), 5)].tolist()
    assert len(restored.indices) == 20
