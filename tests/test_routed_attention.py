"""Routed attention core: regions, routing, both backends held to a dense float64 reference, robustness."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from nnunet_sparseattn.layers import (
    RoutedAttention,
    compute_routing,
    from_regions,
    region_affinity,
    region_layout,
    region_pool,
    route,
    routed_attention,
    routed_attention_reference,
    select_backend,
    to_regions,
)

# eager flex warns that it materialises the score matrix: that is what the eager tests want
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def _qkv(b, c, shape, dtype=torch.float64, grad=False, seed=0, kv_shape=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, c, *shape, generator=g, dtype=dtype)
    kv_shape = kv_shape or shape
    k = torch.randn(b, c, *kv_shape, generator=g, dtype=dtype)
    v = torch.randn(b, c, *kv_shape, generator=g, dtype=dtype)
    return [t.requires_grad_(grad) for t in (q, k, v)]


# ------------------------------------------------------------------------------------------------ layout
@pytest.mark.parametrize(
    "spatial, grid, exp_grid, exp_region",
    [
        ((8, 8, 8), 2, (2, 2, 2), (4, 4, 4)),
        ((5, 6, 6), 4, (3, 3, 3), (2, 2, 2)),  # 5 on 4 regions: the 4th would be empty -> grid 3
        ((7, 40, 33), (1, 4, 4), (1, 4, 4), (7, 10, 9)),
        ((3, 2), (8, 8), (3, 2), (1, 1)),  # more regions than tokens: clamped to one token per region
        ((9, 9), 1, (1, 1), (9, 9)),  # a single region
    ],
)
def test_region_layout_clamps_grid(spatial, grid, exp_grid, exp_region):
    lay = region_layout(spatial, grid)
    assert lay.grid == exp_grid and lay.region == exp_region
    assert all(p >= s for p, s in zip(lay.padded, spatial))
    counts = lay.region_counts()
    assert counts.min() >= 1 and counts.sum() == math.prod(spatial)
    assert torch.equal(lay.token_valid().sum(1).float(), counts)


@pytest.mark.parametrize("spatial, grid", [((5, 6, 7), (2, 3, 2)), ((7, 9), 3), ((4, 4, 4), 2)])
def test_to_from_regions_roundtrip(spatial, grid):
    x = torch.randn(2, 6, *spatial)
    lay = region_layout(spatial, grid)
    xr = to_regions(x, lay, num_heads=3)
    assert xr.shape == (2, 3, lay.num_regions, lay.region_tokens, 2)
    assert torch.equal(from_regions(xr, lay), x)


def test_region_pool_is_mean_over_real_tokens():
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    lay = region_layout((5, 7), (2, 3))  # regions 3x3, padded 6x9
    pooled = region_pool(x, lay)
    assert pooled.dtype == torch.float64 and pooled.shape == (2, 6, 3)  # at least float32: float64 stays
    for gi in range(2):
        for gj in range(3):
            patch = x[:, :, 3 * gi : 3 * gi + 3, 3 * gj : 3 * gj + 3]  # slicing past the end crops: real tokens
            torch.testing.assert_close(pooled[:, gi * 3 + gj], patch.mean((2, 3)))
    assert region_pool(x.half(), lay).dtype == torch.float32  # 16 bits: pooled in float32


# ----------------------------------------------------------------------------------------------- routing
def test_route_ties_are_deterministic_lowest_index_first():
    a = torch.zeros(2, 5, 7)
    for _ in range(3):
        assert torch.equal(route(a, 3), torch.tensor([0, 1, 2]).expand(2, 5, 3))
    a = torch.tensor([[[1.0, 3.0, 3.0, 2.0, 3.0, float("nan")]]])
    assert route(a, 2).tolist() == [[[1, 2]]]  # three-way tie at the top: the two lowest indices
    assert route(a, 4).tolist() == [[[1, 2, 3, 4]]]
    assert route(a, 5).tolist() == [[[0, 1, 2, 3, 4]]]  # NaN ranks last
    # constant input through the full pipeline: all region means equal -> same indices every run
    q = torch.ones(1, 4, 8, 8)
    r1 = compute_routing(q, q, 4, 3)
    assert torch.equal(r1, torch.tensor([0, 1, 2]).expand(1, 16, 3)) and torch.equal(r1, compute_routing(q, q, 4, 3))


def test_route_matches_sorting_and_clamps_k():
    a = torch.randn(3, 10, 12)
    ref = torch.sort(torch.argsort(a, dim=-1, descending=True)[..., :4], dim=-1).values
    assert torch.equal(route(a, 4), ref)
    for k in (0, -1, 12, 50):
        assert torch.equal(route(a, k), torch.arange(12).expand(3, 10, 12))


def test_routing_is_fp32_under_autocast():
    q = torch.randn(1, 8, 8, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = region_pool(q.bfloat16(), 2)
        aff = region_affinity(pooled, pooled)
    assert pooled.dtype == torch.float32 and aff.dtype == torch.float32


# ------------------------------------------------------------------------------- held to the reference
def _check_against_reference(shape, c, heads, grid, topk, backend, b=2, grads=True, kv_shape=None, seed=0, **kw):
    q, k, v = _qkv(b, c, shape, grad=grads, seed=seed, kv_shape=kv_shape)
    routing = compute_routing(q, k, grid, topk)
    out = routed_attention(q, k, v, heads, grid, topk, backend=backend, **kw)
    # the function's own routing is the public one
    assert torch.equal(out, routed_attention(q, k, v, heads, grid, topk, backend=backend, routing=routing, **kw))
    ref = routed_attention_reference(q, k, v, heads, grid, routing)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    if grads:
        go = torch.randn_like(out)
        g_out = torch.autograd.grad(out, (q, k, v), go)
        g_ref = torch.autograd.grad(ref, (q, k, v), go)
        for a, r in zip(g_out, g_ref):
            torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9)


CASES = [  # shape, channels, heads, grid, topk
    ((5, 6, 6), 8, 2, 2, 3),  # a real plan's bottleneck (40x48x48 / 8)
    ((7, 10, 9), 6, 3, (2, 3, 4), 5),  # odd, anisotropic, per-axis grid
    ((4, 4, 4), 8, 1, 2, 1),  # top-1
    ((6, 6, 6), 4, 4, 3, 0),  # all regions
    ((3, 2, 5), 4, 2, 8, 4),  # more regions than tokens
    ((9, 7), 8, 2, 3, 2),
    ((8, 8), 4, 1, 1, 1),  # one region
    ((16, 12), 8, 4, (4, 3), 5),
]


@pytest.mark.parametrize("shape, c, heads, grid, topk", CASES)
def test_gather_matches_reference(shape, c, heads, grid, topk):
    _check_against_reference(shape, c, heads, grid, topk, "gather")


@pytest.mark.parametrize("backend", ["gather", "flex"])
def test_different_kv_shape_matches_reference(backend):
    # MDSA-style keys/values from a pooled map: the same grid request gives other region sizes (and here another
    # region count: 27 query regions, 18 key regions)
    with torch.set_grad_enabled(backend == "gather"):
        _check_against_reference(
            (8, 9, 6), 4, 2, 3, 4, backend, kv_shape=(4, 5, 3), grads=backend == "gather", flex_compile=False
        )


@pytest.mark.parametrize("shape, c, heads, grid, topk", CASES[:6])
def test_eager_flex_matches_reference(shape, c, heads, grid, topk):
    # eager flex: the mask_mod alone must encode routing and padding (eager ignores block sparsity)
    with torch.no_grad():
        _check_against_reference(shape, c, heads, grid, topk, "flex", grads=False, flex_compile=False)


@settings(max_examples=12, deadline=None)
@given(
    ndim=st.sampled_from([2, 3]),
    data=st.data(),
    heads=st.sampled_from([1, 2, 3]),
    topk=st.integers(-1, 6),
)
def test_gather_matches_reference_random(ndim, data, heads, topk):
    shape = tuple(data.draw(st.integers(1, 9 if ndim == 3 else 14)) for _ in range(ndim))
    grid = tuple(data.draw(st.integers(1, 4)) for _ in range(ndim))
    _check_against_reference(shape, 2 * heads, heads, grid, topk, "gather", b=1, seed=sum(shape))


def test_topk_all_equals_unmasked_dense_sdpa():
    q, k, v = _qkv(2, 8, (4, 6, 8))  # unpadded: grid 2 divides every axis
    b, c = q.shape[:2]
    flat = lambda t: t.reshape(b, 2, c // 2, -1).transpose(-1, -2)  # noqa: E731
    dense = F.scaled_dot_product_attention(flat(q), flat(k), flat(v)).transpose(-1, -2).reshape(q.shape)
    for backend in ("gather", "auto"):
        torch.testing.assert_close(routed_attention(q, k, v, 2, 2, 0, backend=backend), dense)
    with torch.no_grad():
        torch.testing.assert_close(routed_attention(q, k, v, 2, 2, 99, backend="flex", flex_compile=False), dense)


@pytest.mark.parametrize("backend", ["gather", "flex"])
def test_padded_keys_get_zero_attention(backend):
    # v = 1 everywhere: with padded (zero) keys masked, every output is exactly a convex mix of ones -> 1;
    # BiFormer's unmasked zero padding would pull border regions below 1
    q, k, _ = _qkv(1, 4, (5, 7, 6), dtype=torch.float32)
    v = torch.ones_like(k)
    with torch.no_grad():
        out = routed_attention(q, k, v, 2, 3, 2, backend=backend, flex_compile=False)
    torch.testing.assert_close(out, torch.ones_like(out), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------- robustness
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_module_finite_under_cpu_autocast(dtype):
    torch.manual_seed(0)
    m = RoutedAttention(16, 2, (2, 3, 3), 3, conv_op=nn.Conv3d)
    x = (torch.randn(2, 16, 5, 7, 6) * 30).requires_grad_(True)  # large activations stress low precision
    try:
        with torch.autocast("cpu", dtype=dtype):
            y = m(x)
    except RuntimeError as e:  # pragma: no cover - depends on the CPU build
        pytest.skip(f"CPU autocast {dtype} unsupported here: {e}")
    assert y.dtype == dtype and torch.isfinite(y).all()
    y.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
    # routing under autocast is the fp32 routing of the same (low-precision) q/k
    with torch.autocast("cpu", dtype=dtype):
        q, k, _ = m.qkv(x).chunk(3, dim=1)
        r_auto = compute_routing(q, k, m.grid, 3)
    assert torch.equal(r_auto, compute_routing(q.float(), k.float(), m.grid, 3))


@pytest.mark.parametrize(
    "conv_op, shape, grid",
    [(nn.Conv2d, (9, 14), (2, 3)), (nn.Conv3d, (5, 6, 6), 2), (nn.Conv3d, (7, 40, 33), (1, 4, 4))],
)
def test_module_every_parameter_gets_a_gradient(conv_op, shape, grid):
    torch.manual_seed(0)
    m = RoutedAttention(8, 2, grid, 2, conv_op=conv_op)
    x = torch.randn(1, 8, *shape)
    y = m(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_module_backend_override_and_routing_argument():
    torch.manual_seed(0)
    m = RoutedAttention(8, 2, 2, 3, conv_op=nn.Conv2d)
    x = torch.randn(2, 8, 10, 12)
    m.backend = "flex"  # the attribute is honoured: flex cannot train on the CPU
    with pytest.raises(ValueError, match="backend='gather'"):
        m(x)
    m.backend = "gather"
    with torch.no_grad():
        y = m(x)
        q, k, _ = m.qkv(x).chunk(3, dim=1)
        routing = compute_routing(q, k, m.grid, 3)
        torch.testing.assert_close(m(x, routing=routing), y)
        assert not torch.allclose(m(x, routing=torch.zeros_like(routing)), y)  # a given routing is used


def test_lce_can_be_disabled_and_detach_flag():
    m = RoutedAttention(8, 2, 2, 2, conv_op=nn.Conv2d, lce_kernel_size=0, detach_routing=False)
    assert m.lce is None
    m(torch.randn(1, 8, 6, 6)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_select_backend_rule():
    cpu = torch.device("cpu")
    assert select_backend("auto", cpu, needs_grad=True) == "gather"
    assert select_backend("auto", cpu, needs_grad=False) == "gather"  # eager CPU: no surprise compile
    assert select_backend("auto", torch.device("cuda"), needs_grad=True) == "flex"
    assert select_backend("gather", torch.device("cuda"), needs_grad=True) == "gather"


def test_select_backend_picks_flex_for_cpu_inference_inside_compile(monkeypatch):
    import nnunet_sparseattn.layers.sparse_attention as ra

    monkeypatch.setattr(ra, "_is_compiling", lambda: True)
    cpu = torch.device("cpu")
    assert select_backend("auto", cpu, needs_grad=False, dtype=torch.float32) == "flex"
    assert select_backend("auto", cpu, needs_grad=True, dtype=torch.float32) == "gather"
    assert select_backend("auto", cpu, needs_grad=False, dtype=torch.float64) == "gather"  # CPU flex: no fp64


def test_bad_arguments_raise_clear_errors():
    q, k, v = _qkv(1, 6, (4, 4, 4), dtype=torch.float32)
    with pytest.raises(ValueError, match="grid"):
        routed_attention(q, k, v, 2, (2, 2), 2)
    with pytest.raises(ValueError, match="divide"):
        routed_attention(q, k, v, 4, 2, 2)
    with pytest.raises(ValueError, match="unknown backend"):
        routed_attention(q, k, v, 2, 2, 2, backend="triton")
    qg = q.clone().requires_grad_(True)
    with pytest.raises(ValueError, match="backend='gather'"):
        routed_attention(qg, k, v, 2, 2, 2, backend="flex")
    with pytest.raises(ValueError, match="backend='gather'"):
        with torch.no_grad():
            routed_attention(q.double(), k.double(), v.double(), 2, 2, 2, backend="flex")
    with pytest.raises(ValueError, match="routing"):
        routed_attention(q, k, v, 2, 2, 2, routing=torch.zeros(1, 3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="same shape"):
        routed_attention(q, k, v[:, :, :2], 2, 2, 2)
    with pytest.raises(ValueError, match="conv_op"):
        RoutedAttention(8, 2, 2, 2, conv_op=nn.Linear)
    with pytest.raises(ValueError, match="grid"):
        RoutedAttention(8, 2, (2, 2), 2, conv_op=nn.Conv3d)
    with pytest.raises(ValueError, match="divide"):
        RoutedAttention(8, 3, 2, 2)
    with pytest.raises(ValueError, match="expected"):
        RoutedAttention(8, 2, 2, 2, conv_op=nn.Conv3d)(torch.randn(1, 8, 4, 4))


# ---------------------------------------------------------------------------------- compiled (slow)
@pytest.mark.slow
def test_compiled_flex_forward_matches_reference_cpu():
    # compiled flex honours the BlockMask (block sparsity + mask_mod on partial blocks); CPU: float32 only
    with torch.no_grad():
        for shape, grid, topk in [((8, 8, 8), 2, 3), ((5, 7, 6), (2, 3, 3), 4)]:
            q, k, v = _qkv(2, 8, shape, dtype=torch.float32)
            routing = compute_routing(q, k, grid, topk)
            out = routed_attention(q, k, v, 2, grid, topk, backend="flex", routing=routing)
            ref = routed_attention_reference(q, k, v, 2, grid, routing)
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_module_under_torch_compile_cpu():
    torch.manual_seed(0)
    m = RoutedAttention(8, 2, (2, 2, 3), 3, conv_op=nn.Conv3d)
    x = torch.randn(2, 8, 5, 6, 7)
    compiled = torch.compile(m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y_c = compiled(x)  # training: gather backend compiled
        y_c.square().mean().backward()
    grads_c = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    y = m(x)
    y.square().mean().backward()
    torch.testing.assert_close(y_c, y, rtol=1e-4, atol=1e-5)
    for gc_, p in zip(grads_c, m.parameters()):
        torch.testing.assert_close(gc_, p.grad, rtol=1e-3, atol=1e-5)
    # inference inside compile: auto picks flex (traced into the graph) and agrees with eager gather
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("shape, c, heads, grid, topk", [((8, 8, 8), 16, 2, 2, 3), ((5, 7, 6), 32, 2, (2, 3, 3), 4)])
def test_flex_gradients_match_reference_cuda(shape, c, heads, grid, topk):
    torch.backends.cuda.matmul.allow_tf32 = False
    q, k, v = (t.detach().float().cuda().requires_grad_(True) for t in _qkv(2, c, shape))
    routing = compute_routing(q, k, grid, topk)
    out = routed_attention(q, k, v, heads, grid, topk, backend="flex", routing=routing)
    ref = routed_attention_reference(q, k, v, heads, grid, routing)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    go = torch.randn_like(out)
    for a, r in zip(torch.autograd.grad(out, (q, k, v), go), torch.autograd.grad(ref, (q, k, v), go)):
        torch.testing.assert_close(a, r, rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
def test_gather_and_flex_agree_cuda_fp16_autocast():
    m = RoutedAttention(32, 2, 4, 8, conv_op=nn.Conv3d).cuda()
    x = torch.randn(2, 32, 16, 16, 16, device="cuda") * 20
    with torch.autocast("cuda", dtype=torch.float16):
        y_flex = m(x)
        m.backend = "gather"
        y_gather = m(x)
    assert torch.isfinite(y_flex).all() and torch.isfinite(y_gather).all()
    torch.testing.assert_close(y_flex.float(), y_gather.float(), rtol=2e-2, atol=2e-2)
    y_flex.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
