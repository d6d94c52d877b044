"""N-dimensional routed sparse attention (BiFormer's bi-level routing attention, for 2D and 3D).

Coarse level: the mean query and key of each region (fp32) give a region affinity; each query region keeps
its ``topk`` best key regions (:func:`~nnunet_sparseattn.layers.routing.route`). Fine level: every token of
a query region attends to all tokens of its routed key regions. Inputs are ``(B, C, *S)``, channel-first, any
spatial shape; regions are described in :mod:`nnunet_sparseattn.layers.routing` (grid clamping, padding).
Unlike BiFormer, padded keys are MASKED (BiFormer attends to its zero padding, which biases border regions).

Backends (one function, same result):

- ``"gather"``: the routed key/value regions are copied region-major with ``index_select`` on a
  ``(B*heads*Nr, r, d)`` view (its backward is an ``index_add``, cheap, unlike the ``scatter_add`` into an
  expanded tensor that BiFormer's ``torch.gather`` needs), then ``scaled_dot_product_attention`` runs once on
  a batch of ``B*heads*Nr`` small problems. Works everywhere, forward and backward. Memory: the gathered K/V
  are ``topk`` times K/V.
- ``"flex"``: tokens are reordered region-major (each region padded to a power of two >= 16 tokens, the
  padding masked) so that one region is one block of ``torch.nn.attention.flex_attention``; the routing
  becomes a ``BlockMask`` (``BlockMask.from_kv_blocks``), so no key or value is copied per query region.
  flex is run COMPILED (``torch.compile(flex_attention)``, cached; inside an outer ``torch.compile`` it is
  traced directly): eager flex materialises the full score matrix and ignores the block sparsity (the
  ``mask_mod`` here encodes the routing, so eager flex is still correct, just dense; ``flex_compile=False``
  selects it, for tests). flex has no backward on the CPU: asking for it raises a ValueError.
- ``"auto"`` (default) picks:
    1. dense ``scaled_dot_product_attention`` on the unpadded tokens when ``topk`` covers all key regions and
       no routing is given (exactly equal to routed attention with every region, and fastest);
    2. ``"flex"`` on CUDA (training and inference);
    3. ``"flex"`` on the CPU only when no gradient is needed AND the caller is already inside
       ``torch.compile`` (so no surprise ~25 s compile in eager CPU inference or in tests);
    4. ``"gather"`` otherwise (CPU training, eager CPU inference, other devices).
  Override with ``backend=`` on the function or the ``backend`` attribute of :class:`RoutedAttention`.

Compiled flex is compiled once per input shape (``dynamic=False``); past dynamo's recompile limit it would run
eagerly (correct, dense cost). nnU-Net uses one patch size, so a network sees a handful of shapes.
Memory: gather holds ``topk`` copies of K and V (about ``2 * topk * N * C`` elements); flex holds none.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .conv import conv_dims, grouped_conv_op
from .routing import (
    GridLike,
    RegionLayout,
    Router,
    as_grid,
    from_regions,
    grid_for_region_size,
    is_dense,
    region_affinity,
    region_layout,
    region_pool,
    route,
    to_regions,
)
from .shapes import pad_end

__all__ = [
    "BACKENDS",
    "RegionAttention",
    "RoutedAttention",
    "build_block_mask",
    "compute_routing",
    "flex_available",
    "routed_attention",
    "routed_attention_reference",
    "route_regions",
    "select_backend",
    "use_backend",
]

BACKENDS = ("auto", "gather", "flex")

try:  # flex_attention exists in torch >= 2.5; keep the gather path usable without it
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    _HAS_FLEX = True
except ImportError:  # pragma: no cover - depends on the torch build
    BlockMask = None  # type: ignore[assignment,misc]
    flex_attention = None  # type: ignore[assignment]
    _HAS_FLEX = False

_COMPILED_FLEX: Optional[Callable] = None


def flex_available() -> bool:
    """True when this torch has ``flex_attention``."""
    return _HAS_FLEX


def _compiled_flex() -> Callable:
    global _COMPILED_FLEX
    if _COMPILED_FLEX is None:
        # dynamic=False: region sizes are guarded as static by the kernel anyway; one graph per shape
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
    return _COMPILED_FLEX


def _is_compiling() -> bool:
    try:
        return bool(torch.compiler.is_compiling())
    except AttributeError:  # pragma: no cover - very old torch
        return False


_FLEX_CPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def select_backend(backend: str, device: torch.device, needs_grad: bool, dtype: Optional[torch.dtype] = None) -> str:
    """Resolve ``"auto"`` to ``"gather"`` or ``"flex"`` (rules in the module docstring); validate the others."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        if not _HAS_FLEX:
            return "gather"
        if device.type == "cuda":
            return "flex"
        if device.type == "cpu" and not needs_grad and _is_compiling() and dtype in _FLEX_CPU_DTYPES + (None,):
            return "flex"
        return "gather"
    if backend == "flex":
        if not _HAS_FLEX:
            raise ValueError(
                "backend='flex' needs torch.nn.attention.flex_attention (torch >= 2.5); use backend='gather'"
            )
        if needs_grad and device.type != "cuda":
            raise ValueError(
                f"flex_attention has no backward on {device.type}; for training there use backend='gather' "
                "(or run under torch.no_grad())"
            )
        if device.type == "cpu" and dtype is not None and dtype not in _FLEX_CPU_DTYPES:
            raise ValueError(
                f"compiled flex_attention on the CPU supports float32/float16/bfloat16, not {dtype}; "
                "use backend='gather'"
            )
    return backend


def compute_routing(
    q: torch.Tensor,
    k: torch.Tensor,
    grid: GridLike,
    topk: int,
    detach: bool = True,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Region means of ``q`` and ``k`` (fp32) -> affinity -> top-k key regions per query region, ``(B, Nq, k)``."""
    return _routing(q, k, region_layout(q.shape[2:], grid), region_layout(k.shape[2:], grid), topk, detach, scale)


def _routing(
    q: torch.Tensor, k: torch.Tensor, lq: RegionLayout, lk: RegionLayout, topk: int, detach: bool, scale=None
) -> torch.Tensor:
    return route(_affinity(q, k, lq, lk, detach, scale), topk)


def _affinity(
    q: torch.Tensor, k: torch.Tensor, lq: RegionLayout, lk: RegionLayout, detach: bool, scale: Optional[float] = None
) -> torch.Tensor:
    if detach:  # BiFormer routes on detached q/k: no gradient flows through the (discrete) routing
        q, k = q.detach(), k.detach()
    return region_affinity(region_pool(q, lq), region_pool(k, lk), scale)


def route_regions(
    router: Router, q: torch.Tensor, k: torch.Tensor, grid: GridLike, detach: bool = True
) -> Optional[torch.Tensor]:
    """The routing an attention module's ``router`` chooses from the region means of ``q`` and ``k``, ``(B, Nq, k)``;
    None when its top-k keeps every key region (dense attention: nothing to route)."""
    lq, lk = region_layout(q.shape[2:], grid), region_layout(k.shape[2:], grid)
    if is_dense(router.topk, lk.num_regions):
        return None
    return router(_affinity(q, k, lq, lk, detach), lq, lk).indices


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> None:
    if q.dim() < 3:
        raise ValueError(f"q must be (B, C, *spatial), got shape {tuple(q.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.dim() != k.dim() or q.shape[:2] != k.shape[:2]:
        raise ValueError(
            f"q {tuple(q.shape)} and k/v {tuple(k.shape)} must agree in batch, channels and number of spatial dims"
        )
    c = q.shape[1]
    if num_heads < 1 or c % num_heads != 0:
        raise ValueError(f"num_heads={num_heads} must be >= 1 and divide the channels ({c})")


def _check_routing(routing: torch.Tensor, b: int, nq: int, nk: int) -> torch.Tensor:
    if routing.dim() != 3 or routing.shape[0] != b or routing.shape[1] != nq or not 1 <= routing.shape[2] <= nk:
        raise ValueError(
            f"routing must be (B={b}, Nq={nq}, k) with 1 <= k <= Nk={nk}, got shape {tuple(routing.shape)}"
        )
    if routing.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"routing must hold integer region indices, got {routing.dtype}")
    return routing.long()


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(B, C, *S)`` -> ``(B, heads, N, C // heads)``: all tokens, per head."""
    return x.reshape(x.shape[0], num_heads, x.shape[1] // num_heads, -1).transpose(-1, -2)


def _dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, scale: Optional[float]) -> torch.Tensor:
    qh, kh, vh = (_heads(t, num_heads) for t in (q, k, v))
    o = F.scaled_dot_product_attention(qh, kh, vh, scale=scale)
    return o.transpose(-1, -2).reshape(q.shape)


def _gather(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_heads: int,
    lq: RegionLayout,
    lk: RegionLayout,
    routing: torch.Tensor,
    scale: Optional[float],
) -> torch.Tensor:
    b = q.shape[0]
    h = num_heads
    nq, nk = lq.num_regions, lk.num_regions
    rq, rk = lq.region_tokens, lk.region_tokens
    kk = routing.shape[-1]
    qr = to_regions(q, lq, h)  # (B, h, Nq, rq, d)
    d = qr.shape[-1]
    kr = to_regions(k, lk, h).reshape(b * h * nk, rk, d)
    vr = to_regions(v, lk, h).reshape(b * h * nk, rk, d)
    # row of (b, head, region j) in the flat view = (b * h + head) * Nk + j
    base = (torch.arange(b * h, device=q.device) * nk).view(b, h, 1, 1)
    rows = (base + routing[:, None]).reshape(-1)  # (B*h*Nq*k,)
    # index_select (backward: index_add) is much cheaper than gather on an expanded tensor (backward:
    # scatter_add into a (B, Nq, Nk, ...) buffer): measured ~0.24 s vs ~4 s fwd+bwd at 32^3 tokens, top-k 8
    kg = kr.index_select(0, rows).view(b * h * nq, 1, kk * rk, d)
    vg = vr.index_select(0, rows).view(b * h * nq, 1, kk * rk, d)
    mask = None
    if lk.is_padded:
        valid = lk.token_valid(q.device)  # (Nk, rk)
        mask = valid[routing].reshape(b, 1, nq, 1, 1, kk * rk).expand(b, h, nq, 1, 1, kk * rk)
        mask = mask.reshape(b * h * nq, 1, 1, kk * rk)
    o = F.scaled_dot_product_attention(qr.reshape(b * h * nq, 1, rq, d), kg, vg, attn_mask=mask, scale=scale)
    return from_regions(o.view(b, h, nq, rq, d), lq)


def _flex_block(r: int) -> int:
    """Region tokens padded to a power of two >= 16: block sizes that flex's GPU kernels accept as-is."""
    return max(16, 1 << (r - 1).bit_length())


def _to_flex_tokens(x: torch.Tensor, layout: RegionLayout, h: int, rp: int) -> torch.Tensor:
    xr = pad_end(to_regions(x, layout, h), (rp,), start=3)  # (B, h, Nr, rp, d)
    return xr.reshape(xr.shape[0], h, layout.num_regions * rp, xr.shape[-1])


def build_block_mask(
    routing: torch.Tensor, lq: RegionLayout, lk: RegionLayout, compute_q_blocks: bool = True
) -> "BlockMask":
    """The routing as a flex ``BlockMask`` over region-major tokens (one block = one region, padded).

    Routed regions without padding are "full" blocks (no ``mask_mod`` call when compiled); regions with
    padding are partial blocks. The ``mask_mod`` encodes routing AND key padding, so eager flex (which
    ignores block sparsity) gives the same result.
    """
    if not _HAS_FLEX:
        raise ValueError("flex_attention is not available in this torch; use backend='gather'")
    b, nq, kk = routing.shape
    nk = lk.num_regions
    rqp, rkp = _flex_block(lq.region_tokens), _flex_block(lk.region_tokens)
    dev = routing.device
    valid = lk.token_valid(dev)  # (Nk, rk)
    if rkp != lk.region_tokens:
        valid = F.pad(valid, (0, rkp - lk.region_tokens), value=False)
    kv_valid = valid.reshape(-1)  # (Nk * rkp,)
    region_full = valid.all(dim=1)  # (Nk,)
    table = torch.zeros(b, nq, nk, dtype=torch.bool, device=dev)
    table.scatter_(2, routing, True)

    full_sel = region_full[routing]  # (B, Nq, k)
    # stable argsort puts full (resp. partial) blocks first; counts say how many of each are valid
    order_full = torch.argsort((~full_sel).to(torch.int8), dim=-1, stable=True)
    order_part = torch.argsort(full_sel.to(torch.int8), dim=-1, stable=True)
    n_full = full_sel.sum(-1).to(torch.int32)
    n_part = (kk - full_sel.sum(-1)).to(torch.int32)

    def padded_indices(order: torch.Tensor) -> torch.Tensor:
        idx = torch.gather(routing, -1, order).to(torch.int32)
        out = torch.zeros(b, nq, nk, dtype=torch.int32, device=dev)
        out[..., :kk] = idx
        return out[:, None]  # (B, 1, Nq, Nk): the head dim broadcasts

    def mask_mod(bi, hi, q_idx, kv_idx):
        return table[bi, q_idx // rqp, kv_idx // rkp] & kv_valid[kv_idx]

    return BlockMask.from_kv_blocks(
        n_part[:, None],
        padded_indices(order_part),
        n_full[:, None],
        padded_indices(order_full),
        BLOCK_SIZE=(rqp, rkp),
        mask_mod=mask_mod,
        seq_lengths=(nq * rqp, nk * rkp),
        compute_q_blocks=compute_q_blocks,  # the transposed (q-major) indices serve only the backward
    )


def _flex(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_heads: int,
    lq: RegionLayout,
    lk: RegionLayout,
    routing: torch.Tensor,
    scale: Optional[float],
    compile_flex: bool,
) -> torch.Tensor:
    h = num_heads
    rqp, rkp = _flex_block(lq.region_tokens), _flex_block(lk.region_tokens)
    qf = _to_flex_tokens(q, lq, h, rqp)
    kf = _to_flex_tokens(k, lk, h, rkp)
    vf = _to_flex_tokens(v, lk, h, rkp)
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    block_mask = build_block_mask(routing, lq, lk, compute_q_blocks=needs_grad)
    if _is_compiling():
        fn = flex_attention
        if q.device.type == "cpu":
            # inductor's CPU flex lowering fails on inputs that are views of computed buffers (torch 2.15:
            # "too many values to unpack"); a graph break makes q/k/v plain graph inputs of flex's own graph
            torch._dynamo.graph_break()
    elif not compile_flex:
        fn = flex_attention
    else:
        fn = _compiled_flex()
    o = fn(qf, kf, vf, block_mask=block_mask, scale=scale)
    b, _, _, d = o.shape
    o = o.view(b, h, lq.num_regions, rqp, d)[:, :, :, : lq.region_tokens]
    return from_regions(o, lq)


def routed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_heads: int,
    grid: GridLike,
    topk: int,
    *,
    backend: str = "auto",
    routing: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    detach_routing: bool = True,
    flex_compile: bool = True,
) -> torch.Tensor:
    """Routed (bi-level) multi-head attention on channel-first tensors.

    Args:
        q: queries ``(B, C, *Sq)``; k, v: keys and values ``(B, C, *Skv)`` (``Skv`` may differ from ``Sq``).
        num_heads: heads; must divide ``C``.
        grid: regions per spatial axis (int or per-axis tuple); clamped, see :mod:`.routing`.
        topk: key regions per query region; ``<= 0`` or ``>=`` the number of key regions means all (dense).
        backend: ``"auto" | "gather" | "flex"`` (selection rule in the module docstring).
        routing: optional precomputed long ``(B, Nq, k)`` key-region indices (e.g. from :func:`compute_routing`
            or :func:`~.routing.route`); ``topk`` is then ignored.
        scale: softmax scale, default ``1 / sqrt(C / num_heads)``.
        detach_routing: route on detached q/k (BiFormer's default). The routing here is hard (indices), so no
            gradient reaches q/k through it either way; the flag is kept for parity and for soft-routing variants.
        flex_compile: run flex through ``torch.compile`` (set False only to test eager flex: dense cost).

    Returns:
        ``(B, C, *Sq)`` in q's dtype.
    """
    _check_inputs(q, k, v, num_heads)
    lq = region_layout(q.shape[2:], grid)
    lk = region_layout(k.shape[2:], grid)
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    resolved = select_backend(backend, q.device, needs_grad, q.dtype if flex_compile else None)
    if routing is None:
        if backend == "auto" and is_dense(topk, lk.num_regions):
            return _dense(q, k, v, num_heads, scale)
        routing = _routing(q, k, lq, lk, topk, detach_routing)
    else:
        routing = _check_routing(routing, q.shape[0], lq.num_regions, lk.num_regions)
    if resolved == "flex":
        return _flex(q, k, v, num_heads, lq, lk, routing, scale, flex_compile)
    return _gather(q, k, v, num_heads, lq, lk, routing, scale)


def routed_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_heads: int,
    grid: GridLike,
    routing: torch.Tensor,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Dense float64 attention masked to ``routing``: the ground truth for every backend (slow: O(N^2)).

    Token i may attend token j iff j's region is among the regions routed from i's region. Region membership
    is computed from coordinates (``coord // region_size``), independently of the padding/reshaping code.
    Padding never enters, so padded keys get no attention by construction. Returns q's dtype.
    """
    _check_inputs(q, k, v, num_heads)
    lq = region_layout(q.shape[2:], grid)
    lk = region_layout(k.shape[2:], grid)
    routing = _check_routing(routing, q.shape[0], lq.num_regions, lk.num_regions)
    b, c = q.shape[:2]
    d = c // num_heads
    scale = d**-0.5 if scale is None else scale

    def region_of(layout: RegionLayout) -> torch.Tensor:
        coords = torch.meshgrid(*[torch.arange(s, device=q.device) for s in layout.spatial], indexing="ij")
        rid = torch.zeros_like(coords[0])
        for ax, cax in enumerate(coords):
            rid = rid * layout.grid[ax] + cax // layout.region[ax]
        return rid.reshape(-1)

    rq_id, rk_id = region_of(lq), region_of(lk)
    table = torch.zeros(b, lq.num_regions, lk.num_regions, dtype=torch.bool, device=q.device)
    table.scatter_(2, routing, True)
    allowed = table[:, rq_id][:, :, rk_id]  # (B, Nq_tokens, Nk_tokens)
    qs, ks, vs = (_heads(t.double(), num_heads) for t in (q, k, v))
    logits = torch.matmul(qs, ks.transpose(-1, -2)) * scale
    logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    o = torch.matmul(torch.softmax(logits, dim=-1), vs)
    return o.transpose(-1, -2).reshape(q.shape).to(q.dtype)


def check_attention_arguments(channels: int, num_heads: int, backend: str, lce_kernel_size: int) -> None:
    """ValueError for heads that do not divide the channels, an unknown backend or an even LCE kernel."""
    if num_heads < 1 or channels % num_heads != 0:
        raise ValueError(f"num_heads={num_heads} must be >= 1 and divide channels={channels}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if lce_kernel_size < 0 or (lce_kernel_size > 0 and lce_kernel_size % 2 == 0):
        raise ValueError(f"lce_kernel_size must be 0 (off) or odd, got {lce_kernel_size}")


def local_context(channels: int, conv_op: type[nn.Module], kernel_size: int) -> Optional[nn.Module]:
    """BiFormer's local context enhancement: a depthwise convolution on v (None when ``kernel_size`` is 0)."""
    if not kernel_size:
        return None
    return grouped_conv_op(conv_op)(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)


class RegionAttention(nn.Module):
    """The skeleton every routed attention module here shares (BiFormer's BRA, BSA-Seg's BSAM, MDSA), for
    ``(B, C, *S)`` maps, 2D or 3D::

        q, k, v  = project(x)                           hook: the module's projections
        grid     = grid_for(S)                          hook: regions per axis for this input
        routing, context = choose_routing(q, k, v, grid, routing)
                                                        hook; default: the router's top-k on region means (fp32)
        out      = routed_attention(q, k, v)            fine attention over the routed regions (one function)
        out      = combine(out, context)                hook; default: out
        out      = proj(out + LCE(local_values(v, x)))  LCE: BiFormer's local context (a depthwise conv on v)

    Here: the routing core (its ``Router``, whose ``topk`` is the module's, checked arguments, backend); a subclass
    declares its projections and ``self.lce = local_context(...)`` / ``self.proj`` in its own order (parameter order
    is part of optimizer checkpoints) and overrides the hooks it needs.
    """

    lce: Optional[nn.Module]
    proj: nn.Module

    def __init__(
        self,
        channels: int,
        num_heads: int,
        topk: int,
        conv_op: type[nn.Module],
        lce_kernel_size: int,
        detach_routing: bool = True,
        backend: str = "auto",
        qk_scale: Optional[float] = None,
    ) -> None:
        super().__init__()
        check_attention_arguments(channels, num_heads, backend, lce_kernel_size)
        self.ndim = conv_dims(conv_op)
        self.channels = channels
        self.num_heads = num_heads
        self.router = Router(topk)
        self.detach_routing = detach_routing
        self.backend = backend
        self.scale = qk_scale

    def forward(self, x: torch.Tensor, routing: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.dim() != self.ndim + 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"{type(self).__name__}: expected (B, {self.channels}, {self.ndim} spatial dims), "
                f"got shape {tuple(x.shape)}"
            )
        q, k, v = self.project(x)
        grid = self.grid_for(x.shape[2:])
        routing, context = self.choose_routing(q, k, v, grid, routing)
        out = routed_attention(
            q, k, v, self.num_heads, grid, self.topk, backend=self.backend, routing=routing, scale=self.scale
        )
        out = self.combine(out, context)
        if self.lce is not None:
            out = out + self.lce(self.local_values(v, x))
        return self.proj(out)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of ``x``."""
        raise NotImplementedError

    def grid_for(self, spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """Regions per axis for an input of this spatial shape."""
        raise NotImplementedError

    def choose_routing(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: tuple[int, ...], routing: Optional[torch.Tensor]
    ) -> tuple[Optional[torch.Tensor], Any]:
        """The routing (None: dense) and whatever :meth:`combine` needs; a given ``routing`` is kept."""
        if routing is None:
            routing = route_regions(self.router, q, k, grid, self.detach_routing)
        return routing, None

    def combine(self, out: torch.Tensor, context: Any) -> torch.Tensor:
        """The fine attention's output mixed with what :meth:`choose_routing` computed besides the routing."""
        return out

    def local_values(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """What the local context enhancement convolves (``v``, on the query map's grid)."""
        return v

    @property
    def topk(self) -> int:
        return self.router.topk

    @topk.setter
    def topk(self, value: int) -> None:
        self.router.topk = value


class RoutedAttention(RegionAttention):
    """Bi-level routing attention (BiFormer's BRA) for ``(B, C, *S)`` feature maps, 2D or 3D.

    ``qkv`` 1x1 conv -> routing on region means (fp32) -> fine attention over the routed regions ->
    ``proj(attn + LCE(v))``, LCE a depthwise ``lce_kernel_size`` conv on v (0 disables it). Every parameter
    takes part in every forward, so DDP needs no ``find_unused_parameters``. Regions are given either as a fixed
    ``grid`` (regions per axis, BiFormer's ``n_win``) or as ``region_size`` (tokens per region per axis; the grid
    then follows each input's shape, as in a U-Net whose stages differ in shape).
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        grid: Optional[GridLike],
        topk: int,
        conv_op: type[nn.Module] = nn.Conv3d,
        lce_kernel_size: int = 3,
        detach_routing: bool = True,
        qkv_bias: bool = True,
        backend: str = "auto",
        qk_scale: Optional[float] = None,
        region_size: Optional[GridLike] = None,
    ) -> None:
        if (grid is None) == (region_size is None):
            raise ValueError("give exactly one of grid (regions per axis) and region_size (tokens per region per axis)")
        super().__init__(channels, num_heads, topk, conv_op, lce_kernel_size, detach_routing, backend, qk_scale)
        # validate the grid length now rather than at the first forward
        self.grid = None if grid is None else as_grid(grid, self.ndim)
        self.region_size = None if region_size is None else as_grid(region_size, self.ndim)
        self.qkv = conv_op(channels, 3 * channels, 1, bias=qkv_bias)
        self.lce = local_context(channels, conv_op, lce_kernel_size)
        self.proj = conv_op(channels, channels, 1)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv(x).chunk(3, dim=1)
        return q, k, v

    def projections(self) -> tuple[nn.Module, ...]:
        """The linear maps of the attention (what a transformer initialisation resets)."""
        return (self.qkv, self.proj)

    def grid_for(self, spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """Regions per axis for this input shape (fixed ``grid``, or from ``region_size``)."""
        if self.grid is not None:
            return self.grid
        assert self.region_size is not None  # __init__ takes exactly one of grid and region_size
        return grid_for_region_size(spatial_shape, self.region_size)

    def extra_repr(self) -> str:
        where = f"grid={self.grid}" if self.grid is not None else f"region_size={self.region_size}"
        return (
            f"channels={self.channels}, num_heads={self.num_heads}, {where}, topk={self.topk}, backend={self.backend!r}"
        )


@contextlib.contextmanager
def use_backend(network: nn.Module, backend: str) -> Iterator[None]:
    """Every routed attention of ``network`` runs on ``backend`` inside the block (then back to its own).

    Counts use ``"gather"``: it computes the routed key regions only, and what it keeps for backward is an upper
    bound of flex's (flex's FLOP formula counts the dense score matrix whatever its block mask skips)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    routed: list[Any] = [m for m in network.modules() if isinstance(m, RegionAttention)]
    saved = [m.backend for m in routed]
    try:
        for m in routed:
            m.backend = backend
        yield
    finally:
        for m, own in zip(routed, saved):
            m.backend = own
