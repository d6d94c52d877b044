"""Work the networks no longer do per forward, pinned (the speed itself is measured in benchmarks/network_speed.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from plans_cases import PLANS_CASES

from nnunet_sparseattn.architectures.bilateral import BilateralUNet
from nnunet_sparseattn.architectures.mdsa import MDSAUNet
from nnunet_sparseattn.layers import conv as conv_module
from nnunet_sparseattn.layers.conv import CHANNELS_LAST, DEPTHWISE, PLAIN, GroupedConv2d, GroupedConv3d, grouped_conv_op
from nnunet_sparseattn.layers.multiscale_attention import MultiScaleAggregation
from nnunet_sparseattn.layers.routing import region_layout


@pytest.mark.parametrize("conv_op,grouped", [(nn.Conv2d, GroupedConv2d), (nn.Conv3d, GroupedConv3d)])
def test_grouped_convolutions_give_the_plain_result_in_channels_last(conv_op, grouped):
    assert grouped_conv_op(conv_op) is grouped and issubclass(grouped, conv_op)  # He init and isinstance still apply
    torch.manual_seed(0)
    shape = (2, 8, 6, 7, 5)[: 2 + (3 if conv_op is nn.Conv3d else 2)]
    plain = conv_op(8, 8, 3, padding=1, groups=4)
    fast = grouped(8, 8, 3, padding=1, groups=4)
    fast.load_state_dict(plain.state_dict())  # same keys
    x = torch.randn(*shape, requires_grad=True)
    out = fast(x)
    assert out.is_contiguous()  # the layout goes back: the next layer sees what it saw before
    torch.testing.assert_close(out, plain(x))
    (g_fast,) = torch.autograd.grad(out.square().sum(), x)
    (g_plain,) = torch.autograd.grad(plain(x).square().sum(), x)
    torch.testing.assert_close(g_fast, g_plain)


@pytest.mark.parametrize(
    "ndim,groups,kernel,stride,training,path",
    [
        (3, 8, 3, 1, True, DEPTHWISE),  # depthwise 3D: channels-last and the backward of forward convolutions
        (3, 8, (1, 3, 3), 1, True, DEPTHWISE),  # anisotropic plans' kernels too
        (3, 4, 3, 1, True, CHANNELS_LAST),  # grouped 3D (ResNeXt)
        (3, 4, 3, 2, True, CHANNELS_LAST),  # strided too
        (3, 8, 3, 1, False, PLAIN),  # inference: no backward to gain in
        (2, 8, 7, 1, True, DEPTHWISE),  # 2D depthwise 7x7 (MDSA's aggregation): the fast backward, plain layout
        (2, 8, 3, 1, True, PLAIN),  # 2D depthwise 3x3: torch's own backward is faster
        (2, 4, 3, 1, True, CHANNELS_LAST),  # 2D grouped
        (2, 4, 3, 2, True, PLAIN),  # 2D grouped, strided: the copy of the larger input costs more than it gains
        (2, 8, 7, 1, False, PLAIN),
    ],
)
def test_each_grouped_convolution_takes_its_measured_path_and_gives_the_plain_result(
    ndim, groups, kernel, stride, training, path, monkeypatch
):
    torch.manual_seed(0)
    conv_op = nn.Conv3d if ndim == 3 else nn.Conv2d
    kernels = (kernel,) * ndim if isinstance(kernel, int) else kernel
    padding = tuple(k // 2 for k in kernels)
    plain = conv_op(8, 8, kernel, stride=stride, padding=padding, groups=groups).double()
    fast = grouped_conv_op(conv_op)(8, 8, kernel, stride=stride, padding=padding, groups=groups).double()
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(2, 8, *(7, 9, 6)[:ndim], dtype=torch.float64, requires_grad=True)
    taken = []
    real = conv_module._CPUConvolution._cpu_path
    monkeypatch.setattr(conv_module._CPUConvolution, "_cpu_path", lambda *a: taken.append(real(*a)) or taken[-1])
    with torch.set_grad_enabled(training):
        out = fast(x)
    assert taken == [path] and out.is_contiguous()  # the layout goes back: the next layer sees what it saw before
    torch.testing.assert_close(out, plain(x))
    if training:  # float64: the gradients of the fast paths are the plain convolution's, not just close in fp32
        g = torch.randn_like(out)
        ours = torch.autograd.grad(out, (x, fast.weight, fast.bias), g)
        theirs = torch.autograd.grad(plain(x), (x, plain.weight, plain.bias), g)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("network", [MDSAUNet, BilateralUNet])
def test_every_grouped_convolution_of_the_networks_takes_the_fast_path(network):
    kw, patch = PLANS_CASES["hippocampus_3d"]
    net = network.from_plans(kw, patch, 1, 3, True)
    grouped = [m for m in net.modules() if isinstance(m, nn.Conv3d) and m.groups > 1]
    assert grouped and all(isinstance(m, GroupedConv3d) for m in grouped)


def test_multiscale_aggregation_is_one_convolution(monkeypatch):
    torch.manual_seed(0)
    agg = MultiScaleAggregation(8, nn.Conv3d, "dwconv", (3, 5, 7))
    x = torch.randn(2, 8, 6, 9, 7)
    calls = []
    real = GroupedConv3d._conv_forward

    def counting(self, *args):
        calls.append(self)
        return real(self, *args)

    monkeypatch.setattr(GroupedConv3d, "_conv_forward", counting)
    out = agg(x)
    assert len(calls) == 1  # not one pass per scale
    reference = x + sum(F.conv3d(x, b.weight, b.bias, padding=b.padding, groups=8) for b in agg.branches)
    torch.testing.assert_close(out, agg.norm(reference), rtol=1e-5, atol=1e-5)
    out.square().mean().backward()
    assert all(b.weight.grad is not None and b.weight.grad.abs().sum() > 0 for b in agg.branches)


def test_region_bookkeeping_is_built_once_per_shape():
    first, again = region_layout((10, 14, 10), (3, 4, 3)), region_layout([10, 14, 10], [3, 4, 3])
    assert first is again
    assert first.token_valid() is again.token_valid() and first.region_counts() is again.region_counts()


def _ops(fn) -> list[str]:
    """The aten operators that ``fn()`` runs (torch.profiler's CPU events, views included)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events() if e.name.startswith("aten::")]


def test_swin_additive_mask_is_built_once_per_shape_and_each_forward_only_adds_it(monkeypatch):
    from nnunet_sparseattn.layers import shapes, window_attention
    from nnunet_sparseattn.layers.window_attention import SwinBlock, window_attention_mask

    monkeypatch.setattr(shapes, "_CONSTANTS", {})
    args = ((5, 6), (6, 8), (3, 4), (1, 2))
    bias = window_attention_mask(*args, additive=True)
    assert window_attention_mask(*args, additive=True) is bias  # cached: the same tensor for every forward there
    allowed = window_attention_mask(*args)
    torch.testing.assert_close(bias, torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf")), rtol=0, atol=0)
    block = SwinBlock(16, 2, (3, 4), shift=True)
    x = torch.randn(2, 5, 6, 16)
    block(x)  # builds it for this block's shape
    built = []
    real = window_attention._build_window_mask
    monkeypatch.setattr(window_attention, "_build_window_mask", lambda *a: built.append(a) or real(*a))
    ops = _ops(lambda: block(x))
    assert built == [] and "aten::masked_fill" not in ops  # no mask work per forward: the bias is added to it


def test_region_values_are_spread_to_their_tokens_in_one_copy():
    from nnunet_sparseattn.layers.bilevel_attention import upsample_regions

    for spatial, grid in (((8, 12, 8), (2, 3, 2)), ((7, 10, 5), (2, 3, 2))):  # whole regions, and padded ones
        layout = region_layout(spatial, grid)
        values = torch.randn(2, layout.num_regions, 4)
        ops = _ops(lambda v=values, lo=layout: upsample_regions(v, lo))
        assert ops.count("aten::copy_") == 1 and "aten::repeat_interleave" not in ops  # not one copy per axis
        reference = values.transpose(1, 2).reshape(2, 4, *layout.grid)
        for axis, (r, s) in enumerate(zip(layout.region, spatial)):
            reference = reference.repeat_interleave(r, dim=2 + axis).narrow(2 + axis, 0, s)
        torch.testing.assert_close(upsample_regions(values, layout), reference, rtol=0, atol=0)


def test_multiscale_kernel_gets_its_identity_in_place_not_from_a_kernel_of_zeros():
    torch.manual_seed(0)
    agg = MultiScaleAggregation(8, nn.Conv3d, "dwconv", (3, 5, 7))
    ops = _ops(agg.dwconv_kernel)
    assert "aten::zeros_like" not in ops and "aten::zeros" not in ops
    weight, bias = agg.dwconv_kernel()
    identity = torch.zeros_like(weight)
    identity[:, :, 3, 3, 3] = 1.0
    summed = sum(F.pad(b.weight, [(7 - k) // 2] * 6) for k, b in zip((3, 5, 7), agg.branches))
    torch.testing.assert_close(weight, summed + identity, rtol=0, atol=0)
    torch.testing.assert_close(bias, sum(b.bias for b in agg.branches), rtol=0, atol=0)
