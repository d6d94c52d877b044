"""BSA-Seg's bi-level sparse attention module (BSAM) and block, on the shared routed-attention core.

BSAM = BiFormer's bi-level routing attention plus a coarse branch that BSA-Seg's abstract describes as
"coarse-grained patch-level attention" whose scores learn an "adaptive receptive field" for the "fine-grained
pixel-level attention"::

    q, k, v   = qkv(x)                                    1x1 conv
    q_r, k_r, v_r = region means of q, k, v               fp32, padding excluded
    coarse    = softmax(q_r k_r^T / sqrt(d)) v_r          per head: every region attends to every region
    routing   = top-k of the same scores (summed over heads, detached)
    fine      = routed attention of every token over its region's top-k regions
    out       = proj(fine + gamma * upsample(coarse) + LCE(v))

``gamma`` is per channel and starts at 0, so a new BSAM equals BRA and learns how much region-level context to
mix in; ``coarse_branch=False`` removes it (then the module IS :class:`~.sparse_attention.RoutedAttention`).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
import torch.nn as nn

from .routing import GridLike, RegionLayout, is_dense, region_layout, region_pool
from .sparse_attention import RoutedAttention
from .transformer import TransformerBlock

__all__ = [
    "BiLevelSparseAttention",
    "BSABlock",
    "CoarseAttention",
    "CoarseRegionAttention",
    "coarse_region_attention",
    "upsample_regions",
]


class CoarseAttention(NamedTuple):
    """The patch-level attention of one forward: ``values`` ``(B, Nr, C)``, each region's output over all regions;
    ``scores`` ``(B, Nr, Nr)``, the logits summed over heads (= the full-channel scaled region affinity), which choose
    the routing; ``weights`` ``(B, heads, Nr, Nr)``, the softmax each head weighted the regions with."""

    values: torch.Tensor
    scores: torch.Tensor
    weights: torch.Tensor


def coarse_region_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: RegionLayout, num_heads: int
) -> CoarseAttention:
    """Patch-level attention between region means, in fp32 (see :class:`CoarseAttention`)."""
    b, c = q.shape[:2]
    d = c // num_heads
    # region means are float32 (region_pool); autocast off so that the logits and softmax stay so (they choose the
    # routing and weight whole regions)
    q_r, k_r, v_r = (region_pool(t, layout).view(b, -1, num_heads, d).transpose(1, 2) for t in (q, k, v))
    with torch.autocast(device_type=q.device.type, enabled=False):
        logits = torch.matmul(q_r, k_r.transpose(-1, -2)) * d**-0.5  # (B, h, Nr, Nr)
        weights = torch.softmax(logits, dim=-1)
        coarse = torch.matmul(weights, v_r)  # (B, h, Nr, d)
    return CoarseAttention(coarse.transpose(1, 2).reshape(b, -1, c), logits.sum(dim=1), weights)


class CoarseRegionAttention(nn.Module):
    """:func:`coarse_region_attention` as a module of its own (no parameters), so that a forward hook can read the
    region weights it computes anyway (its output is a :class:`CoarseAttention`)."""

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: RegionLayout) -> CoarseAttention:
        return coarse_region_attention(q, k, v, layout, self.num_heads)


def upsample_regions(values: torch.Tensor, layout: RegionLayout) -> torch.Tensor:
    """``(B, Nr, C)`` region values -> ``(B, C, *S)``: every token takes its region's value (padding cropped)."""
    b, _, c = values.shape
    grid = values.transpose(1, 2).reshape(b, c, *layout.grid)
    # one copy: every grid axis followed by a broadcast region axis, then merged (one repeat_interleave per axis
    # would copy the whole map once per axis)
    spread = grid.reshape(b, c, *[n for g in layout.grid for n in (g, 1)])
    x = spread.expand(b, c, *[n for g, r in zip(layout.grid, layout.region) for n in (g, r)]).reshape(
        b, c, *layout.padded
    )
    if layout.is_padded:
        x = x[(slice(None), slice(None)) + tuple(slice(0, s) for s in layout.spatial)]
    return x


class BiLevelSparseAttention(RoutedAttention):
    """BSAM for ``(B, C, *S)`` maps, 2D or 3D (see the module docstring). ``topk <= 0``: dense fine attention."""

    def __init__(
        self,
        channels: int,
        num_heads: int,
        region_size: GridLike,
        topk: int,
        conv_op: type[nn.Module] = nn.Conv3d,
        coarse_branch: bool = True,
        lce_kernel_size: int = 3,
        qkv_bias: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            channels,
            num_heads,
            None,
            topk,
            conv_op,
            lce_kernel_size=lce_kernel_size,
            qkv_bias=qkv_bias,
            backend=backend,
            region_size=region_size,
        )
        shape = (1, channels) + (1,) * self.ndim
        self.gamma = nn.Parameter(torch.zeros(shape)) if coarse_branch else None
        self.coarse = CoarseRegionAttention(num_heads) if coarse_branch else None

    def choose_routing(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: tuple[int, ...], routing: Optional[torch.Tensor]
    ) -> tuple[Optional[torch.Tensor], Any]:
        """The coarse branch's region attention, whose scores also choose each region's receptive field."""
        if self.coarse is None:
            return super().choose_routing(q, k, v, grid, routing)
        layout = region_layout(q.shape[2:], grid)
        coarse, scores, _ = self.coarse(q, k, v, layout)
        if routing is None and not is_dense(self.topk, layout.num_regions):
            routing = self.router(scores.detach(), layout, layout).indices
        return routing, (coarse, layout)

    def combine(self, out: torch.Tensor, context: Any) -> torch.Tensor:
        if context is None or self.gamma is None:
            return out
        coarse, layout = context
        return out + self.gamma * upsample_regions(coarse, layout).to(out.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", coarse_branch={self.gamma is not None}"


class BSABlock(TransformerBlock):
    """BSA-Seg's block: the shared transformer block (``x + DWConv(x)``; ``x + BSAM(LN(x))``; ``x + MLP(LN(x))``)
    with BSAM as its attention, MLP ratio 4 and torch's default initialisation of the projections."""

    attn: BiLevelSparseAttention

    def __init__(
        self,
        channels: int,
        num_heads: int,
        region_size: GridLike,
        topk: int,
        conv_op: type[nn.Module] = nn.Conv3d,
        mlp_ratio: float = 4.0,
        coarse_branch: bool = True,
        lce_kernel_size: int = 3,
    ) -> None:
        attention = BiLevelSparseAttention(
            channels,
            num_heads,
            region_size,
            topk,
            conv_op,
            coarse_branch=coarse_branch,
            lce_kernel_size=lce_kernel_size,
        )
        super().__init__(attention, channels, conv_op, mlp_ratio)
