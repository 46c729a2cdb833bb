"""ResNet-32's size, the learning-rate schedule, and the shared stage loop."""

import pytest
import torch

from dfcil_core.models.resnet import CifarResNet
from dfcil_core.trainer import Stage, lr_factor, run_stage


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_resnet32_parameter_count():
    assert n_params(CifarResNet(100)) == 470_004  # §2.1: 463,504 backbone + 6,500 head
    assert n_params(CifarResNet(200)) == 476_504
    model = CifarResNet(10, in_channels=1, blocks_per_stage=1, width=8)
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 10)
    assert model(torch.zeros(2, 1, 16, 16), pen=True).shape == (2, 32)


def test_lr_per_epoch_matches_the_reference_schedule():
    # --schedule 100 150 200 250: 0.1 for epochs 0-99, 0.01 for 100-149, 1e-3 for 150-199, 1e-4 after.
    lrs = [0.1 * lr_factor(e, [100, 150, 200]) for e in range(250)]
    assert lrs[0] == lrs[99] == 0.1
    assert abs(lrs[100] - 0.01) < 1e-12 and abs(lrs[149] - 0.01) < 1e-12
    assert abs(lrs[150] - 1e-3) < 1e-12 and abs(lrs[249] - 1e-4) < 1e-12


class _NoData:
    device = torch.device("cpu")


def test_run_stage_sets_lr_each_epoch_and_counts_steps():
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=1.0)
    seen = []

    def loss(batch):
        seen.append(opt.param_groups[0]["lr"])
        return {"l2": (w ** 2).sum()}

    out = run_stage(Stage("toy", [w], loss, epochs=4, lr=1.0, lr_milestones=[2, 3], indices=None,
                          steps_per_epoch=2, opt=opt, log=lambda m: None), _NoData())
    assert seen == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    assert out["steps"] == 8
    assert out["losses"]["l2"] < 3.0  # the parameter was actually optimised


def test_run_stage_returns_every_epochs_mean_losses_whatever_it_logs():
    w = torch.nn.Parameter(torch.ones(3))
    lines = []
    out = run_stage(Stage("toy", [w], lambda batch: {"l2": (w ** 2).sum(), "l1": w.abs().sum()}, epochs=4,
                          lr=0.1, momentum=0.0, indices=None, steps_per_epoch=2, log=lines.append), _NoData())
    assert len(out["epoch_losses"]) == 4 and all(set(e) == {"l2", "l1"} for e in out["epoch_losses"])
    assert out["losses"] == out["epoch_losses"][-1]
    l2 = [e["l2"] for e in out["epoch_losses"]]
    assert l2 == sorted(l2, reverse=True) and l2[0] > l2[-1]  # each epoch its own mean, not a copy of the last
    assert len(lines) == 1  # log_every_epochs 0: only the last epoch is logged, yet every epoch is returned


class Interrupt(Exception):
    pass


def test_a_stage_resumed_mid_way_returns_the_epoch_losses_of_an_uninterrupted_one(tmp_path):
    from types import SimpleNamespace

    from dfcil_core.checkpoint import Checkpointer, checkpointing

    w = torch.nn.Parameter(torch.ones(3))

    class Learner:
        ctx = SimpleNamespace(device=torch.device("cpu"))

        def state_dict(self):
            return {"w": w.detach().clone()}

        def load_state_dict(self, state):
            with torch.no_grad():
                w.copy_(state["w"])

    calls = []

    def loss(batch, die_at=None):
        calls.append(1)
        if len(calls) == die_at:
            raise Interrupt
        return {"l2": (w ** 2).sum(), "l1": w.abs().sum()}

    def stage(die_at=None):
        with torch.no_grad():
            w.fill_(1.0)
        calls.clear()
        return Stage("toy", [w], lambda batch: loss(batch, die_at), epochs=4, lr=0.1, lr_milestones=[3],
                     indices=None, steps_per_epoch=2, log=lambda m: None)

    uninterrupted = run_stage(stage(), _NoData())
    folder = tmp_path / "task0.checkpoint"
    with pytest.raises(Interrupt), checkpointing(Checkpointer(folder, "fp", Learner(), 0, log=lambda m: None)):
        run_stage(stage(die_at=6), _NoData())  # in epoch 3, after the checkpoint at the end of epoch 2
    lines = []
    with checkpointing(Checkpointer(folder, "fp", Learner(), 0, log=lines.append)):
        resumed = run_stage(stage(), _NoData())
    assert any("resuming stage 0 at epoch 2" in line for line in lines), lines
    assert len(calls) == 4  # epochs 3 and 4 only
    assert resumed["epoch_losses"] == uninterrupted["epoch_losses"] and len(resumed["epoch_losses"]) == 4
    assert resumed["losses"] == uninterrupted["losses"]
