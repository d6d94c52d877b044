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

import math
from dataclasses import dataclass
from typing import Sequence, Union

import torch
import torch.nn.functional as F

GridLike = Union[int, Sequence[int]]

__all__ = [
    "RegionLayout",
    "region_layout",
    "to_regions",
    "from_regions",
    "region_pool",
    "region_affinity",
    "route",
    "clamp_topk",
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
        """Bool ``(Nr, r)``: True for real tokens, False for padding, in region-major order."""
        ones = torch.ones((1, 1, *self.spatial), dtype=torch.bool, device=device)
        return to_regions(ones, self, 1)[0, 0, :, :, 0]

    def region_counts(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Float ``(Nr,)``: number of real tokens in each region (always >= 1)."""
        per_axis = []
        for s, g, r in zip(self.spatial, self.grid, self.region):
            c = torch.full((g,), float(r), device=device)
            c[-1] = s - (g - 1) * r
            per_axis.append(c)
        counts = per_axis[0]
        for c in per_axis[1:]:
            counts = (counts[:, None] * c[None, :]).reshape(-1)
        return counts


def _as_grid(grid: GridLike, ndim: int) -> tuple[int, ...]:
    if isinstance(grid, int):
        g = (grid,) * ndim
    else:
        g = tuple(int(x) for x in grid)
        if len(g) != ndim:
            raise ValueError(f"grid {tuple(grid)} has {len(g)} entries but the input has {ndim} spatial dims")
    if any(x < 1 for x in g):
        raise ValueError(f"grid entries must be >= 1, got {g}")
    return g


def region_layout(spatial_shape: Sequence[int], grid: GridLike) -> RegionLayout:
    """Cut ``spatial_shape`` into at most ``grid`` regions per axis (see the module docstring for clamping)."""
    spatial = tuple(int(s) for s in spatial_shape)
    if len(spatial) == 0 or any(s < 1 for s in spatial):
        raise ValueError(f"spatial shape must have >= 1 axis, each >= 1, got {spatial}")
    g_req = _as_grid(grid, len(spatial))
    region = tuple(math.ceil(s / min(g, s)) for s, g in zip(spatial, g_req))
    g_eff = tuple(math.ceil(s / r) for s, r in zip(spatial, region))
    padded = tuple(g * r for g, r in zip(g_eff, region))
    return RegionLayout(spatial, g_eff, region, padded)


def grid_for_region_size(spatial_shape: Sequence[int], region_size: GridLike) -> tuple[int, ...]:
    """The grid that cuts ``spatial_shape`` into regions of (at most) ``region_size`` tokens per axis."""
    spatial = tuple(int(s) for s in spatial_shape)
    region = _as_grid(region_size, len(spatial))
    if any(r < 1 for r in region):
        raise ValueError(f"region_size must be >= 1 per axis, got {region}")
    return tuple(math.ceil(s / r) for s, r in zip(spatial, region))


def to_regions(x: torch.Tensor, layout: RegionLayout, num_heads: int = 1) -> torch.Tensor:
    """``(B, C, *S)`` -> ``(B, heads, Nr, r, C // heads)``, zero-padded, region-major."""
    b, c = x.shape[:2]
    n = len(layout.spatial)
    if tuple(x.shape[2:]) != layout.spatial:
        raise ValueError(f"input spatial shape {tuple(x.shape[2:])} does not match layout {layout.spatial}")
    if layout.is_padded:
        pad = []
        for s, p in zip(reversed(layout.spatial), reversed(layout.padded)):
            pad += [0, p - s]
        x = F.pad(x, pad)
    d = c // num_heads
    shape = [b, num_heads, d]
    for g, r in zip(layout.grid, layout.region):
        shape += [g, r]
    x = x.reshape(shape)
    # dims: 0 b, 1 h, 2 d, then (g_i, r_i) pairs at 3 + 2i, 4 + 2i
    perm = [0, 1] + [3 + 2 * i for i in range(n)] + [4 + 2 * i for i in range(n)] + [2]
    return x.permute(perm).reshape(b, num_heads, layout.num_regions, layout.region_tokens, d)


def from_regions(y: torch.Tensor, layout: RegionLayout) -> torch.Tensor:
    """Inverse of :func:`to_regions`: ``(B, heads, Nr, r, d)`` -> ``(B, heads * d, *S)`` (padding cropped)."""
    b, h, _, _, d = y.shape
    n = len(layout.spatial)
    y = y.reshape(b, h, *layout.grid, *layout.region, d)
    # dims: 0 b, 1 h, 2..2+n grid, 2+n..2+2n region, 2+2n d
    perm = [0, 1, 2 + 2 * n]
    for i in range(n):
        perm += [2 + i, 2 + n + i]
    y = y.permute(perm).reshape(b, h * d, *layout.padded)
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
        xf = x.float()
        if layout.is_padded:
            pad = []
            for s, p in zip(reversed(layout.spatial), reversed(layout.padded)):
                pad += [0, p - s]
            xf = F.pad(xf, pad)
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
        return torch.matmul(q_regions.float() * scale, k_regions.float().transpose(-1, -2))


def clamp_topk(topk: int, num_kv_regions: int) -> int:
    """``topk <= 0`` or ``>= num_kv_regions`` means every region."""
    return num_kv_regions if topk <= 0 or topk >= num_kv_regions else int(topk)


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
        a = torch.nan_to_num(affinity.detach().float(), nan=float("-inf"))
        if k == nk:
            return torch.arange(nk, device=a.device).expand(*a.shape[:-1], nk).contiguous()
        kth = torch.topk(a, k, dim=-1).values[..., -1:]  # the k-th largest value is tie-independent
        above, tied = a > kth, a == kth
        need = k - above.sum(-1, keepdim=True)
        selected = above | (tied & (torch.cumsum(tied, dim=-1) <= need))  # exactly k per row
        # distinct scores: selected rank above unselected, lower index first; topk then returns them in order
        pos = torch.arange(nk, device=a.device, dtype=torch.float32)
        score = selected.float() * (2 * nk) - pos
        return torch.topk(score, k, dim=-1).indices
