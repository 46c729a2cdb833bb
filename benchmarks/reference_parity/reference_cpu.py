"""Run the reference code's `run_dfcil.py` on a machine without a GPU, without touching its files.

Usage: python reference_cpu.py REFERENCE_CHECKOUT [run_dfcil.py arguments...]

The reference (GT-RIPL/AlwaysBeDreaming-DFCIL) calls `.cuda()` unconditionally in many places and creates
some tensors with `device="cuda"`. This shim makes every CUDA placement a no-op on the CPU, skips the md5
check of the CIFAR files (parity runs feed it other images in the CIFAR-10 layout) and then runs the
reference's entry point as `__main__` with the remaining arguments. Nothing else is changed.
"""

from __future__ import annotations

import functools
import os
import runpy
import sys

import torch


def _cpu(device):
    """Any CUDA device (string, index or torch.device) becomes the CPU; anything else is kept."""
    if isinstance(device, int) or (isinstance(device, (str, torch.device)) and str(device).startswith("cuda")):
        return torch.device("cpu")
    return device


def _without_cuda(fn):
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _cpu(kwargs["device"])
        return fn(*args, **kwargs)
    return wrapped


def _to_without_cuda(to):
    """`Tensor.to` / `Module.to` with any CUDA device, positional or keyword, replaced by the CPU."""
    @functools.wraps(to)
    def wrapped(self, *args, **kwargs):
        args = tuple(_cpu(a) if isinstance(a, (str, torch.device)) else a for a in args)
        if "device" in kwargs:
            kwargs["device"] = _cpu(kwargs["device"])
        return to(self, *args, **kwargs)
    return wrapped


def _tensor_cuda(self, *args, **kwargs):
    """On a GPU, `.cuda()` of a CPU tensor is a copy; of a leaf that requires grad it is a non-leaf the
    reference then updates in place (`torch.zeros(1, requires_grad=True).cuda()` then `+=`). Returning the leaf
    itself would make that in-place update an error, so such a leaf gets a differentiable copy."""
    return self.clone() if self.requires_grad and self.is_leaf else self


def install() -> None:
    torch.Tensor.cuda = _tensor_cuda
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.cuda.set_device = lambda *a, **k: None
    torch.cuda.empty_cache = lambda: None
    for name in ("zeros", "ones", "empty", "full", "tensor", "arange", "rand", "randn", "randint", "randperm",
                 "eye", "linspace", "as_tensor", "zeros_like", "ones_like"):
        setattr(torch, name, _without_cuda(getattr(torch, name)))
    torch.Tensor.to = _to_without_cuda(torch.Tensor.to)
    torch.nn.Module.to = _to_without_cuda(torch.nn.Module.to)


def enter(reference: str) -> None:
    """Install the shim and make the reference's modules (run_dfcil, trainer, learners, ...) importable."""
    install()
    sys.path.insert(0, reference)
    import dataloaders.loader as loader  # the reference's package, found through sys.path
    loader.check_integrity = lambda path, md5: True  # what download, _check_integrity and _load_meta ask


def main() -> None:
    reference, argv = os.path.abspath(sys.argv[1]), sys.argv[2:]
    enter(reference)
    sys.argv = [os.path.join(reference, "run_dfcil.py"), *argv]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
