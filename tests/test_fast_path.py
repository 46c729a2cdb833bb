"""The fast training path (`dfcil_core.fast`): bf16 + channels_last against the fp32 eager reference on the
CPU, the graphed runner's static-shape batch handling with a CPU stand-in for CUDA graphs, and (on a CUDA
machine only) real CUDA-graph capture."""

import re

import pytest
import torch

from conftest import tiny_settings
from dfcil_core import fast
from dfcil_core.learners.api import Batch
from dfcil_core.run import train_in_process, train_node
from dfcil_core.trainer import Stage, run_stage

QUIET = lambda msg: None  # noqa: E731


def with_train(settings: dict, **train) -> dict:
    settings["train"].update(train)
    return settings


def epoch_losses(lines: list[str]) -> list[float]:
    """Total main-stage loss of every logged epoch, from run_stage's '[task1] epoch 2/3 ce=0.1234' lines."""
    out = []
    for line in lines:
        m = re.match(r"^\[task\d+\] epoch \d+/\d+ (.*)$", line)
        if m:
            out.append(sum(float(kv.split("=")[1]) for kv in m.group(1).split()))
    return out


def tiny_run(switches: dict, method="base", n_tasks=2, epochs=3, seed=1, **hp):
    lines: list[str] = []
    settings = with_train(tiny_settings(method, **hp), epochs=epochs, log_every_epochs=1, **switches)
    results = train_in_process(settings, seed=seed, n_tasks=n_tasks, log=lines.append)
    return results, lines


# ---------------------------------------------------------------- parity: bf16 + channels_last vs fp32 eager

# Tolerances of the CPU parity run (tiny ResNet on 8x8 digits, 2 tasks x 3 epochs, seed 1). bf16 rounding makes
# the two runs drift apart step by step; measured on the development machine over seeds 1-5: first-epoch loss
# within 0.013, any epoch within 0.08, final accuracy over the seen classes within 3.25 points (while the fp32
# runs of different seeds differ by up to 8 points).
FIRST_EPOCH_LOSS = 0.03
ANY_EPOCH_LOSS = 0.1
FINAL_ACCURACY_POINTS = 4.0


def test_bf16_channels_last_training_tracks_the_fp32_eager_reference():
    ref, ref_lines = tiny_run({})
    new, new_lines = tiny_run({"precision": "bf16", "channels_last": True})
    a, b = epoch_losses(ref_lines), epoch_losses(new_lines)
    assert len(a) == len(b) == 6
    assert a != b, "the switches must change the computation"
    assert abs(a[0] - b[0]) <= FIRST_EPOCH_LOSS, (a, b)
    assert max(abs(x - y) for x, y in zip(a, b)) <= ANY_EPOCH_LOSS, (a, b)
    assert abs(ref[-1]["accuracy_seen"] - new[-1]["accuracy_seen"]) <= FINAL_ACCURACY_POINTS
    assert all(torch.isfinite(torch.tensor(b)))


def test_explicit_defaults_and_cuda_graphs_on_the_cpu_are_the_reference_path():
    ref, _ = tiny_run({}, n_tasks=1, epochs=2)
    explicit, _ = tiny_run({"precision": "fp32", "channels_last": False, "cuda_graphs": False}, n_tasks=1, epochs=2)
    graphs, lines = tiny_run({"cuda_graphs": True}, n_tasks=1, epochs=2)
    keys = ("accuracy_per_task", "final_losses")
    assert [[r[k] for k in keys] for r in explicit] == [[r[k] for k in keys] for r in ref]
    assert [[r[k] for k in keys] for r in graphs] == [[r[k] for k in keys] for r in ref]
    assert any("cuda_graphs needs a CUDA device" in line for line in lines)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        fast.stage_switches({"precision": "fp16"})


def test_evaluation_in_bf16_channels_last_agrees_with_fp32():
    from dfcil_core.learners.api import Task
    from dfcil_core.run import build
    from dfcil_core.trainer import evaluate, train_task
    settings, train, data, learner = build(tiny_settings("base"), 1, "cpu")
    task = Task(0, data.n_tasks, 0, data.bounds[1])
    train_task(learner, task, data, train, 1, log=QUIET)
    ref = evaluate(learner, task, data)
    assert evaluate(learner, task, data, batch_size=7) == ref  # fp32: the last, partial batch counts too
    fast.channels_last_(learner.model.parameters())
    small = evaluate(learner, task, data, batch_size=7, precision="bf16", channels_last=True)
    assert abs(small[0][0] - ref[0][0]) <= 1.0  # 2 of 200 images


# ---------------------------------------------------------------- the graphed runner, with a CPU stand-in

class FakeGraphs:
    """Stands in for `fast.CudaGraphs` on the CPU with CUDA-graph semantics: capture records the step without
    running it, and every replay runs that same recorded step again, so it sees new batches only through the
    runner's static buffers."""

    def __init__(self, fail_capture=False):
        self.fail_capture = fail_capture
        self.events: list[str] = []
        self.sync_forbidden = False

    def warmup(self, fn, forbid_sync=False):
        self.events.append("warmup!" if forbid_sync else "warmup")
        self.sync_forbidden = forbid_sync
        try:
            fn()
        except RuntimeError as e:
            if forbid_sync:
                raise fast.CaptureError(f"the step synchronises with the host ({e})") from e
            raise
        finally:
            self.sync_forbidden = False

    def capture(self, fn):
        self.events.append("capture")
        if self.fail_capture:
            raise RuntimeError("operation not permitted when stream is capturing")
        runner = getattr(self, "runner", None)
        if runner is None:
            return fn
        # A real graph writes to the tensors that existed at capture: the runner's loss sums must be
        # updated and reset in place, never replaced.
        captured = {k: v.data_ptr() for k, v in runner.sums.items()}

        def replay():
            assert {k: v.data_ptr() for k, v in runner.sums.items()} == captured, "loss sums were reallocated"
            fn()
        return replay


@pytest.fixture
def fake_graphs(monkeypatch):
    """Every stage with cuda_graphs on gets a GraphedRunner with a FakeGraphs (collected in the list)."""
    made = []
    real = fast.make_runner

    def make_runner(stage, data, opt, graphs=None):
        if stage.cuda_graphs:
            made.append(FakeGraphs())
            made[-1].runner = real(stage, data, opt, graphs=made[-1])
            return made[-1].runner
        return real(stage, data, opt)

    monkeypatch.setattr(fast, "make_runner", make_runner)
    return made


class VectorData:
    """A toy training set: sample i is the vector x[i]; batches are gathered by index like TrainData's."""

    device = torch.device("cpu")

    def __init__(self, n=40, d=3):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, d, generator=g)
        self.y = torch.randn(n, generator=g)

    def train_batch(self, index, normalize=True):
        return Batch(x=self.x[index], y=self.y[index], index=index)


def toy_stage(data, seen, graphs, epochs=4, milestones=(2,), log=QUIET, loss_hook=None):
    w = torch.nn.Parameter(torch.zeros(data.x.shape[1]))

    def loss(batch):
        if loss_hook:
            loss_hook(batch)
        seen.append((batch.index.data_ptr(), batch.index.clone()))
        return {"mse": ((batch.x @ w - batch.y) ** 2).mean(), "l2": 1e-3 * w.pow(2).sum()}

    return w, Stage("toy", [w], loss, epochs=epochs, lr=0.1, lr_milestones=list(milestones), batch_size=8,
                    indices=torch.arange(3, 40), log_every_epochs=1, log=log, cuda_graphs=graphs)


def test_graphed_steps_see_every_batch_through_one_static_index_buffer(fake_graphs):
    data = VectorData()
    torch.manual_seed(0)
    eager_seen, graphed_seen = [], []
    w_eager, stage = toy_stage(data, eager_seen, graphs=False)
    out_eager = run_stage(stage, data)
    torch.manual_seed(0)
    w_graphed, stage = toy_stage(data, graphed_seen, graphs=True)
    out_graphed = run_stage(stage, data)

    steps_per_epoch = 37 // 8  # drop_last
    assert len(graphed_seen) == len(eager_seen) == 4 * steps_per_epoch  # the capture itself runs nothing
    assert len({ptr for ptr, _ in graphed_seen}) == 1, "every step reads the same fixed-size buffer"
    for (_, a), (_, b) in zip(eager_seen, graphed_seen):
        assert torch.equal(a, b) and a.shape == (8,)
    for epoch in range(4):  # each epoch's batches are distinct samples of the stage's indices
        idx = torch.cat([b for _, b in graphed_seen[epoch * steps_per_epoch:(epoch + 1) * steps_per_epoch]])
        assert len(set(idx.tolist())) == len(idx) and set(idx.tolist()) <= set(range(3, 40))
    assert torch.equal(w_eager, w_graphed)
    assert out_graphed["losses"] == out_eager["losses"]
    # 3 warm-up steps (the last with host syncs forbidden), one capture per learning-rate phase
    assert fake_graphs[0].events == ["warmup", "warmup", "warmup!", "capture", "capture"]


def test_loss_sums_are_per_epoch_and_reset(fake_graphs):
    data = VectorData()
    lines: list[str] = []
    torch.manual_seed(0)
    _, stage = toy_stage(data, [], graphs=True, log=lines.append, milestones=())
    run_stage(stage, data)
    graphed = [line for line in lines if "epoch" in line]
    lines_eager: list[str] = []
    torch.manual_seed(0)
    _, stage = toy_stage(data, [], graphs=False, log=lines_eager.append, milestones=())
    run_stage(stage, data)
    assert len(graphed) == 4 and graphed == [line for line in lines_eager if "epoch" in line]


def test_a_step_that_cannot_be_captured_runs_eagerly_with_a_log_line():
    data = VectorData()
    lines: list[str] = []
    torch.manual_seed(0)
    w_ref, stage = toy_stage(data, [], graphs=False)
    run_stage(stage, data)

    torch.manual_seed(0)
    w, stage = toy_stage(data, [], graphs=True, log=lines.append)
    graphs = FakeGraphs(fail_capture=True)
    runner = fast.make_runner(stage, data, torch.optim.SGD(stage.params, lr=stage.lr, momentum=0.9),
                              graphs=graphs)
    assert isinstance(runner, fast.GraphedRunner)
    torch.manual_seed(0)
    run_stage_with(runner, stage, data)
    assert any("cannot be captured" in line and "runs eagerly" in line for line in lines)
    assert graphs.events == ["warmup", "warmup", "warmup!", "capture"]
    assert torch.equal(w, w_ref)


def run_stage_with(runner, stage, data):
    """run_stage's loop over a given runner (no checkpointing)."""
    from dfcil_core.trainer import lr_factor
    n = len(stage.indices)
    for epoch in range(stage.epochs):
        runner.set_lr(stage.lr * lr_factor(epoch, stage.lr_milestones))
        order = stage.indices[torch.randperm(n)]
        for step in range(n // stage.batch_size):
            runner.step(order[step * stage.batch_size:(step + 1) * stage.batch_size])
        runner.take_sums()
    runner.close()


def test_a_step_that_syncs_with_the_host_is_caught_in_warm_up_and_rerun(fake_graphs):
    """A loss that reads a device value on the host fails the last warm-up step (PyTorch's sync debug mode
    raises there on a GPU); that step runs again eagerly, so no step is lost."""
    data = VectorData()
    torch.manual_seed(0)
    w_ref, stage = toy_stage(data, [], graphs=False)
    run_stage(stage, data)

    def syncs(batch):
        if fake_graphs and fake_graphs[0].sync_forbidden:
            raise RuntimeError("called a synchronizing CUDA operation")

    lines: list[str] = []
    torch.manual_seed(0)
    w, stage = toy_stage(data, [], graphs=True, log=lines.append, loss_hook=syncs)
    run_stage(stage, data)
    assert fake_graphs[0].events == ["warmup", "warmup", "warmup!"]
    assert any("synchronises with the host" in line for line in lines)
    assert torch.equal(w, w_ref)


def test_a_graphed_step_takes_exactly_one_full_batch():
    data = VectorData()
    _, stage = toy_stage(data, [], graphs=True)
    runner = fast.make_runner(stage, data, torch.optim.SGD(stage.params, lr=0.1), graphs=FakeGraphs())
    with pytest.raises(ValueError, match="exactly 8 indices"):
        runner.step(torch.arange(5))
    with pytest.raises(ValueError, match="exactly 8 indices"):
        runner.step(None)


def test_capturable_is_switched_on_for_the_stage_and_restored():
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.Adam([w], lr=1e-3)
    w.grad = torch.ones(2)
    opt.step()
    restore = fast._make_capturable(opt)
    assert opt.param_groups[0]["capturable"] is True
    restore()
    assert opt.param_groups[0]["capturable"] is False and opt.state[w]["step"].device.type == "cpu"


def test_training_with_the_graphed_runner_equals_eager_bit_for_bit(fake_graphs):
    """On the CPU stand-in a graphed stage runs the same operations in the same order as eager: whole tiny
    runs (main stage with augmentation, LR phases, evaluation) must agree exactly, in fp32 and in bf16."""
    for switches in ({}, {"precision": "bf16", "channels_last": True}):
        ref, _ = tiny_run_ms(switches)
        graphed, lines = tiny_run_ms({**switches, "cuda_graphs": True})
        assert [r["final_losses"] for r in graphed] == [r["final_losses"] for r in ref]
        assert [r["accuracy_per_task"] for r in graphed] == [r["accuracy_per_task"] for r in ref]
    assert len(fake_graphs) == 4 and all(g.events.count("capture") == 2 for g in fake_graphs)


OWN_STAGE_HP = {"e2e": {"memory_size": 40}, "bic": {"memory_size": 40, "bias_batch_size": 4},
                "abd": {"power_iters": 4, "generator_width": 4}, "deep_inversion": {"power_iters": 4, "generator_width": 4}}


@pytest.mark.parametrize("method", sorted(OWN_STAGE_HP))
def test_learners_own_stages_take_the_fast_switches(monkeypatch, method):
    """E2E/BiC's second stages and the generator inversion run with the experiment's switches, like the main
    stage (on the CPU cuda_graphs falls back to eager, but the stage still carries the switch)."""
    stages = []
    real = fast.make_runner
    monkeypatch.setattr(fast, "make_runner", lambda stage, data, opt, graphs=None: (
        stages.append((stage.name, stage.precision, stage.channels_last, stage.cuda_graphs)),
        real(stage, data, opt))[1])
    tiny_run({"precision": "bf16", "channels_last": True, "cuda_graphs": True}, method=method, epochs=1,
             **OWN_STAGE_HP[method])
    own = [name for name, *_ in stages if name not in ("task0", "task1")]
    assert own, stages  # task 1's balanced / bias stage, or the inversions after tasks 0 and 1
    assert all(switches == ["bf16", True, True] for _, *switches in stages), stages


@pytest.mark.parametrize("method", ["e2e", "bic"])
def test_graphed_second_stages_match_eager(fake_graphs, method):
    """On the CPU stand-in the E2E/BiC second stage is captured and replayed, and the whole run agrees
    exactly with the eager one. (The inversion's Adam cannot be made capturable on a CPU; the GPU check
    covers it: test_cuda_graphed_adam_stage_and_fallback_on_a_host_sync.)"""
    switches = {"precision": "bf16", "channels_last": True}
    # 4 epochs: the second stage (1 step per epoch here) gets past the runner's 3 eager warm-up steps
    ref, _ = tiny_run(switches, method=method, epochs=4, **OWN_STAGE_HP[method])
    assert not fake_graphs
    graphed, _ = tiny_run({**switches, "cuda_graphs": True}, method=method, epochs=4, **OWN_STAGE_HP[method])
    assert len(fake_graphs) == 3 and all("capture" in g.events for g in fake_graphs)
    assert [r["final_losses"] for r in graphed] == [r["final_losses"] for r in ref]
    assert [r["accuracy_per_task"] for r in graphed] == [r["accuracy_per_task"] for r in ref]


def tiny_run_ms(switches):
    lines: list[str] = []
    settings = with_train(tiny_settings("base"), epochs=4, lr_milestones=[2], log_every_epochs=1, **switches)
    return train_in_process(settings, seed=1, n_tasks=2, log=lines.append), lines


class Interrupt(Exception):
    pass


def test_an_interrupted_graphed_stage_resumes_to_the_same_result(fake_graphs, tmp_path):
    """The checkpoint restores the optimizer state into new tensors; the resumed stage captures its graph
    again after the restore, and ends exactly where an uninterrupted graphed job ends (CPU stand-in)."""
    settings = with_train(tiny_settings("base"), epochs=4, lr_milestones=[2], log_every_epochs=1,
                          cuda_graphs=True)
    reference = train_node(settings, "tiny", 1, 0, tmp_path / "reference", None, device="cpu",
                           checkpoint_minutes=0, log=QUIET)

    def dies_at_epoch_3(msg):
        if msg.startswith("[task0] epoch 3/4"):
            raise Interrupt

    with pytest.raises(Interrupt):
        train_node(settings, "tiny", 1, 0, tmp_path / "task0", None, device="cpu", checkpoint_minutes=0,
                   log=dies_at_epoch_3)
    assert (tmp_path / "task0.checkpoint" / "stage0.pt").exists()
    lines: list[str] = []
    resumed = train_node(settings, "tiny", 1, 0, tmp_path / "task0", None, device="cpu", checkpoint_minutes=0,
                         log=lines.append)
    assert any("resuming stage 0 at epoch 2" in line for line in lines)
    assert fake_graphs[-1].events == ["warmup", "warmup", "warmup!", "capture"]  # phase 2 only, re-captured
    assert resumed["accuracy_per_task"] == reference["accuracy_per_task"]
    assert resumed["final_losses"] == reference["final_losses"]


class CpuAdam(torch.optim.Adam):
    """Adam with its `capturable` flag, which the graphed runner switches on for its stage as on a GPU. The CPU
    kernels refuse to run capturable, so each step runs with the flag off (on the CPU the same update)."""

    def step(self, closure=None):
        flags = [group["capturable"] for group in self.param_groups]
        for group in self.param_groups:
            group["capturable"] = False
        try:
            return super().step(closure)
        finally:
            for group, flag in zip(self.param_groups, flags):
                group["capturable"] = flag


class OneParameterLearner:
    """What a Checkpointer saves and restores of a learner, for a stage over one parameter."""

    ctx = VectorData  # the device checkpoints are loaded onto

    def __init__(self, w):
        self.w = w

    def state_dict(self):
        return {"w": self.w.detach().clone()}

    def load_state_dict(self, state):
        self.w.data.copy_(state["w"])


def test_a_graphed_adam_stage_checkpoints_and_resumes_with_the_optimizers_own_capturable(fake_graphs, tmp_path):
    """The progress checkpoint of a graphed stage holds the optimizer's own `capturable` (off), not the one the
    runner switched on for the stage; a stage resumed from it ends as an uninterrupted one: same parameter, same
    Adam state, `capturable` off again."""
    from dfcil_core.checkpoint import Checkpointer, checkpointing
    data = VectorData()

    def adam_stage(log=QUIET):
        w, stage = toy_stage(data, [], graphs=True, log=log)
        stage.opt = CpuAdam(stage.params, lr=stage.lr)
        return w, stage

    def run(directory, w, stage, log=QUIET):
        with checkpointing(Checkpointer(directory, "toy", OneParameterLearner(w), every_seconds=0, log=log)):
            run_stage(stage, data)

    torch.manual_seed(0)
    w_ref, reference = adam_stage()
    run(tmp_path / "reference", w_ref, reference)

    def dies_at_epoch_3(msg):
        if msg.startswith("[toy] epoch 3/4"):
            raise Interrupt

    torch.manual_seed(0)
    w, stage = adam_stage(log=dies_at_epoch_3)
    with pytest.raises(Interrupt):
        run(tmp_path / "resumed", w, stage)
    assert stage.opt.param_groups[0]["capturable"] is True  # the runner's setting while the stage ran
    saved = torch.load(tmp_path / "resumed" / "stage0.pt", weights_only=True)
    assert saved["epoch"] == 2 and saved["optimizer"]["param_groups"][0]["capturable"] is False

    w, stage = adam_stage()
    lines: list[str] = []
    run(tmp_path / "resumed", w, stage, log=lines.append)
    assert lines == ["resuming stage 0 at epoch 2"]
    assert fake_graphs[-1].events == ["warmup", "warmup", "warmup!", "capture"]  # the resumed stage is graphed
    assert stage.opt.param_groups[0]["capturable"] is False
    assert stage.opt.param_groups == [{**g, "params": [w]} for g in reference.opt.param_groups]
    assert torch.equal(w, w_ref)
    state, state_ref = stage.opt.state[w], reference.opt.state[w_ref]
    assert state.keys() == state_ref.keys() and all(torch.equal(state[k], state_ref[k]) for k in state)


# ---------------------------------------------------------------- real CUDA graphs (GPU machines only)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


@cuda
def test_cuda_graphed_training_tracks_eager_on_the_gpu():
    def run(switches):
        lines: list[str] = []
        settings = with_train(tiny_settings("base"), epochs=4, lr_milestones=[2], log_every_epochs=1, **switches)
        settings["augment"] = False  # the same batches in both runs (the order comes from the same seed)
        return train_in_process(settings, seed=1, n_tasks=2, device="cuda", log=lines.append), lines

    ref, ref_lines = run({})
    graphed, lines = run({"cuda_graphs": True})
    assert not any("cuda_graphs" in line for line in lines), lines  # captured, no fallback
    a, b = epoch_losses(ref_lines), epoch_losses(lines)
    assert max(abs(x - y) / abs(x) for x, y in zip(a, b)) < 0.05, (a, b)
    assert abs(ref[-1]["accuracy_seen"] - graphed[-1]["accuracy_seen"]) <= 5.0
    fast_run, fast_lines = run({"cuda_graphs": True, "precision": "bf16", "channels_last": True})
    assert not any("cuda_graphs" in line for line in fast_lines), fast_lines
    assert abs(ref[-1]["accuracy_seen"] - fast_run[-1]["accuracy_seen"]) <= FINAL_ACCURACY_POINTS


@cuda
def test_cuda_graphs_capture_the_abd_replay_step():
    from dfcil_core.learners import LEARNERS
    if "abd" not in LEARNERS:
        pytest.skip("no ABD learner")
    hp = dict(getattr(LEARNERS["abd"], "tiny_overrides", {}))
    lines: list[str] = []
    settings = with_train(tiny_settings("abd", **hp), epochs=2, log_every_epochs=1, cuda_graphs=True,
                          precision="bf16", channels_last=True)
    results = train_in_process(settings, seed=1, n_tasks=2, device="cuda", log=lines.append)
    assert not any("cuda_graphs" in line for line in lines), lines
    assert all(torch.isfinite(torch.tensor(list(r["final_losses"].values()))).all() for r in results)


@cuda
def test_cuda_graphed_adam_stage_and_fallback_on_a_host_sync():
    from dfcil_core.models.resnet import CifarResNet

    class Data:
        device = torch.device("cuda")

    net = CifarResNet(10, 3, 1, 8).cuda()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    lines: list[str] = []
    x = torch.randn(16, 3, 16, 16, device="cuda")

    def loss(_):
        return {"out": net(x).pow(2).mean()}

    out = run_stage(Stage("adam", list(net.parameters()), loss, epochs=3, lr=1e-3, optimizer="adam",
                          indices=None, steps_per_epoch=5, opt=opt, log=lines.append, cuda_graphs=True,
                          precision="bf16", channels_last=True), Data())
    assert not any("cuda_graphs" in line for line in lines), lines
    assert out["losses"]["out"] < 10 and opt.param_groups[0]["capturable"] is False

    def syncing_loss(_):
        value = net(x).pow(2).mean()
        if value.item() > -1:  # data-dependent Python control flow: cannot be captured
            return {"out": value}
        return {"out": 2 * value}

    lines.clear()
    run_stage(Stage("sync", list(net.parameters()), syncing_loss, epochs=2, lr=1e-3, indices=None,
                    steps_per_epoch=5, log=lines.append, cuda_graphs=True), Data())
    assert any("cannot be captured" in line for line in lines), lines


# ---------------------------------------------------------------- the benchmark script

def test_bench_runs_on_the_cpu_and_writes_json(tmp_path, capsys):
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench", Path(__file__).resolve().parents[1] / "benchmarks/bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["speed", "--device", "cpu", "--quick", "--batch-size", "8", "--warmup", "1", "--iters", "1",
                "--out", str(tmp_path / "bench.json")])
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["gpu"] is None and result["batch_size"] == 8 and result["command"]  # sys.argv, here pytest's
    assert set(result["results"]) == {"base", "abd", "inversion"}
    for entry in result["results"].values():
        assert entry["eager_fp32"]["switches"]["precision"] == "fp32"
        assert entry["fast"]["switches"] == {"precision": "bf16", "channels_last": True, "cuda_graphs": False}
        assert entry["speedup"] == pytest.approx(entry["fast"]["per_second"] / entry["eager_fp32"]["per_second"],
                                                 rel=0.01)
    assert "inversion iteration" in capsys.readouterr().out
