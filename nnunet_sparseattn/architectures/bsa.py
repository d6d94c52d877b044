"""BSA-Seg (Neural Networks 2025): a U-Net whose deep encoder stages are bi-level sparse attention blocks.

Read top to bottom, this is the paper's diagram on nnU-Net's plans::

    stage 0 (full res)   conv blocks (plans)                                         -> skip 0
    stage 1 (1/2)        strided conv + conv blocks (plans)                          -> skip 1
    stage s >= 2         strided conv (plans' stride/kernel) + BSA blocks (BSAM)     -> skip s
    bottleneck           same; its few tokens get dense attention (one region)
    decoder              nnU-Net's: transposed conv, concat skip, conv blocks, a head per stage

``attention_from_stage`` (default 2: "BSA blocks from 1/4 resolution down") moves the boundary. Region sizes are
chosen per stage from its shape (:func:`choose_region_size`) and written into variant plans, where they may be
edited; an edited size that does not cut its stage exactly is refused (:meth:`BSAUNet.check_patch_size`).
The narrow-band loss is the trainer's business (``nnUNetTrainerBSA``), not the network's.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Union, cast

import numpy as np
import torch.nn as nn
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder

from nnunet_sparseattn.architectures.base import (
    PlansError,
    PlansNetwork,
    SkipsEncoder,
    StageAttention,
    UNetSettings,
    check_flag,
    check_int,
    check_number,
    check_topk,
    heads_for,
    per_stage,
    stage_shapes,
    x_text,
)
from nnunet_sparseattn.layers.bilevel_attention import BSABlock
from nnunet_sparseattn.layers.routing import clamp_topk, is_dense

__all__ = ["BSAEncoder", "BSASettings", "BSAUNet", "choose_region_size"]

# Regions of about 64 tokens (4^3, 8^2): big enough for efficient attention kernels (flex's blocks), small enough
# that top-k of them is a sparse, local-plus-routed receptive field.
TARGET_REGION_TOKENS = {2: 64, 3: 64}
# A stage with at most this many tokens gets dense attention (one region): routing would save little there.
DENSE_MAX_TOKENS = 512


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def choose_region_size(shape: Sequence[int], dense_max_tokens: int = DENSE_MAX_TOKENS) -> list[int]:
    """Region size (tokens per axis) that cuts ``shape`` exactly, about ``TARGET_REGION_TOKENS`` tokens, as cubic
    as the shape allows; the whole shape (one region: dense attention) when the stage is small."""
    shape = [int(s) for s in shape]
    if math.prod(shape) <= dense_max_tokens:
        return shape
    target = math.log(TARGET_REGION_TOKENS[len(shape)])

    def cost(region: Iterable[int]) -> tuple[float, float]:
        logs = [math.log(r) for r in region]
        return round(abs(sum(logs) - target), 9), float(np.std(logs))  # size first (rounded: ties), then cubic

    return list(min(itertools.product(*[_divisors(s) for s in shape]), key=cost))


@dataclass(frozen=True)
class BSASettings:
    """BSA-Seg's own settings, validated and one entry per stage (:meth:`BSAUNet.check_own` builds it once)."""

    attention_from_stage: int
    blocks_per_stage: list[int]
    head_dim: int
    num_heads: list[int]  # from head_dim and the stage's width (1 where the stage does not attend)
    region_sizes: list[Optional[list[int]]]  # None: one region (dense attention)
    topk: list[int]  # key regions per query region; 0: dense
    mlp_ratio: float
    coarse_branch: bool
    lce_kernel_size: int


class BSAEncoder(SkipsEncoder):
    """Convolution stages, then strided conv + BSA blocks; exposes what nnU-Net's ``UNetDecoder`` reads."""

    output_channels: list[int]
    strides: list[list[int]]

    def __init__(self, input_channels: int, unet: UNetSettings, bsa: BSASettings) -> None:
        super().__init__()
        conv_op, conv_args = unet.conv_op, unet.conv_block_args
        stages = []
        channels = input_channels
        for s, features in enumerate(unet.features_per_stage):
            kernel, stride = unet.kernel_sizes[s], unet.strides[s]
            if s < bsa.attention_from_stage:
                stage = StackedConvBlocks(
                    unet.n_conv_per_stage[s], conv_op, channels, features, kernel, stride, *conv_args
                )
            else:
                # nnU-Net's first conv of a stage does the downsampling; the blocks replace the remaining convs
                down = StackedConvBlocks(1, conv_op, channels, features, kernel, stride, *conv_args)
                blocks = [
                    BSABlock(
                        features,
                        bsa.num_heads[s],
                        _region(bsa.region_sizes[s]),
                        bsa.topk[s],
                        conv_op,
                        bsa.mlp_ratio,
                        bsa.coarse_branch,
                        bsa.lce_kernel_size,
                    )
                    for _ in range(bsa.blocks_per_stage[s])
                ]
                stage = nn.Sequential(down, *blocks)
            stages.append(stage)
            channels = features
        self.stages = nn.ModuleList(stages)
        self.settings = bsa
        unet.expose_to_decoder(self)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Stored activations: nnU-Net's count for the convolutions, an explicit count for the BSA blocks."""
        total = np.int64(0)
        size = list(input_size)
        for s, stage in enumerate(self.stages):
            if s < self.settings.attention_from_stage:
                total += cast(StackedConvBlocks, stage).compute_conv_feature_map_size(size)
                size = [a // b for a, b in zip(size, self.strides[s])]
                continue
            entry, *rest = cast(nn.Sequential, stage)
            down, blocks = cast(StackedConvBlocks, entry), [cast(BSABlock, m) for m in rest]
            total += down.compute_conv_feature_map_size(size)
            size = [a // b for a, b in zip(size, self.strides[s])]
            tokens, c = int(np.prod(size)), self.output_channels[s]
            region = self.settings.region_sizes[s] or size
            r = int(np.prod([min(a, b) for a, b in zip(region, size)]))
            num_regions = max(1, tokens // r)
            topk = blocks[0].attn.topk  # the module's own (a caller may have changed it since)
            k_eff = clamp_topk(topk, num_regions)
            per_block = tokens * c * (12 + 2 * self.settings.mlp_ratio)  # pos, 2 norms, qkv, attn, lce, proj, mlp, res.
            if not is_dense(topk, num_regions):  # the gather backend copies k_eff regions of K and V per query region
                per_block += 2 * tokens * k_eff * c
            per_block += blocks[0].attn.num_heads * tokens * k_eff * r  # attention weights
            total += np.int64(per_block) * len(blocks)
        return total


def _region(region: Optional[Sequence[int]]) -> Union[int, Sequence[int]]:
    # None: one region per axis of any size, i.e. dense attention (a huge region is clamped to the shape)
    return region if region is not None else 1 << 20


class BSAUNet(PlansNetwork):
    """BSA-Seg on nnU-Net plans (2D or 3D by ``conv_op``); see the module docstring."""

    encoder: BSAEncoder
    checkpoint_block_types = (BSABlock,)
    decoder: UNetDecoder

    def __init__(
        self,
        input_channels: int,
        n_stages: int,
        features_per_stage: Union[int, Sequence[int]],
        conv_op: type[nn.Module],
        kernel_sizes: Union[int, Sequence],
        strides: Union[int, Sequence],
        n_conv_per_stage: Union[int, Sequence[int]],
        num_classes: int,
        n_conv_per_stage_decoder: Union[int, Sequence[int]],
        conv_bias: bool = False,
        norm_op: Optional[type[nn.Module]] = None,
        norm_op_kwargs: Optional[dict] = None,
        dropout_op: Optional[type[nn.Module]] = None,
        dropout_op_kwargs: Optional[dict] = None,
        nonlin: Optional[type[nn.Module]] = None,
        nonlin_kwargs: Optional[dict] = None,
        deep_supervision: bool = False,
        attention_from_stage: int = 2,
        blocks_per_stage: Union[int, Sequence[int]] = 2,
        head_dim: int = 32,
        region_sizes: Optional[Sequence[Optional[Sequence[int]]]] = None,
        topk: Union[int, Sequence[int]] = 4,
        mlp_ratio: float = 4.0,
        coarse_branch: bool = True,
        lce_kernel_size: int = 3,
    ) -> None:
        """Plans' arguments as ``PlainConvUNet``; then BSA-Seg's own:

        attention_from_stage: first encoder stage built of BSA blocks (0-based); later stages too.
        blocks_per_stage: BSA blocks per attention stage (int or one entry per stage).
        head_dim: channels per attention head.
        region_sizes: per stage, tokens per region per axis (None entries: dense attention); None: chosen for the
            patch by our trainers and ``nnunet-sparseattn plan`` (:func:`choose_region_size`), dense everywhere
            when the constructor is called without a patch.
        topk: key regions each query region attends to (int or per stage; <= 0: all, i.e. dense).
        coarse_branch: BSAM's patch-level attention branch (False: BiFormer's BRA; an ablation).
        """
        super().__init__()
        unet, bsa = self.settings(locals())
        self.encoder = BSAEncoder(input_channels, unet, bsa)
        self.decoder = UNetDecoder(self.encoder, num_classes, unet.n_conv_per_stage_decoder, deep_supervision)
        # nnU-Net's keys for transfer of encoder weights between datasets (stage 0: conv blocks, or the downsampling
        # conv block of an attention stage)
        first_conv = "encoder.stages.0" + (".0" if bsa.attention_from_stage == 0 else "") + ".convs.0"
        self.key_to_encoder = "encoder.stages"
        self.key_to_stem = "encoder.stages.0"
        self.keys_to_in_proj = (f"{first_conv}.conv", f"{first_conv}.all_modules.0")

    @classmethod
    def fill_for_patch(cls, kwargs: Mapping[str, Any], patch_size: Sequence[int]) -> dict[str, Any]:
        """Region sizes for the attention stages' shapes, unless the plans or the caller give them."""
        first = kwargs["attention_from_stage"]
        if kwargs["region_sizes"] is not None or not isinstance(first, int):
            return {}
        shapes = stage_shapes(patch_size, kwargs["strides"])
        return {"region_sizes": [choose_region_size(shape) if s >= first else None for s, shape in enumerate(shapes)]}

    @classmethod
    def attention_layout(cls, kwargs: Mapping[str, Any], patch_size: Sequence[int]) -> list[StageAttention]:
        """Regions and top-k of every attention stage."""
        n = int(kwargs["n_stages"])
        shapes = stage_shapes(patch_size, kwargs["strides"])
        topk = per_stage(kwargs["topk"], n, "topk")
        regions = kwargs["region_sizes"] or [None] * n
        out = []
        for s in range(kwargs["attention_from_stage"], n):
            region = list(shapes[s]) if regions[s] is None else per_stage(regions[s], len(shapes[s]), "region")
            count = math.prod(-(-a // r) for a, r in zip(shapes[s], region))
            routing = "dense" if is_dense(topk[s], count) else f"top-{topk[s]}"
            out.append(StageAttention(s, shapes[s], f"regions of {x_text(region)} tokens ({count}), {routing}"))
        return out

    @classmethod
    def check_own(cls, kwargs: Mapping[str, Any], patch_size: Optional[Sequence[int]] = None) -> BSASettings:
        n, features = int(kwargs["n_stages"]), kwargs["features_per_stage"]
        ndim = len(kwargs["strides"][0])
        first = check_int("attention_from_stage", kwargs["attention_from_stage"], 0, n)
        mlp_ratio = check_number("mlp_ratio", kwargs["mlp_ratio"], 0, open_min=True)
        lce = check_int("lce_kernel_size", kwargs["lce_kernel_size"], 0)
        if lce % 2 == 0 and lce:
            raise PlansError(f"lce_kernel_size={lce!r}: must be 0 (off) or an odd integer")
        blocks = [
            check_int("blocks_per_stage", b, 1) for b in per_stage(kwargs["blocks_per_stage"], n, "blocks_per_stage")
        ]
        heads = [heads_for(f, kwargs["head_dim"], f"stage {s}") if s >= first else 1 for s, f in enumerate(features)]
        regions = kwargs["region_sizes"]
        regions = [None] * n if regions is None else list(regions)
        if len(regions) != n:
            raise PlansError(f"region_sizes has {len(regions)} entries, expected {n} (one per stage, null allowed)")
        shapes = stage_shapes(patch_size, kwargs["strides"]) if patch_size is not None else None
        for s in range(first, n):
            if regions[s] is None:
                continue
            region = [regions[s]] * ndim if not isinstance(regions[s], (list, tuple)) else list(regions[s])
            if len(region) != ndim or not all(
                isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in region
            ):
                raise PlansError(f"region_sizes[{s}]={regions[s]!r}: must be null or {ndim} integers >= 1")
            if shapes is not None and any(a % r for r, a in zip(region, shapes[s])):
                assert patch_size is not None
                fix = "x".join(str(v) for v in choose_region_size(shapes[s]))
                raise PlansError(
                    f"stage {s} has a {'x'.join(map(str, shapes[s]))} feature map (patch "
                    f"{'x'.join(map(str, patch_size))}) that region size {'x'.join(map(str, region))} does not cut "
                    f"into whole regions: use sizes that divide it per axis (e.g. {fix}), or null for dense attention"
                )
            regions[s] = region
        key_regions = None
        if shapes is not None and kwargs["topk"] != cls.own_defaults()["topk"]:  # a topk the plans or caller chose
            key_regions = [
                None if s < first else math.prod(-(-a // r) for a, r in zip(shapes[s], regions[s] or shapes[s]))
                for s in range(n)
            ]
        return BSASettings(
            attention_from_stage=first,
            blocks_per_stage=blocks,
            head_dim=kwargs["head_dim"],
            num_heads=heads,
            region_sizes=regions,
            topk=check_topk(kwargs["topk"], n, key_regions),
            mlp_ratio=mlp_ratio,
            coarse_branch=check_flag("coarse_branch", kwargs["coarse_branch"]),
            lce_kernel_size=lce,
        )
