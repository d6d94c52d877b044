"""A local timm Swin checkpoint mapped onto ISAM: made here from timm's own Swin (``pretrained=False``), never
downloaded. The mapped blocks must compute what timm's blocks compute."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from plans_cases import PLANS_CASES, dataset_json, plans_for

from nnunet_sparseattn.architectures.swin_weights import (
    SWIN_WEIGHTS_ENV,
    fit_bias_table,
    load_swin_into,
    map_swin_onto_isams,
    read_swin_state_dict,
)
from nnunet_sparseattn.errors import UserError
from nnunet_sparseattn.layers.isam import ISAM

timm = pytest.importorskip("timm")

# a Swin-T-shaped model (depths 2, 2, 6, 2; head width 32) at a third of the width: widths 32, 64, 128, 256
SMALL = dict(embed_dim=32, depths=(2, 2, 6, 2), num_heads=(1, 2, 4, 8))


@pytest.fixture(scope="module")
def small_swin():
    torch.manual_seed(0)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **SMALL).eval()


@pytest.fixture(scope="module")
def small_checkpoint(small_swin, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("swin") / "swin_small_test.pth"
    torch.save(small_swin.state_dict(), path)
    return path


class _Holder(nn.Module):
    """ISAMs of chosen widths and windows (what a network holds), for mapping tests."""

    def __init__(self, *isams: ISAM):
        super().__init__()
        self.isams = nn.ModuleList(isams)


def test_mapped_isam_blocks_compute_what_timms_blocks_compute(small_swin, small_checkpoint):
    torch.manual_seed(1)
    holder = _Holder(ISAM(40, (7, 7), nn.Conv2d, dim=128), ISAM(64, (7, 7), nn.Conv2d))
    report = load_swin_into(holder, small_checkpoint)
    x = torch.randn(2, 14, 14, 128)
    with torch.no_grad():
        for j in range(6):  # Swin stage 2 (width 128, 6 blocks, 14 x 14 at 224 input) -> ISAM of width 128
            assert torch.allclose(holder.isams[0].blocks[j](x), small_swin.layers[2].blocks[j](x), atol=1e-5), j
    # Swin stage 1 has 2 blocks: repeated over the 6 ISAM blocks, keeping the shift alternation
    stage1 = small_swin.layers[1].blocks
    for j, block in enumerate(holder.isams[1].blocks):
        assert torch.equal(block.attn.qkv.weight, stage1[j % 2].attn.qkv.weight)
        assert block.shift == (j % 2 == 1) and any(stage1[j % 2].shift_size) == block.shift
    assert len(report.loaded) == 2 * 6 * 13 and not report.skipped
    assert ("isams.1.blocks.2.attn.qkv.weight", "layers.1.blocks.0.attn.qkv.weight", "repeated") in report.loaded
    summary = report.summary()
    assert "156 tensors loaded, 0 skipped" in summary and "patch_embed" in summary and "head" in summary


def test_bias_table_is_cropped_resized_and_inflated():
    table = torch.randn(13 * 13, 3)
    grid = table.view(13, 13, 3)
    same, how = fit_bias_table(table, 7, (7, 7))
    assert torch.equal(same, table) and how == ""
    cropped, how = fit_bias_table(table, 7, (5, 7))  # offsets -4..4 x -6..6: exactly the checkpoint's values
    assert torch.equal(cropped.view(9, 13, 3), grid[2:11]) and "cropped" in how
    grown, how = fit_bias_table(table, 7, (9, 9))
    assert grown.shape == (17 * 17, 3) and "resized" in how
    assert torch.allclose(grown.view(17, 17, 3)[8, 8], grid[6, 6])  # zero offset keeps its bias
    inflated, how = fit_bias_table(table, 7, (3, 7, 5))
    assert inflated.shape == (5 * 13 * 9, 3) and "inflated to 3D" in how
    for dd in range(5):  # every depth offset gets the in-plane bias
        assert torch.equal(inflated.view(5, 13, 9, 3)[dd], grid[:, 2:11])


def test_3d_isam_on_one_slice_equals_timms_2d_block(small_swin, small_checkpoint):
    """2D -> 3D inflation: on a map one slice deep, the inflated 3D block is the 2D block."""
    holder = _Holder(ISAM(128, (1, 7, 7), nn.Conv3d), ISAM(128, (3, 7, 7), nn.Conv3d))
    report = load_swin_into(holder, small_checkpoint)
    assert any("inflated to 3D over 5 depth offsets" in how for _, _, how in report.loaded)
    x = torch.randn(1, 14, 14, 128)
    with torch.no_grad():
        for j in (0, 1):
            expected = small_swin.layers[2].blocks[j](x)
            assert torch.allclose(holder.isams[0].blocks[j](x[:, None])[:, 0], expected, atol=1e-5)
            assert torch.allclose(holder.isams[1].blocks[j](x[:, None])[:, 0], expected, atol=1e-5)


def test_widths_without_a_swin_stage_are_skipped_with_the_reason(small_checkpoint):
    holder = _Holder(ISAM(48, (5, 5), nn.Conv2d, head_dim=16), ISAM(64, (5, 5), nn.Conv2d))
    before = holder.isams[0].blocks[0].attn.qkv.weight.clone()
    report = load_swin_into(holder, small_checkpoint)
    assert torch.equal(holder.isams[0].blocks[0].attn.qkv.weight, before)
    assert any("no Swin stage of width 48" in why and "32, 64, 128, 256" in why for _, why in report.skipped)
    # an MLP ratio the checkpoint does not have: those tensors are skipped, the rest loads
    other = _Holder(ISAM(64, (5, 5), nn.Conv2d, mlp_ratio=2.0))
    report = map_swin_onto_isams(other, read_swin_state_dict(small_checkpoint))
    assert any(t.endswith("mlp.fc1.weight") and "shape" in why for t, why in report.skipped)
    assert any(t.endswith("attn.qkv.weight") for t, _, _ in report.loaded)
    with pytest.raises(UserError, match="nothing of .* fits"):
        load_swin_into(_Holder(ISAM(48, (5, 5), nn.Conv2d, head_dim=16)), small_checkpoint)


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "module_prefix", "safetensors"])
def test_checkpoint_wrappers_and_formats(small_swin, tmp_path, wrap):
    sd = small_swin.state_dict()
    path = tmp_path / ("w.safetensors" if wrap == "safetensors" else "w.pth")
    if wrap == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        obj = {
            "plain": sd,
            "model": {"model": sd, "epoch": 3},
            "state_dict": {"state_dict": sd},
            "module_prefix": {f"module.{k}": v for k, v in sd.items()},
        }[wrap]
        torch.save(obj, path)
    state = read_swin_state_dict(path)
    assert torch.equal(state["layers.2.blocks.5.mlp.fc2.weight"], sd["layers.2.blocks.5.mlp.fc2.weight"])


def test_bad_checkpoints_are_clear_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist") as error:
        read_swin_state_dict(tmp_path / "missing.pth")
    assert SWIN_WEIGHTS_ENV in str(error.value)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(UserError, match="not a PyTorch state dict"):
        read_swin_state_dict(text)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(UserError, match="not a state dict"):
        read_swin_state_dict(listed)
    resnet = tmp_path / "resnet.pth"
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), resnet)
    with pytest.raises(UserError, match="wrong layout") as error:
        read_swin_state_dict(resnet)
    assert "layers.<stage>.blocks.<block>" in str(error.value)
    for e in (error,):
        assert "\n" not in str(e.value)


def test_pretrained_trainer_loads_swin_tiny_into_its_network(tmp_path, monkeypatch, trainer_without_data):
    """``nnUNetTrainerBilateral_pretrained``: ISAM widths 96/192/384 take Swin-T's stages 0, 1, 2; the report is
    logged; without the environment variable it stops before any work."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_sparseattn.harness.trainers import initialize_without_data
    from nnunet_sparseattn.trainers import nnUNetTrainerBilateral_pretrained

    torch.manual_seed(0)
    swin_t = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False)
    checkpoint = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": swin_t.state_dict()}, checkpoint)

    plans = plans_for(PLANS_CASES["hippocampus_2d"], "2d", batch_size=2)
    trainer = trainer_without_data(nnUNetTrainerBilateral_pretrained, plans, "2d", dataset_json(), initialize=False)
    # the trainer's own initialize() runs; nnU-Net's, which it calls, without the preprocessed dataset it would open
    monkeypatch.setattr(nnUNetTrainer, "initialize", initialize_without_data)
    monkeypatch.delenv(SWIN_WEIGHTS_ENV, raising=False)
    with pytest.raises(UserError, match=SWIN_WEIGHTS_ENV):
        trainer.initialize()
    assert not trainer.was_initialized
    monkeypatch.setenv(SWIN_WEIGHTS_ENV, str(checkpoint))
    trainer.initialize()
    isams = [a.isam for a in trainer.network.encoder.attention.values()]
    assert [i.dim for i in isams] == [96, 192, 384]
    for stage, isam in enumerate(isams):
        source = swin_t.layers[stage].blocks
        for j, block in enumerate(isam.blocks):
            assert torch.equal(block.mlp.fc2.weight, source[j % len(source)].mlp.fc2.weight)
    log = Path(trainer.log_file).read_text()
    assert f"Swin weights from {checkpoint}: 234 tensors loaded, 0 skipped" in log
    assert json.dumps(trainer.network_kwargs) == '{"swin_embed_dim": 96}'
