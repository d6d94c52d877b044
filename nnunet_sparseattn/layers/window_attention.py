"""n-dimensional Swin Transformer block: window attention with relative position bias and shifted windows.

Swin (Liu et al., ICCV 2021) for 2D and 3D feature maps of any shape. Three departures from the 2D original, all
needed for nnU-Net's stage shapes (e.g. 5 x 7 x 5 at a bottleneck):

- windows are fitted to the stage shape (``fit_window``): per axis the fewest windows of at most ``window`` tokens,
  made as even as possible, so a 10-token axis gets two windows of 5 rather than one padded window of 7;
- the map is padded to whole windows and padded keys are MASKED (Swin's segmentation code pads with zeros and lets
  them be attended);
- an axis that fits in one window is not shifted (as Swin does when the resolution equals the window).

The parameter names (``norm1``, ``attn.qkv``, ``attn.proj``, ``attn.relative_position_bias_table``, ``norm2``,
``mlp.fc1``, ``mlp.fc2``) and the bias table layout (``prod(2 w - 1)`` rows, row-major over the axes' offsets) are
timm's, so a timm Swin checkpoint maps onto these blocks (``architectures/swin_weights.py``).

Attention runs through ``scaled_dot_product_attention`` with one additive mask (relative bias + -inf where a key
is padding or on the other side of a shifted window's wrap): softmax in the kernel's own accumulation precision,
safe under fp16 autocast.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.regularization import DropPath

from .mlp import Mlp
from .precision import at_least_float32
from .shapes import ceil_div, pad_end, partition, per_axis, shape_constant, unpartition
from .transformer import LayerNorm32

__all__ = [
    "SwinBlock",
    "WindowAttention",
    "WindowWeights",
    "fit_window",
    "locate_in_windows",
    "relative_position_index",
    "window_attention_mask",
    "window_partition",
    "window_reverse",
    "window_token_positions",
]


def fit_window(shape: Sequence[int], window: int | Sequence[int]) -> tuple[int, ...]:
    """The window (tokens per axis) used on a map of ``shape``: the fewest windows of at most ``window`` per axis,
    as even as possible (``n = ceil(S / w)``, then ``w = ceil(S / n)``), so padding stays below one token per
    window."""
    shape = per_axis(shape, len(shape), "shape")
    window = per_axis(window, len(shape), "window")
    return ceil_div(shape, ceil_div(shape, window))


def relative_position_index(window: Sequence[int]) -> torch.Tensor:
    """(N, N) index into a bias table of ``prod(2 w - 1)`` rows, N = prod(w): row-major over the per-axis offsets
    ``d_a + w_a - 1`` (timm's layout in 2D)."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")).flatten(1)  # (n, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (n, N, N)
    index = torch.zeros(rel.shape[1:], dtype=torch.long)
    for axis, w in enumerate(window):
        index = index * (2 * w - 1) + rel[axis] + (w - 1)
    return index


def window_partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """(B, *S, C) with S divisible by ``window`` -> (B, nW, N, C), windows in row-major order."""
    b, c = x.shape[0], x.shape[-1]
    return partition(x, window, start=1).reshape(b, -1, math.prod(window), c)


def window_reverse(windows: torch.Tensor, window: Sequence[int], spatial: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B, nW, N, C) -> (B, *spatial, C)."""
    b, c = windows.shape[0], windows.shape[-1]
    grid = [s // w for s, w in zip(spatial, window)]
    x = unpartition(windows.reshape(b, *grid, *window, c), len(window), start=1)
    return x.reshape(b, *spatial, c)


def window_attention_mask(
    shape: Sequence[int],
    padded: Sequence[int],
    window: Sequence[int],
    shift: Sequence[int],
    device: Optional[torch.device] = None,
    additive: bool = False,
) -> torch.Tensor:
    """Which keys each query may attend to, per window: bool (nW, N, N), True = allowed; ``additive``: the same as
    the float32 mask SDPA adds, 0 where allowed and -inf elsewhere (each forward adds it to the relative position bias
    instead of negating and filling). Built once per shape, device and kind (:func:`~.shapes.shape_constant`).

    The map (``shape``, padded at the end to ``padded``) has been rolled by ``-shift``. Within a window, two tokens
    may attend to each other when they lie on the same side of the roll's wrap along every axis (Swin's shifted
    window mask) and the key is not padding. A token may always attend to itself, so no row is empty (only padded
    queries can lose every other key, and their outputs are cropped away).
    """
    key = (tuple(shape), tuple(padded), tuple(window), tuple(shift))
    where = torch.device(device or "cpu")
    if additive:

        def bias() -> torch.Tensor:
            allowed = window_attention_mask(shape, padded, window, shift, device)
            return torch.zeros(allowed.shape, device=device).masked_fill(~allowed, float("-inf"))

        return shape_constant("swin_mask_bias", key, where, bias)
    return shape_constant("swin_mask", key, where, lambda: _build_window_mask(shape, padded, window, shift, device))


def _build_window_mask(
    shape: Sequence[int],
    padded: Sequence[int],
    window: Sequence[int],
    shift: Sequence[int],
    device: Optional[torch.device],
) -> torch.Tensor:
    groups = torch.zeros(padded, dtype=torch.long, device=device)
    valid = torch.ones(padded, dtype=torch.bool, device=device)
    for axis, (s, p, sh) in enumerate(zip(shape, padded, shift)):
        pos = torch.arange(p, device=device)
        view = [1] * len(padded)
        view[axis] = p
        original = (pos + sh) % p  # the token at rolled position i came from (i + shift) mod padded
        wrapped = (pos >= p - sh) if sh > 0 else torch.zeros(p, dtype=torch.bool, device=device)
        groups = groups + (wrapped.long() << axis).view(view)
        valid = valid & (original < s).view(view)
    g = window_partition(groups[None, ..., None], window)[0, :, :, 0]  # (nW, N)
    v = window_partition(valid[None, ..., None], window)[0, :, :, 0]
    allowed = (g[:, :, None] == g[:, None, :]) & v[:, None, :]
    eye = torch.eye(g.shape[1], dtype=torch.bool, device=device)
    return allowed | eye


def locate_in_windows(
    position: Sequence[int], spatial: Sequence[int], window: Sequence[int], shift: Sequence[int]
) -> tuple[int, int]:
    """Where the token at ``position`` of a map of ``spatial`` tokens is attended: ``(window, token)``, the window's
    index in :func:`window_partition`'s order and the token's index inside it, after the block's end padding and its
    roll by ``-shift`` (:meth:`SwinBlock.shifts`)."""
    padded = [-(-s // w) * w for s, w in zip(spatial, window)]
    if any(not 0 <= p < s for p, s in zip(position, spatial)):
        raise ValueError(f"position {tuple(position)} lies outside the map {tuple(spatial)}")
    rolled = [(p - sh) % pad for p, sh, pad in zip(position, shift, padded)]
    index, token = 0, 0
    for r, w, pad in zip(rolled, window, padded):
        index, token = index * (pad // w) + r // w, token * w + r % w
    return index, token


def window_token_positions(
    index: int, spatial: Sequence[int], window: Sequence[int], shift: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`locate_in_windows` for a whole window: the map position of each of its ``N`` tokens, long
    ``(N, ndim)`` in token order, and bool ``(N,)``, False where the token is padding (its position is then outside
    the map)."""
    padded = [-(-s // w) * w for s, w in zip(spatial, window)]
    grid = [pad // w for pad, w in zip(padded, window)]
    corner = []
    for g, w in zip(reversed(grid), reversed(window)):
        corner.append((index % g) * w)
        index //= g
    offsets = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")).flatten(1).T
    rolled = torch.tensor(corner[::-1]) + offsets
    positions = (rolled + torch.tensor(list(shift))) % torch.tensor(padded)
    return positions, (positions < torch.tensor(list(spatial))).all(dim=1)


class WindowWeights(nn.Module):
    """Explicit attention weights of chosen windows, for explanations (no parameters).

    The attention itself runs fused (``scaled_dot_product_attention``), which never forms the weights. While
    ``windows`` names window indices (set by an explaining caller, e.g. from a forward pre-hook), the attention also
    calls this module on those windows, so a forward hook on it reads their weights; while it is None (always, unless
    someone explains) nothing is computed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.windows: Optional[tuple[int, ...]] = None

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, mask_bias: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """``q``, ``k`` ``(B, nW, heads, N, d)``, ``bias`` ``(heads, N, N)``, ``mask_bias`` ``(nW, N, N)`` (0 or -inf,
        as :class:`WindowAttention` takes it) or None ->
        float32 ``(B, len(windows), heads, N, N)``: softmax over the keys, as the fused attention weights them."""
        assert self.windows is not None, "set the windows to explain first"
        index = torch.tensor(self.windows, device=q.device)
        qs, ks = at_least_float32(q.index_select(1, index)), at_least_float32(k.index_select(1, index))
        logits = torch.matmul(qs, ks.transpose(-1, -2)) * q.shape[-1] ** -0.5 + at_least_float32(bias)
        if mask_bias is not None:
            logits = logits + mask_bias.index_select(0, index)[None, :, None]
        return torch.softmax(logits, dim=-1)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows of ``window`` tokens with a learned relative position bias."""

    relative_position_index: torch.Tensor  # a buffer

    def __init__(self, dim: int, num_heads: int, window: Sequence[int], qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.dim, self.num_heads, self.window = dim, num_heads, tuple(int(w) for w in window)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros(math.prod(2 * w - 1 for w in self.window), num_heads)
        )
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # derived from the window: not part of the state dict (as in timm)
        self.register_buffer("relative_position_index", relative_position_index(self.window), persistent=False)
        self.weights = WindowWeights()

    def relative_position_bias(self) -> torch.Tensor:
        """(heads, N, N) additive bias, float32."""
        n = math.prod(self.window)
        bias = at_least_float32(self.relative_position_bias_table)[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, windows: torch.Tensor, mask_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``windows`` (B, nW, N, C); ``mask_bias`` float (nW, N, N), 0 where a key is allowed and -inf where not
        (:func:`window_attention_mask` with ``additive``), or None (every key)."""
        b, nw, n, c = windows.shape
        h = self.num_heads
        qkv = self.qkv(windows).reshape(b, nw, n, 3, h, c // h).permute(3, 0, 1, 4, 2, 5)
        bias = self.relative_position_bias()  # (heads, N, N), fp32
        if self.weights.windows is not None:  # explaining: the weights of the requested windows, for a hook to read
            self.weights(qkv[0], qkv[1], bias, mask_bias)
        if mask_bias is None:  # one bias for every window: (B x nW, heads) batches, the bias broadcasts
            q, k, v = (t.reshape(b * nw, h, n, c // h) for t in qkv.unbind(0))
            mask = bias[None].to(q.dtype)
        else:  # windows x heads on one axis: the per-window mask broadcasts over the batch, not copied per sample
            q, k, v = (t.reshape(b, nw * h, n, c // h) for t in qkv.unbind(0))
            mask = bias[None] + mask_bias[:, None]  # (nW, heads, N, N): -inf where not allowed, as masked_fill
            mask = mask.reshape(1, nw * h, n, n).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.reshape(b, nw, h, n, c // h).transpose(2, 3).reshape(b, nw, n, c)
        return self.proj(out)


class SwinBlock(nn.Module):
    """x + Attn_W(LN(x)); x + MLP(LN(x)) on channels-last maps (B, *S, C); ``shift`` rolls windows by half.

    ``window`` is the block's window (fixed at construction: it sizes the bias table). Any input shape works: a
    map smaller than the window is padded and masked, an axis no longer than its window is not shifted.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: Sequence[int],
        shift: bool = False,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        qkv_bias: bool = True,
    ):
        super().__init__()
        self.window = tuple(int(w) for w in window)
        self.shift = bool(shift)
        self.norm1 = LayerNorm32(dim)  # float32 statistics under autocast
        self.attn = WindowAttention(dim, num_heads, self.window, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = LayerNorm32(dim)
        self.mlp = Mlp(dim, Mlp.hidden_for(dim, mlp_ratio))

    def shifts(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Per-axis roll of this block on a map of ``spatial`` tokens (0 where the axis fits one window)."""
        if not self.shift:
            return (0,) * len(spatial)
        return tuple(w // 2 if s > w else 0 for s, w in zip(spatial, self.window))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = tuple(x.shape[1:-1])
        if len(spatial) != len(self.window):
            raise ValueError(f"a {len(self.window)}D Swin block got a map of shape {tuple(x.shape)}")
        shift = self.shifts(spatial)
        padded = tuple(n * w for n, w in zip(ceil_div(spatial, self.window), self.window))
        axes = tuple(range(1, 1 + len(spatial)))

        y = pad_end(self.norm1(x), padded, start=1)
        if any(shift):
            y = torch.roll(y, shifts=[-s for s in shift], dims=axes)
        mask_bias = None
        if any(shift) or padded != spatial:
            mask_bias = window_attention_mask(spatial, padded, self.window, shift, device=x.device, additive=True)
        y = self.attn(window_partition(y, self.window), mask_bias)
        y = window_reverse(y, self.window, padded)
        if any(shift):
            y = torch.roll(y, shifts=list(shift), dims=axes)
        if padded != spatial:
            y = y[(slice(None),) + tuple(slice(0, s) for s in spatial)]
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))
