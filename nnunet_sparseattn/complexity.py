"""Parameters and FLOPs of a network, counted the same way everywhere we report them.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts 2 FLOPs per multiply-add of the
matrix products and convolutions (and of SDPA's two matmuls) and nothing for norms, activations and poolings.
Papers that say "FLOPs" usually mean multiply-adds (MACs) counted by tools such as fvcore or thop, i.e. half of
this figure: compare ``flops / 2`` with them.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry, sdpa_flop_count


def _cpu_attention_formulas() -> dict[Any, Callable[..., int]]:
    """SDPA's formula for the kernel SDPA runs on the CPU, where torch's counter lacks it (torch 2.14 counts the
    CUDA kernels only: every CPU attention counted 0 FLOPs)."""
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None or op in flop_registry:
        return {}

    def formula(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)  # the counter's own formula for the others

    return {op: formula}


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter with the formulas it lacks: the one counter behind every FLOP figure of ours."""
    return FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas())


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@torch.no_grad()
def count_flops(net: nn.Module, input_shape: Sequence[int]) -> int:
    """Forward FLOPs (2 per multiply-add) for one input of ``input_shape`` ``(B, C, *S)``, in eval mode."""
    was_training = net.training
    net.eval()
    try:
        x = torch.zeros(*input_shape, device=next(net.parameters()).device)
        with flop_counter() as counter:
            net(x)
        return int(counter.get_total_flops())
    finally:
        net.train(was_training)
