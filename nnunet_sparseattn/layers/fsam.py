"""Feature space attention module (FSAM) of the bilateral spatial attention network (Sun et al., 2024).

    u     = Conv(f)                    3x3 conv - norm - act
    z     = DConv(u)                   3x3 conv with dilation 2 - norm - act (wider receptive field)
    alpha = sigmoid(MLP(GAP(z)) + MLP(GMP(z)))     one shared MLP (1x1 convs C -> C/r -> C), per channel
    out   = alpha * f + u              (paper: f^alpha = alpha x f_i, then f_i = f^alpha + Conv(f_i))

The paper weights the module's input; ``weighted="dilated"`` weights z instead (our alternative reading).
"""

from __future__ import annotations

from typing import Optional, Sequence, Type

import numpy as np
import torch
import torch.nn as nn

from .conv import ChannelAttention, ConvNormAct, conv_norm_act_options

__all__ = ["FSAM", "FSAM_WEIGHTINGS"]

FSAM_WEIGHTINGS = ("input", "dilated")  # what the channel weights multiply: the paper's input, or our reading


class FSAM(nn.Module):
    def __init__(
        self,
        channels: int,
        conv_op: Type[nn.Module],
        kernel_size: int | Sequence[int] = 3,
        dilation: int = 2,
        reduction: int = 16,
        min_hidden: int = 8,
        weighted: str = "input",
        conv_bias: bool = False,
        norm_op: Optional[Type[nn.Module]] = None,
        norm_op_kwargs: Optional[dict] = None,
        nonlin: Optional[Type[nn.Module]] = None,
        nonlin_kwargs: Optional[dict] = None,
    ):
        super().__init__()
        if weighted not in FSAM_WEIGHTINGS:
            raise ValueError(f"FSAM weighted={weighted!r}: choose 'input' (the paper) or 'dilated'")
        self.weighted, self.channels = weighted, channels
        ops = conv_norm_act_options(locals())
        self.conv = ConvNormAct(conv_op, channels, channels, kernel_size, **ops)
        self.dconv = ConvNormAct(conv_op, channels, channels, kernel_size, dilation=dilation, **ops)
        # GAP and GMP through one shared MLP, summed, sigmoid: CBAM's channel attention
        self.gate = ChannelAttention(channels, conv_op, reduction, min_hidden, pools=("avg", "max"))

    def channel_weights(self, z: torch.Tensor) -> torch.Tensor:
        """alpha (B, C, 1, ...) from GAP and GMP of ``z`` through the shared MLP."""
        return self.gate(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.conv(x)
        z = self.dconv(u)
        alpha = self.channel_weights(z)
        return alpha * (x if self.weighted == "input" else z) + u

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        one = int(np.prod([self.channels, *input_size], dtype=np.int64))
        return 3 * one  # conv, dilated conv, weighted sum
