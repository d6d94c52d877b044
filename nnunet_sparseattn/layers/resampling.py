"""MDSA-UNet's resampling blocks, 2D and 3D: enhanced downsampling merging (EDM) and upsampling fusion (EUF).

Our reading of the paper (Li et al., JBHI 2025; only its abstract was available):

- EDM: two downsampling branches, summed and normalised. One keeps every input value (space-to-depth by the
  stride, then a 1x1 convolution: a learned "patch merging"); the other sees a neighbourhood (a strided
  convolution, or max-pooling + 1x1 convolution).
- EUF: ``u = up(x)`` (transposed convolution); ``f = conv(cat[u, skip])`` (+ norm, nonlinearity);
  ``out = f * gate(f) + u`` with a squeeze-and-excitation channel gate.

Both take nnU-Net's per-stage stride: a per-axis tuple, anisotropic allowed (e.g. ``(1, 2, 2)``), any integer.

Odd sizes. A plans patch divides by the strides, but a sliding-window border or a hand-made input may not. An
axis of size ``S`` downsampled by ``s`` gives ``ceil(S / s)`` (what a stride-``s`` convolution with "same"
padding gives, and what :func:`~nnunet_sparseattn.architectures.base.stage_shapes` assumes): space-to-depth pads
the end of the axis with zeros up to a multiple of ``s``. EUF undoes exactly that: the upsampled map
(``s * ceil(S / s)``) is cropped at the end to the skip's size, so the decoder returns to the encoder's shapes.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from dynamic_network_architectures.building_blocks.helper import (
    get_matching_convtransp,
    get_matching_pool_op,
)

from .conv import ChannelAttention, conv_dims
from .shapes import IntOrSeq, ceil_div, pad_end, partition, per_axis

__all__ = [
    "EnhancedDownsampling",
    "EnhancedUpsampling",
    "space_to_depth",
]


def space_to_depth(x: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
    """``(B, C, *S)`` -> ``(B, C * prod(f), *ceil(S / f))``: each ``f``-block of voxels becomes channels.

    Any per-axis factors (anisotropic, 1 = axis untouched). Axes that ``f`` does not divide are zero-padded at the
    end first. Output channel ``c * prod(f) + offset`` holds channel ``c`` at the row-major offset inside the block.
    """
    n = x.dim() - 2
    factors = per_axis(factors, n, "factors")
    if all(f == 1 for f in factors):
        return x
    out_spatial = ceil_div(x.shape[2:], factors)
    x = pad_end(x, [o * f for o, f in zip(out_spatial, factors)])
    b, c = x.shape[:2]
    # (B, C, F_0 .., O_0 ..): the offset inside each block becomes channels
    return partition(x, factors, start=2, block_axes_first=True).reshape(b, c * math.prod(factors), *out_spatial)


def _norm(norm_op: Optional[type[nn.Module]], channels: int, kwargs: Optional[dict]) -> nn.Module:
    return nn.Identity() if norm_op is None else norm_op(channels, **(kwargs or {}))


class EnhancedDownsampling(nn.Module):
    """EDM: ``norm(conv1x1(space_to_depth(x, s)) + strided_conv(x))``, ``(B, Cin, *S) -> (B, Cout, *ceil(S/s))``.

    Args:
        in_channels, out_channels: channels before and after.
        stride: per-axis downsampling factor (nnU-Net's stage stride, e.g. ``(1, 2, 2)``); 1 leaves an axis alone.
        conv_op: ``nn.Conv2d`` or ``nn.Conv3d`` (2D/3D).
        kernel_size: kernel of the strided convolution per axis; raised where needed to the smallest odd size
            that covers the stride (``2 * (s // 2) + 1``: 3 for stride 2), so that no input voxel is skipped and
            the output size is ``ceil(S / s)`` on every axis.
        local_branch: ``"conv"`` (strided convolution, default) or ``"maxpool"`` (max-pool by the stride, then
            a 1x1 convolution): both are readings of the abstract.
        norm_op, norm_op_kwargs: the normalisation after the sum (the plans' norm; ``None``: none).
        bias: convolution biases (pointless before an instance/batch norm, hence off by default).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: IntOrSeq,
        conv_op: type[nn.Module] = nn.Conv3d,
        kernel_size: IntOrSeq = 3,
        local_branch: str = "conv",
        norm_op: Optional[type[nn.Module]] = None,
        norm_op_kwargs: Optional[dict] = None,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.ndim = conv_dims(conv_op)
        if local_branch not in ("conv", "maxpool"):
            raise ValueError(f"local_branch must be 'conv' or 'maxpool', got {local_branch!r}")
        self.stride = per_axis(stride, self.ndim, "stride")
        kernel = per_axis(kernel_size, self.ndim, "kernel_size")
        # odd kernels, at least as wide as the stride: padding k // 2 then gives ceil(S / s) outputs
        self.kernel_size = tuple(max(k | 1, 2 * (s // 2) + 1) for k, s in zip(kernel, self.stride))
        self.in_channels, self.out_channels = in_channels, out_channels
        self.local_branch = local_branch
        self.merge = conv_op(in_channels * math.prod(self.stride), out_channels, 1, bias=bias)
        if local_branch == "conv":
            self.local = conv_op(
                in_channels,
                out_channels,
                self.kernel_size,
                self.stride,
                padding=tuple(k // 2 for k in self.kernel_size),
                bias=bias,
            )
        else:
            self.local = conv_op(in_channels, out_channels, 1, bias=bias)
            self.pool = get_matching_pool_op(conv_op, pool_type="max")(self.stride, self.stride, ceil_mode=True)
        self.norm = _norm(norm_op, out_channels, norm_op_kwargs)

    def output_size(self, input_size: Sequence[int]) -> tuple[int, ...]:
        return ceil_div(input_size, self.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.ndim + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"EDM expects (B, {self.in_channels}, {self.ndim} spatial dims), got {tuple(x.shape)}")
        merged = self.merge(space_to_depth(x, self.stride))
        if self.local_branch == "conv":
            local = self.local(x)
        else:
            local = self.local(x if all(s == 1 for s in self.stride) else self.pool(x))
        return self.norm(merged + local)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Stored activations in nnU-Net's units (one map per convolution): both branches at the output size."""
        return np.int64(2 * self.out_channels * math.prod(self.output_size(input_size)))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, kernel_size={self.kernel_size}, local_branch={self.local_branch!r}"


class EnhancedUpsampling(nn.Module):
    """EUF: ``u = up(x)``; ``f = act(norm(conv(cat[u, skip])))``; ``out = f * gate(f) + u``.

    ``(B, Cin, *S_low), (B, Cskip, *S_skip) -> (B, Cout, *S_skip)``. ``up`` is a transposed convolution with
    kernel = stride (nnU-Net's decoder upsampling), giving ``s * S_low``, cropped at the end to ``S_skip``
    (see the module docstring: the inverse of EDM's end padding). A skip larger than ``s * S_low`` or smaller than
    ``s * S_low - (s - 1)`` cannot come from the matching EDM: ValueError.

    Args:
        in_channels: channels of the map to upsample; skip_channels: of the encoder skip; out_channels: after.
        stride: per-axis upsampling factor (the stride of the encoder stage below the skip).
        conv_op: ``nn.Conv2d`` or ``nn.Conv3d``.
        kernel_size: kernel of the fusion convolution (the plans' kernel of the skip's stage).
        norm_op, norm_op_kwargs, nonlin, nonlin_kwargs: after the fusion convolution (the plans' choices).
        gate_reduction: channel reduction inside the gate's bottleneck.
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        stride: IntOrSeq,
        conv_op: type[nn.Module] = nn.Conv3d,
        kernel_size: IntOrSeq = 3,
        norm_op: Optional[type[nn.Module]] = None,
        norm_op_kwargs: Optional[dict] = None,
        nonlin: Optional[type[nn.Module]] = None,
        nonlin_kwargs: Optional[dict] = None,
        bias: bool = False,
        gate_reduction: int = 4,
    ) -> None:
        super().__init__()
        self.ndim = conv_dims(conv_op)
        self.stride = per_axis(stride, self.ndim, "stride")
        kernel = tuple(k | 1 for k in per_axis(kernel_size, self.ndim, "kernel_size"))  # odd: "same" padding
        self.in_channels, self.skip_channels, self.out_channels = in_channels, skip_channels, out_channels
        self.up = get_matching_convtransp(conv_op)(in_channels, out_channels, self.stride, self.stride, bias=bias)
        self.fuse = conv_op(
            out_channels + skip_channels, out_channels, kernel, 1, padding=tuple(k // 2 for k in kernel), bias=bias
        )
        self.norm = _norm(norm_op, out_channels, norm_op_kwargs)
        self.nonlin = nn.Identity() if nonlin is None else nonlin(**(nonlin_kwargs or {}))
        self.gate = ChannelAttention(out_channels, conv_op, gate_reduction, min_hidden=8)  # squeeze-and-excitation

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if (
            x.dim() != self.ndim + 2
            or x.shape[1] != self.in_channels
            or skip.dim() != x.dim()
            or skip.shape[1] != self.skip_channels
            or skip.shape[0] != x.shape[0]
        ):
            raise ValueError(
                f"EUF expects (B, {self.in_channels}, ...) and a skip (B, {self.skip_channels}, ...) "
                f"with {self.ndim} spatial dims, got {tuple(x.shape)} and {tuple(skip.shape)}"
            )
        u = self.up(x)
        target = tuple(skip.shape[2:])
        if tuple(u.shape[2:]) != target:
            if any(t > s or t <= s - st for t, s, st in zip(target, u.shape[2:], self.stride)):
                raise ValueError(
                    f"EUF: skip size {target} does not match {tuple(x.shape[2:])} upsampled by "
                    f"{self.stride} (expected ceil(skip / stride) == input on every axis)"
                )
            u = u[(slice(None), slice(None)) + tuple(slice(0, t) for t in target)]
        f = self.nonlin(self.norm(self.fuse(torch.cat((u, skip), dim=1))))
        return f * self.gate(f) + u

    def compute_conv_feature_map_size(self, output_size: Sequence[int]) -> np.int64:
        """Stored activations in nnU-Net's units at the skip's size: ``u``, ``f`` and the gated output."""
        return np.int64(3 * self.out_channels * math.prod(int(s) for s in output_size))

    def extra_repr(self) -> str:
        return f"stride={self.stride}"
