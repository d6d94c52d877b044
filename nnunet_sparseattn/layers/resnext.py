"""ResNeXt blocks (Xie et al., CVPR 2017: aggregated residual transformations), 2D/3D by ``conv_op``.

    1x1 conv (C_in -> width) - norm - act
    k x k grouped conv (width, ``groups`` paths, stride) - norm - act
    1x1 conv (width -> C_out) - norm
    + skip (avg-pool when strided, 1x1 conv - norm when the width changes), act

The stride sits in the grouped convolution and the skip pools before projecting (ResNet-D, as nnU-Net's own
``BottleneckD``). ResNeXt-50's 32 x 4d uses 32 paths of 4 channels at width 128; nnU-Net's first stages are far
narrower (32 channels -> width 16), so the cardinality is adapted: the most paths, at most ``cardinality``, that
divide the width with at least ``min_group_width`` channels each (width 16 -> 4 x 4, width 160 -> 32 x 5).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Type, cast

import numpy as np
import torch
import torch.nn as nn
from dynamic_network_architectures.building_blocks.helper import get_matching_pool_op

from .conv import ConvNormAct, conv_dims
from .shapes import ceil_div, per_axis

__all__ = ["ResNeXtBlock", "ResNeXtStage", "resnext_groups"]


def resnext_groups(width: int, cardinality: int = 32, min_group_width: int = 4) -> int:
    """Number of grouped-convolution paths for ``width`` channels (see the module docstring)."""
    best = 1
    for g in range(1, min(cardinality, width) + 1):
        if width % g == 0 and width // g >= min_group_width:
            best = g
    return best


class ResNeXtBlock(nn.Module):
    def __init__(
        self,
        conv_op: Type[nn.Module],
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        cardinality: int = 32,
        bottleneck_ratio: float = 0.5,
        min_group_width: int = 4,
        conv_bias: bool = False,
        norm_op: Optional[Type[nn.Module]] = None,
        norm_op_kwargs: Optional[dict] = None,
        nonlin: Optional[Type[nn.Module]] = None,
        nonlin_kwargs: Optional[dict] = None,
    ):
        super().__init__()
        stride = list(per_axis(stride, conv_dims(conv_op), "stride"))
        width = max(min_group_width, int(round(out_channels * bottleneck_ratio)))
        self.groups = resnext_groups(width, cardinality, min_group_width)
        self.in_channels, self.out_channels, self.width, self.stride = in_channels, out_channels, width, stride
        norm: dict[str, Any] = dict(conv_bias=conv_bias, norm_op=norm_op, norm_op_kwargs=norm_op_kwargs)
        act: dict[str, Any] = dict(nonlin=nonlin, nonlin_kwargs=nonlin_kwargs)
        self.conv1 = ConvNormAct(conv_op, in_channels, width, 1, **norm, **act)
        self.conv2 = ConvNormAct(conv_op, width, width, kernel_size, stride, groups=self.groups, **norm, **act)
        self.conv3 = ConvNormAct(conv_op, width, out_channels, 1, **norm)
        skip = []
        if any(s != 1 for s in stride):
            # ceil_mode: same output size as the strided 'same' convolution on odd sizes
            skip.append(get_matching_pool_op(conv_op, pool_type="avg")(stride, stride, ceil_mode=True))
        if in_channels != out_channels:
            skip.append(ConvNormAct(conv_op, in_channels, out_channels, 1, **norm))
        self.skip = nn.Sequential(*skip)
        self.act = nonlin(**(nonlin_kwargs or {})) if nonlin is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv3(self.conv2(self.conv1(x))) + self.skip(x))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        out = self.conv2.output_size(input_size)
        total = np.prod([self.width, *input_size], dtype=np.int64) + np.prod([self.width, *out], dtype=np.int64)
        total += np.prod([self.out_channels, *out], dtype=np.int64)
        if len(self.skip):
            total += np.prod([self.out_channels, *out], dtype=np.int64)
        return int(total)


class ResNeXtStage(nn.Module):
    """``n_blocks`` ResNeXt blocks; the first one strides and changes the width."""

    def __init__(
        self,
        n_blocks: int,
        conv_op: Type[nn.Module],
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int],
        **block_kwargs,
    ):
        super().__init__()
        if n_blocks < 1:
            raise ValueError(f"a ResNeXt stage needs at least one block, got {n_blocks}")
        blocks = [
            ResNeXtBlock(
                conv_op,
                in_channels if i == 0 else out_channels,
                out_channels,
                kernel_size,
                stride if i == 0 else 1,
                **block_kwargs,
            )
            for i in range(n_blocks)
        ]
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = out_channels
        self.stride = blocks[0].stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)

    def output_size(self, input_size: Sequence[int]) -> list[int]:
        return list(ceil_div(input_size, self.stride))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        first, *rest = (cast(ResNeXtBlock, block) for block in self.blocks)
        total = first.compute_conv_feature_map_size(input_size)
        size = self.output_size(input_size)
        for block in rest:
            total += block.compute_conv_feature_map_size(size)
        return int(total)
