"""The transformer block that BSA-Seg and MDSA-UNet both configure, and its pieces (channel-first, 2D and 3D).

Both papers stack BiFormer's block around their own attention::

    x = x + DWConv(x)                   conditional positional encoding (attention itself is position-blind)
    x = x + Attention(LN(x))
    x = x + MLP(LN(x))                  1x1 conv (C -> mlp_ratio C), GELU, 1x1 conv back

What differs between the papers is an argument: the attention module, the MLP ratio and the initialisation.
"""

from __future__ import annotations

from typing import Protocol, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from .conv import grouped_conv_op
from .mlp import Mlp
from .precision import at_least_float32

__all__ = ["ChannelLayerNorm", "TokenMixer", "TransformerBlock", "num_heads_for"]


class TokenMixer(Protocol):
    """What :class:`TransformerBlock` needs of its attention: an ``nn.Module`` mapping ``(B, C, *S)`` to the same
    shape, that lists its linear maps (for the transformer initialisation)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def projections(self) -> tuple[nn.Module, ...]: ...


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a ``(B, C, *S)`` map (a transformer's token norm, without reshaping)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.channels = channels
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 statistics: under fp16 autocast the variance of wide maps overflows/loses precision
        y = F.layer_norm(
            at_least_float32(x.movedim(1, -1)),
            (x.shape[1],),
            at_least_float32(self.weight),
            at_least_float32(self.bias),
            self.eps,
        )
        return y.movedim(-1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps}"


class LayerNorm32(nn.LayerNorm):
    """``nn.LayerNorm`` over the last axis with float32 statistics under any autocast (CUDA's autocast runs layer_norm
    in float32, the CPU's does not), output in the input's dtype; parameters and state-dict keys as ``nn.LayerNorm``'s
    (Swin checkpoints load unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else at_least_float32(self.weight)
        bias = None if self.bias is None else at_least_float32(self.bias)
        return F.layer_norm(at_least_float32(x), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


def num_heads_for(channels: int, head_dim: int = 32) -> int:
    """Heads of about ``head_dim`` channels: the largest divisor of ``channels`` not above ``channels // head_dim``
    (at least one). The one rule for every attention of the package (routed, MDSA, Swin). ValueError when the heads
    it leaves are over twice ``head_dim`` wide (a width with no divisor near ``channels / head_dim``, e.g. a prime)."""
    if head_dim < 1:
        raise ValueError(f"head_dim must be >= 1, got {head_dim}")
    heads = max(1, channels // head_dim)
    while channels % heads:
        heads -= 1
    if channels // heads > 2 * head_dim:
        raise ValueError(
            f"{channels} channels do not split into heads of about head_dim={head_dim} channels (the "
            f"best is {heads} head(s) of {channels // heads}): choose a width that is a multiple of "
            f"{head_dim}, or another head_dim"
        )
    return heads


class TransformerBlock(nn.Module):
    """``x + pos(x)``; ``x + attn(norm1(x))``; ``x + mlp(norm2(x))`` on ``(B, C, *S)`` maps, any spatial shape.

    Args:
        attention: the token mixer, ``(B, C, *S) -> (B, C, *S)`` (it must list its linear maps in ``projections()``
            for the transformer initialisation).
        channels, conv_op: width and 2D/3D.
        mlp_ratio: the MLP's hidden width over ``channels``.
        positional_kernel_size: the depthwise positional convolution (0: none).
        transformer_init: after nnU-Net's He initialisation (``network.apply(network.initialize)`` visits this block
            after its children), re-initialise the attention's projections and the MLP with a truncated normal of
            std 0.02 and zero biases, as transformers are (He's scheme makes residual branches start large).
    """

    def __init__(
        self,
        attention: TokenMixer,
        channels: int,
        conv_op: type[nn.Module],
        mlp_ratio: float = 4.0,
        positional_kernel_size: int = 3,
        transformer_init: bool = False,
    ) -> None:
        super().__init__()
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {mlp_ratio}")
        k = positional_kernel_size
        if k < 0 or (k > 0 and k % 2 == 0):
            raise ValueError(f"positional_kernel_size must be 0 (off) or odd, got {k}")
        self.channels = channels
        self.transformer_init = transformer_init
        self.pos = grouped_conv_op(conv_op)(channels, channels, k, padding=k // 2, groups=channels) if k else None
        self.norm1 = ChannelLayerNorm(channels)
        self.attn = attention
        self.norm2 = ChannelLayerNorm(channels)
        self.mlp = Mlp(channels, Mlp.hidden_for(channels, mlp_ratio), conv_op)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos is not None:
            x = x + self.pos(x)
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The transformer initialisation (see ``transformer_init``); the networks call it after He's."""
        for module in (*self.attn.projections(), self.mlp.fc1, self.mlp.fc2):
            nn.init.trunc_normal_(cast(torch.Tensor, module.weight), std=0.02)
            if module.bias is not None:
                nn.init.zeros_(cast(torch.Tensor, module.bias))
