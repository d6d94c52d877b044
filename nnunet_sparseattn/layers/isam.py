"""Image space attention module (ISAM) of the bilateral spatial attention network (Sun et al., 2024).

    f_{i,j} = STB_{i,j}(f_{i,j-1}),  j = 1..6          (Swin blocks, shifted windows every second block)
    f_i     = Conv(f_{i,6}) + f_{i,0}                  (Conv = 3x3 conv - norm - nonlinearity, residual)

Norm and nonlinearity are the plans' (the paper's BatchNorm + ReLU in its own 2D configuration). The Swin blocks
may run at their own width ``dim`` (e.g. a Swin checkpoint's 96/192/384 channels): a 1x1 convolution then maps the
stage's channels to ``dim`` and the 3x3 convolution maps back; the residual stays on the stage's features.
"""

from __future__ import annotations

from typing import Optional, Sequence, Type

import numpy as np
import torch
import torch.nn as nn

from .conv import ConvNormAct, conv_dims
from .mlp import Mlp
from .transformer import num_heads_for
from .window_attention import SwinBlock

__all__ = ["ISAM"]


class ISAM(nn.Module):
    """``depth`` Swin blocks (windows ``window``, fixed for the stage) + Conv + residual, on (B, C, *S) maps."""

    def __init__(
        self,
        channels: int,
        window: Sequence[int],
        conv_op: Type[nn.Module],
        dim: Optional[int] = None,
        depth: int = 6,
        head_dim: int = 32,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        kernel_size: int | Sequence[int] = 3,
        conv_bias: bool = False,
        norm_op: Optional[Type[nn.Module]] = None,
        norm_op_kwargs: Optional[dict] = None,
        nonlin: Optional[Type[nn.Module]] = None,
        nonlin_kwargs: Optional[dict] = None,
    ):
        super().__init__()
        dim = int(dim or channels)
        if len(window) != conv_dims(conv_op):
            raise ValueError(f"window {tuple(window)} must have one entry per spatial axis of {conv_op.__name__}")
        if depth < 1:
            raise ValueError(f"ISAM depth {depth} must be at least 1")
        num_heads = num_heads_for(dim, head_dim)
        self.channels, self.dim, self.num_heads, self.window = channels, dim, num_heads, tuple(window)
        self.mlp_hidden = Mlp.hidden_for(dim, mlp_ratio)  # each Swin block's MLP width (for the memory estimate)
        self.proj_in = conv_op(channels, dim, 1) if dim != channels else nn.Identity()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, shift=bool(j % 2), mlp_ratio=mlp_ratio, drop_path=drop_path)
            for j in range(depth)
        )
        self.conv = ConvNormAct(
            conv_op,
            dim,
            channels,
            kernel_size,
            conv_bias=conv_bias,
            norm_op=norm_op,
            norm_op_kwargs=norm_op_kwargs,
            nonlin=nonlin,
            nonlin_kwargs=nonlin_kwargs,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj_in(x).movedim(1, -1)  # channels-last for the Swin blocks
        for block in self.blocks:
            y = block(y)
        return self.conv(y.movedim(-1, 1).contiguous()) + x

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        tokens = int(np.prod(input_size, dtype=np.int64))
        # per block: LN, qkv (3C), attention output, proj, LN, fc1 (mlp_ratio C), GELU, fc2 -> ~ (8 + 2 r) C maps
        hidden = self.mlp_hidden
        per_block = tokens * (7 * self.dim + 2 * hidden)
        stem = 0 if isinstance(self.proj_in, nn.Identity) else tokens * self.dim
        return stem + per_block * len(self.blocks) + self.conv.compute_conv_feature_map_size(input_size)
