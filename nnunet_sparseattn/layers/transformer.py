"""Channel-first transformer pieces shared by the attention blocks (2D and 3D feature maps, no reshapes)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


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
        y = F.layer_norm(x.movedim(1, -1).float(), (x.shape[1],), self.weight.float(), self.bias.float(), self.eps)
        return y.movedim(-1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps}"


def num_heads_for(channels: int, head_dim: int = 32) -> int:
    """Heads of ``head_dim`` channels (at least one; the largest divisor of ``channels`` not above the ratio)."""
    if head_dim < 1:
        raise ValueError(f"head_dim must be >= 1, got {head_dim}")
    heads = max(1, channels // head_dim)
    while channels % heads:
        heads -= 1
    return heads


class ConvMlp(nn.Module):
    """Token-wise MLP as two 1x1 convolutions: ``C -> ratio * C -> GELU -> C``."""

    def __init__(self, channels: int, mlp_ratio: float = 4.0, conv_op: type[nn.Module] = nn.Conv3d) -> None:
        super().__init__()
        hidden = max(1, int(round(channels * mlp_ratio)))
        self.fc1 = conv_op(channels, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = conv_op(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
