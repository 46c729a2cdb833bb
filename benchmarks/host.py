"""The machine a benchmark's numbers came from, named the same way in every record under benchmarks/.

Timings of the same code differ by up to 3x between the VMs we measure on, and training numbers differ between CPU
models and torch builds (README, "What is bit-identical"), so a record names the CPU model (with its family and
model numbers: "AMD EPYC" alone covers CPUs of different speed), the core count, the torch build and any variable
that holds torch's CPU kernels to an instruction set. Read without importing torch, so that scripts timing torch's
import can call it first.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU as Linux names it (model name, family, model), else the platform's word for it."""
    try:
        first_cpu = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return platform.processor() or platform.machine()
    fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first_cpu.splitlines())}
    return (f"{fields.get('model name', platform.machine())} family {fields.get('cpu family', '?')} "
            f"model {fields.get('model', '?')}")


# Variables that hold torch's CPU kernels to an instruction set: with them an AVX-512 CPU computes what an AVX2 one
# does (benchmarks/README.md, "The demo's table and the CPU's vector instructions"), so they name the rounding as much
# as the CPU model does.
KERNEL_CAPS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


def describe() -> str:
    """e.g. "AMD EPYC family 25 model 1, 2 cores, torch 2.14.1", followed by any kernel caps set, e.g.
    ", ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2"."""
    try:
        torch = f"torch {importlib.metadata.version('torch')}"
    except importlib.metadata.PackageNotFoundError:
        torch = "no torch"
    caps = " ".join(f"{name}={os.environ[name]}" for name in KERNEL_CAPS if os.environ.get(name))
    return f"{cpu_model()}, {os.cpu_count()} cores, {torch}" + (f", {caps}" if caps else "")
