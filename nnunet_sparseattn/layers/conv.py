"""The one place that maps a convolution class to its number of spatial dimensions (2D/3D chosen by ``conv_op``)."""
from __future__ import annotations

import torch.nn as nn

_CONV_NDIM = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}


def conv_ndim(conv_op: type[nn.Module]) -> int:
    """Spatial dims of ``nn.Conv1d/2d/3d`` (ValueError otherwise)."""
    for op, n in _CONV_NDIM.items():
        if isinstance(conv_op, type) and issubclass(conv_op, op):
            return n
    raise ValueError(f"conv_op must be torch.nn.Conv1d, Conv2d or Conv3d, got {conv_op!r}")
