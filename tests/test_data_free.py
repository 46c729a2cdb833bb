"""The data-free machinery: inversion losses, the BN-statistics hooks, generator/VAE sizes, ABD's loss terms."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, kl_divergence

from conftest import tiny_settings
from dfcil_core.data import DatasetInfo
from dfcil_core.inversion import (BNStatistics, class_balance_loss, gaussian_kernel, invert, smoothness_loss)
from dfcil_core.learners.abd import ABD
from dfcil_core.learners.api import Batch, Context, Task
from dfcil_core.learners.deep_inversion import DeepInversion
from dfcil_core.losses import old_new_class_weights, weighted_ce
from dfcil_core.models.generator import Generator
from dfcil_core.models.resnet import CifarResNet
from dfcil_core.models.vae import VAE
from dfcil_core.methods import METHODS, resolve
from dfcil_core.run import build

CPU = torch.device("cpu")
HP = {"gen_lr": 1e-3, "bn_stat_weight": 50.0, "smoothness_weight": 1e-3, "content_temperature": 1000.0,
      "content_weight": 1.0}


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- sizes

def test_generator_parameter_counts_match_the_reference():
    assert n_params(Generator(channels=3, size=32, z_dim=1000, width=128)) == 8_423_939  # CIFAR_GEN
    assert n_params(Generator(channels=3, size=64, z_dim=1000, width=128)) == 8_571_779  # TINYIMNET_GEN
    imnet = Generator(channels=3, size=224, z_dim=1000, width=64, last_width=64)
    assert n_params(imnet) == 3_326_275 and imnet.init_size == 7  # IMNET_GEN
    g = Generator(channels=1, size=16, z_dim=32, width=16)  # the demo's shape
    assert g.sample(5).shape == (5, 1, 16, 16)
    bns = [m for m in g.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [m.eps for m in bns] == [1e-5, 0.8, 0.8, 1e-5]  # eps 0.8 in the conv blocks (quirk 16)
    assert not bns[-1].affine and bns[0].affine


def test_vae_parameter_count_matches_the_reference_and_sizes_from_the_data():
    assert n_params(VAE(channels=3, size=32, z_dim=1024, width=64)) == 28_722_179
    vae = VAE(channels=1, size=16, z_dim=8, width=4)
    x = vae.sample(3)
    assert x.shape == (3, 1, 16, 16) and x.min() >= 0 and x.max() <= 1


# ---------------------------------------------------------------- inversion losses

def test_bn_statistics_hook_is_the_kl_of_the_running_to_the_batch_gaussian():
    torch.manual_seed(0)
    bn1, bn2 = nn.BatchNorm2d(3), nn.BatchNorm2d(3)
    for bn in (bn1, bn2):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    model = nn.Sequential(bn1, nn.Conv2d(3, 3, 1), bn2).eval()
    x = torch.randn(4, 3, 5, 5) * 1.5 + 0.3

    def expected(inp, bn):  # written from the formula, in float64
        inp = inp.double()
        mu_b = inp.mean(dim=(0, 2, 3))
        var_b = ((inp - mu_b[None, :, None, None]) ** 2).mean(dim=(0, 2, 3)) + 1e-8
        mu_r, var_r = bn.running_mean.double(), bn.running_var.double() + 1e-8
        by_hand = (torch.log(var_b.sqrt() / var_r.sqrt()) - 0.5 * (1 - (var_r + (mu_r - mu_b) ** 2) / var_b)).mean()
        kl = kl_divergence(Normal(mu_r, var_r.sqrt()), Normal(mu_b, var_b.sqrt())).mean()
        assert by_hand.item() == pytest.approx(kl.item(), rel=1e-9)
        return by_hand.item()

    with torch.no_grad():
        want = (expected(x, bn1) + expected(model[1](model[0](x)), bn2)) / 2
    with BNStatistics(model) as stats:
        model(x)
        got = stats.pop()
        assert stats.terms == []  # nothing is kept for the next step
    assert got.item() == pytest.approx(want, rel=1e-5)
    assert not bn1._forward_hooks and not bn2._forward_hooks


def test_bn_statistics_loss_is_zero_when_the_batch_matches_the_running_statistics():
    bn = nn.BatchNorm2d(2).eval()
    x = torch.randn(8, 2, 4, 4)
    bn.running_mean.copy_(x.mean(dim=(0, 2, 3)))
    bn.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))
    with BNStatistics(bn) as stats:
        bn(x)
        assert stats.pop().item() == pytest.approx(0, abs=1e-6)


def test_class_balance_is_zero_for_uniform_and_one_for_one_hot_predictions():
    assert class_balance_loss(torch.zeros(6, 4)).item() == pytest.approx(0, abs=1e-6)
    balanced = torch.full((4, 4), -1e4).fill_diagonal_(0)  # each sample sure of a different class
    assert class_balance_loss(balanced).item() == pytest.approx(0, abs=1e-6)
    one_hot = torch.full((6, 4), -1e4)
    one_hot[:, 2] = 0
    assert class_balance_loss(one_hot).item() == pytest.approx(1, abs=1e-6)


def test_gaussian_kernel_sums_to_one_and_has_the_references_sigma_sqrt2():
    k = gaussian_kernel(5, 1.0)
    assert k.shape == (5, 5) and k.sum().item() == pytest.approx(1)
    assert torch.equal(k, k.T) and k.argmax().item() == 12
    # exp(-((u - m) / (2σ))²) is a Gaussian of std σ√2: one step off-centre costs exp(-1 / (2 · 2))
    assert (k[2, 3] / k[2, 2]).item() == pytest.approx(math.exp(-1 / (2 * 2)))
    assert (k[0, 0] / k[2, 2]).item() == pytest.approx(math.exp(-8 / (2 * 2)))
    assert smoothness_loss(torch.full((2, 3, 8, 8), 0.7), k).item() == pytest.approx(0, abs=1e-10)
    assert smoothness_loss(torch.randn(2, 3, 8, 8), k).item() > 0.1


def test_inversion_trains_the_generator_only_and_removes_its_hooks():
    torch.manual_seed(0)
    teacher = CifarResNet(4, 1, 1, 4).eval().requires_grad_(False)
    before_teacher = {k: v.clone() for k, v in teacher.state_dict().items()}
    generator = Generator(1, 8, 8, 8)
    opt = torch.optim.Adam(generator.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in generator.parameters()]
    lines = []
    result = invert(generator, opt, teacher, 4, 6, 16, HP, SimpleNamespace(device=CPU), log=lines.append)
    assert result["steps"] == 6
    assert all(not m._forward_hooks for m in teacher.modules())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before_teacher.items())
    assert any(not torch.equal(b, p) for b, p in zip(before, generator.parameters()))
    assert not generator.training
    assert int(opt.state[next(generator.parameters())]["step"]) == 6  # Adam state kept for the warm start
    assert lines[-1].endswith("(iteration 6/6)") and all(k in lines[-1] for k in ("content", "balance", "bn_stats"))


# ---------------------------------------------------------------- ABD

def test_class_weights_work_for_a_batch_smaller_than_the_class_count():
    w = old_new_class_weights(4, 6, 10)  # r = 2/3
    assert w.shape == (10,)
    y = torch.tensor([0, 5, 3])  # 3 samples, 10 classes: the reference's batch-sized vector breaks here
    assert w[y].tolist() == pytest.approx([2 / 3, 1 / 3, 2 / 3])
    logits = torch.randn(3, 10)
    per_sample = F.cross_entropy(logits, y, reduction="none")
    assert weighted_ce(logits, y, w).item() == pytest.approx((per_sample * w[y]).sum().item() / 3)  # by N


def tiny_learner(cls, **hp):
    info = DatasetInfo(6, 1, 8, (0.5,), (0.25,))
    data = SimpleNamespace(info=info, device=CPU, mean=torch.tensor(0.5), std=torch.tensor(0.25))
    ctx = Context(data=data, make_model=lambda: CifarResNet(6, 1, 1, 4), train={"batch_size": 3},
                  n_classes=6, device=CPU, seed=0)
    torch.manual_seed(0)
    learner = cls({**METHODS[cls.name].defaults, **cls.tiny_overrides, **hp}, ctx)
    learner.begin_task(Task(0, 3, 0, 2))
    learner.model.last.weight.data.normal_()  # make the teacher's head rows distinct
    learner.begin_task(Task(1, 3, 2, 4))  # the teacher is the model "after task 0"
    with torch.no_grad():
        for p in learner.model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # the student has moved away from it
    return learner


def abd_terms(**hp):
    learner = tiny_learner(ABD, **hp)
    torch.manual_seed(1)
    batch = Batch(x=torch.randn(3, 1, 8, 8), y=torch.tensor([2, 3, 3]), index=torch.arange(3))
    x_replay, y_replay = torch.randn(3, 1, 8, 8), torch.tensor([0, 1, 1])
    learner.model.train()
    terms = learner.replay_loss(batch, x_replay, y_replay, torch.zeros(3, 2))
    return learner, batch, x_replay, y_replay, terms


def grad_norms(learner, term):
    params = dict(learner.model.named_parameters())
    grads = torch.autograd.grad(term, list(params.values()), retain_graph=True, allow_unused=True)
    return {k: (torch.zeros_like(p) if g is None else g) for (k, p), g in zip(params.items(), grads)}


def test_abd_loss_terms_values():
    learner, batch, x_replay, y_replay, terms = abd_terms()
    assert set(terms) == {"ce_local", "ce_ft", "kd_feature"}
    model, teacher = learner.model, learner.teacher
    x, y = torch.cat([batch.x, x_replay]), torch.cat([batch.y, y_replay])
    with torch.no_grad():
        h, h_old = model(x, pen=True), teacher(x, pen=True)
        r = 2 / 4
        local = (1 - r) * F.cross_entropy(model.last(h[:3])[:, 2:4], batch.y - 2)
        w = torch.tensor([r if c < 2 else 1 - r for c in y.tolist()])
        ft = (F.cross_entropy(model.last(h), y, reduction="none") * w).sum() / 6  # all K = 6 logits
        old = teacher.last
        kd = 0.1 * ((old(h)[:, :2] - old(h_old)[:, :2]) ** 2).sum(dim=1).mean() / 2  # biases included
    assert terms["ce_local"].item() == pytest.approx(local.item(), rel=1e-5)
    assert terms["ce_ft"].item() == pytest.approx(ft.item(), rel=1e-5)
    assert terms["kd_feature"].item() == pytest.approx(kd.item(), rel=1e-5)
    assert kd.item() > 0


def test_abd_seen_classes_only_puts_no_gradient_on_unseen_logits():
    for seen_only in (False, True):
        learner, *_, terms = abd_terms(seen_classes_only=seen_only)
        head = grad_norms(learner, terms["ce_ft"])["last.weight"]  # (K = 6, d); 4 classes seen at task 1
        assert head[:4].abs().sum() > 0
        assert (head[4:].abs().sum() == 0) == seen_only  # the reference pushes unseen logits down (quirk 13)
        learner.begin_task(Task(0, 3, 0, 2))
        x, y = torch.randn(3, 1, 8, 8), torch.tensor([0, 1, 1])
        first = learner.first_task_loss(Batch(x=x, y=y, index=torch.arange(3)))["ce"]
        assert (grad_norms(learner, first)["last.weight"][2:].abs().sum() == 0) == seen_only


def test_abd_switches():
    *_, scaled = abd_terms()
    *_, unscaled = abd_terms(local_ce_scale=False)
    assert unscaled["ce_local"].item() == pytest.approx(2 * scaled["ce_local"].item(), rel=1e-5)  # 1 - r = 0.5
    learner, *_, reused = abd_terms(ft_second_forward=False)
    assert reused["ce_ft"].item() == pytest.approx(scaled["ce_ft"].item(), rel=1e-5)  # same values in train mode
    # what the switch changes: the reference's second forward moves BN running statistics a second time per step
    twice = tiny_learner(ABD).model.stages[0][0].bn1.num_batches_tracked
    bn = {on: abd_terms(ft_second_forward=on)[0].model.stages[0][0].bn1.num_batches_tracked.item() - twice.item()
          for on in (True, False)}
    assert bn == {True: 2, False: 1}


def test_abd_terms_reach_the_right_parameters():
    learner, *_, terms = abd_terms()
    backbone = "stages.0.0.conv1.weight"
    g = grad_norms(learner, terms["ce_local"])
    assert g[backbone].abs().sum() > 0
    rows = g["last.weight"].abs().sum(dim=1)
    assert (rows[2:4] > 0).all() and (rows[[0, 1, 4, 5]] == 0).all()  # only the new task's head rows
    assert (g["last.bias"][[0, 1, 4, 5]] == 0).all()
    g = grad_norms(learner, terms["ce_ft"])
    assert all(v.abs().sum() == 0 for k, v in g.items() if not k.startswith("last."))  # head only
    assert (g["last.weight"].abs().sum(dim=1) > 0).all()  # every one of the K rows
    g = grad_norms(learner, terms["kd_feature"])
    assert g[backbone].abs().sum() > 0
    assert g["last.weight"].abs().sum() == 0 and g["last.bias"].abs().sum() == 0  # backbone only
    assert all(p.grad is None and not p.requires_grad for p in learner.teacher.parameters())


def test_abd_task0_ce_covers_all_classes():
    learner = tiny_learner(ABD)
    learner.begin_task(Task(0, 3, 0, 2))
    batch = Batch(x=torch.randn(4, 1, 8, 8), y=torch.tensor([0, 1, 1, 0]), index=torch.arange(4))
    with torch.no_grad():
        want = F.cross_entropy(learner.model(batch.x), batch.y)  # over all K logits (quirk 13)
        assert learner.loss(batch)["ce"].item() == pytest.approx(want.item())


def test_deep_inversion_pads_the_synthetic_targets_with_zeros_for_new_classes():
    learner = tiny_learner(DeepInversion)
    batch = Batch(x=torch.randn(3, 1, 8, 8), y=torch.tensor([2, 3, 3]), index=torch.arange(3))
    x_replay, z_replay = torch.randn(3, 1, 8, 8), torch.randn(3, 2)
    learner.model.train()
    terms = learner.replay_loss(batch, x_replay, z_replay.argmax(1), z_replay)
    with torch.no_grad():
        logits = learner.model(torch.cat([batch.x, x_replay]))[:, :4]
        target = torch.cat([F.softmax(z_replay / 2, dim=1), torch.zeros(3, 2)], dim=1)
        want = -(target * F.log_softmax(logits[3:] / 2, dim=1)).sum(dim=1).mean()
    assert terms["kd_synthetic"].item() == pytest.approx(want.item(), rel=1e-5)
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(logits[:3], batch.y).item(), rel=1e-5)


# ---------------------------------------------------------------- learners end to end (tiny)

@pytest.mark.parametrize("warm_start", [True, False])
def test_data_free_learner_inverts_except_after_the_last_task_and_writes_a_grid(tmp_path, warm_start):
    _, train, data, learner = build(tiny_settings("abd", **ABD.tiny_overrides, warm_start=warm_start), 0, "cpu")
    learner.log = lambda msg: None
    generator = learner.generator
    learner.begin_task(Task(0, 3, 0, 2))
    learner.end_task(Task(0, 3, 0, 2))
    assert (learner.generator is generator) == warm_start
    assert int(learner.generator_opt.state[next(learner.generator.parameters())]["step"]) == 4
    assert all(not m._forward_hooks for m in learner.model.modules())
    learner.artifacts(tmp_path)
    assert (tmp_path / "samples.png").stat().st_size > 0
    state = learner.state_dict()
    assert {"model", "generator", "generator_opt"} <= set(state)
    learner.begin_task(Task(2, 3, 4, 6))
    before = [p.detach().clone() for p in learner.generator.parameters()]
    learner.end_task(Task(2, 3, 4, 6))
    assert all(torch.equal(b, p) for b, p in zip(before, learner.generator.parameters()))


def test_dgr_trains_its_vae_in_the_main_stage_without_weight_decay(tmp_path):
    settings = tiny_settings("dgr")
    assert resolve(settings)[2]["weight_decay"] == 0.0
    _, _, data, learner = build(tiny_settings("dgr", vae_z_dim=8, vae_width=4), 0, "cpu")
    assert not learner.normalize_inputs
    ids = {id(p) for p in learner.parameters()}
    assert all(id(p) in ids for p in learner.vae.parameters())
    learner.artifacts(tmp_path)
    assert (tmp_path / "samples.png").stat().st_size > 0
