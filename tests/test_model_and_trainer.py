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
