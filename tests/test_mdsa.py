"""MDSA-UNet: EDM/EUF and MDSA held to references, the network on real and harder plans, training, trainers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from plans_cases import PLANS_CASES, dataset_json, plans_for

from nnunet_sparseattn.architectures.base import PlansError, stage_shapes
from nnunet_sparseattn.architectures.mdsa import (
    PAPER_FLOPS,
    PAPER_INPUT,
    PAPER_PARAMS,
    MDSAUNet,
    mdsa_paper_network,
)
from nnunet_sparseattn.layers import compute_routing, routed_attention_reference
from nnunet_sparseattn.layers.multiscale_attention import (
    ChannelLayerNorm,
    MDSABlock,
    MultiScaleAggregation,
    MultiScaleDynamicSparseAttention,
    auto_grid,
    num_heads_for,
)
from nnunet_sparseattn.layers.resampling import EnhancedDownsampling, EnhancedUpsampling, space_to_depth
from nnunet_sparseattn.plans import variant_plans

CONV = {2: nn.Conv2d, 3: nn.Conv3d}


# ------------------------------------------------------------------------------------------------ space-to-depth
@pytest.mark.parametrize(
    "shape,factors", [((5, 7), (2, 3)), ((3, 5, 4), (1, 2, 2)), ((4, 6, 6), (2, 2, 2)), ((5, 9, 7), (3, 1, 2))]
)
def test_space_to_depth_matches_an_explicit_loop(shape, factors):
    x = torch.randn(2, 3, *shape)
    y = space_to_depth(x, factors)
    out_shape = tuple(math.ceil(s / f) for s, f in zip(shape, factors))
    assert tuple(y.shape) == (2, 3 * math.prod(factors), *out_shape)
    padded = torch.zeros(2, 3, *(o * f for o, f in zip(out_shape, factors)))
    padded[(slice(None), slice(None)) + tuple(slice(0, s) for s in shape)] = x
    offsets = list(np.ndindex(*factors))  # row-major offset inside a block
    for c in range(3):
        for j, offset in enumerate(offsets):
            sel = tuple(slice(o, None, f) for o, f in zip(offset, factors))
            assert torch.equal(y[:, c * len(offsets) + j], padded[(slice(None), c) + sel])


# ------------------------------------------------------------------------------------------------ EDM and EUF
@pytest.mark.parametrize("branch", ["conv", "maxpool"])
@pytest.mark.parametrize(
    "shape,stride",
    [((7, 9), (2, 2)), ((5, 9, 7), (1, 2, 2)), ((5, 6, 7), (2, 2, 2)), ((9, 10), (3, 2)), ((6, 5, 4), (1, 1, 1))],
)
def test_edm_and_euf_shapes_on_odd_sizes_and_anisotropic_strides(shape, stride, branch):
    conv = CONV[len(shape)]
    norm = nn.InstanceNorm2d if len(shape) == 2 else nn.InstanceNorm3d
    edm = EnhancedDownsampling(4, 8, stride, conv, 3, branch, norm, {"affine": True})
    euf = EnhancedUpsampling(8, 4, 4, stride, conv, 3, norm, {"affine": True}, nn.LeakyReLU)
    x = torch.randn(2, 4, *shape, requires_grad=True)
    down = edm(x)
    assert tuple(down.shape) == (2, 8, *(math.ceil(s / st) for s, st in zip(shape, stride)))
    assert edm.output_size(shape) == tuple(down.shape[2:])
    up = euf(down, x)
    assert tuple(up.shape) == (2, 4, *shape)  # back to the skip's size (cropped at the end)
    up.square().mean().backward()
    missing = [n for m in (edm, euf) for n, p in m.named_parameters() if p.grad is None]
    assert not missing


def test_edm_is_the_normalised_sum_of_its_two_branches():
    torch.manual_seed(0)
    edm = EnhancedDownsampling(3, 5, (1, 2, 2), nn.Conv3d, (1, 3, 3), "conv", nn.InstanceNorm3d, {"affine": False})
    x = torch.randn(2, 3, 3, 7, 6)
    # the s2d branch by hand: block pixels -> channels -> 1x1 conv as a matrix product
    xp = F.pad(x, (0, 0, 0, 1))  # 7 -> 8 on the H axis
    blocks = xp.reshape(2, 3, 3, 4, 2, 3, 2).permute(0, 1, 4, 6, 2, 3, 5).reshape(2, 12, 3, 4, 3)
    merged = torch.einsum("oc,bcdhw->bodhw", edm.merge.weight[:, :, 0, 0, 0], blocks)
    local = F.conv3d(x, edm.local.weight, stride=(1, 2, 2), padding=(0, 1, 1))
    assert edm.kernel_size == (1, 3, 3)
    torch.testing.assert_close(edm(x), F.instance_norm(merged + local), atol=1e-5, rtol=1e-5)


def test_edm_kernel_covers_the_stride_and_refuses_bad_arguments():
    assert EnhancedDownsampling(2, 2, (1, 4, 2), nn.Conv3d, (1, 3, 3)).kernel_size == (1, 5, 3)
    with pytest.raises(ValueError, match="local_branch"):
        EnhancedDownsampling(2, 2, 2, nn.Conv2d, local_branch="avg")
    with pytest.raises(ValueError, match="stride"):
        EnhancedDownsampling(2, 2, (2, 2, 2), nn.Conv2d)
    with pytest.raises(ValueError, match="conv_op"):
        EnhancedDownsampling(2, 2, 2, nn.Linear)


def test_euf_is_gated_fusion_plus_the_upsampled_map_and_refuses_foreign_skips():
    torch.manual_seed(0)
    euf = EnhancedUpsampling(6, 3, 4, (2, 2), nn.Conv2d, 3, None, None, nn.ReLU)
    x, skip = torch.randn(2, 6, 4, 5), torch.randn(2, 3, 7, 9)
    u = F.conv_transpose2d(x, euf.up.weight, stride=2)[..., :7, :9]
    f = F.relu(F.conv2d(torch.cat([u, skip], 1), euf.fuse.weight, padding=1))
    gate = torch.sigmoid(euf.gate.mlp.fc2(F.relu(euf.gate.mlp.fc1(f.mean((2, 3), keepdim=True)))))
    assert gate.shape == (2, 4, 1, 1) and bool(((gate > 0) & (gate < 1)).all())
    torch.testing.assert_close(euf(x, skip), f * gate + u)
    with pytest.raises(ValueError, match="skip size"):
        euf(x, torch.randn(2, 3, 6, 9))  # ceil(6 / 2) = 3 != 4
    with pytest.raises(ValueError, match="EUF expects"):
        euf(x, torch.randn(2, 5, 7, 9))


# ------------------------------------------------------------------------------------------------ MDSA
def _mdsa(shape, aggregation, topk, grid=None, channels=8, heads=2, seed=0):
    torch.manual_seed(seed)
    m = MultiScaleDynamicSparseAttention(
        channels, heads, CONV[len(shape)], grid, topk, aggregation, backend="gather"
    ).double()
    return m, torch.randn(2, channels, *shape, dtype=torch.float64)


@pytest.mark.parametrize("aggregation", ["dwconv", "pool"])
@pytest.mark.parametrize(
    "shape,grid,topk", [((9, 11), (3, 3), 3), ((5, 7, 6), (2, 3, 2), 4), ((16, 24), None, 2), ((6, 9, 5), (3, 3, 3), 5)]
)
def test_mdsa_equals_dense_attention_masked_to_its_routing(shape, grid, topk, aggregation):
    m, x = _mdsa(shape, aggregation, topk, grid)
    q = m.q(x)
    a = m.aggregate(x)
    k, v = m.kv(a).chunk(2, 1)
    regions = grid or auto_grid(shape)
    routing = compute_routing(q, k, regions, topk)
    attn = routed_attention_reference(q, k, v, 2, regions, routing)
    local = v if v.shape[2:] == x.shape[2:] else F.interpolate(v, size=shape, mode="nearest")
    expected = m.proj(attn + m.lce(local))
    torch.testing.assert_close(m(x), expected, atol=1e-9, rtol=1e-9)
    if aggregation == "pool":  # the pooled reading attends to a smaller key/value map
        assert tuple(k.shape[2:]) == tuple(math.ceil(s / 2) for s in shape)
    # filtering really happens: some key regions are excluded for some query
    assert routing.shape[-1] == topk and not m.is_dense(shape)


def test_dwconv_aggregation_is_x_plus_its_depthwise_convolutions_normalised():
    torch.manual_seed(0)
    agg = MultiScaleAggregation(4, nn.Conv3d, "dwconv", (3, 5))
    x = torch.randn(2, 4, 5, 6, 7)
    s = x + sum(F.conv3d(x, b.weight, b.bias, padding=b.kernel_size[0] // 2, groups=4) for b in agg.branches)
    ref = F.layer_norm(s.movedim(1, -1), (4,), agg.norm.weight, agg.norm.bias, 1e-6).movedim(-1, 1)
    torch.testing.assert_close(agg(x), ref)


def test_pool_aggregation_sums_pooled_scales_on_the_finest_pooled_grid():
    torch.manual_seed(0)
    agg = MultiScaleAggregation(4, nn.Conv2d, "pool", (2, 4))
    with torch.no_grad():
        agg.norm.weight.fill_(1.0)
    x = torch.randn(1, 4, 8, 16)
    fine = F.conv2d(F.avg_pool2d(x, 2), agg.branches[0].weight, agg.branches[0].bias, padding=1, groups=4)
    coarse = F.conv2d(F.avg_pool2d(x, 4), agg.branches[1].weight, agg.branches[1].bias, padding=1, groups=4)
    s = fine + coarse.repeat_interleave(2, -1).repeat_interleave(2, -2)
    ref = F.layer_norm(s.movedim(1, -1), (4,), eps=1e-6).movedim(-1, 1)
    torch.testing.assert_close(agg(x), ref)
    assert agg.output_size((7, 5)) == (4, 3)  # odd sizes: ceil(S / 2)


def test_mdsa_is_dense_where_top_k_keeps_every_region():
    m, x = _mdsa((5, 7, 5), "dwconv", topk=8)  # auto grid (2, 2, 2): 8 regions, top-8 keeps all
    assert m.is_dense((5, 7, 5)) and not m.is_dense((10, 14, 10))
    # dense here equals plain softmax attention over every token
    q, (k, v) = m.q(x), m.kv(m.aggregate(x)).chunk(2, 1)
    everything = torch.arange(8).expand(2, 8, 8)
    attn = routed_attention_reference(q, k, v, 2, auto_grid((5, 7, 5)), everything)
    torch.testing.assert_close(m(x), m.proj(attn + m.lce(v)), atol=1e-9, rtol=1e-9)


def test_auto_grid_gives_64_token_regions_and_heads_of_32_channels():
    assert auto_grid((56, 56)) == (7, 7) and auto_grid((10, 14, 10)) == (3, 4, 3) and auto_grid((1, 3)) == (1, 1)
    assert [num_heads_for(c) for c in (8, 32, 96, 128, 320)] == [1, 1, 3, 4, 10]


def test_channel_layer_norm_normalises_each_token_over_channels():
    norm = ChannelLayerNorm(6)
    x = torch.randn(2, 6, 3, 4) * 5 + 2
    y = norm(x)
    torch.testing.assert_close(y.mean(1), torch.zeros(2, 3, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(1, unbiased=False), torch.ones(2, 3, 4), atol=1e-3, rtol=0)


@pytest.mark.parametrize("aggregation", ["dwconv", "pool"])
def test_mdsa_block_trains_every_parameter_and_is_a_residual_block(aggregation):
    torch.manual_seed(0)
    block = MDSABlock(16, 2, nn.Conv3d, None, 2, aggregation)
    x = torch.randn(2, 16, 6, 9, 7)
    block(x).square().mean().backward()
    assert not [n for n, p in block.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    block.reset_parameters()
    assert abs(block.mlp.fc1.weight.std().item() - 0.02) < 0.005
    # zero residual branches: identity
    for m in (block.pos, block.attn.proj, block.mlp.fc2):
        nn.init.zeros_(m.weight), nn.init.zeros_(m.bias)
    torch.testing.assert_close(block(x), x)


def test_mdsa_under_autocast_matches_float32():
    torch.manual_seed(0)
    block = MDSABlock(16, 2, nn.Conv2d, (3, 3), 2)
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        ref, ref_attn = block(x), block.attn(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, low_attn = block(x), block.attn(x)
    assert low_attn.dtype == torch.bfloat16  # the attention really ran in low precision
    assert torch.isfinite(low).all()
    torch.testing.assert_close(low_attn.float(), ref_attn, atol=0.05, rtol=0.05)
    torch.testing.assert_close(low.float(), ref, atol=0.1, rtol=0.05)


# ------------------------------------------------------------------------------------------------ the network
def _slim(case: str, divisor: int = 4):
    """A plans case with its widths cut (shapes, stages, strides and kernels kept): fast CPU tests."""
    kwargs, patch = PLANS_CASES[case]
    kwargs = dict(kwargs, features_per_stage=[max(8, f // divisor) for f in kwargs["features_per_stage"]])
    return kwargs, patch


def _net(case: str, deep_supervision=True, divisor=4, seed=0, **overrides):
    torch.manual_seed(seed)
    kwargs, patch = _slim(case, divisor)
    in_ch = 3 if len(patch) == 2 else 1
    net = MDSAUNet.from_plans(kwargs, patch, in_ch, 3, deep_supervision, overrides=overrides or None)
    return net, patch, in_ch


@pytest.mark.parametrize(
    "case",
    ["hippocampus_3d", "hippocampus_2d", "hippocampus_resenc_3d", "five_stage_3d", "seven_stage_2d", "anisotropic_3d"],
)
def test_shapes_and_deep_supervision_on_real_and_harder_plans(case):
    net, patch, in_ch = _net(case, divisor=8)
    kwargs, _ = PLANS_CASES[case]
    shapes = stage_shapes(patch, kwargs["strides"])
    n = kwargs["n_stages"]
    with torch.no_grad():
        out = net(torch.randn(1, in_ch, *patch))
        assert len(out) == n - 1
        assert [tuple(o.shape[2:]) for o in out] == shapes[: n - 1]
        net.decoder.deep_supervision = False
        assert tuple(net(torch.randn(1, in_ch, *patch)).shape) == (1, 3, *patch)
    assert net.attention_stages == list(range(min(2, n - 1), n))
    # stage strides reach EDM as the plans give them, anisotropic included
    for s in range(1, n):
        assert net.encoder.stages[s][0].stride == tuple(kwargs["strides"][s])


def test_odd_input_sizes_come_back_at_their_own_size():
    net, _, _ = _net("hippocampus_3d", deep_supervision=False, divisor=8)
    with torch.no_grad():
        assert tuple(net(torch.randn(1, 1, 37, 41, 29)).shape) == (1, 3, 37, 41, 29)


@pytest.mark.parametrize("case", ["hippocampus_3d", "anisotropic_3d", "seven_stage_2d"])
def test_variant_plans_record_the_grids_chosen_for_the_patch(case):
    plans = variant_plans(plans_for(PLANS_CASES[case]), "mdsa")
    conf = next(iter(plans["configurations"].values()))
    arch = conf["architecture"]
    assert arch["network_class_name"] == "nnunet_sparseattn.architectures.mdsa.MDSAUNet"
    own = arch["arch_kwargs"]
    json.dumps(own)  # a plans file must hold it
    shapes = stage_shapes(conf["patch_size"], own["strides"])
    assert own["grids"][:2] == [None, None]
    assert own["grids"][2:] == [list(auto_grid(s)) for s in shapes[2:]]
    assert own["topk"] == 8 and own["aggregation"] == "dwconv"


def test_hippocampus_regions_attention_stages_and_dense_bottleneck():
    net, _, _ = _net("hippocampus_3d")
    assert net.attention_stages == [2, 3]
    block2, block3 = net.encoder.stages[2][1], net.encoder.stages[3][1]
    assert block2.attn.grid == (3, 4, 3) and not block2.attn.is_dense((10, 14, 10))
    assert block3.attn.is_dense((5, 7, 5))  # 8 regions, top-8: nothing to filter at the bottleneck
    assert isinstance(net.decoder.stages[0][0], MDSABlock)  # decoder at 1/4 attends too
    assert not isinstance(net.decoder.stages[-1], MDSABlock)


def test_state_dicts_load_strictly_with_deep_supervision_on_and_off():
    on, patch, c = _net("hippocampus_2d", deep_supervision=True, seed=0)
    off, _, _ = _net("hippocampus_2d", deep_supervision=False, seed=1)
    assert set(on.state_dict()) == set(off.state_dict())
    off.load_state_dict(on.state_dict(), strict=True)
    on.eval(), off.eval()
    on.decoder.deep_supervision = False
    x = torch.randn(1, c, *patch)
    with torch.no_grad():
        torch.testing.assert_close(off(x), on(x))


def test_initialisation_he_for_convolutions_transformer_init_for_attention():
    net, _, _ = _net("hippocampus_3d", divisor=1)
    attn_block = net.encoder.stages[2][1]
    assert abs(attn_block.attn.q.weight.std().item() - 0.02) < 0.004
    conv = net.encoder.stages[0][0].convs[0].conv
    fan_in = conv.weight[0].numel()
    assert abs(conv.weight.std().item() - math.sqrt(2 / fan_in)) < 0.2 * math.sqrt(2 / fan_in)


def test_feature_map_size_grows_with_the_input_and_counts_deep_supervision():
    net, patch, _ = _net("hippocampus_3d")
    size = int(net.compute_conv_feature_map_size(list(patch)))
    assert 0 < size < int(net.compute_conv_feature_map_size([2 * p for p in patch]))
    net.decoder.deep_supervision = False
    assert int(net.compute_conv_feature_map_size(list(patch))) < size
    with pytest.raises(ValueError, match="spatial sizes"):
        net.compute_conv_feature_map_size([1, 40, 56, 40])


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"aggregation": "mean"}, "aggregation"),
        ({"grids": [[2, 2, 2]]}, "grids"),
        ({"grids": [None, None, [2, 2], None]}, r"grids\[2\]"),
        ({"topk": [8, 8]}, "topk"),
        ({"aggregation_scales": [2, 4]}, "odd"),
        ({"attention_from_stage": -1}, "attention_from_stage"),
        ({"lce_kernel_size": 4}, "lce_kernel_size"),
        ({"window": 7}, "no argument"),
    ],
)
def test_bad_settings_are_refused_in_one_line(overrides, message):
    kwargs, patch = PLANS_CASES["hippocampus_3d"]
    with pytest.raises(PlansError, match=message) as info:
        MDSAUNet.from_plans(kwargs, patch, 1, 3, True, overrides=overrides)
    assert "\n" not in str(info.value)


def test_pool_reading_and_maxpool_edm_build_and_run():
    net, patch, c = _net(
        "hippocampus_2d",
        aggregation="pool",
        aggregation_scales=[2, 4],
        edm_local_branch="maxpool",
        attention_from_stage=1,
        topk=[0, 4, 4, 0],
    )
    assert net.attention_stages == [1, 2, 3]
    out = net(torch.randn(1, c, *patch))
    sum(o.square().mean() for o in out).backward()
    assert not [n for n, p in net.named_parameters() if p.grad is None]


def _dice_ce(case_outputs, targets):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    # nnU-Net's own training loss (nnUNetTrainer._build_loss with its deep-supervision weights)
    loss = DC_and_CE_loss(
        {"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False},
        {},
        1,
        1,
        dice_class=MemoryEfficientSoftDiceLoss,
    )
    weights = np.array([1 / 2**i for i in range(len(targets))])
    weights[-1] = 0
    return DeepSupervisionWrapper(loss, weights / weights.sum())(case_outputs, targets)


@pytest.mark.parametrize("case", ["hippocampus_2d", "hippocampus_3d"])
def test_loss_decreases_on_a_fixed_batch(case):
    kwargs, _ = _slim(case, 4)
    patch = (32, 32) if case.endswith("2d") else (16, 24, 16)  # small patches, the plans' stages and strides
    ndim = len(patch)
    torch.manual_seed(0)
    # 2^ndim regions at 1/4 with top-2: the sparse path trains, not only dense attention
    net = MDSAUNet.from_plans(kwargs, patch, 1, 3, True, overrides={"grids": [None, None, [2] * ndim, None], "topk": 2})
    assert not net.encoder.stages[2][1].attn.is_dense(stage_shapes(patch, kwargs["strides"])[2])
    c = 1
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, c, *patch, generator=g)
    # a learnable target: a blob whose class depends on the image's local mean
    smooth = F.avg_pool2d(x, 5, 1, 2) if len(patch) == 2 else F.avg_pool3d(x, 5, 1, 2)
    label = (smooth.mean(1, keepdim=True) > 0).float() + (smooth.mean(1, keepdim=True) > 0.3).float()
    targets = []
    for shape in stage_shapes(patch, kwargs["strides"])[:-1]:
        targets.append(F.interpolate(label, size=shape, mode="nearest"))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = _dice_ce(net(x), targets)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses


# ------------------------------------------------------------------------------------------------ paper scale
@pytest.mark.slow  # ~10 s: a full 224 x 224 forward under the FLOP counter
def test_paper_configuration_scale_and_shapes():
    from nnunet_sparseattn.complexity import count_flops, count_parameters

    net = mdsa_paper_network()
    params = count_parameters(net)
    assert abs(params - PAPER_PARAMS) / PAPER_PARAMS < 0.05, params
    macs = count_flops(net, PAPER_INPUT) / 2  # flop_counter counts 2 per multiply-add; the paper counts MACs
    assert abs(macs - PAPER_FLOPS) / PAPER_FLOPS < 0.10, macs
    with torch.no_grad():
        assert tuple(net.eval()(torch.randn(1, 3, 97, 130)).shape) == (1, 2, 97, 130)


# ------------------------------------------------------------------------------------------------ trainers
def test_trainers_ship_with_short_variants_and_reuse_the_nb_loss():
    from nnunet_sparseattn import trainers
    from nnunet_sparseattn.trainers import nnUNetTrainerNB
    from nnunet_sparseattn.trainers.mdsa import nnUNetTrainerMDSA, nnUNetTrainerMDSA_NB

    for name in (
        "nnUNetTrainerMDSA",
        "nnUNetTrainerMDSA_NB",
        "nnUNetTrainerMDSA_debug",
        "nnUNetTrainerMDSA_demo",
        "nnUNetTrainerMDSA_NB_debug",
        "nnUNetTrainerMDSA_NB_demo",
    ):
        assert name in trainers.__all__ and hasattr(trainers, name)
    assert nnUNetTrainerMDSA_NB._build_loss is nnUNetTrainerNB._build_loss
    assert (
        nnUNetTrainerMDSA_NB.build_network_architecture.__func__
        is nnUNetTrainerMDSA.build_network_architecture.__func__
    )
    assert nnUNetTrainerMDSA.network_class is MDSAUNet


@pytest.mark.parametrize("trainer_name", ["nnUNetTrainerMDSA_debug", "nnUNetTrainerMDSA_NB_debug"])
def test_trainer_takes_a_training_step_on_default_2d_plans(trainer_name, trainer_without_data):
    from nnunet_sparseattn import trainers
    from nnunet_sparseattn.losses import NarrowBandCompoundLoss

    kwargs, patch = _slim("hippocampus_2d", 4)
    plans = plans_for((kwargs, patch))
    conf = plans["configurations"]["2d"]
    conf.update(
        batch_size=2,
        normalization_schemes=["ZScoreNormalization"],
        use_mask_for_norm=[False],
        median_image_size_in_voxels=list(patch),
        resampling_fn_data="resample_data_or_seg_to_shape",
        resampling_fn_seg="resample_data_or_seg_to_shape",
        resampling_fn_data_kwargs={},
        resampling_fn_seg_kwargs={},
        resampling_fn_probabilities="resample_data_or_seg_to_shape",
        resampling_fn_probabilities_kwargs={},
    )
    plans.update(
        original_median_spacing_after_transp=[1.0, 1.0],
        transpose_forward=[0, 1, 2],
        transpose_backward=[0, 1, 2],
        image_reader_writer="NaturalImage2DIO",
        foreground_intensity_properties_per_channel={},
    )
    meta = dataset_json(channels="RGB", file_ending=".png", num_training=5)
    trainer = trainer_without_data(getattr(trainers, trainer_name), plans, "2d", meta)
    assert isinstance(trainer.network, MDSAUNet)
    assert isinstance(trainer.loss, NarrowBandCompoundLoss) == trainer_name.startswith("nnUNetTrainerMDSA_NB")
    data = torch.randn(2, 3, *patch)
    outputs = trainer.network(data)
    targets = [torch.randint(0, 3, (2, 1, *o.shape[2:])).float() for o in outputs]
    assert np.isfinite(trainer.train_step({"data": data, "target": targets})["loss"])
    # every parameter but the zero-weighted deepest head learns (nnU-Net's own deep-supervision weighting)
    unused = {id(p) for p in trainer.network.decoder.seg_layers[0].parameters()}
    assert all(p.grad is not None for p in trainer.network.parameters() if id(p) not in unused)


# ------------------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
def test_fp16_autocast_on_cuda_matches_float32():
    net, patch, c = _net("hippocampus_3d", deep_supervision=False, divisor=1)
    net = net.cuda().eval()
    x = torch.randn(2, c, *patch, device="cuda")
    with torch.no_grad():
        ref = net(x)
        with torch.autocast("cuda", dtype=torch.float16):
            half = net(x)
    assert torch.isfinite(half).all()
    agree = (half.float().argmax(1) == ref.argmax(1)).float().mean().item()
    assert agree > 0.99, agree
    torch.testing.assert_close(half.float(), ref, atol=5e-2, rtol=5e-2)


@pytest.mark.gpu
def test_cuda_training_step_under_fp16_autocast_trains_every_parameter():
    net, patch, c = _net("hippocampus_3d", divisor=1)
    net = net.cuda()
    scaler = torch.amp.GradScaler("cuda")
    x = torch.randn(2, c, *patch, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        loss = sum(o.float().square().mean() for o in net(x))
    scaler.scale(loss).backward()
    assert not [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
