"""Per-axis arguments, end padding and block partitions of n-dimensional maps: the one copy every layer uses.

Regions (routed attention), windows (Swin) and space-to-depth (EDM) all cut a map into equal blocks per axis after
padding its end; they differ only in where the spatial axes sit and where the block axes go. :func:`partition` and
:func:`unpartition` return permuted VIEWS: the caller's one ``reshape`` makes the only copy.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch._guards import detect_fake_mode

__all__ = ["IntOrSeq", "ceil_div", "end_padding", "pad_end", "partition", "per_axis", "shape_constant", "unpartition"]

IntOrSeq = Union[int, Sequence[int]]


def per_axis(value: IntOrSeq, ndim: int, name: str, minimum: int = 1) -> tuple[int, ...]:
    """``value`` (an int, or one entry per spatial axis) as ``ndim`` ints, each at least ``minimum`` (ValueError)."""
    out = (int(value),) * ndim if isinstance(value, (int, np.integer)) else tuple(int(v) for v in value)
    if len(out) != ndim:
        raise ValueError(f"{name}={value!r} must have {ndim} entries (one per spatial axis)")
    if any(v < minimum for v in out):
        raise ValueError(f"{name}={value!r}: every entry must be >= {minimum}")
    return out


def ceil_div(spatial: Sequence[int], divisor: Sequence[int]) -> tuple[int, ...]:
    """``ceil(S / d)`` per axis: blocks that cover a map (the last one padded), or a strided map's size."""
    return tuple(math.ceil(int(s) / int(d)) for s, d in zip(spatial, divisor))


def end_padding(spatial: Sequence[int], padded: Sequence[int]) -> list[int]:
    """``F.pad``'s argument that pads the end of each axis from ``spatial`` to ``padded`` (last axis first)."""
    pad: list[int] = []
    for s, p in zip(reversed(tuple(spatial)), reversed(tuple(padded))):
        pad += [0, int(p) - int(s)]
    return pad


def pad_end(x: torch.Tensor, padded: Sequence[int], start: int = 2) -> torch.Tensor:
    """``x`` with the spatial axes ``start .. start + len(padded) - 1`` zero-padded at their end to ``padded``."""
    spatial = tuple(x.shape[start : start + len(padded)])
    if spatial == tuple(padded):
        return x
    trailing = [0, 0] * (x.dim() - start - len(padded))  # F.pad lists the last axis first
    return F.pad(x, trailing + end_padding(spatial, padded))


def partition(x: torch.Tensor, block: Sequence[int], start: int, block_axes_first: bool = False) -> torch.Tensor:
    """``(*lead, S_0 .. S_n, *trail)`` (spatial axes from ``start``, each a multiple of its block) as the view
    ``(*lead, G_0 .. G_n, B_0 .. B_n, *trail)``: which block, then where in the block, per axis (row-major).
    ``block_axes_first`` gives ``(*lead, B.., G.., *trail)`` instead."""
    n = len(block)
    shape = list(x.shape[:start])
    for s, b in zip(x.shape[start : start + n], block):
        shape += [s // b, b]
    x = x.reshape(*shape, *x.shape[start + n :])
    grid_axes = [start + 2 * i for i in range(n)]
    block_axes = [start + 2 * i + 1 for i in range(n)]
    middle = block_axes + grid_axes if block_axes_first else grid_axes + block_axes
    return x.permute(list(range(start)) + middle + list(range(start + 2 * n, x.dim())))


def unpartition(x: torch.Tensor, n: int, start: int) -> torch.Tensor:
    """Inverse of :func:`partition`: the view ``(*lead, G_0 .. G_n, B_0 .. B_n, *trail)`` -> ``(*lead, G_0, B_0, ..,
    *trail)``; the caller's ``reshape`` to ``(*lead, G_0 * B_0, .., *trail)`` completes it."""
    perm = list(range(start))
    for i in range(n):
        perm += [start + i, start + n + i]
    return x.permute(perm + list(range(start + 2 * n, x.dim())))


# ------------------------------------------------------------------------------------------------ per-shape constants
# Index and mask tensors that depend only on a shape (which tokens are padding, Swin's shifted-window mask, ...):
# built once per (what, shape, device) and reused by every eager forward. Under torch.compile the tensor is built
# inside the graph instead (a few index ops on shapes the graph already fixes) and the dict is neither read nor
# written: a store would break the graph inside activation checkpointing's higher-order op (dynamo cannot replay a
# side effect there), and a read would guard on the dict's keys and recompile whenever eager code adds one.
_CONSTANTS: dict[tuple, torch.Tensor] = {}


def shape_constant(what: str, key: tuple, device: torch.device, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``build()`` (a tensor on ``device`` that depends only on ``key``) computed once per ``(what, key, device)``
    in eager mode; traced into the graph under torch.compile (see above)."""
    if torch.compiler.is_compiling():
        return build()
    # a tensor made under inference_mode cannot be saved for a later backward: cache such tensors apart; so are
    # those built under a FakeTensorMode (a memory count, nnunet_sparseattn/memory.py): a fake tensor in a real
    # forward fails, and a real one in a fake forward too
    fake = detect_fake_mode()
    full = (what, key, str(device), torch.is_inference_mode_enabled(), fake)  # the mode itself: no id reuse
    tensor = _CONSTANTS.get(full)
    if tensor is None:
        tensor = build()
        _CONSTANTS[full] = tensor
    return tensor
