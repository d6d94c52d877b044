"""BSA-Seg: BSAM against references, region choice and refusal, training on a fixed batch, trainers, plans."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
from plans_cases import PLANS_CASES, plans_for

from nnunet_sparseattn.architectures.base import PlansError, stage_shapes
from nnunet_sparseattn.architectures.bsa import BSAUNet, choose_region_size
from nnunet_sparseattn.layers import RoutedAttention, compute_routing, region_layout, routed_attention_reference
from nnunet_sparseattn.layers.bilevel_attention import (
    BiLevelSparseAttention,
    BSABlock,
    coarse_region_attention,
    upsample_regions,
)
from nnunet_sparseattn.layers.routing import grid_for_region_size
from nnunet_sparseattn.plans import variant_plans

SHAPES = [((7, 9), (3, 4), 2), ((5, 6, 7), (2, 3, 3), 3), ((8, 8, 8), (4, 4, 4), 2)]


def _bsam(shape, region, topk, coarse=True, channels=8, heads=2, seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv2d if len(shape) == 2 else nn.Conv3d
    m = BiLevelSparseAttention(channels, heads, region, topk, conv, coarse_branch=coarse, backend="gather")
    if coarse:
        nn.init.normal_(m.gamma)  # a trained gamma: the coarse branch must matter in the comparison
    return m, torch.randn(2, channels, *shape)


def _coarse_reference(q, k, v, layout, heads):
    """Region means by explicit loops over regions, then dense attention, all float64."""
    b, c = q.shape[:2]
    d = c // heads
    sp = q.shape[2:]
    coords = torch.stack(torch.meshgrid(*[torch.arange(s) for s in sp], indexing="ij"), -1).reshape(-1, len(sp))
    rid = torch.zeros(coords.shape[0], dtype=torch.long)
    for a in range(len(sp)):
        rid = rid * layout.grid[a] + coords[:, a] // layout.region[a]
    means = []
    for t in (q, k, v):
        flat = t.double().reshape(b, c, -1)
        means.append(torch.stack([flat[:, :, rid == r].mean(-1) for r in range(layout.num_regions)], 1))
    qr, kr, vr = (m.view(b, -1, heads, d).transpose(1, 2) for m in means)
    logits = qr @ kr.transpose(-1, -2) / math.sqrt(d)
    coarse = (torch.softmax(logits, -1) @ vr).transpose(1, 2).reshape(b, -1, c)
    per_token = coarse[:, rid].transpose(1, 2).reshape(b, c, *sp)
    return per_token, logits.sum(1)


@pytest.mark.parametrize("shape,region,topk", SHAPES)
def test_bsam_equals_masked_dense_reference(shape, region, topk):
    m, x = _bsam(shape, region, topk)
    q, k, v = m.qkv(x).chunk(3, 1)
    grid = grid_for_region_size(shape, region)
    layout = region_layout(shape, grid)
    coarse, scores = _coarse_reference(q, k, v, layout, m.num_heads)
    # routing = top-k of the coarse scores = top-k of the full-channel region affinity
    routing = compute_routing(q, k, grid, topk)
    assert torch.equal(routing, compute_routing(q, k, grid, topk))
    fine = routed_attention_reference(q, k, v, m.num_heads, grid, routing)
    expected = m.proj(fine + m.gamma * coarse.float() + m.lce(v))
    torch.testing.assert_close(m(x), expected, rtol=1e-4, atol=1e-5)


def test_coarse_branch_and_upsampling_match_loops():
    shape, region = (5, 6, 7), (2, 3, 3)
    m, x = _bsam(shape, region, 2)
    q, k, v = m.qkv(x).chunk(3, 1)
    layout = region_layout(shape, grid_for_region_size(shape, region))
    coarse, scores, _ = coarse_region_attention(q, k, v, layout, m.num_heads)
    ref_tokens, ref_scores = _coarse_reference(q, k, v, layout, m.num_heads)
    torch.testing.assert_close(upsample_regions(coarse, layout).double(), ref_tokens, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scores.double(), ref_scores, rtol=1e-5, atol=1e-6)


def test_without_coarse_branch_bsam_is_biformer_bra():
    m, x = _bsam((6, 8, 8), (3, 4, 4), 2, coarse=False)
    bra = RoutedAttention(8, 2, None, 2, nn.Conv3d, backend="gather", region_size=(3, 4, 4))
    bra.load_state_dict(m.state_dict())
    assert torch.equal(m(x), bra(x))
    assert not any("gamma" in n for n, _ in m.named_parameters())


def test_new_bsam_starts_as_bra_and_gamma_learns():
    torch.manual_seed(0)
    m = BiLevelSparseAttention(8, 2, (2, 2, 2), 2, nn.Conv3d)
    bra = RoutedAttention(8, 2, None, 2, nn.Conv3d, region_size=(2, 2, 2))
    bra.load_state_dict({k: v for k, v in m.state_dict().items() if k != "gamma"})
    x = torch.randn(1, 8, 4, 6, 6)
    torch.testing.assert_close(m(x), bra(x))  # gamma = 0 at initialisation
    m(x).square().sum().backward()
    assert m.gamma.grad is not None and m.gamma.grad.abs().sum() > 0


def test_bsa_block_gradients_and_bf16_autocast():
    torch.manual_seed(0)
    block = BSABlock(16, 2, (2, 3, 3), 2, nn.Conv3d)
    x = torch.randn(2, 16, 4, 6, 6, requires_grad=True)
    block(x).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x)
    assert torch.isfinite(y.float()).all()


@pytest.mark.parametrize("shape", [(10, 14, 10), (10, 12, 12), (64, 48), (5, 48, 40), (20, 24, 24), (7, 5), (5, 7, 5)])
def test_chosen_regions_cut_every_stage_exactly(shape):
    region = choose_region_size(shape)
    assert all(a % r == 0 for a, r in zip(shape, region))
    tokens = math.prod(shape)
    if tokens <= 512:
        assert list(region) == list(shape)  # small stage: one region, dense attention
    else:
        assert 16 <= math.prod(region) <= 256 and math.prod(region) < tokens


def test_a_region_size_that_does_not_cut_its_stage_is_refused_with_the_fix():
    kw, patch = PLANS_CASES["hippocampus_3d"]
    with pytest.raises(PlansError) as err:
        BSAUNet.resolve_arch_kwargs(kw, patch, {"region_sizes": [None, None, [4, 4, 4], None]})
    msg = str(err.value)
    assert "stage 2" in msg and "10x14x10" in msg and "40x56x40" in msg and "2x7x5" in msg
    with pytest.raises(PlansError, match="expected 4"):
        BSAUNet.resolve_arch_kwargs(kw, patch, {"region_sizes": [None, [2, 2, 2]]})
    with pytest.raises(PlansError, match="no argument"):
        BSAUNet.resolve_arch_kwargs(kw, patch, {"window_size": 7})


def test_attention_stages_follow_the_plans():
    kw, patch = PLANS_CASES["anisotropic_3d"]
    net = BSAUNet.from_plans(kw, patch, 1, 2, True)
    shapes = stage_shapes(patch, kw["strides"])
    for s, stage in enumerate(net.encoder.stages):
        blocks = [m for m in stage.modules() if isinstance(m, BSABlock)]
        assert (len(blocks) > 0) == (s >= 2)
        for b in blocks:
            region = b.attn.region_size
            assert all(a % r == 0 for a, r in zip(shapes[s], region))
            assert b.attn.channels % b.attn.num_heads == 0 and b.attn.channels // b.attn.num_heads <= 32


def test_a_few_training_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    kw, _ = PLANS_CASES["hippocampus_3d"]
    patch = (16, 24, 16)
    net = BSAUNet.from_plans(kw, patch, 1, 3, False, overrides={"region_sizes": [None, None, [2, 3, 2], None]})
    x = torch.randn(2, 1, *patch)
    y = (x > 0.5).long().squeeze(1) + (x > 1.5).long().squeeze(1)
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_trainers_pair_the_network_with_and_without_the_narrow_band_loss():
    from nnunet_sparseattn.trainers import nnUNetTrainerBSA, nnUNetTrainerBSA_noNB, nnUNetTrainerNB
    from nnunet_sparseattn.trainers.architecture import ArchitectureTrainer

    assert nnUNetTrainerBSA.network_class is BSAUNet and nnUNetTrainerBSA_noNB.network_class is BSAUNet
    assert issubclass(nnUNetTrainerBSA, nnUNetTrainerNB) and not issubclass(nnUNetTrainerBSA_noNB, nnUNetTrainerNB)
    # the network comes from the architecture trainer, the loss from the narrow-band trainer
    assert (
        nnUNetTrainerBSA.build_network_architecture.__func__ is ArchitectureTrainer.build_network_architecture.__func__
    )
    assert nnUNetTrainerBSA._build_loss is nnUNetTrainerNB._build_loss


def test_variant_plans_keep_everything_but_the_architecture():
    source = plans_for(PLANS_CASES["hippocampus_3d"])
    out = variant_plans(source, "bsa")
    assert out["plans_name"] == "nnUNetPlans_BSA"
    conf, src = out["configurations"]["3d_fullres"], source["configurations"]["3d_fullres"]
    assert {k: v for k, v in conf.items() if k != "architecture"} == {
        k: v for k, v in src.items() if k != "architecture"
    }
    arch = conf["architecture"]
    assert arch["network_class_name"] == "nnunet_sparseattn.architectures.bsa.BSAUNet"
    assert arch["arch_kwargs"]["region_sizes"] == [None, None, [2, 7, 5], [5, 7, 5]]
    assert arch["arch_kwargs"]["conv_op"] == "torch.nn.modules.conv.Conv3d"
    json.dumps(out)  # a plans file
    with pytest.raises(PlansError, match="configuration 3d_fullres: stage 2"):
        variant_plans(source, "bsa", overrides={"region_sizes": [None, None, 3, None]})


def test_plan_command_writes_the_file_and_refuses_with_one_line(tmp_path, monkeypatch, capsys):
    from nnunet_sparseattn.cli import main

    folder = tmp_path / "Dataset004_Hippocampus"
    folder.mkdir()
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans_for(PLANS_CASES["hippocampus_3d"])))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    assert main(["plan", "-d", "4", "--variant", "bsa"]) == 0
    written = json.loads((folder / "nnUNetPlans_BSA.json").read_text())
    assert written["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["attention_from_stage"] == 2
    assert main(["plan", "-d", "4", "--variant", "bsa", "--set", "region_sizes=[null,null,[3,3,3],null]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stage 2" in err[0] and "Traceback" not in err[0]
    assert main(["plan", "-d", "5", "--variant", "bsa"]) == 2
    assert "nnUNetv2_plan_and_preprocess -d 5" in capsys.readouterr().err
    assert main(["plan", "-d", "4", "--variant", "unet++"]) == 2


@pytest.mark.gpu
def test_fp16_inference_on_a_gpu_matches_fp32():
    """What nnUNetv2_predict does on CUDA: eval, deep supervision off, fp16 autocast (flex backend there)."""
    kw, patch = PLANS_CASES["hippocampus_3d"]
    net = BSAUNet.from_plans(kw, patch, 1, 3, False).cuda().eval()
    x = torch.randn(2, 1, *patch, device="cuda")
    with torch.no_grad():
        ref = net(x)
        with torch.autocast("cuda", dtype=torch.float16):
            half = net(x)
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    assert (half.float().argmax(1) == ref.argmax(1)).float().mean() > 0.99
    torch.testing.assert_close(half.float(), ref, rtol=0.05, atol=0.05)


@pytest.mark.gpu
def test_cuda_training_step_under_fp16_autocast_trains_every_parameter():
    """What nnUNetv2_train does on CUDA: deep supervision, fp16 autocast, a GradScaler (flex's backward there)."""
    kw, patch = PLANS_CASES["hippocampus_3d"]
    torch.manual_seed(0)
    net = BSAUNet.from_plans(kw, patch, 1, 3, True).cuda()
    with torch.no_grad():  # gamma starts at 0 (the coarse branch off): open it so that its gradients are exercised
        for block in net.modules():
            if hasattr(block, "gamma") and block.gamma is not None:
                block.gamma.fill_(0.5)
    scaler = torch.amp.GradScaler("cuda")
    x = torch.randn(2, 1, *patch, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        loss = sum(o.float().square().mean() for o in net(x))
    scaler.scale(loss).backward()
    assert torch.isfinite(loss)
    assert not [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
