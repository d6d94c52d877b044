"""Work the networks no longer do per forward, pinned (the speed itself is measured in benchmarks/network_speed.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from plans_cases import PLANS_CASES

from nnunet_sparseattn.architectures.bilateral import BilateralUNet
from nnunet_sparseattn.architectures.mdsa import MDSAUNet
from nnunet_sparseattn.layers.conv import GroupedConv2d, GroupedConv3d, grouped_conv_op
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
