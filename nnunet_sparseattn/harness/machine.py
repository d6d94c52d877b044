"""What a measurement ran on: the device's name and the machine's load (other processes inflate CPU timings)."""

from __future__ import annotations

import os
import platform
import re
from typing import Optional

import torch

from nnunet_sparseattn.errors import UserError


def load_average() -> Optional[list[float]]:
    """The 1, 5 and 15 minute load averages, or None where the platform has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def check_device(device: str, flag: str = "--device", indexed: bool = False) -> str:
    """A torch device the user named, refused in one line before any work when it is no device or not present here
    (torch itself would fail deep inside nnU-Net's predictor or trainer). ``indexed`` accepts ``cuda:N``."""
    pattern = r"cpu|mps|cuda(:\d+)?" if indexed else r"cpu|mps|cuda"
    if not re.fullmatch(pattern, device or ""):
        choices = "cpu, cuda (or cuda:N) or mps" if indexed else "cpu, cuda or mps (nnUNetv2_train's -device)"
        raise UserError(f"{flag} {device!r} is no device here: choose {choices}")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"{flag} {device}, and no CUDA GPU is visible (torch {torch.__version__}): use {flag} cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UserError(f"{flag} {device}: only {torch.cuda.device_count()} CUDA GPU(s) are visible (0-based)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{flag} mps, and this machine has no Apple GPU (MPS): use {flag} cpu")
    return device


def describe_machine(device: torch.device | str) -> str:
    """The GPU's name on CUDA; the CPU's model name and logical CPU count otherwise."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs"
