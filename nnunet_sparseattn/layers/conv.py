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

__all__ = ["ChannelAttention", "ConvNormAct", "conv_dims", "grouped_conv_op"]


def conv_dims(conv_op: type[nn.Module]) -> int:
    """Spatial dimensions of ``conv_op`` (dynamic_network_architectures' mapping), ValueError naming the argument."""
    try:
        return convert_conv_op_to_dim(conv_op)
    except (TypeError, ValueError):
        raise ValueError(f"conv_op must be torch.nn.Conv1d, Conv2d or Conv3d, got {conv_op!r}") from None


class _ChannelsLastOnCPU:
    """Grouped and depthwise convolutions on the CPU run in channels-last layout, where oneDNN has fast kernels.

    Measured forward + backward on 2 CPU cores, 1 thread, torch 2.14 (``benchmarks/network_speed.py`` has the whole
    networks): a 3x3x3 depthwise conv at 128 x 10x14x10 1.36x faster, 7x7x7 2.3x, ResNeXt's 4-group 3x3x3 conv at
    16 x 40x56x40 2.7x, a 2D 7x7 depthwise conv 2x, the layout copies in and out included. Elsewhere (CUDA: cuDNN,
    and dense convolutions) nothing changes. Parameters, state-dict keys and results (to round-off) are those of the
    plain convolution class, which this one subclasses."""

    groups: int

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        if input.device.type != "cpu" or self.groups == 1:
            return super()._conv_forward(input, weight, bias)  # type: ignore[misc]
        layout = torch.channels_last_3d if input.dim() == 5 else torch.channels_last
        output = super()._conv_forward(input.contiguous(memory_format=layout), weight, bias)  # type: ignore[misc]
        return output.contiguous()


class GroupedConv2d(_ChannelsLastOnCPU, nn.Conv2d):
    """``nn.Conv2d``, channels-last on the CPU when grouped (see ``_ChannelsLastOnCPU``)."""


class GroupedConv3d(_ChannelsLastOnCPU, nn.Conv3d):
    """``nn.Conv3d``, channels-last on the CPU when grouped (see ``_ChannelsLastOnCPU``)."""


def grouped_conv_op(conv_op: type[nn.Module]) -> type[nn.Module]:
    """The class to build a grouped or depthwise convolution of ``conv_op``'s dimension with."""
    return {2: GroupedConv2d, 3: GroupedConv3d}.get(conv_dims(conv_op), conv_op)


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
        conv = grouped_conv_op(conv_op) if groups > 1 else conv_op
        layers: list[nn.Module] = [
            conv(in_channels, out_channels, kernel, self.stride, padding, dilation=dil, groups=groups, bias=conv_bias)
        ]
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

    def __init__(
        self,
        channels: int,
        conv_op: type[nn.Module],
        reduction: int = 16,
        min_hidden: int = 8,
        pools: Sequence[str] = ("avg",),
    ) -> None:
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
        assert logits is not None  # pools is not empty (checked in __init__)
        return torch.sigmoid(logits)
