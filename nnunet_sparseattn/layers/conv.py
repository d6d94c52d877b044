"""Convolution primitives shared by the networks: conv-norm-act and a channel attention gate, 2D/3D by ``conv_op``.

dynamic_network_architectures has neither in the form needed here: its ``ConvDropoutNormReLU`` takes no groups
(ResNeXt) or dilation (FSAM), and its ``SqueezeExcite`` pools axes 2 and 3 only (wrong for 3D maps) and has no
max-pooled branch (CBAM/FSAM).
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim

from .mlp import Mlp
from .shapes import IntOrSeq, ceil_div, per_axis

__all__ = [
    "CONV_NORM_ACT_OPTIONS",
    "ChannelAttention",
    "ConvNormAct",
    "conv_dims",
    "conv_norm_act_options",
    "grouped_conv_op",
]


def conv_dims(conv_op: type[nn.Module]) -> int:
    """Spatial dimensions of ``conv_op`` (dynamic_network_architectures' mapping), ValueError naming the argument."""
    try:
        return convert_conv_op_to_dim(conv_op)
    except (TypeError, ValueError):
        raise ValueError(f"conv_op must be torch.nn.Conv1d, Conv2d or Conv3d, got {conv_op!r}") from None


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CHANNELS_LAST = {2: torch.channels_last, 3: torch.channels_last_3d}


class _DepthwiseConv(torch.autograd.Function):
    """A depthwise convolution (stride 1, no dilation, zero padding) whose backward is two forward convolutions.

    torch's CPU backward of depthwise convolutions is 10-50x slower than their forward (``benchmarks/conv_paths.py``:
    3x3x3 at 128 x 10x14x10 10.3 ms forward + backward against 0.6 ms forward; MDSA's 7x7x7 there 80 ms against 1.6
    ms; a 2D 7x7 at 128 x 64x64 44 ms against 1.2 ms). Both gradients are correlations that oneDNN's fast forward
    kernels compute: the input's gradient is the depthwise convolution of the output's gradient with the flipped
    kernel; the weight's gradient is the padded input correlated with the output's gradient, one group per (sample,
    channel), summed over the samples (forward + both gradients there: 4.1 ms, 13 ms and 10 ms). For 2D 3x3 kernels
    torch's own backward is faster (1.8 ms against 4.4 ms at 256 x 32x32): :meth:`_CPUConvolution._cpu_path` keeps it
    there."""

    @staticmethod
    def forward(ctx, input, weight, bias, padding):
        ctx.save_for_backward(input, weight)
        ctx.padding, ctx.has_bias = tuple(padding), bias is not None
        return _CONV[weight.dim() - 2](input, weight, bias, padding=ctx.padding, groups=input.shape[1])

    @staticmethod
    def backward(ctx, grad):
        input, weight = ctx.saved_tensors
        nd = weight.dim() - 2
        conv, layout = _CONV[nd], _CHANNELS_LAST.get(nd, torch.contiguous_format)
        kernel = weight.shape[2:]
        b, c = input.shape[:2]
        grad = grad.contiguous(memory_format=layout)
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            flipped = weight.flip(list(range(2, 2 + nd)))
            grad_input = conv(grad, flipped, None, padding=[k - 1 - p for k, p in zip(kernel, ctx.padding)], groups=c)
        if ctx.needs_input_grad[1]:
            padded = F.pad(input, [p for p in reversed(ctx.padding) for _ in range(2)])
            padded = padded.reshape(1, b * c, *padded.shape[2:]).contiguous(memory_format=layout)
            per_sample = conv(padded, grad.reshape(b * c, 1, *grad.shape[2:]), None, groups=b * c)
            grad_weight = per_sample.reshape(b, c, 1, *kernel).sum(0)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum([0, *range(2, grad.dim())])
        return grad_input, grad_weight, grad_bias, None


# How a grouped or depthwise convolution runs on the CPU (``_CPUConvolution._cpu_path``)
PLAIN, CHANNELS_LAST, DEPTHWISE = "plain", "channels-last", "depthwise"


class _CPUConvolution:
    """Grouped and depthwise convolutions on the CPU take the path that measured fastest for their kind.

    ``benchmarks/conv_paths.py`` (``benchmarks/results/conv-paths-cpu.json``) times each grouped and depthwise
    convolution of the benchmark's plans plain, channels-last and with :class:`_DepthwiseConv`'s backward, forward +
    backward (training) and forward alone (inference), 2 threads, torch 2.14, batch 2, on a quiet machine. Times
    against the plain convolution's:

    - training, depthwise 3D: channels-last with the backward of forward convolutions (0.17-0.4x);
    - training, depthwise 2D with a kernel of 5 or more: that backward, plain layout (7x7: 0.1-0.55x); 3x3 kernels
      stay plain (channels-last 2.2-2.5x, the fast backward 2.5-2.7x: torch's own 2D backward is quick there);
    - training, grouped 3D: channels-last, where oneDNN has fast grouped kernels (ResNeXt's 4-group 3x3x3 at 16 x
      40x56x40 0.47x, 8 groups at 32 x 20x28x20 0.24x, strided 0.7-1.0x; the layout copies in and out included);
    - training, grouped 2D: channels-last at stride 1 (0.65-0.85x), plain when strided (channels-last 1.3x);
    - inference (no gradient): plain everywhere (channels-last 0.95-1.6x in 3D, 1.05-3.8x in 2D: its gain is in the
      backward);
    - under CPU autocast: plain (it casts as autocast's rules say; the custom backward keeps no cast).

    CUDA (cuDNN) and dense convolutions are untouched. Parameters, state-dict keys and results (to round-off) are
    those of the plain convolution class, which this one subclasses."""

    groups: int
    in_channels: int
    out_channels: int
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: Any
    padding_mode: Literal["zeros", "reflect", "replicate", "circular"]

    def _cpu_path(self, input: torch.Tensor, weight: torch.Tensor) -> str:
        """:data:`PLAIN`, :data:`CHANNELS_LAST` or :data:`DEPTHWISE` for this call (rules in the class docstring)."""
        training = torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad)
        if input.device.type != "cpu" or self.groups == 1 or not training or torch.is_autocast_enabled("cpu"):
            return PLAIN
        stride_one = all(s == 1 for s in self.stride)
        depthwise = (
            stride_one
            and self.groups == self.in_channels == self.out_channels
            and all(d == 1 for d in self.dilation)
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
        )
        if input.dim() == 5:
            return DEPTHWISE if depthwise else CHANNELS_LAST
        if depthwise:
            return DEPTHWISE if min(weight.shape[2:]) >= 5 else PLAIN
        return CHANNELS_LAST if stride_one else PLAIN

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        path = self._cpu_path(input, weight)
        if path == PLAIN:
            return super()._conv_forward(input, weight, bias)  # type: ignore[misc]
        if path == CHANNELS_LAST or input.dim() == 5:
            input = input.contiguous(memory_format=_CHANNELS_LAST[input.dim() - 2])
        if path == DEPTHWISE:
            output = _DepthwiseConv.apply(input, weight, bias, self.padding)
        else:
            output = super()._conv_forward(input, weight, bias)  # type: ignore[misc]
        return output.contiguous()


class GroupedConv2d(_CPUConvolution, nn.Conv2d):
    """``nn.Conv2d``, on the CPU by the fastest path for grouped and depthwise kernels (see ``_CPUConvolution``)."""


class GroupedConv3d(_CPUConvolution, nn.Conv3d):
    """``nn.Conv3d``, on the CPU by the fastest path for grouped and depthwise kernels (see ``_CPUConvolution``)."""


def grouped_conv_op(conv_op: type[nn.Module]) -> type[nn.Module]:
    """The class to build a grouped or depthwise convolution of ``conv_op``'s dimension with."""
    return {2: GroupedConv2d, 3: GroupedConv3d}.get(conv_dims(conv_op), conv_op)


# ConvNormAct's options that the plans choose once for every convolution of a network
CONV_NORM_ACT_OPTIONS: tuple[str, ...] = ("conv_bias", "norm_op", "norm_op_kwargs", "nonlin", "nonlin_kwargs")


def conv_norm_act_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """:data:`CONV_NORM_ACT_OPTIONS` picked from ``values`` (a constructor's ``locals()``), to pass as ``**options``."""
    return {name: values[name] for name in CONV_NORM_ACT_OPTIONS}


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
