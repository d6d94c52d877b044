"""Convolution primitives shared by the networks: conv-norm-act and a channel attention gate, 2D/3D by ``conv_op``.

dynamic_network_architectures has neither in the form needed here: its ``ConvDropoutNormReLU`` takes no groups
(ResNeXt) or dilation (FSAM), and its ``SqueezeExcite`` pools axes 2 and 3 only (wrong for 3D maps) and has no
max-pooled branch (CBAM/FSAM).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim

from .mlp import Mlp
from .shapes import IntOrSeq, ceil_div, per_axis

__all__ = ["ChannelAttention", "ConvNormAct", "conv_dims"]


def conv_dims(conv_op: type[nn.Module]) -> int:
    """Spatial dimensions of ``conv_op`` (dynamic_network_architectures' mapping), ValueError naming the argument."""
    try:
        return convert_conv_op_to_dim(conv_op)
    except (TypeError, ValueError):
        raise ValueError(f"conv_op must be torch.nn.Conv1d, Conv2d or Conv3d, got {conv_op!r}") from None


class ConvNormAct(nn.Sequential):
    """conv -> norm -> nonlinearity, 'same' padding (dilation aware), 2D/3D by ``conv_op``."""

    def __init__(
        self,
        conv_op: type[nn.Module],
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrSeq,
        stride: IntOrSeq = 1,
        dilation: int = 1,
        groups: int = 1,
        conv_bias: bool = False,
        norm_op: Optional[type[nn.Module]] = None,
        norm_op_kwargs: Optional[dict] = None,
        nonlin: Optional[type[nn.Module]] = None,
        nonlin_kwargs: Optional[dict] = None,
    ) -> None:
        ndim = conv_dims(conv_op)
        kernel = per_axis(kernel_size, ndim, "kernel_size")
        padding = [dilation * (k - 1) // 2 for k in kernel]
        # a kernel of 1 along an axis (anisotropic plans) is not dilated there
        dil = [dilation if k > 1 else 1 for k in kernel]
        self.stride = per_axis(stride, ndim, "stride")
        layers: list[nn.Module] = [conv_op(in_channels, out_channels, kernel, self.stride, padding, dilation=dil,
                                           groups=groups, bias=conv_bias)]
        if norm_op is not None:
            layers.append(norm_op(out_channels, **(norm_op_kwargs or {})))
        if nonlin is not None:
            layers.append(nonlin(**(nonlin_kwargs or {})))
        super().__init__(*layers)
        self.out_channels = out_channels

    def output_size(self, input_size: Sequence[int]) -> tuple[int, ...]:
        return ceil_div(input_size, self.stride)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """One output map per block, as nnU-Net's ``ConvDropoutNormReLU`` counts."""
        return int(np.prod([self.out_channels, *self.output_size(input_size)], dtype=np.int64))


class ChannelAttention(nn.Module):
    """One weight per channel, ``(B, C, 1, ..)``: ``sigmoid(sum over pools of MLP(pool(x)))`` with one shared MLP.

    ``pools=("avg",)`` is squeeze-and-excitation (Hu et al.); ``("avg", "max")`` is CBAM's channel attention (Woo et
    al.), which the bilateral network's FSAM uses. The MLP is 1x1 convolutions ``C -> max(min_hidden, C / reduction)
    -> C`` with ReLU.
    """

    POOLS = ("avg", "max")

    def __init__(self, channels: int, conv_op: type[nn.Module], reduction: int = 16, min_hidden: int = 8,
                 pools: Sequence[str] = ("avg",)) -> None:
        super().__init__()
        if not pools or any(p not in self.POOLS for p in pools):
            raise ValueError(f"pools={tuple(pools)!r}: choose from {self.POOLS}")
        self.pools = tuple(pools)
        self.mlp = Mlp(channels, max(min_hidden, channels // reduction), conv_op, act_layer=nn.ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axes = tuple(range(2, x.dim()))
        logits = None
        for pool in self.pools:
            pooled = x.mean(dim=axes, keepdim=True) if pool == "avg" else x.amax(dim=axes, keepdim=True)
            y = self.mlp(pooled)
            logits = y if logits is None else logits + y
        return torch.sigmoid(logits)
