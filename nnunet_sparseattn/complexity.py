"""Parameters and FLOPs of a network, counted the same way everywhere we report them.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts 2 FLOPs per multiply-add of the
matrix products and convolutions (and of SDPA's two matmuls) and nothing for norms, activations and poolings.
Papers that say "FLOPs" usually mean multiply-adds (MACs) counted by tools such as fvcore or thop, i.e. half of
this figure: compare ``flops / 2`` with them.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@torch.no_grad()
def count_flops(net: nn.Module, input_shape: Sequence[int]) -> int:
    """Forward FLOPs (2 per multiply-add) for one input of ``input_shape`` ``(B, C, *S)``, in eval mode."""
    was_training = net.training
    net.eval()
    try:
        x = torch.zeros(*input_shape, device=next(net.parameters()).device)
        with FlopCounterMode(display=False) as counter:
            net(x)
        return int(counter.get_total_flops())
    finally:
        net.train(was_training)
