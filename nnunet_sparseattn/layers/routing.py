"""Region layout, region pooling and top-k routing for routed (bi-level) attention.

These pieces are public so that networks which build their own attention around the routed core (BSA-Seg's
coarse region branch, MDSA-UNet's multi-scale keys) reuse the same regions and the same routing.

Regions. ``grid`` gives the number of regions per spatial axis. The region size on axis ``a`` is
``R_a = ceil(S_a / G_a)`` and the input is padded at the end of each axis to ``G_a * R_a``. The grid is
*clamped* so that no region is made only of padding: first ``G_a <= S_a``, then ``G_a = ceil(S_a / R_a)``
(e.g. 5 tokens on 4 regions gives regions of 2 tokens and a grid of 3, not a fourth empty region). Every
region therefore holds at least one real token, so every query has at least one real key to attend to.
Region index order is row-major over the grid (last axis fastest); token order inside a region likewise.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .precision import at_least_float32
from .shapes import ceil_div, pad_end, partition, per_axis, shape_constant, unpartition

GridLike = Union[int, Sequence[int]]

__all__ = [
    "RegionLayout",
    "Router",
    "Routing",
    "as_grid",
    "region_layout",
    "to_regions",
    "from_regions",
    "region_pool",
    "region_affinity",
    "route",
    "clamp_topk",
    "is_dense",
    "grid_for_region_size",
]


@dataclass(frozen=True)
class RegionLayout:
    """How a spatial shape is cut into regions (after clamping the requested grid)."""

    spatial: tuple[int, ...]  # S: the real spatial shape
    grid: tuple[int, ...]  # G: regions per axis, clamped
    region: tuple[int, ...]  # R: tokens per region per axis
    padded: tuple[int, ...]  # G * R

    @property
    def num_regions(self) -> int:
        return math.prod(self.grid)

    @property
    def region_tokens(self) -> int:
        return math.prod(self.region)

    @property
    def is_padded(self) -> bool:
        return self.padded != self.spatial

    def token_valid(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Bool ``(Nr, r)``: True for real tokens, False for padding, in region-major order (built once per device)."""

        def build() -> torch.Tensor:
            ones = torch.ones((1, 1, *self.spatial), dtype=torch.bool, device=device)
            return to_regions(ones, self, 1)[0, 0, :, :, 0]

        return shape_constant("token_valid", (self.spatial, self.grid), torch.device(device or "cpu"), build)

    def region_counts(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Float ``(Nr,)``: number of real tokens in each region (always >= 1; built once per device)."""

        def build() -> torch.Tensor:
            per_axis_counts = []
            for s, g, r in zip(self.spatial, self.grid, self.region):
                c = torch.full((g,), float(r), device=device)
                c[-1] = s - (g - 1) * r
                per_axis_counts.append(c)
            counts = per_axis_counts[0]
            for c in per_axis_counts[1:]:
                counts = (counts[:, None] * c[None, :]).reshape(-1)
            return counts

        return shape_constant("region_counts", (self.spatial, self.grid), torch.device(device or "cpu"), build)


def as_grid(grid: GridLike, ndim: int) -> tuple[int, ...]:
    """Regions per axis (or tokens per region per axis) as ``ndim`` ints >= 1 (ValueError)."""
    return per_axis(grid, ndim, "grid")


@functools.lru_cache(maxsize=1024)
def _layout(spatial: tuple[int, ...], grid: tuple[int, ...]) -> RegionLayout:
    region = tuple(math.ceil(s / min(g, s)) for s, g in zip(spatial, grid))
    clamped = ceil_div(spatial, region)
    return RegionLayout(spatial, clamped, region, tuple(g * r for g, r in zip(clamped, region)))


def region_layout(spatial_shape: Sequence[int], grid: GridLike) -> RegionLayout:
    """Cut ``spatial_shape`` into at most ``grid`` regions per axis (see the module docstring for clamping)."""
    spatial = tuple(int(s) for s in spatial_shape)
    if len(spatial) == 0 or any(s < 1 for s in spatial):
        raise ValueError(f"spatial shape must have >= 1 axis, each >= 1, got {spatial}")
    return _layout(spatial, as_grid(grid, len(spatial)))  # one layout object per shape: no per-forward bookkeeping


def grid_for_region_size(spatial_shape: Sequence[int], region_size: GridLike) -> tuple[int, ...]:
    """The grid that cuts ``spatial_shape`` into regions of (at most) ``region_size`` tokens per axis."""
    spatial = tuple(int(s) for s in spatial_shape)
    return ceil_div(spatial, per_axis(region_size, len(spatial), "region_size"))


def to_regions(x: torch.Tensor, layout: RegionLayout, num_heads: int = 1) -> torch.Tensor:
    """``(B, C, *S)`` -> ``(B, heads, Nr, r, C // heads)``, zero-padded, region-major."""
    b, c = x.shape[:2]
    if tuple(x.shape[2:]) != layout.spatial:
        raise ValueError(f"input spatial shape {tuple(x.shape[2:])} does not match layout {layout.spatial}")
    d = c // num_heads
    x = pad_end(x, layout.padded).reshape(b, num_heads, d, *layout.padded)
    regions = partition(x, layout.region, start=3).movedim(2, -1)  # (B, h, G.., R.., d): a view
    return regions.reshape(b, num_heads, layout.num_regions, layout.region_tokens, d)


def from_regions(y: torch.Tensor, layout: RegionLayout) -> torch.Tensor:
    """Inverse of :func:`to_regions`: ``(B, heads, Nr, r, d)`` -> ``(B, heads * d, *S)`` (padding cropped)."""
    b, h, _, _, d = y.shape
    n = len(layout.spatial)
    y = unpartition(y.reshape(b, h, *layout.grid, *layout.region, d), n, start=2).movedim(-1, 2)
    y = y.reshape(b, h * d, *layout.padded)
    if layout.is_padded:
        y = y[(slice(None), slice(None)) + tuple(slice(0, s) for s in layout.spatial)]
    return y


_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def region_pool(x: torch.Tensor, grid: GridLike | RegionLayout) -> torch.Tensor:
    """Mean of ``x`` ``(B, C, *S)`` over each region's REAL tokens, in float32: ``(B, Nr, C)``.

    Padding is excluded from the mean (zero-padding would pull border regions towards 0).
    Runs with autocast disabled so that routing never sees fp16/bf16 rounding.
    """
    layout = grid if isinstance(grid, RegionLayout) else region_layout(x.shape[2:], grid)
    n = len(layout.spatial)
    if n not in _AVG_POOL:
        raise ValueError(f"region_pool supports 1 to 3 spatial dims, got {n}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        xf = pad_end(at_least_float32(x), layout.padded)
        pooled = _AVG_POOL[n](xf, kernel_size=layout.region, stride=layout.region)  # mean incl. zeros
        pooled = pooled.flatten(2).transpose(1, 2)  # (B, Nr, C)
        if layout.is_padded:
            counts = layout.region_counts(x.device)
            pooled = pooled * (layout.region_tokens / counts)[None, :, None]
    return pooled


def region_affinity(q_regions: torch.Tensor, k_regions: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Region-to-region affinity ``scale * q_r @ k_r^T`` in float32: ``(B, Nq, C) x (B, Nk, C) -> (B, Nq, Nk)``."""
    if q_regions.shape[-1] != k_regions.shape[-1]:
        raise ValueError(f"channel mismatch: q regions {q_regions.shape}, k regions {k_regions.shape}")
    if scale is None:
        scale = q_regions.shape[-1] ** -0.5
    with torch.autocast(device_type=q_regions.device.type, enabled=False):
        return torch.matmul(at_least_float32(q_regions) * scale, at_least_float32(k_regions).transpose(-1, -2))


def is_dense(topk: int, num_kv_regions: int) -> bool:
    """Whether ``topk`` keeps every one of ``num_kv_regions`` key regions (``topk <= 0`` or ``>= num_kv_regions``):
    dense attention, nothing to route. The one place that decides it."""
    return topk <= 0 or topk >= num_kv_regions


def clamp_topk(topk: int, num_kv_regions: int) -> int:
    """The number of key regions ``topk`` keeps: every region when :func:`is_dense`."""
    return num_kv_regions if is_dense(topk, num_kv_regions) else int(topk)


def route(affinity: torch.Tensor, topk: int) -> torch.Tensor:
    """Top-k key regions per query region: ``(B, Nq, Nk)`` -> long ``(B, Nq, k)``, indices ascending.

    ``k`` is clamped (``topk <= 0`` or ``>= Nk`` selects all). Deterministic ties: among key regions whose
    affinity equals the k-th largest, the lowest indices are kept (``torch.topk`` alone leaves the tie order
    unspecified). The selected indices are returned in ascending order (a set; ascending order also keeps the
    gathers memory-local). NaN affinities rank last. Not differentiable (indices only); compile-friendly.
    """
    if affinity.dim() != 3:
        raise ValueError(f"affinity must be (B, Nq, Nk), got shape {tuple(affinity.shape)}")
    nk = affinity.shape[-1]
    k = clamp_topk(topk, nk)
    with torch.autocast(device_type=affinity.device.type, enabled=False):
        a = torch.nan_to_num(at_least_float32(affinity.detach()), nan=float("-inf"))
        if k == nk:
            return torch.arange(nk, device=a.device).expand(*a.shape[:-1], nk).contiguous()
        kth = torch.topk(a, k, dim=-1).values[..., -1:]  # the k-th largest value is tie-independent
        above, tied = a > kth, a == kth
        need = k - above.sum(-1, keepdim=True)
        selected = above | (tied & (torch.cumsum(tied, dim=-1) <= need))  # exactly k per row
        # distinct scores: selected rank above unselected, lower index first; topk then returns them in order
        pos = torch.arange(nk, device=a.device, dtype=a.dtype)
        score = selected.to(a.dtype) * (2 * nk) - pos
        return torch.topk(score, k, dim=-1).indices


class Routing(NamedTuple):
    """What a router decided for one forward: per query region, the key regions its tokens attend to.

    ``indices`` long ``(B, Nq, k)`` (ascending); ``affinity`` float32 ``(B, Nq, Nk)``, the region affinities the choice
    was made from; ``query_layout`` and ``key_layout`` say which tokens form each region.
    """

    indices: torch.Tensor
    affinity: torch.Tensor
    query_layout: RegionLayout
    key_layout: RegionLayout

    def weights(self) -> torch.Tensor:
        """Routing weights: the softmax of the region affinities over the key regions, ``(B, Nq, Nk)``."""
        return torch.softmax(at_least_float32(self.affinity), dim=-1)


class Router(nn.Module):
    """Top-k routing of query regions to key regions, as a module of its own so that a forward hook can record
    every decision (``register_forward_hook``: the output is a :class:`Routing`). No parameters; costs one top-k."""

    def __init__(self, topk: int) -> None:
        super().__init__()
        self.topk = topk

    @property
    def topk(self) -> int:
        return self._topk

    @topk.setter
    def topk(self, value: int) -> None:
        # one form from the plans to here: an integer, never rounded (1.5 is refused, not made top-1)
        if not (isinstance(value, int) and not isinstance(value, bool)):
            raise ValueError(f"topk={value!r}: must be an integer (key regions per query region; <= 0: all)")
        self._topk = int(value)

    def forward(self, affinity: torch.Tensor, query_layout: RegionLayout, key_layout: RegionLayout) -> Routing:
        return Routing(route(affinity, self.topk), affinity, query_layout, key_layout)

    def extra_repr(self) -> str:
        return f"topk={self.topk}"
