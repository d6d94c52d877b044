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
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder

from nnunet_sparseattn.architectures.base import PlansError, PlansNetwork, per_stage, stage_shapes
from nnunet_sparseattn.layers.bilevel_attention import BSABlock
from nnunet_sparseattn.layers.routing import clamp_topk
from nnunet_sparseattn.layers.transformer import num_heads_for

__all__ = ["BSAEncoder", "BSAUNet", "choose_region_size"]

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

    def cost(region: tuple[int, ...]) -> tuple[float, float]:
        logs = [math.log(r) for r in region]
        return round(abs(sum(logs) - target), 9), float(np.std(logs))  # size first (rounded: ties), then cubic

    return list(min(itertools.product(*[_divisors(s) for s in shape]), key=cost))


class BSAEncoder(nn.Module):
    """Convolution stages, then strided conv + BSA blocks; exposes what nnU-Net's ``UNetDecoder`` reads."""

    def __init__(
        self,
        input_channels: int,
        features_per_stage: Sequence[int],
        conv_op: type[nn.Module],
        kernel_sizes: Sequence[Sequence[int]],
        strides: Sequence[Sequence[int]],
        n_conv_per_stage: Sequence[int],
        conv_bias: bool,
        norm_op: Optional[type[nn.Module]],
        norm_op_kwargs: Optional[dict],
        dropout_op: Optional[type[nn.Module]],
        dropout_op_kwargs: Optional[dict],
        nonlin: Optional[type[nn.Module]],
        nonlin_kwargs: Optional[dict],
        attention_from_stage: int,
        blocks_per_stage: Sequence[int],
        num_heads: Sequence[int],
        region_sizes: Sequence[Optional[Sequence[int]]],
        topk: Sequence[int],
        mlp_ratio: float,
        coarse_branch: bool,
        lce_kernel_size: int,
    ) -> None:
        super().__init__()
        conv_args = (conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs)
        stages = []
        channels = input_channels
        for s, features in enumerate(features_per_stage):
            if s < attention_from_stage:
                stage = StackedConvBlocks(
                    n_conv_per_stage[s], conv_op, channels, features, kernel_sizes[s], strides[s], *conv_args
                )
            else:
                # nnU-Net's first conv of a stage does the downsampling; the blocks replace the remaining convs
                down = StackedConvBlocks(1, conv_op, channels, features, kernel_sizes[s], strides[s], *conv_args)
                blocks = [
                    BSABlock(features, num_heads[s], _region(region_sizes[s]), topk[s], conv_op, mlp_ratio,
                             coarse_branch, lce_kernel_size)
                    for _ in range(blocks_per_stage[s])
                ]
                stage = nn.Sequential(down, *blocks)
            stages.append(stage)
            channels = features
        self.stages = nn.ModuleList(stages)
        # what UNetDecoder reads from its encoder
        self.output_channels = list(features_per_stage)
        self.strides = [list(s) for s in strides]
        self.kernel_sizes = [list(k) for k in kernel_sizes]
        self.conv_op = conv_op
        self.conv_bias, self.norm_op, self.norm_op_kwargs = conv_bias, norm_op, norm_op_kwargs
        self.dropout_op, self.dropout_op_kwargs, self.nonlin, self.nonlin_kwargs = (
            dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs
        )
        self.attention_from_stage = attention_from_stage
        self.mlp_ratio = mlp_ratio
        self.topk = list(topk)
        self.region_sizes = list(region_sizes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Stored activations: nnU-Net's count for the convolutions, an explicit count for the BSA blocks."""
        total = np.int64(0)
        size = list(input_size)
        for s, stage in enumerate(self.stages):
            if s < self.attention_from_stage:
                total += stage.compute_conv_feature_map_size(size)
                size = [a // b for a, b in zip(size, self.strides[s])]
                continue
            total += stage[0].compute_conv_feature_map_size(size)
            size = [a // b for a, b in zip(size, self.strides[s])]
            tokens, c = int(np.prod(size)), self.output_channels[s]
            region = self.region_sizes[s] or size
            r = int(np.prod([min(a, b) for a, b in zip(region, size)]))
            num_regions = max(1, tokens // r)
            k_eff = clamp_topk(self.topk[s], num_regions)
            per_block = tokens * c * (12 + 2 * self.mlp_ratio)  # pos, 2 norms, qkv, attn, lce, proj, mlp, residuals
            if k_eff < num_regions:  # sparse: the gather backend copies k_eff regions of K and V per query region
                per_block += 2 * tokens * k_eff * c
            per_block += stage[1].attn.num_heads * tokens * k_eff * r  # attention weights
            total += np.int64(per_block) * (len(stage) - 1)
        return total


def _region(region: Optional[Sequence[int]]) -> Union[int, Sequence[int]]:
    # None: one region per axis of any size, i.e. dense attention (a huge region is clamped to the shape)
    return region if region is not None else 1 << 20


class BSAUNet(PlansNetwork):
    """BSA-Seg on nnU-Net plans (2D or 3D by ``conv_op``); see the module docstring."""

    own_kwargs = (
        "attention_from_stage",
        "blocks_per_stage",
        "head_dim",
        "region_sizes",
        "topk",
        "mlp_ratio",
        "coarse_branch",
        "lce_kernel_size",
    )

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
        region_sizes: per stage, tokens per region per axis (None entries: dense attention); None: dense everywhere.
            Our trainers and ``nnunet-sparseattn plan`` fill it from the patch size (:func:`choose_region_size`).
        topk: key regions each query region attends to (int or per stage; <= 0: all, i.e. dense).
        coarse_branch: BSAM's patch-level attention branch (False: BiFormer's BRA; an ablation).
        """
        super().__init__()
        ndim = {nn.Conv2d: 2, nn.Conv3d: 3}.get(conv_op)
        if ndim is None:
            raise PlansError(f"conv_op must be torch.nn.Conv2d or Conv3d, got {conv_op}")
        n = int(n_stages)
        features = [int(f) for f in per_stage(features_per_stage, n, "features_per_stage")]
        kernel_sizes = [[k] * ndim if isinstance(k, int) else list(k) for k in per_stage(kernel_sizes, n, "kernel_sizes")]
        strides = [[s] * ndim if isinstance(s, int) else list(s) for s in per_stage(strides, n, "strides")]
        if not 0 <= attention_from_stage <= n:
            raise PlansError(f"attention_from_stage={attention_from_stage} must lie in 0..{n} (n_stages={n})")
        regions = list(region_sizes) if region_sizes is not None else [None] * n
        if len(regions) != n:
            raise PlansError(f"region_sizes has {len(regions)} entries, expected {n} (one per stage, null allowed)")
        self.encoder = BSAEncoder(
            input_channels,
            features,
            conv_op,
            kernel_sizes,
            strides,
            per_stage(n_conv_per_stage, n, "n_conv_per_stage"),
            conv_bias,
            norm_op,
            norm_op_kwargs,
            dropout_op,
            dropout_op_kwargs,
            nonlin,
            nonlin_kwargs,
            attention_from_stage,
            per_stage(blocks_per_stage, n, "blocks_per_stage"),
            [num_heads_for(f, head_dim) for f in features],
            regions,
            per_stage(topk, n, "topk"),
            mlp_ratio,
            coarse_branch,
            lce_kernel_size,
        )
        self.decoder = UNetDecoder(self.encoder, num_classes, n_conv_per_stage_decoder, deep_supervision)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, list[torch.Tensor]]:
        return self.decoder(self.encoder(x))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        return self.encoder.compute_conv_feature_map_size(input_size) + self.decoder.compute_conv_feature_map_size(
            input_size
        )

    @classmethod
    def plans_arch_kwargs(cls, plans_kwargs: Mapping[str, Any], patch_size: Sequence[int]) -> dict[str, Any]:
        first = 2
        shapes = stage_shapes(patch_size, plans_kwargs["strides"])
        return {
            "attention_from_stage": first,
            "region_sizes": [choose_region_size(shape) if s >= first else None for s, shape in enumerate(shapes)],
        }

    @classmethod
    def check_patch_size(cls, patch_size: Sequence[int], arch_kwargs: Mapping[str, Any]) -> None:
        n = int(arch_kwargs["n_stages"])
        first = int(arch_kwargs.get("attention_from_stage", 2))
        regions = arch_kwargs.get("region_sizes") or [None] * n
        shapes = stage_shapes(patch_size, arch_kwargs["strides"])
        if len(regions) != n:
            raise PlansError(f"region_sizes has {len(regions)} entries, expected {n} (one per stage, null allowed)")
        for s in range(first, n):
            region, shape = regions[s], shapes[s]
            if region is None:
                continue
            region = [int(region)] * len(shape) if isinstance(region, int) else [int(r) for r in region]
            if len(region) != len(shape) or any(r < 1 or a % r for r, a in zip(region, shape)):
                fix = "x".join(str(v) for v in choose_region_size(shape))
                raise PlansError(
                    f"stage {s} has a {'x'.join(map(str, shape))} feature map (patch "
                    f"{'x'.join(map(str, patch_size))}) that region size {'x'.join(map(str, region))} does not cut "
                    f"into whole regions: use sizes that divide it per axis (e.g. {fix}), or null for dense attention"
                )
