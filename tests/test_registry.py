"""A method is one registration: a network registered here (and removed after) is accepted by every consumer of the
registry (the trainers' list, ``compare``'s default trainers, ``info``'s listing, cost and attention layout,
``explain``'s naming of its attention, the speed benchmark, the contract checks and the saved-network builder) with
no edit anywhere else. A consumer that kept its own list of networks fails here."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pytest
import torch
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from plans_cases import HIPPOCAMPUS_3D, PLANS_CASES, plans_for

from nnunet_sparseattn.architectures.base import (
    PlansNetwork,
    StageAttention,
    check_int,
    check_topk,
    heads_for,
    stage_shapes,
    x_text,
)
from nnunet_sparseattn.explain.kinds import AttentionKind
from nnunet_sparseattn.layers.routing import is_dense
from nnunet_sparseattn.layers.sparse_attention import RoutedAttention
from nnunet_sparseattn.plans.variants import VARIANTS, Variant, register, unregister
from nnunet_sparseattn.trainers.architecture import ArchitectureTrainer


class TinyAttention(RoutedAttention):
    """The fourth method's layer: routed attention, nothing more (a layer file's worth)."""


@dataclass(frozen=True)
class TinySettings:
    head_dim: int
    topk: int


class TinyAttentionUNet(PlansNetwork):
    """nnU-Net's plain encoder and decoder with one routed-attention layer on the bottleneck (an architecture file's
    worth): the least a method needs to meet the contracts."""

    def __init__(
        self,
        input_channels: int,
        n_stages: int,
        features_per_stage,
        conv_op,
        kernel_sizes,
        strides,
        n_conv_per_stage,
        num_classes: int,
        n_conv_per_stage_decoder,
        conv_bias: bool = False,
        norm_op=None,
        norm_op_kwargs=None,
        dropout_op=None,
        dropout_op_kwargs=None,
        nonlin=None,
        nonlin_kwargs=None,
        deep_supervision: bool = False,
        head_dim: int = 32,
        topk: int = 2,
    ) -> None:
        super().__init__()
        unet, own = self.settings(locals())
        self.encoder = PlainConvEncoder(
            input_channels,
            n_stages,
            unet.features_per_stage,
            unet.conv_op,
            unet.kernel_sizes,
            unet.strides,
            unet.n_conv_per_stage,
            *unet.conv_block_args,
            return_skips=True,
        )
        channels = unet.features_per_stage[-1]
        self.attention = TinyAttention(
            channels, heads_for(channels, own.head_dim, "bottleneck"), None, own.topk, unet.conv_op, region_size=2
        )
        self.decoder = UNetDecoder(self.encoder, num_classes, unet.n_conv_per_stage_decoder, deep_supervision)

    encoder: PlainConvEncoder  # nnU-Net's (untyped) encoder and decoder, not PlansNetwork's plain nn.Module
    decoder: UNetDecoder

    @classmethod
    def check_own(cls, kwargs: Mapping[str, Any], patch_size: Sequence[int] | None = None) -> TinySettings:
        return TinySettings(check_int("head_dim", kwargs["head_dim"], 1), check_topk(kwargs["topk"], 1)[0])

    def forward(self, x: torch.Tensor):
        skips = self.encoder(x)
        return self.decoder([*skips[:-1], skips[-1] + self.attention(skips[-1])])

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        return np.int64(self.encoder.compute_conv_feature_map_size(input_size)) + np.int64(
            self.decoder.compute_conv_feature_map_size(input_size)
        )

    @classmethod
    def attention_layout(cls, kwargs: Mapping[str, Any], patch_size: Sequence[int]) -> list[StageAttention]:
        n = int(kwargs["n_stages"])
        shape = stage_shapes(patch_size, kwargs["strides"])[-1]
        count = math.prod(-(-a // 2) for a in shape)
        routing = "dense" if is_dense(kwargs["topk"], count) else f"top-{kwargs['topk']}"
        return [StageAttention(n - 1, shape, f"regions of {x_text([2] * len(shape))} tokens ({count}), {routing}")]


class nnUNetTrainerTiny(ArchitectureTrainer):  # a trainer file's worth
    network_class = TinyAttentionUNet


class BottleneckNorms(AttentionKind):
    """A kind of its own for explain (a kinds file's worth): the norm of the encoder's deepest output per window."""

    key = "bottleneck"
    described = "bottleneck"
    recorded: list[tuple[str, int, float]] = []

    def owns(self, module: torch.nn.Module) -> bool:
        return isinstance(module, PlainConvEncoder)

    def attach(self, recorder, name: str, module: torch.nn.Module) -> None:
        def record(_, args, output) -> None:
            self.recorded.append((name, recorder.patch, float(output[-1].norm())))

        recorder.keep(module.register_forward_hook(record))


TINY = Variant(
    name="tiny",
    label="Tiny",
    plans_suffix="Tiny",
    network_class=f"{__name__}.TinyAttentionUNet",
    trainer="nnUNetTrainerTiny",
    trainers=(f"{__name__}.nnUNetTrainerTiny",),
    attention_layer=f"{__name__}.TinyAttention",
    # its routed layer is shown as BSA's and MDSA's are; its own kind besides
    explain_kinds=("nnunet_sparseattn.explain.kinds.RegionRouting", f"{__name__}.BottleneckNorms"),
    small_settings={3: {"head_dim": 4, "topk": 1}},
)


@pytest.fixture
def tiny():
    register(TINY)
    try:
        yield TINY
    finally:
        unregister(TINY.name)
    assert "tiny" not in VARIANTS


def test_registration_refuses_a_name_taken():
    from nnunet_sparseattn.errors import UserError

    with pytest.raises(UserError, match="already registered"):
        register(VARIANTS["bsa"])


def test_trainers_compare_and_benchmark_list_a_registered_method(tiny):
    from nnunet_sparseattn.compare.run import default_trainers
    from nnunet_sparseattn.trainers import main_trainers, method_trainers

    assert method_trainers(tiny) == (nnUNetTrainerTiny,)
    assert main_trainers()[-1] is nnUNetTrainerTiny
    assert default_trainers()[-1] == "nnUNetTrainerTiny"
    from benchmarks.speed.measure import benchmark_networks  # what NETWORKS is made of when the benchmark starts

    networks = benchmark_networks()
    assert networks["tiny"].label == "Tiny" and networks["tiny"].trainer == "nnUNetTrainerTiny"


def test_contract_checks_and_saved_network_builder_take_a_registered_method(tiny):
    import test_architecture_contracts as contracts

    from tests.data.make_reference_networks import build

    contracts._contract("tiny", "hippocampus_3d", backward=True)
    contracts.test_variant_plans_build_the_same_network_through_nnunet("tiny")
    contracts.test_trainer_builds_from_default_plans_in_both_modes("tiny")
    net = build("tiny", 3, deep_supervision=True)
    assert isinstance(net, TinyAttentionUNet) and net.attention.topk == 1
    assert "hippocampus_3d" in PLANS_CASES


def test_info_and_explain_describe_a_registered_method(tiny, tmp_path, monkeypatch):
    from nnunet_sparseattn.explain.kinds import module_label
    from nnunet_sparseattn.explain.recorder import Recorder, attention_kinds, attention_modules
    from nnunet_sparseattn.harness import networks

    plans = copy.deepcopy(plans_for(HIPPOCAMPUS_3D))  # plans_for shares the case's dicts
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] = [4, 8, 8, 8]
    folder = tmp_path / "Dataset990_Tiny"
    folder.mkdir()
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "MRI"},
                "labels": {"background": 0, "a": 1},
                "numTraining": 1,
                "file_ending": ".nii.gz",
            }
        )
    )
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    rows = {row["trainer"]: row for row in networks.dataset_networks(990, "3d_fullres")}
    tiny_row = rows["nnUNetTrainerTiny"]
    assert tiny_row["network"] == "TinyAttentionUNet" and tiny_row["params"] > 0 and tiny_row["flops"] > 0
    (stage,) = tiny_row["attention"]
    assert (stage.stage, stage.shape, stage.text) == (3, (5, 7, 5), "regions of 2x2x2 tokens (36), top-2")
    net, _ = networks.inference_network(
        nnUNetTrainerTiny, plans, "3d_fullres", json.loads((folder / "dataset.json").read_text())
    )
    assert attention_modules(net)["routed"] == ["attention"]
    assert module_label(net, "attention") == "Tiny"
    # explain's kinds are the registry's: the region routing it shares with BSA and MDSA once, its own kind last
    assert [kind.key for kind in attention_kinds()] == ["routed", "window", "channel", "rendering", "bottleneck"]
    assert attention_modules(net)["bottleneck"] == ["encoder"]
    BottleneckNorms.recorded.clear()
    with torch.no_grad(), Recorder(net.eval()) as recorder:
        net(torch.zeros(1, 1, 40, 56, 40))
        net(torch.zeros(1, 1, 40, 56, 40))
    assert [(name, patch) for name, patch, _ in BottleneckNorms.recorded] == [("encoder", 0), ("encoder", 1)]
    assert [r.module for r in recorder.routing] == ["attention", "attention"]
    net(torch.zeros(1, 1, 40, 56, 40))  # closed: nothing recorded any more
    assert len(BottleneckNorms.recorded) == 2
