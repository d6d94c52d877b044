"""The bilateral spatial attention network: its layers held to references, its network and trainer contracts.

nnU-Net's generic network contracts (deep-supervision outputs on real and harder plans, strict state-dict loads,
gradients for every parameter) are checked for every variant in ``test_architecture_contracts.py``; here: what is
particular to this network.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from plans_cases import PLANS_CASES, dataset_json, plain_arch, plans_for

from nnunet_sparseattn.architectures.base import PlansError, stage_shapes
from nnunet_sparseattn.architectures.bilateral import (
    PAPER_PARAMS,
    BilateralUNet,
    bilateral_paper_network,
    default_isam_stages,
    isam_widths,
)
from nnunet_sparseattn.layers.fsam import FSAM
from nnunet_sparseattn.layers.isam import ISAM
from nnunet_sparseattn.layers.point_rendering import (
    AttentionRendering,
    RenderedPoints,
    importance_sample_voxels,
    point_loss,
    top_uncertain_voxels,
    uncertainty,
)
from nnunet_sparseattn.layers.resnext import ResNeXtBlock, resnext_groups
from nnunet_sparseattn.layers.window_attention import (
    SwinBlock,
    fit_window,
    window_partition,
    window_reverse,
)

# ---------------------------------------------------------------------------------------------------------------
# window attention


def test_fit_window_takes_the_fewest_most_even_windows():
    assert fit_window((56, 40), 7) == (7, 7)  # 8 x 6 windows of 7
    assert fit_window((10, 14, 10), 7) == (5, 7, 5)  # 2 windows of 5 beat one padded window of 7
    assert fit_window((5, 3, 3), 7) == (5, 3, 3)  # a map smaller than the window: one window, no padding
    assert fit_window((64, 48), 7) == (7, 7)  # 10 windows (64 -> 70), 7 windows (48 -> 49)
    assert fit_window((20, 1), (7, 7)) == (7, 1)
    with pytest.raises(ValueError):
        fit_window((8, 8), (7, 7, 7))


@pytest.mark.parametrize("shape,window", [((6, 9), (3, 3)), ((4, 6, 10), (2, 3, 5))])
def test_window_partition_round_trip(shape, window):
    x = torch.randn(2, *shape, 5)
    windows = window_partition(x, window)
    assert windows.shape == (2, math.prod(s // w for s, w in zip(shape, window)), math.prod(window), 5)
    # the first window is the top-left-front block of the map
    first = x[(slice(None),) + tuple(slice(0, w) for w in window)].reshape(2, -1, 5)
    assert torch.equal(windows[:, 0], first)
    assert torch.equal(window_reverse(windows, window, shape), x)


def _dense_swin_reference(block: SwinBlock, x: torch.Tensor) -> torch.Tensor:
    """Swin block as dense attention over ALL tokens of the padded, rolled map with an explicit pairwise mask:
    same window, same side of the roll's wrap on every axis, key not padding. Shares only the block's weights."""
    spatial = x.shape[1:-1]
    window, ndim = block.window, len(spatial)
    shift = block.shifts(spatial)
    padded = [-(-s // w) * w for s, w in zip(spatial, window)]
    y = block.norm1(x)
    y = F.pad(y, [0, 0] + [v for s, p in zip(reversed(spatial), reversed(padded)) for v in (0, p - s)])
    y = torch.roll(y, [-s for s in shift], dims=tuple(range(1, ndim + 1)))
    pos = list(itertools.product(*[range(p) for p in padded]))  # rolled-frame positions, row-major
    n = len(pos)
    allowed = torch.zeros(n, n, dtype=torch.bool)
    bias_index = torch.zeros(n, n, dtype=torch.long)
    for i, p in enumerate(pos):
        for j, q in enumerate(pos):
            same_window = all(a // w == b // w for a, b, w in zip(p, q, window))
            same_side = all((a >= P - s) == (b >= P - s) if s else True for a, b, P, s in zip(p, q, padded, shift))
            valid_key = all((b + s) % P < S for b, s, P, S in zip(q, shift, padded, spatial))
            allowed[i, j] = (same_window and same_side and valid_key) or i == j
            idx = 0
            for a, b, w in zip(p, q, window):
                idx = idx * (2 * w - 1) + (a % w - b % w) + w - 1
            bias_index[i, j] = idx
    attn = block.attn
    h = attn.num_heads
    tokens = y.reshape(x.shape[0], n, -1)
    q, k, v = attn.qkv(tokens).reshape(x.shape[0], n, 3, h, -1).permute(2, 0, 3, 1, 4)
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    logits = logits + attn.relative_position_bias_table[bias_index].permute(2, 0, 1)
    logits = logits.masked_fill(~allowed, float("-inf"))
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(x.shape[0], n, -1)
    out = attn.proj(out).reshape(x.shape[0], *padded, -1)
    out = torch.roll(out, list(shift), dims=tuple(range(1, ndim + 1)))
    out = out[(slice(None),) + tuple(slice(0, s) for s in spatial)]
    x = x + out
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize(
    "spatial,window,shift",
    [
        ((6, 6), (3, 3), True),  # divides: Swin's own case
        ((7, 5), (3, 3), True),  # padded and shifted on both axes
        ((5, 7), (5, 3), True),  # one axis fits one window: not shifted there
        ((7, 5), (3, 3), False),  # padding alone
        ((4, 5, 3), (2, 3, 2), True),  # 3D, padded and shifted
        ((3, 4, 5), (3, 2, 2), False),
    ],
)
def test_swin_block_matches_a_dense_masked_reference(spatial, window, shift):
    torch.manual_seed(0)
    block = SwinBlock(8, 2, window, shift=shift)
    x = torch.randn(2, *spatial, 8)
    with torch.no_grad():
        expected = _dense_swin_reference(block, x)
        actual = block(x)
    assert torch.allclose(actual, expected, atol=1e-5), (actual - expected).abs().max()


@pytest.mark.parametrize("shift", [0, 3])
def test_swin_block_equals_timm_on_timm_weights(shift):
    """Same weights, same input: our block and timm's SwinTransformerBlock agree (window 7, 14 x 14 map)."""
    from timm.models.swin_transformer import SwinTransformerBlock

    torch.manual_seed(0)
    theirs = SwinTransformerBlock(32, (14, 14), num_heads=2, window_size=7, shift_size=shift).eval()
    ours = SwinBlock(32, 2, (7, 7), shift=bool(shift)).eval()
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=False)
    assert not missing, missing  # every one of our parameters has a timm counterpart
    assert all("relative_position_index" in k or "attn_mask" in k for k in unexpected), unexpected
    x = torch.randn(2, 14, 14, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_swin_block_keeps_float32_attention_under_autocast():
    torch.manual_seed(0)
    block = SwinBlock(16, 2, (3, 3, 3), shift=True)
    x = torch.randn(1, 5, 4, 6, 16) * 30  # large activations: large logits
    with torch.no_grad():
        reference = block(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = block(x)
    assert torch.isfinite(low).all()
    assert torch.allclose(low.float(), reference, rtol=0.05, atol=0.5)


# ---------------------------------------------------------------------------------------------------------------
# ISAM, FSAM, ResNeXt


def test_isam_is_a_residual_around_six_shifted_swin_blocks():
    torch.manual_seed(0)
    isam = ISAM(
        16, (3, 3), nn.Conv2d, dim=32, norm_op=nn.InstanceNorm2d, norm_op_kwargs={"affine": True}, nonlin=nn.ReLU
    )
    assert len(isam.blocks) == 6 and [b.shift for b in isam.blocks] == [False, True] * 3
    assert isam.num_heads == 1 and isinstance(isam.proj_in, nn.Conv2d)
    x = torch.randn(2, 16, 7, 5)
    y = isam(x)
    assert y.shape == x.shape
    # f = Conv(STB(...)) + f_0: the Swin blocks' output goes through the conv block, then the input is added
    swin = isam.proj_in(x).movedim(1, -1)
    for block in isam.blocks:
        swin = block(swin)
    assert torch.allclose(y, isam.conv(swin.movedim(-1, 1)) + x, atol=1e-6)
    with torch.no_grad():  # a conv block that outputs nothing leaves the input
        isam.conv[0].weight.zero_()
        assert torch.allclose(isam(x), x, atol=1e-6)


def test_fsam_dilated_conv_reaches_two_voxels_and_weights_the_input():
    torch.manual_seed(0)
    fsam = FSAM(8, nn.Conv3d, kernel_size=[1, 3, 3], norm_op=None, nonlin=None)
    # dilation 2 in-plane, none along an axis with kernel 1 (anisotropic plans)
    impulse = torch.zeros(1, 8, 3, 9, 9)
    impulse[0, :, 1, 4, 4] = 1
    with torch.no_grad():
        response = fsam.dconv[0](impulse).abs().sum(1)[0]
    hit = {tuple(int(v) - c for v, c in zip(idx, (1, 4, 4))) for idx in torch.nonzero(response > 1e-7)}
    assert hit == {(0, dy, dx) for dy in (-2, 0, 2) for dx in (-2, 0, 2)}
    # out = alpha * x + Conv(x), alpha from GAP and GMP of DConv(Conv(x)) through ONE shared MLP
    x = torch.randn(2, 8, 3, 6, 5)
    with torch.no_grad():
        u = fsam.conv(x)
        z = fsam.dconv(u)

        def mlp(v):
            return fsam.gate.mlp(v[..., None, None, None])

        alpha = torch.sigmoid(mlp(F.adaptive_avg_pool3d(z, 1).flatten(1)) + mlp(F.adaptive_max_pool3d(z, 1).flatten(1)))
        assert torch.allclose(fsam(x), alpha * x + u, atol=1e-6)
        fsam.weighted = "dilated"
        assert torch.allclose(fsam(x), alpha * z + u, atol=1e-6)
    with pytest.raises(ValueError, match="weighted"):
        FSAM(8, nn.Conv2d, weighted="both")


def test_resnext_cardinality_adapts_to_width():
    assert resnext_groups(128) == 32  # ResNeXt-50's 32 x 4d
    assert resnext_groups(16) == 4  # nnU-Net's 32-channel first stage: 4 paths of 4
    assert resnext_groups(160) == 32  # 320 channels: 32 x 5
    assert resnext_groups(8) == 2
    assert resnext_groups(6) == 1


@pytest.mark.parametrize("shape,stride", [((9, 7), (2, 2)), ((5, 9, 8), (1, 2, 2))])
def test_resnext_block_strides_like_a_same_padded_conv_on_odd_shapes(shape, stride):
    conv = nn.Conv2d if len(shape) == 2 else nn.Conv3d
    block = ResNeXtBlock(conv, 8, 32, 3, stride)
    assert block.conv2[0].groups == 4 and block.conv2[0].weight.shape[1] == 4
    y = block(torch.randn(2, 8, *shape))
    assert y.shape == (2, 32, *[-(-s // t) for s, t in zip(shape, stride)])


# ---------------------------------------------------------------------------------------------------------------
# attention rendering


def test_uncertainty_is_the_negated_top2_margin():
    logits = torch.tensor([[[3.0, 0.0]], [[1.0, 0.5]], [[-2.0, 0.4]]]).permute(1, 0, 2)  # (1, 3, 2)
    assert torch.allclose(uncertainty(logits), torch.tensor([[-2.0, -0.1]]))
    assert torch.allclose(uncertainty(torch.tensor([[[2.0, -0.5]]])), torch.tensor([[-2.0, -0.5]]))


def test_importance_sampling_takes_the_uncertain_voxels_first():
    torch.manual_seed(0)
    coarse = torch.zeros(2, 3, 6, 8)
    coarse[:, 0] = 10.0  # confident everywhere ...
    uncertain = torch.zeros(6, 8, dtype=torch.bool)
    uncertain[2:4, 3:6] = True  # ... except 6 voxels
    coarse[:, 0, uncertain] = 0.0
    index = importance_sample_voxels(coarse, num_points=8, oversample_ratio=48 / 8, importance_ratio=0.75)
    assert index.shape == (2, 8)
    for row in index:
        assert len(set(row.tolist())) == 8  # distinct voxels
        assert set(row[:6].tolist()) == set(torch.nonzero(uncertain.flatten()).flatten().tolist())
    # more points than voxels: every voxel once
    assert sorted(importance_sample_voxels(coarse, 1000)[0].tolist()) == list(range(48))


@pytest.mark.parametrize("spatial", [(9, 7), (4, 6, 5)])
def test_rendering_refines_only_the_top_n_uncertain_voxels_in_eval(spatial):
    torch.manual_seed(0)
    render = AttentionRendering(fine_channels=4, num_classes=3, train_points=10, eval_points=12).eval()
    with torch.no_grad():
        render.head.predictor.weight.normal_()  # a trained head: changes every voxel it sees
    coarse, fine = torch.randn(2, 3, *spatial), torch.randn(2, 4, *spatial)
    with torch.no_grad():
        refined, points = render(coarse, fine)
    assert isinstance(refined, torch.Tensor) and refined.shape == coarse.shape
    changed = (refined != coarse).any(1).flatten(1)  # (B, voxels)
    top = top_uncertain_voxels(coarse, 12)
    for b in range(2):
        assert set(torch.nonzero(changed[b]).flatten().tolist()) == set(top[b].tolist())
    assert torch.equal(points.index, top) and points.logits.shape == (2, 3, 12)
    assert torch.equal(refined.flatten(2).gather(2, top[:, None].expand(-1, 3, -1)), points.logits)


def test_untrained_point_head_leaves_the_prediction_almost_unchanged():
    torch.manual_seed(0)
    render = AttentionRendering(4, 2, eval_points=30).eval()
    coarse = torch.randn(1, 2, 8, 8)
    with torch.no_grad():
        refined, _ = render(coarse, torch.randn(1, 4, 8, 8))
    assert (refined - coarse).abs().max() < 0.05


def test_point_loss_is_cross_entropy_at_the_points():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 1, 5, 6)).float()
    index = torch.stack([torch.randperm(30)[:7] for _ in range(2)])
    logits = torch.randn(2, 3, 7)
    labels = target.flatten(1).gather(1, index).long()
    expected = F.cross_entropy(logits, labels)
    assert torch.allclose(point_loss(RenderedPoints(index, logits), target), expected)
    # ignore label: those points do not count
    target_ignore = target.clone()
    target_ignore.flatten(1).scatter_(1, index[:, :3], 4.0)
    kept = F.cross_entropy(logits[:, :, 3:], labels[:, 3:])
    assert torch.allclose(point_loss(RenderedPoints(index, logits), target_ignore, ignore_label=4), kept)
    all_ignored = torch.full_like(target, 4.0)
    assert point_loss(RenderedPoints(index, logits), all_ignored, ignore_label=4) == 0


def test_point_loss_for_regions_is_bce_without_ignored_points():
    torch.manual_seed(0)
    regions = (torch.rand(2, 2, 5, 6) > 0.5).float()
    ignore = torch.zeros(2, 1, 5, 6)
    ignore[:, :, 0] = 1  # first row ignored
    index = torch.stack([torch.randperm(30)[:9] for _ in range(2)])
    logits = torch.randn(2, 2, 9)
    target_at = regions.flatten(2).gather(2, index[:, None].expand(-1, 2, -1))
    valid = 1 - ignore.flatten(2).gather(2, index[:, None])
    bce = F.binary_cross_entropy_with_logits(logits, target_at, reduction="none")
    expected = (bce * valid).sum() / (valid.sum() * 2)
    got = point_loss(RenderedPoints(index, logits), torch.cat([regions, ignore], 1), regions=True, ignore_label=3)
    assert torch.allclose(got, expected)


# ---------------------------------------------------------------------------------------------------------------
# the network


def _tiny_plans(ndim: int) -> tuple[dict, tuple[int, ...]]:
    patch = (20, 24) if ndim == 2 else (8, 12, 16)
    return plain_arch(ndim, [8, 16, 32], [[3] * ndim] * 3, [[1] * ndim] + [[2] * ndim] * 2, n_conv=1), patch


def _tiny(ndim: int, deep_supervision: bool = True, **overrides) -> tuple[BilateralUNet, tuple[int, ...]]:
    plans, patch = _tiny_plans(ndim)
    overrides = {"isam_depth": 2, "head_dim": 8, **overrides}
    return BilateralUNet.from_plans(plans, patch, 2, 3, deep_supervision, overrides=overrides), patch


def test_attention_stages_and_windows_follow_the_patch():
    kwargs, patch = PLANS_CASES["hippocampus_3d"]
    resolved = BilateralUNet.resolve_arch_kwargs(kwargs, patch)
    shapes = stage_shapes(patch, kwargs["strides"])  # 40x56x40, 20x28x20, 10x14x10, 5x7x5
    assert resolved["isam_stages"] == [2, 3]  # 20x28x20 has 11200 tokens: more than 4096
    assert resolved["isam_windows"][2] == [5, 7, 5] and resolved["isam_windows"][3] == [5, 7, 5]
    assert len(resolved["isam_windows"]) == len(shapes)
    assert resolved["render_eval_points"] == 8192 and resolved["render_train_points"] == 2048  # caps < voxels / 8
    # the paper's 256 x 256 image: attention on the 64^2, 32^2 and 16^2 maps
    assert default_isam_stages(5, stage_shapes((256, 256), [[1, 1]] + [[2, 2]] * 4)) == [2, 3, 4]
    assert default_isam_stages(3, [(99, 99)] * 3) == [2]  # nothing small: the bottleneck
    assert isam_widths([32, 64, 128, 320], [1, 2, 3]) == [64, 128, 256]
    assert isam_widths([32, 64, 128, 320], [1, 2, 3], swin_embed_dim=96) == [96, 192, 384]
    assert isam_widths([32, 64, 128, 320], [2, 3], swin_embed_dim=96) == [192, 384]


def test_variant_plans_carry_the_attention_settings():
    from nnunet_sparseattn.plans import variant_plans

    plans = variant_plans(plans_for(PLANS_CASES["seven_stage_2d"]), "bilateral")
    arch = plans["configurations"]["2d"]["architecture"]
    assert arch["network_class_name"] == "nnunet_sparseattn.architectures.bilateral.BilateralUNet"
    assert arch["arch_kwargs"]["isam_stages"] == [2, 3, 4]  # 64x48, 32x24, 16x12
    assert json.loads(json.dumps(plans)) == plans


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"isam_stages": [0, 7]}, "isam_stages"),
        ({"isam_stages": [1, 2], "isam_dims": [16]}, "isam_dims"),
        ({"isam_dims": [21], "isam_stages": [2]}, "head_dim"),
        ({"isam_windows": [[7, 7]]}, "isam_windows"),
    ],
)
def test_inconsistent_attention_settings_are_refused_in_one_line(overrides, match):
    plans, patch = _tiny_plans(2)
    with pytest.raises(PlansError, match=match) as error:
        BilateralUNet.from_plans(plans, patch, 1, 2, True, overrides={"head_dim": 8, **overrides})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("ndim", [2, 3])
def test_network_renders_in_both_modes_and_loads_across_them(ndim):
    torch.manual_seed(0)
    net, patch = _tiny(ndim)
    x = torch.randn(2, 2, *patch)
    out = net(x)
    assert [tuple(o.shape[2:]) for o in out] == stage_shapes(patch, [[1] * ndim] + [[2] * ndim])
    # training: the importance-sampled voxels of the full-resolution output are the point head's
    points = net.rendered
    assert points.index.shape == (2, min(2048, math.prod(patch) // 4))
    assert torch.equal(out[0].flatten(2).gather(2, points.index[:, None].expand(-1, 3, -1)), points.logits)
    # inference: deep supervision off, eval mode, one tensor; same state dict keys without deep supervision
    net.decoder.deep_supervision = False
    net.eval()
    with torch.no_grad():
        single = net(x)
    assert isinstance(single, torch.Tensor) and single.shape == (2, 3, *patch)
    assert net.rendered.index.shape == (2, math.prod(patch) // 8)
    off, _ = _tiny(ndim, deep_supervision=False)
    off.load_state_dict(net.state_dict(), strict=True)
    off.eval()
    with torch.no_grad():
        assert torch.allclose(off(x), single, atol=1e-5)


def test_rendering_ablation_has_no_point_head():
    net, patch = _tiny(2, rendering=False)
    assert net.rendering is None
    net(torch.randn(1, 2, *patch))
    assert net.rendered is None
    assert not any("rendering" in k for k in net.state_dict())


def test_a_few_training_steps_lower_the_loss_on_a_fixed_batch():
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from nnunet_sparseattn.trainers.bilateral import PointRenderingLoss

    torch.manual_seed(0)
    net, patch = _tiny(2)
    x = torch.randn(2, 2, *patch)
    yy, xx = torch.meshgrid(torch.arange(patch[0]), torch.arange(patch[1]), indexing="ij")
    disc = ((yy - 10) ** 2 + (xx - 12) ** 2 < 36).float()
    ring = ((yy - 10) ** 2 + (xx - 12) ** 2 < 81).float() - disc
    label = (disc + 2 * ring)[None, None].expand(2, 1, *patch).clone()
    x[:, 0] += 2 * label[:, 0]  # learnable: the label is visible in the image
    targets = [
        label,
        F.interpolate(label, scale_factor=0.5, mode="nearest-exact"),
        F.interpolate(label, scale_factor=0.25, mode="nearest-exact"),
    ]
    base = DeepSupervisionWrapper(
        DC_and_CE_loss(
            {"batch_dice": False, "smooth": 1e-5, "do_bg": False},
            {},
            weight_ce=1,
            weight_dice=1,
            dice_class=MemoryEfficientSoftDiceLoss,
        ),
        [4 / 7, 2 / 7, 1 / 7],
    )
    loss_fn = PointRenderingLoss(base, lambda: net, 1.0, regions=False, ignore_label=None)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    losses, point_terms = [], []
    for _ in range(10):
        optimizer.zero_grad()
        loss = loss_fn(net(x), targets)
        with torch.no_grad():
            point_terms.append(float(loss_fn.point_term(targets)))
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    assert np.mean(point_terms[-3:]) < np.mean(point_terms[:3]), point_terms


# ---------------------------------------------------------------------------------------------------------------
# the paper's configuration


def test_paper_configuration_is_near_the_papers_parameter_count():
    from nnunet_sparseattn.complexity import count_flops, count_parameters

    net = bilateral_paper_network()
    params = count_parameters(net)
    assert abs(params - PAPER_PARAMS) / PAPER_PARAMS < 0.02, params
    assert len(net.encoder.attention) == 3 and all(a.isam.dim == 96 for a in net.encoder.attention.values())
    assert isinstance(net.encoder.attention["2"].isam.blocks[0], SwinBlock)
    flops = count_flops(net, (1, 3, 256, 256))
    assert 1e10 < flops < 1e11  # about 25 GFLOPs (2 per multiply-add)


# ---------------------------------------------------------------------------------------------------------------
# the trainer


def _trainer(make, cls, labels: dict, regions_class_order=None):
    """``make``: the ``trainer_without_data`` fixture (nnU-Net's initialize() without the preprocessed dataset it
    would open: network, optimizer, loss)."""
    plans = plans_for(_tiny_plans(2), "2d", batch_size=2)
    meta = dataset_json(labels, channels=("a", "b"), file_ending=".png")
    if regions_class_order:
        meta["regions_class_order"] = regions_class_order
    torch.manual_seed(0)
    return make(cls, plans, "2d", meta)


def _batch(patch, channels_target, regions: bool, ignore: bool):
    torch.manual_seed(1)
    shapes = stage_shapes(patch, [[1, 1], [2, 2], [2, 2]])
    labels = [torch.randint(0, 4 if ignore else 3, (2, 1, *s)).float() for s in shapes]
    if regions:  # nnU-Net's region conversion: one channel per region (+ the ignore mask)
        targets = [
            torch.cat([(m == 1).float(), (m >= 1).float() * (m != 3)] + ([(m == 3).float()] if ignore else []), 1)
            for m in labels
        ]
    else:
        targets = labels
    return {"data": torch.randn(2, 2, *patch), "target": targets}


@pytest.mark.parametrize(
    "regions,ignore", [(False, False), (False, True), (True, True)], ids=["labels", "labels+ignore", "regions+ignore"]
)
def test_trainer_steps_add_the_point_loss(trainer_without_data, regions, ignore):
    from nnunet_sparseattn.trainers import nnUNetTrainerBilateral
    from nnunet_sparseattn.trainers.bilateral import PointRenderingLoss

    if regions:
        labels = {"background": 0, "inner": [1], "both": [1, 2]}
    else:
        labels = {"background": 0, "a": 1, "b": 2}
    if ignore:
        labels["ignore"] = 3
    trainer = _trainer(trainer_without_data, nnUNetTrainerBilateral, labels, [1, 2] if regions else None)
    assert isinstance(trainer.loss, PointRenderingLoss) and trainer.loss.regions == regions
    patch = tuple(trainer.configuration_manager.patch_size)
    batch = _batch(patch, 2, regions, ignore)
    # validation (eval mode: deterministic) = nnU-Net's loss + the point loss at the refined voxels
    trainer.network.eval()
    with torch.no_grad():
        output = trainer.network(batch["data"])
        expected = trainer.loss.base(output, batch["target"]) + point_loss(
            trainer.network.rendered, batch["target"][0], regions, trainer.label_manager.ignore_label
        )
        base_only = trainer.loss.base(output, batch["target"])
    step = trainer.validation_step({"data": batch["data"], "target": [t.clone() for t in batch["target"]]})
    assert np.isclose(step["loss"], float(expected), rtol=1e-5) and not np.isclose(step["loss"], float(base_only))
    # training: nnU-Net's own train_step, every parameter gets a gradient (DDP without unused parameters)
    trainer.network.train()
    result = trainer.train_step(batch)
    assert np.isfinite(result["loss"])
    no_grad = [
        n for n, p in trainer.network.named_parameters() if p.grad is None and not n.startswith("decoder.seg_layers.0")
    ]  # nnU-Net weights its lowest output 0
    assert not no_grad, no_grad[:5]


def test_ablation_trainer_keeps_nnunets_loss(trainer_without_data):
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    from nnunet_sparseattn.trainers import nnUNetTrainerBilateral_noRendering

    trainer = _trainer(trainer_without_data, nnUNetTrainerBilateral_noRendering, {"background": 0, "a": 1})
    assert trainer.network.rendering is None and isinstance(trainer.loss, DeepSupervisionWrapper)


@pytest.mark.gpu
def test_fp16_autocast_training_and_inference_on_cuda():
    """nnU-Net autocasts fp16 on CUDA in training (with a GradScaler) and always in prediction."""
    torch.manual_seed(0)
    net, patch = _tiny(3)
    net = net.cuda()
    x = torch.randn(2, 2, *patch, device="cuda") * 10
    scaler = torch.amp.GradScaler("cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        out = net(x)
        loss = sum(o.float().square().mean() for o in out) + net.rendered.logits.float().square().mean()
    scaler.scale(loss).backward()
    assert all(torch.isfinite(p.grad).all() for n, p in net.named_parameters() if p.grad is not None)
    net.decoder.deep_supervision = False
    net.eval()
    with torch.no_grad():
        reference = net(x)
        with torch.autocast("cuda", dtype=torch.float16):
            half = net(x)
    assert torch.isfinite(half).all()
    assert (half.float().argmax(1) == reference.argmax(1)).float().mean() > 0.95


def _count_mask_builds(monkeypatch) -> list:
    from nnunet_sparseattn.layers import shapes, window_attention

    monkeypatch.setattr(shapes, "_CONSTANTS", {})  # a fresh cache for this test
    built = []
    real = window_attention._build_window_mask

    def counting(*args):
        built.append(args[:4])
        return real(*args)

    monkeypatch.setattr(window_attention, "_build_window_mask", counting)
    return built


def test_swin_masks_are_built_once_per_shape_across_training_steps(monkeypatch):
    built = _count_mask_builds(monkeypatch)
    torch.manual_seed(0)
    isam = ISAM(16, (3, 4), nn.Conv2d, depth=4, head_dim=8)  # 5 x 6 map: padded windows, shifted every 2nd block
    optimizer = torch.optim.SGD(isam.parameters(), lr=0.1)
    for _ in range(3):
        isam(torch.randn(2, 16, 5, 6)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert len(built) == 2  # one mask for the plain blocks (padding only), one for the shifted ones
    isam(torch.randn(1, 16, 7, 9))  # a new shape (e.g. a sliding-window border): its own two masks, once
    isam(torch.randn(1, 16, 7, 9))
    assert len(built) == 4


def test_swin_masks_are_traced_into_the_graph_under_torch_compile(monkeypatch):
    # compiled code neither reads nor stores the eager cache (a store would break the graph inside activation
    # checkpointing; a read would guard on the cache's keys): the mask is built in the graph
    import torch._dynamo
    from torch._dynamo.utils import counters

    from nnunet_sparseattn.layers import shapes

    monkeypatch.setattr(shapes, "_CONSTANTS", {})
    torch.manual_seed(0)
    isam = ISAM(16, (3, 4), nn.Conv2d, depth=4, head_dim=8)  # 5 x 6 map: padded windows, shifted every 2nd block
    eager = [isam(x) for x in [torch.randn(2, 16, 5, 6, generator=torch.Generator().manual_seed(i)) for i in range(3)]]
    shapes._CONSTANTS.clear()
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(isam, backend="eager")  # dynamo's tracing and guards, without inductor's codegen
    for i in range(3):
        x = torch.randn(2, 16, 5, 6, generator=torch.Generator().manual_seed(i))
        out = compiled(x)
        out.square().mean().backward()
        torch.testing.assert_close(out, eager[i])
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]  # one graph, traced once
    assert not shapes._CONSTANTS
