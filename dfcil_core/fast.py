"""How `trainer.run_stage` executes one optimisation step: eagerly, or replayed from a CUDA graph.

A step is: gather the batch (static shape), augment and normalize it on the device, the stage's loss,
backward, the optimizer update, and adding the loss terms to per-epoch sums on the device. `make_runner`
picks, once per stage, one of

- `EagerRunner`: the step as plain PyTorch calls. With the default switches (fp32, contiguous layout) this
  is the reference path, operation for operation the loop the trainer always had.
- `GraphedRunner` (`cuda_graphs: true`, CUDA only): a few eager warm-up steps, then the whole step is
  captured once in a CUDA graph and every further step is one `graph.replay()`. The batch indices are
  copied into a fixed-size buffer the graph reads; loss sums are accumulated inside the graph into buffers
  allocated before capture. The learning rate is baked into the captured optimizer kernels, so the graph is
  captured again when it changes (once per MultiStepLR phase). A step that cannot be captured (a host sync
  such as `.item()`, or data-dependent control flow that reads device values) is detected in the last
  warm-up step, or by the failed capture itself, and the stage continues eagerly with a log line.

Both honour `precision: bf16` (autocast around the loss; parameters, BatchNorm statistics and optimizer
state stay fp32; loss sums are fp32) and `channels_last` (4-D parameters and the input batch in NHWC).

What a graphed step may not do: read device values on the host, change which tensors it allocates from one
step to the next, or depend on Python state that changes between steps (such state is frozen at capture).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import torch
from torch import Tensor

PRECISIONS = ("fp32", "bf16")
WARMUP_STEPS = 3  # eager steps before the first capture (cuDNN/cuBLAS handles, momentum buffers, loss sums)


def stage_switches(train: dict) -> dict:
    """The fast-path fields of a `trainer.Stage` from an experiment's `train` settings; absent keys mean the
    fp32 eager reference path. A learner opts its own stages in with `Stage(..., **stage_switches(ctx.train))`."""
    precision = train.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {PRECISIONS}, got {precision!r}")
    return {"precision": precision, "channels_last": bool(train.get("channels_last", False)),
            "cuda_graphs": bool(train.get("cuda_graphs", False))}


def autocast(device: torch.device | str, precision: str, cache_enabled: bool = True):
    """bf16 autocast on `device`, or nothing for fp32. (Graph capture needs `cache_enabled=False`: cached
    weight casts must not outlive the captured region.)"""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=torch.bfloat16, cache_enabled=cache_enabled)


def channels_last_(params) -> None:
    """Store every 4-D parameter (conv weights) in channels_last, in place: the Parameter objects (and thus
    optimizer state and module references) stay the same, as with `module.to(memory_format=...)`."""
    for p in params:
        if p.dim() == 4 and not p.is_contiguous(memory_format=torch.channels_last):
            p.data = p.data.contiguous(memory_format=torch.channels_last)


def as_channels_last(x: Tensor) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


class StepRunner:
    """One stage's step. `run_stage` calls `set_lr` at every epoch start, `step(index)` per batch (index:
    `batch_size` training-set indices on the device, or None in a data-free stage), `take_sums()` at every
    epoch end (the epoch's summed loss terms, as device tensors) and `close()` once at the end."""

    def __init__(self, stage, data, opt: torch.optim.Optimizer):
        self.stage, self.data, self.opt = stage, data, opt
        self.device = torch.device(data.device)
        if stage.channels_last:
            channels_last_(stage.params)

    def set_lr(self, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr

    def _loss_and_update(self, index: Tensor | None, cache_enabled: bool = True) -> dict[str, Tensor]:
        """The step itself: batch, loss (under autocast), backward, optimizer update; returns the loss terms."""
        stage = self.stage
        batch = None
        if index is not None:
            batch = self.data.train_batch(index, normalize=stage.normalize)
            if stage.channels_last:
                batch = dataclasses.replace(batch, x=as_channels_last(batch.x))
        with autocast(self.device, stage.precision, cache_enabled):
            terms = stage.loss(batch)
        total = sum(terms.values())
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        return terms

    def step(self, index: Tensor | None) -> None:
        raise NotImplementedError

    def take_sums(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class EagerRunner(StepRunner):
    def __init__(self, stage, data, opt):
        super().__init__(stage, data, opt)
        self.sums: dict[str, Tensor] = {}

    def step(self, index: Tensor | None) -> None:
        for k, v in self._loss_and_update(index).items():
            self.sums[k] = self.sums.get(k, 0) + v.detach().float()  # .float() is a no-op in fp32

    def take_sums(self) -> dict[str, Tensor]:
        sums, self.sums = self.sums, {}
        return sums


class CaptureError(RuntimeError):
    """The step cannot be captured in a CUDA graph."""


class CudaGraphs:
    """The CUDA side of `GraphedRunner`: warm-up steps and capture on one side stream (sharing it keeps the
    autograd engine's per-stream bookkeeping consistent between warm-up and capture)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)

    @contextlib.contextmanager
    def _on_side_stream(self):
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        try:
            with torch.cuda.stream(self.stream):
                yield
        finally:  # also after a failure: what follows on the current stream waits for the side stream
            current.wait_stream(self.stream)

    def warmup(self, fn: Callable[[], None], forbid_sync: bool = False) -> None:
        """Run `fn` eagerly; with `forbid_sync`, any host synchronisation in it raises (such a step could
        not be captured: PyTorch's sync debug mode "error")."""
        with self._on_side_stream():
            if not forbid_sync:
                fn()
                return
            previous = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("error")
            try:
                fn()
            except RuntimeError as e:
                raise CaptureError(f"the step synchronises with the host ({e})") from e
            finally:
                torch.cuda.set_sync_debug_mode(previous)

    def capture(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Capture `fn` (its kernels are recorded, not run) and return the graph's replay."""
        graph = torch.cuda.CUDAGraph()
        with self._on_side_stream():
            with torch.cuda.graph(graph, stream=self.stream):
                fn()
        return graph.replay


class GraphedRunner(StepRunner):
    """The whole step captured in a CUDA graph; see the module docstring. `graphs` is the capture backend
    (`CudaGraphs`; tests on the CPU pass a stand-in with the same two methods)."""

    def __init__(self, stage, data, opt, graphs, log: Callable[[str], None]):
        super().__init__(stage, data, opt)
        self.graphs, self.log = graphs, log
        self.index = (None if stage.indices is None
                      else torch.zeros(stage.batch_size, dtype=torch.long, device=self.device))
        self.sums: dict[str, Tensor] = {}  # fp32 scalars allocated before capture, updated in place by replays
        self.replay: Callable[[], None] | None = None
        self.captured_lr: float | None = None
        self.warmups_left = WARMUP_STEPS
        self.capturing = False
        self.eager = False
        self.restore_capturable = _make_capturable(opt)

    def _body(self) -> None:
        terms = self._loss_and_update(self.index, cache_enabled=False)
        for k, v in terms.items():
            if k not in self.sums:
                if self.capturing:
                    raise CaptureError(f"loss term {k!r} appeared only during capture")
                self.sums[k] = torch.zeros((), dtype=torch.float32, device=v.device)
            self.sums[k].add_(v.detach().float())

    def _fall_back(self, reason: Exception) -> None:
        first_line = (str(reason).strip().splitlines() or [type(reason).__name__])[0][:300]
        self.log(f"[{self.stage.name}] cuda_graphs: the step cannot be captured ({first_line}); "
                 "this stage runs eagerly")
        self.eager, self.replay = True, None
        self.opt.zero_grad(set_to_none=True)  # a failed capture may have left gradients nothing computed

    def set_lr(self, lr: float) -> None:
        super().set_lr(lr)
        if self.replay is not None and lr != self.captured_lr:
            self.replay = None  # the next step captures the graph again with the new rate

    def step(self, index: Tensor | None) -> None:
        if self.index is not None:
            if index is None or index.shape != self.index.shape:
                raise ValueError(f"[{self.stage.name}] a graphed step takes exactly {len(self.index)} indices, "
                                 f"got {None if index is None else tuple(index.shape)}")
            self.index.copy_(index)
        if self.eager:
            self._body()
            return
        if self.replay is None:
            if self.warmups_left > 0:
                self.warmups_left -= 1
                try:
                    self.graphs.warmup(self._body, forbid_sync=self.warmups_left == 0)
                except CaptureError as e:  # the step was interrupted before its update: run it again
                    self._fall_back(e)
                    self._body()
                return
            self.capturing = True
            try:
                self.replay = self.graphs.capture(self._body)
                self.captured_lr = self.opt.param_groups[0]["lr"]
            except Exception as e:  # nothing of the step ran during capture: run it eagerly
                self._fall_back(e)
                self._body()
                return
            finally:
                self.capturing = False
        self.replay()

    def take_sums(self) -> dict[str, Tensor]:
        out = {k: v.clone() for k, v in self.sums.items()}
        for v in self.sums.values():
            v.zero_()
        return out

    def close(self) -> None:
        self.replay = None
        self.opt.zero_grad(set_to_none=True)  # release the gradients held in the graph's memory pool
        self.restore_capturable()


def _make_capturable(opt: torch.optim.Optimizer) -> Callable[[], None]:
    """Optimizers with a step counter (Adam) keep it on the device when `capturable`; switch that on for the
    stage and return what restores the optimizer's own setting (a learner may keep it across tasks).
    Meanwhile `opt.state_dict()` reports the optimizer's own setting: a checkpoint saved during the stage
    (of the optimizer, or of a learner holding it) resumes to what an uninterrupted stage continues with,
    and the resumed stage's runner switches the flag on again and restores it at its end."""
    switched = [i for i, g in enumerate(opt.param_groups) if "capturable" in g and not g["capturable"]]
    groups = [opt.param_groups[i] for i in switched]
    for group in groups:
        group["capturable"] = True
        for p in group["params"]:
            step = opt.state.get(p, {}).get("step")
            if isinstance(step, Tensor) and step.device != p.device:
                opt.state[p]["step"] = step.to(device=p.device, dtype=torch.float32)

    def own_setting(_, state_dict: dict) -> None:
        # The packed groups are copies, the per-parameter states the optimizer's own dicts: replace those.
        for i in switched:
            packed = state_dict["param_groups"][i]
            packed["capturable"] = False
            for key in packed["params"]:
                param_state = state_dict["state"].get(key, {})
                if isinstance(param_state.get("step"), Tensor):
                    state_dict["state"][key] = {**param_state, "step": param_state["step"].cpu()}

    hook = opt.register_state_dict_post_hook(own_setting)

    def restore() -> None:
        hook.remove()
        for group in groups:
            group["capturable"] = False
            for p in group["params"]:
                step = opt.state.get(p, {}).get("step")
                if isinstance(step, Tensor) and step.device.type != "cpu":
                    opt.state[p]["step"] = step.cpu()
    return restore


def make_runner(stage, data, opt: torch.optim.Optimizer, graphs=None) -> StepRunner:
    """The stage's runner, chosen once from its switches (`precision`, `channels_last`, `cuda_graphs`)."""
    if stage.precision not in PRECISIONS:
        raise ValueError(f"stage {stage.name!r}: precision must be one of {PRECISIONS}, got {stage.precision!r}")
    if not stage.cuda_graphs:
        return EagerRunner(stage, data, opt)
    device = torch.device(data.device)
    if graphs is None:
        if device.type != "cuda":
            stage.log(f"[{stage.name}] cuda_graphs needs a CUDA device, this stage runs on {device}: eager")
            return EagerRunner(stage, data, opt)
        graphs = CudaGraphs(device)
    return GraphedRunner(stage, data, opt, graphs, stage.log)
