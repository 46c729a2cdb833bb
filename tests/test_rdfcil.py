"""R-DFCIL: the angle-wise RKD loss, the loss weights, the class weights of stage 2, and what each stage trains."""

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_settings
from dfcil_core.config import ConfigError
from dfcil_core.learners.api import Batch, Task
from dfcil_core.learners.rdfcil import RDFCIL, inverse_frequency_weights, loss_weights
from dfcil_core.losses import rkd_angle_loss
from dfcil_core.methods import METHODS, resolve
from dfcil_core.run import build
from dfcil_core.trainer import train_task
from test_data_free import grad_norms, tiny_learner

HP = METHODS["rdfcil"].defaults


def test_rkd_angle_loss_against_a_hand_computed_value():
    # Triplet (i, j, k) holds the cosine of the angle at j between i and k: 1 for i = k != j, 0 where i or k is j.
    # An equilateral triangle has 0.5 at every vertex; a right isosceles one 0 at the right angle and sqrt(2)/2 at the
    # two others. Of the 27 triplets only the 6 with i, j, k distinct differ: (2 * 0.5 + 4 * (sqrt(2)/2 - 0.5)) / 27.
    equilateral = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    right = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    expected = (2 * 0.5 + 4 * (math.sqrt(2) / 2 - 0.5)) / 27
    assert rkd_angle_loss(equilateral, right).item() == pytest.approx(expected, rel=1e-6)
    # angles ignore scale, rotation and translation
    turn = torch.tensor([[0.6, -0.8], [0.8, 0.6]])
    assert rkd_angle_loss(3 * equilateral @ turn + 1, right).item() == pytest.approx(expected, rel=1e-5)
    assert rkd_angle_loss(right, right).item() == 0


@pytest.mark.parametrize("n_new, ce, hkd, rkd", [
    (20, 0.645, 0.519, 1.730),  # 5 equal tasks of CIFAR-100 (RDFCIL_NOTES.md: 0.645/sqrt(t), 0.519 sqrt(t), 1.730 sqrt(t))
    (10, 0.693, 0.388, 1.292),  # 10 tasks
    (5, 0.777, 0.271, 0.904),   # 20 tasks
])
def test_loss_weights_for_equal_splits(n_new, ce, hkd, rkd):
    for t in (1, 2, 4):
        w = loss_weights(n_past=t * n_new, n_new=n_new, hp=HP)
        assert w["ce"] == pytest.approx(ce / math.sqrt(t), abs=1e-3)
        assert w["hkd"] == pytest.approx(hkd * math.sqrt(t), abs=2e-3)
        assert w["rkd"] == pytest.approx(rkd * math.sqrt(t), abs=2e-3)


def test_loss_weights_for_the_fifty_class_first_protocol():
    # 50 classes, then tasks of 10: alpha = log2(6), beta = sqrt(50 / 10) at task 1, sqrt(90 / 10) at task 5
    alpha = math.log2(6)
    for n_past in (50, 90):
        beta = math.sqrt(n_past / 10)
        w = loss_weights(n_past=n_past, n_new=10, hp=HP)
        assert w == pytest.approx({"ce": 0.5 * (1 + 1 / alpha) / beta, "hkd": 0.15 * alpha * beta,
                                   "rkd": 0.5 * alpha * beta})
    assert loss_weights(50, 10, HP)["ce"] == pytest.approx(0.3101, abs=1e-4)


def test_inverse_frequency_weights():
    # total 70: 70/10, 70/20, 70/40 and 70/1 (an unseen class counts 1), divided by the smallest (1.75)
    assert inverse_frequency_weights(torch.tensor([10.0, 20.0, 40.0, 0.0])).tolist() == pytest.approx([4, 2, 1, 40])


def rdfcil_terms():
    learner = tiny_learner(RDFCIL)
    torch.manual_seed(1)
    batch = Batch(x=torch.randn(3, 1, 8, 8), y=torch.tensor([2, 3, 3]), index=torch.arange(3))
    x_replay, y_replay = torch.randn(3, 1, 8, 8), torch.tensor([0, 1, 1])
    with torch.no_grad():
        z_replay = learner.teacher(x_replay)[:, :2]
    learner.model.train()
    return learner, batch, x_replay, y_replay, learner.replay_loss(batch, x_replay, y_replay, z_replay)


def test_stage_one_terms_values_and_label_counts():
    learner, batch, x_replay, y_replay, terms = rdfcil_terms()
    model, teacher = learner.model, learner.teacher
    w = loss_weights(2, 2, HP)
    with torch.no_grad():  # train mode, as in the loss: BN normalises each forward by its own batch
        local = F.cross_entropy(model(batch.x)[:, 2:4], batch.y - 2)
        hard = F.l1_loss(model(x_replay)[:, :2], teacher(x_replay)[:, :2])
        student, teach = learner.projections
        relation = rkd_angle_loss(student(model(batch.x, pen=True)), teach(teacher(batch.x, pen=True)))
    assert terms["ce_local"].item() == pytest.approx(w["ce"] * local.item(), rel=1e-5)
    assert terms["kd_hard"].item() == pytest.approx(w["hkd"] * hard.item(), rel=1e-5)
    assert terms["kd_relation"].item() == pytest.approx(w["rkd"] * relation.item(), rel=1e-5)
    assert learner.class_counts.tolist() == [1, 2, 1, 2]  # real [2, 3, 3] and synthetic [0, 1, 1]


def test_stage_one_terms_reach_the_right_parameters():
    learner, *_, terms = rdfcil_terms()
    local = grad_norms(learner, terms["ce_local"])["last.weight"]
    assert local[2:4].abs().sum() > 0 and local[:2].abs().sum() == 0 and local[4:].abs().sum() == 0  # new logits only
    relation = grad_norms(learner, terms["kd_relation"])
    assert relation["last.weight"].abs().sum() == 0 and relation["stages.0.0.conv1.weight"].abs().sum() > 0
    projections = list(learner.projections.parameters())
    grads = torch.autograd.grad(terms["kd_relation"], projections, retain_graph=True)
    assert all(g.abs().sum() > 0 for g in grads)  # both projections learn
    assert "last.bias" not in {n for n, p in learner.model.named_parameters() if any(p is q for q in learner.parameters())}
    assert all(any(p is q for q in learner.parameters()) for p in projections)


@pytest.fixture
def tiny_rdfcil():
    settings = tiny_settings("rdfcil", **{**RDFCIL.tiny_overrides, "finetune_epochs": 1})
    settings["train"]["epochs"] = 2
    _, train, data, learner = build(settings, 0, "cpu")
    return train, data, learner


def test_each_new_head_starts_small_and_the_bias_stays_zero(tiny_rdfcil):
    train, data, learner = tiny_rdfcil
    assert learner.model.last.bias.abs().sum() == 0
    train_task(learner, Task(0, 3, 0, 2), data, train, seed=0, log=lambda m: None)
    learner.begin_task(Task(1, 3, 2, 4))
    rows = learner.model.last.weight
    assert rows[2:4].std().item() == pytest.approx(0.001, rel=0.5) and rows[:2].abs().max() > 0.01
    assert learner.model.last.bias.abs().sum() == 0


def test_task_zero_trains_all_but_the_refinement_epochs_and_then_nothing_else(tiny_rdfcil):
    train, data, learner = tiny_rdfcil
    lines = []
    metrics = train_task(learner, Task(0, 3, 0, 2), data, train, seed=0, log=lines.append)
    assert metrics["train_steps"] == len(data.task_indices(0)) // train["batch_size"]  # 1 of the 2 epochs
    assert not any("head" in line for line in lines)


def test_stage_two_changes_only_the_classifier(tiny_rdfcil):
    train, data, learner = tiny_rdfcil
    train_task(learner, Task(0, 3, 0, 2), data, train, seed=0, log=lambda m: None)
    task = Task(1, 3, 2, 4)
    learner.begin_task(task)
    learner.count_labels(torch.tensor([0, 1, 2, 3, 3]))  # what stage 1 would have counted
    learner.model.train()  # as the main stage leaves it
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    lines = []
    learner.log = lines.append
    learner.end_task(task)  # stage 2, then the inversion for task 2 (which trains the generator only)
    after = learner.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"last.weight"}  # no backbone weight, no BN statistic, not the (zero) bias
    assert any("[task1-head] epoch 1/1" in line for line in lines)
    assert learner.projections is None and "projections" not in learner.state_dict()


def test_refinement_epochs_must_leave_a_main_stage():
    settings = tiny_settings("rdfcil", finetune_epochs=1)  # tiny tasks have 1 epoch
    with pytest.raises(ConfigError, match="finetune_epochs 1 must be at least 0 and fewer than the 1 epochs"):
        resolve(settings)
