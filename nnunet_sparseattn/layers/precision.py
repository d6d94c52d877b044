"""The precision the numerically sensitive places compute in: at least float32.

Softmax and the logits before it, routing scores and top-k, and layer norms compute in float32 under fp16/bf16
autocast (nnU-Net trains under fp16 autocast on a GPU). :func:`at_least_float32` casts 16-bit tensors up and leaves
float64 as it is: a float64 network (a numerical reference, e.g. for ``benchmarks/compile.py``) stays float64.
"""

from __future__ import annotations

import torch

__all__ = ["at_least_float32"]


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 if it is in fewer bits (or not floating), else as it is (float32, float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
