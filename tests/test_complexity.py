"""complexity.count_flops: 2 FLOPs per multiply-add of matrix products, convolutions and attention, on the CPU too
(torch 2.14's counter has no formula for the kernel SDPA runs on the CPU; without ours, attention counted 0)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from nnunet_sparseattn.complexity import count_flops, count_parameters


class _Attention(nn.Module):
    def __init__(self, masked: bool):
        super().__init__()
        self.proj = nn.Linear(32, 16)
        self.masked = masked

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, heads, N, 32)
        mask = torch.zeros(x.shape[-2], x.shape[-2]) if self.masked else None  # Swin's additive mask
        return self.proj(F.scaled_dot_product_attention(x, x, x, attn_mask=mask))


def test_attention_and_matrix_products_are_counted_on_the_cpu():
    b, heads, n, d = 1, 2, 64, 32
    attention = 2 * (2 * b * heads * n * n * d)  # Q K^T and (softmax) V, 2 FLOPs per multiply-add each
    linear = 2 * b * heads * n * 32 * 16
    for masked in (False, True):
        net = _Attention(masked)
        assert count_flops(net, (b, heads, n, d)) == attention + linear
        assert count_parameters(net) == 32 * 16 + 16
