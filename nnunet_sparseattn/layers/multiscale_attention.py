"""MDSA: multi-scale dynamic sparse attention (MDSA-UNet, JBHI 2025), and the transformer block built on it.

Our reading of the abstract (Li et al., JBHI 2025): "multi-scale aggregation is first applied to the feature maps ...
then, for each query, irrelevant key-value pairs are filtered out at a coarse-grained level ... finally,
fine-grained self-attention is performed on the remaining key-value pairs"::

    q    = Wq x                                     queries from the features
    a    = LN(aggregate(x))                         multi-scale aggregation (two readings, below)
    k, v = Wkv a                                    keys and values from the aggregated map
    out  = Wo( routed_attention(q, k, v) + LCE(v) ) coarse: top-k key regions per query region (fp32 routing)
                                                    fine: token attention inside them (layers.sparse_attention)

Aggregation readings (``aggregation=``):

- ``"dwconv"`` (default): ``a = x + sum_k DWConv_k(x)`` with kernels ``scales`` (3, 5, 7): every key/value mixes
  several neighbourhood sizes; keys and values keep the query map's size.
- ``"pool"``: pooled keys at several ratios, ``a = sum_r resize(DWConv3(avgpool_r(x)))`` on the grid of the
  smallest ratio (``ceil(S / min(r))`` per axis): keys/values are a smaller map than the queries (cheaper
  attention), and each of them summarises several scales.

``LCE`` is BiFormer's local context enhancement, a depthwise convolution on ``v`` (upsampled, nearest, to the
query map in the pooled reading). Regions: ``grid`` regions per axis (clamped to the map, see
:mod:`.routing`), or ``None`` for :func:`auto_grid` (regions of about ``REGION_SIDE`` tokens per axis, chosen
from the map's shape at run time). ``topk <= 0`` or ``>=`` the number of key regions: dense attention (SDPA).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Protocol, Sequence, cast

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .conv import conv_dims, grouped_conv_op
from .routing import GridLike, as_grid, is_dense, region_layout
from .sparse_attention import RegionAttention, local_context
from .transformer import ChannelLayerNorm, TransformerBlock, num_heads_for

__all__ = [
    "AGGREGATIONS",
    "ChannelLayerNorm",
    "MDSABlock",
    "MultiScaleAggregation",
    "MultiScaleDynamicSparseAttention",
    "REGION_SIDE",
    "auto_grid",
    "default_scales",
    "num_heads_for",
]

AGGREGATIONS = ("dwconv", "pool")
# Target region side (tokens per axis) of auto_grid: 64-token regions in 2D and 3D alike, so the fine attention
# costs top-k x 64 keys per query whatever the stage's size.
REGION_SIDE = {1: 64, 2: 8, 3: 4}


def default_scales(aggregation: str) -> tuple[int, ...]:
    """Kernels (``"dwconv"``) or pooling ratios (``"pool"``) used when none are given."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    return (3, 5, 7) if aggregation == "dwconv" else (2, 4)


def auto_grid(spatial: Sequence[int], region_side: Optional[int] = None) -> tuple[int, ...]:
    """Regions per axis for a map of shape ``spatial``: ``ceil(S_a / side)`` (the routing layout clamps it)."""
    side = REGION_SIDE.get(len(spatial), 4) if region_side is None else int(region_side)
    return tuple(max(1, -(-int(s) // side)) for s in spatial)


class _DepthwiseConv(Protocol):
    """What the ``dwconv`` aggregation uses of its depthwise branches (``nn.Conv2d/3d`` with a bias)."""

    weight: torch.Tensor
    bias: torch.Tensor

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor: ...


class MultiScaleAggregation(nn.Module):
    """The map keys and values are projected from (both readings in the module docstring), then LayerNorm."""

    def __init__(
        self,
        channels: int,
        conv_op: type[nn.Module] = nn.Conv3d,
        aggregation: str = "dwconv",
        scales: Optional[Sequence[int]] = None,
    ) -> None:
        super().__init__()
        self.ndim = conv_dims(conv_op)
        self.aggregation = aggregation
        self.scales = tuple(int(s) for s in (default_scales(aggregation) if scales is None else scales))
        if not self.scales:
            raise ValueError("multi-scale aggregation needs at least one scale")
        if aggregation == "dwconv":
            if any(k < 1 or k % 2 == 0 for k in self.scales):
                raise ValueError(f"dwconv aggregation kernels must be odd and >= 1, got {self.scales}")
            dw = grouped_conv_op(conv_op)
            self.branches = nn.ModuleList(
                dw(channels, channels, k, padding=k // 2, groups=channels) for k in self.scales
            )
        else:
            if any(r < 1 for r in self.scales):
                raise ValueError(f"pooling ratios must be >= 1, got {self.scales}")
            dw = grouped_conv_op(conv_op)
            self.branches = nn.ModuleList(dw(channels, channels, 3, padding=1, groups=channels) for _ in self.scales)
        self.norm = ChannelLayerNorm(channels)

    def output_size(self, spatial: Sequence[int]) -> tuple[int, ...]:
        if self.aggregation == "dwconv":
            return tuple(int(s) for s in spatial)
        return _pooled_size(spatial, min(self.scales))

    def _depthwise(self) -> list[_DepthwiseConv]:
        """The branches of ``dwconv`` aggregation, typed for what this module uses of them."""
        return [cast(_DepthwiseConv, branch) for branch in self.branches]

    def dwconv_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``x + sum_k DWConv_k(x)`` as ONE depthwise convolution (it is linear): the identity plus every branch's
        kernel zero-padded to the largest, and the biases summed. One pass over the map instead of one per scale
        (1.4x fewer multiply-adds for kernels 3, 5, 7); the branches keep their own parameters and gradients."""
        largest = max(self.scales)
        weight = None
        for k, branch in zip(self.scales, self._depthwise()):
            padded = F.pad(branch.weight, [(largest - k) // 2] * (2 * self.ndim))
            weight = padded if weight is None else weight + padded
        assert weight is not None
        # the identity (x + ...) is a 1 at the kernel's centre, added in place to the summed kernel (an intermediate)
        # rather than built as a kernel of zeros in every forward
        centre = (slice(None), slice(None)) + (largest // 2,) * self.ndim
        weight[centre] += 1.0
        bias = torch.stack([branch.bias for branch in self._depthwise()]).sum(0)
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.aggregation == "dwconv":
            weight, bias = self.dwconv_kernel()
            # the largest branch's convolution (its padding, groups and CPU layout) with the summed kernel
            largest = self._depthwise()[self.scales.index(max(self.scales))]
            a = largest._conv_forward(x, weight, bias)
        else:
            size = self.output_size(x.shape[2:])
            a = None
            for ratio, branch in zip(self.scales, self.branches):
                # adaptive pooling: any size, odd ones included; each coarse map is brought to the finest grid
                y = branch(_adaptive_avg_pool(x, _pooled_size(x.shape[2:], ratio)))
                if tuple(y.shape[2:]) != size:
                    y = F.interpolate(y, size=size, mode="nearest")
                a = y if a is None else a + y
        return self.norm(a)


_ADAPTIVE_AVG: dict[int, Callable[..., torch.Tensor]] = {
    1: F.adaptive_avg_pool1d,
    2: F.adaptive_avg_pool2d,
    3: F.adaptive_avg_pool3d,
}


def _pooled_size(spatial: Sequence[int], ratio: int) -> tuple[int, ...]:
    return tuple(max(1, -(-int(s) // ratio)) for s in spatial)


def _adaptive_avg_pool(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return _ADAPTIVE_AVG[x.dim() - 2](x, tuple(size))


class MultiScaleDynamicSparseAttention(RegionAttention):
    """MDSA on ``(B, C, *S)`` maps, 2D or 3D (formula and readings in the module docstring).

    Args:
        channels, num_heads: ``num_heads`` divides ``channels``.
        conv_op: ``nn.Conv2d`` / ``nn.Conv3d`` (the projections are 1x1 convolutions).
        grid: regions per axis (int or tuple), or ``None``: :func:`auto_grid` of each input's shape.
        topk: key regions kept per query region (coarse filtering); ``<= 0``: all (dense attention).
        aggregation, scales: multi-scale aggregation reading and its kernels / pooling ratios.
        lce_kernel_size: depthwise kernel of the local context enhancement on ``v`` (0: off).
        detach_routing: route on detached q/k (BiFormer; the top-k choice is not differentiable anyway).
        backend: routed-attention backend (``"auto"``: flex on CUDA, gather on the CPU; see sparse_attention).
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        conv_op: type[nn.Module] = nn.Conv3d,
        grid: Optional[GridLike] = None,
        topk: int = 8,
        aggregation: str = "dwconv",
        scales: Optional[Sequence[int]] = None,
        lce_kernel_size: int = 3,
        detach_routing: bool = True,
        qkv_bias: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__(channels, num_heads, topk, conv_op, lce_kernel_size, detach_routing, backend)
        self.grid = None if grid is None else as_grid(grid, self.ndim)
        self.q = conv_op(channels, channels, 1, bias=qkv_bias)
        self.aggregate = MultiScaleAggregation(channels, conv_op, aggregation, scales)
        self.kv = conv_op(channels, 2 * channels, 1, bias=qkv_bias)
        self.lce = local_context(channels, conv_op, lce_kernel_size)
        self.proj = conv_op(channels, channels, 1)

    def grid_for(self, spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """The (unclamped) region grid used for a query map of shape ``spatial_shape``."""
        return self.grid if self.grid is not None else auto_grid(spatial_shape)

    regions = grid_for  # the name explain and the tests read

    def is_dense(self, spatial: Sequence[int]) -> bool:
        """True when the top-k keeps every key region for this query map shape (dense attention)."""
        kv = self.aggregate.output_size(spatial)
        return is_dense(self.topk, region_layout(kv, self.regions(spatial)).num_regions)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries from ``x``; keys and values from its multi-scale aggregation."""
        q = self.q(x)
        k, v = self.kv(self.aggregate(x)).chunk(2, dim=1)
        return q, k, v

    def local_values(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # the pooled reading's v is a smaller map: nearest upsampling to the queries' grid
        return v if v.shape[2:] == x.shape[2:] else F.interpolate(v, size=x.shape[2:], mode="nearest")

    def projections(self) -> tuple[nn.Module, ...]:
        """The linear maps of the attention (what a transformer initialisation resets)."""
        return (self.q, self.kv, self.proj)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, num_heads={self.num_heads}, grid={self.grid or 'auto'}, "
            f"topk={self.topk}, backend={self.backend!r}"
        )


class MDSABlock(TransformerBlock):
    """MDSA-UNet's block: the shared transformer block (``x + DWConv3(x)``; ``x + MDSA(LN(x))``; ``x + MLP(LN(x))``)
    with MDSA as its attention, BiFormer's MLP ratio 3 and the transformer initialisation (truncated normal, std
    0.02, after nnU-Net's He init). ``(B, C, *S) -> (B, C, *S)``, any spatial shape. Remaining arguments:
    :class:`MultiScaleDynamicSparseAttention`."""

    attn: MultiScaleDynamicSparseAttention

    def __init__(
        self,
        channels: int,
        num_heads: int,
        conv_op: type[nn.Module] = nn.Conv3d,
        grid: Optional[GridLike] = None,
        topk: int = 8,
        aggregation: str = "dwconv",
        scales: Optional[Sequence[int]] = None,
        mlp_ratio: float = 3.0,
        lce_kernel_size: int = 3,
        positional_kernel_size: int = 3,
        backend: str = "auto",
    ) -> None:
        attention = MultiScaleDynamicSparseAttention(
            channels, num_heads, conv_op, grid, topk, aggregation, scales, lce_kernel_size, backend=backend
        )
        super().__init__(attention, channels, conv_op, mlp_ratio, positional_kernel_size, transformer_init=True)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Stored activations in nnU-Net's units (one map per layer output; attention as flex's, no K/V copies).

        Per block at ``C`` channels and ``N`` tokens: positional conv, 2 norms, q, aggregation (one per scale +
        its norm), k and v, attention, LCE, projection, MLP hidden (x2: before and after GELU), MLP output.
        """
        n = math.prod(int(s) for s in input_size)
        agg = self.attn.aggregate
        nk = math.prod(agg.output_size(input_size))
        hidden = self.mlp.hidden
        token_maps = 1 + 2 + 1 + 1 + 1 + 1 + 1  # pos, norms, q, attention, lce, proj, mlp out
        kv_maps = len(agg.scales) + 1 + 2  # aggregation branches, its norm, k and v
        return np.int64(self.channels * (token_maps * n + kv_maps * nk) + 2 * hidden * n)
