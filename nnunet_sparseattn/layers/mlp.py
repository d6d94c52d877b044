"""The one MLP: ``fc1 -> activation -> fc2``, per token, on channels-last tokens or channel-first maps.

timm's ``Mlp`` covers channels-last tokens, and its 1x1-convolution form only 2D maps; ours takes any ``conv_op`` (3D
feature maps) and keeps timm's parameter names (``fc1``, ``fc2``), so timm Swin checkpoints map onto it.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

__all__ = ["Mlp"]


class Mlp(nn.Module):
    """``fc2(act(fc1(x)))`` with ``hidden`` channels in between.

    ``conv_op=None``: ``nn.Linear`` on channels-last tokens ``(..., C)``; ``conv_op=nn.Conv2d/3d``: 1x1 convolutions on
    channel-first maps ``(B, C, *S)``.
    """

    def __init__(
        self,
        channels: int,
        hidden: int,
        conv_op: Optional[type[nn.Module]] = None,
        act_layer: type[nn.Module] = nn.GELU,
        out_channels: Optional[int] = None,
    ) -> None:
        super().__init__()
        out_channels = channels if out_channels is None else out_channels
        self.hidden = hidden
        if conv_op is None:
            self.fc1: nn.Module = nn.Linear(channels, hidden)
            self.fc2: nn.Module = nn.Linear(hidden, out_channels)
        else:
            self.fc1 = conv_op(channels, hidden, 1)
            self.fc2 = conv_op(hidden, out_channels, 1)
        self.act = act_layer()

    @staticmethod
    def hidden_for(channels: int, mlp_ratio: float) -> int:
        """Hidden width of a transformer MLP: ``round(ratio * C)``, at least 1."""
        return max(1, int(round(channels * mlp_ratio)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
