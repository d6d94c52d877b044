"""MDSA-UNet (Li et al., "Multi-Scale Dynamic Sparse Attention UNet for Medical Image Segmentation", JBHI 2025).

The paper's figure, as we read its abstract (no code or full text was available)::

    input ─ stem ─ stage 0 ───────────────────────────────────── EUF ─ blocks ─ head ─ logits
                     └ EDM ─ stage 1 ──────────────────── EUF ─ blocks ┘   (skips)
                               └ EDM ─ MDSA blocks ─ EUF ─ MDSA blocks ┘
                                         └ EDM ─ MDSA blocks (bottleneck) ┘

- encoder: a downsampling EDM (:class:`~nnunet_sparseattn.layers.resampling.EnhancedDownsampling`) opens every
  stage but the first; then blocks;
- decoder: an upsampling EUF (:class:`~nnunet_sparseattn.layers.resampling.EnhancedUpsampling`, the skip fused
  in and channel-gated) opens every stage; then blocks; one 1x1 segmentation head per decoder stage;
- blocks: MDSA transformer blocks (:class:`~nnunet_sparseattn.layers.multiscale_attention.MDSABlock`) from
  ``attention_from_stage`` down; above it, nnU-Net's conv-norm-nonlin blocks.

Two ways to build it:

- :class:`MDSAUNet` from any nnU-Net plans (2D or 3D, any stages, strides and widths; see
  :mod:`nnunet_sparseattn.architectures.base` for the contracts);
- :func:`mdsa_paper_network`: a fixed 2D network at the paper's scale (224 x 224 RGB input), for the
  parameter and FLOP figures ``nnunet-sparseattn info --variant mdsa-paper`` prints beside the paper's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, cast

import numpy as np
import torch
import torch.nn as nn
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks

from nnunet_sparseattn.architectures.base import (
    PlansError,
    PlansNetwork,
    SkipsEncoder,
    StageAttention,
    UNetSettings,
    check_choice,
    check_int,
    check_number,
    check_topk,
    heads_for,
    is_int,
    per_stage,
    stage_shapes,
    x_text,
)
from nnunet_sparseattn.layers.conv import conv_dims
from nnunet_sparseattn.layers.multiscale_attention import AGGREGATIONS, MDSABlock, auto_grid
from nnunet_sparseattn.layers.resampling import EnhancedDownsampling, EnhancedUpsampling
from nnunet_sparseattn.layers.routing import is_dense, region_layout
from nnunet_sparseattn.layers.transformer import num_heads_for

__all__ = [
    "MDSABlockSettings",
    "MDSAPaperUNet",
    "MDSASettings",
    "MDSAUNet",
    "PAPER_FLOPS",
    "PAPER_INPUT",
    "PAPER_PARAMS",
    "mdsa_paper_network",
]

# The paper's figures (abstract): 6.65 M parameters, 4.54 G FLOPs at 224 x 224. Like most segmentation papers
# (thop / fvcore), it very likely counts a multiply-add as one FLOP; torch.utils.flop_counter counts two.
PAPER_PARAMS = 6.65e6
PAPER_FLOPS = 4.54e9
PAPER_INPUT = (1, 3, 224, 224)


# ------------------------------------------------------------------------------------------------ building blocks
@dataclass(frozen=True)
class MDSABlockSettings:
    """What every MDSA block of a network shares."""

    head_dim: int
    aggregation: str
    aggregation_scales: Optional[list[int]]
    mlp_ratio: float
    lce_kernel_size: int


@dataclass(frozen=True)
class MDSASettings:
    """MDSA-UNet's own settings, validated and one entry per stage (:meth:`MDSAUNet.check_own` builds it once)."""

    attention_from_stage: int  # clamped: the bottleneck always attends
    attention: list[bool]  # per stage
    grids: list[Optional[tuple[int, ...]]]  # regions per axis; None: chosen from the stage's shape at run time
    topk: list[int]  # key regions per query region; 0: dense
    edm_local_branch: str
    block: MDSABlockSettings


def _attention_blocks(
    n: int, channels: int, conv_op: type[nn.Module], grid: Optional[Sequence[int]], topk: int, cfg: MDSABlockSettings
) -> list[nn.Module]:
    return [
        MDSABlock(
            channels,
            num_heads_for(channels, cfg.head_dim),
            conv_op,
            grid,
            topk,
            cfg.aggregation,
            cfg.aggregation_scales,
            cfg.mlp_ratio,
            cfg.lce_kernel_size,
        )
        for _ in range(n)
    ]


def _stage_blocks(
    rest: int,
    channels: int,
    kernel_size: Sequence[int],
    unet: UNetSettings,
    mdsa: MDSASettings,
    stage: int,
) -> list[nn.Module]:
    """What follows a stage's entry (its down- or upsampling) in place of nnU-Net's ``rest`` further conv blocks:
    that many MDSA blocks (at least one) where the stage attends, else the conv blocks."""
    if mdsa.attention[stage]:
        return _attention_blocks(max(1, rest), channels, unet.conv_op, mdsa.grids[stage], mdsa.topk[stage], mdsa.block)
    if rest <= 0:
        return []
    return [StackedConvBlocks(rest, unet.conv_op, channels, channels, kernel_size, 1, *unet.conv_block_args)]


def _feature_map_size(module: nn.Module, size: Sequence[int]) -> np.int64:
    if isinstance(module, (StackedConvBlocks, EnhancedDownsampling, MDSABlock)):
        return np.int64(module.compute_conv_feature_map_size(list(size)))
    return np.int64(0)


class MDSAEncoder(SkipsEncoder):
    """Stages of [entry, blocks...]; returns every stage's output (the skips, bottleneck last).

    Entry: the first stage's first convolution (when it does not downsample; otherwise an EDM), then an EDM per
    stage. A stage's other ``n_conv_per_stage - 1`` convolutions are kept as nnU-Net's conv blocks above
    ``attention_from_stage`` and become as many MDSA blocks (at least one) from it down.
    """

    def __init__(self, input_channels: int, unet: UNetSettings, mdsa: MDSASettings) -> None:
        super().__init__()
        conv_op = unet.conv_op
        self.conv_op = conv_op
        self.output_channels = list(unet.features_per_stage)
        self.strides = [tuple(s) for s in unet.strides]
        self.kernel_sizes = [tuple(k) for k in unet.kernel_sizes]
        stages = []
        in_ch = input_channels
        for s, out_ch in enumerate(self.output_channels):
            if s == 0 and all(st == 1 for st in self.strides[0]):
                entry: nn.Module = StackedConvBlocks(
                    1, conv_op, in_ch, out_ch, self.kernel_sizes[0], 1, *unet.conv_block_args
                )
            else:
                entry = EnhancedDownsampling(
                    in_ch,
                    out_ch,
                    self.strides[s],
                    conv_op,
                    self.kernel_sizes[s],
                    mdsa.edm_local_branch,
                    unet.norm_op,
                    unet.norm_op_kwargs,
                    unet.conv_bias,
                )
            blocks = _stage_blocks(unet.n_conv_per_stage[s] - 1, out_ch, self.kernel_sizes[s], unet, mdsa, s)
            stages.append(nn.Sequential(entry, *blocks))
            in_ch = out_ch
        self.stages = nn.ModuleList(stages)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        total = np.int64(0)
        size = list(input_size)
        for stage, out_size in zip(self.stages, stage_shapes(input_size, self.strides)):
            entry, *blocks = cast(nn.Sequential, stage)
            total += _feature_map_size(entry, size)
            for block in blocks:
                total += _feature_map_size(block, out_size)
            size = list(out_size)
        return total


class MDSADecoder(nn.Module):
    """nnU-Net's decoder layout (``stages[0]`` is the lowest resolution) with EUF entries.

    Stage ``i`` upsamples from encoder stage ``n - i - 1`` to ``n - i - 2``: EUF (its fusion convolution counts
    as the stage's first convolution), then ``n_conv_per_stage_decoder[i] - 1`` conv blocks or MDSA blocks (at
    least one), as the encoder does at that resolution. ``seg_layers[i]`` is its 1x1 head; all heads exist whether
    deep supervision is on or not (``deep_supervision`` toggles what ``forward`` returns).
    """

    def __init__(
        self, encoder: MDSAEncoder, num_classes: int, unet: UNetSettings, mdsa: MDSASettings, deep_supervision: bool
    ) -> None:
        super().__init__()
        self.deep_supervision = deep_supervision
        self.num_classes = num_classes
        conv_op = encoder.conv_op
        ch, strides, kernels = encoder.output_channels, encoder.strides, encoder.kernel_sizes
        self.strides = strides
        n = len(ch)
        upsampling, stages, seg_layers = [], [], []
        for i in range(n - 1):
            below, level = n - 1 - i, n - 2 - i
            upsampling.append(
                EnhancedUpsampling(
                    ch[below],
                    ch[level],
                    ch[level],
                    strides[below],
                    conv_op,
                    kernels[level],
                    unet.norm_op,
                    unet.norm_op_kwargs,
                    unet.nonlin,
                    unet.nonlin_kwargs,
                    unet.conv_bias,
                )
            )
            rest = unet.n_conv_per_stage_decoder[i] - 1
            stages.append(nn.Sequential(*_stage_blocks(rest, ch[level], kernels[level], unet, mdsa, level)))
            seg_layers.append(conv_op(ch[level], num_classes, 1, 1, 0, bias=True))
        self.upsampling = nn.ModuleList(upsampling)
        self.stages = nn.ModuleList(stages)
        self.seg_layers = nn.ModuleList(seg_layers)

    def forward(self, skips: Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        x = skips[-1]
        outputs = []
        last = len(self.stages) - 1
        for i, (up, stage) in enumerate(zip(self.upsampling, self.stages)):
            x = stage(up(x, skips[-(i + 2)]))
            if self.deep_supervision:
                outputs.append(self.seg_layers[i](x))
            elif i == last:
                outputs.append(self.seg_layers[-1](x))
        outputs = outputs[::-1]  # highest resolution first, as nnU-Net's loss expects
        return outputs if self.deep_supervision else outputs[0]

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        shapes = stage_shapes(input_size, self.strides)
        total = np.int64(0)
        last = len(self.stages) - 1
        for i, (up, stage) in enumerate(zip(self.upsampling, self.stages)):
            size = shapes[len(shapes) - 2 - i]
            total += cast(EnhancedUpsampling, up).compute_conv_feature_map_size(size)
            for block in cast(nn.Sequential, stage):
                total += _feature_map_size(block, size)
            if self.deep_supervision or i == last:
                total += np.int64(self.num_classes * math.prod(size))
        return total


# ------------------------------------------------------------------------------------------------ plans network
class MDSAUNet(PlansNetwork):
    """MDSA-UNet built from nnU-Net plans, 2D or 3D (plans arguments as ``PlainConvUNet``'s).

    Own arguments (our inference where the paper is silent; all JSON values, written into variant plans):

    - ``attention_from_stage=2``: stages above it (full and 1/2 resolution) keep nnU-Net's convolutions, where
      attention over tens of thousands of tokens would cost most and convolutions already see far; clamped so
      that the bottleneck always has attention.
    - ``head_dim=32``: channels per head (heads = channels // 32: 4 heads at 128 channels).
    - ``mlp_ratio=3.0``: BiFormer's MLP width.
    - ``topk=8`` (int, or one per stage): key regions kept per query region; ``<= 0`` = dense. A stage with at
      most ``topk`` regions (the bottleneck, typically) is dense: there is nothing to filter.
    - ``grids=None``: regions per axis per stage (a list with one ``[g0, g1(, g2)]`` or ``null`` per stage);
      ``null`` = chosen from the stage's shape at run time (about 8 x 8 tokens per region in 2D, 4 x 4 x 4 in
      3D: 64-token regions). Variant plans and our trainers write the grids chosen for the patch size.
    - ``aggregation="dwconv"`` | ``"pool"`` and ``aggregation_scales`` (kernels, default 3, 5, 7; or pooling
      ratios, default 2, 4): the two readings of multi-scale aggregation (layers.multiscale_attention).
    - ``lce_kernel_size=3``: local context enhancement on v (0: off).
    - ``edm_local_branch="conv"`` | ``"maxpool"``: EDM's second branch.
    """

    checkpoint_block_types = (MDSABlock,)

    encoder: MDSAEncoder
    decoder: MDSADecoder

    def __init__(
        self,
        input_channels: int,
        n_stages: int,
        features_per_stage: int | Sequence[int],
        conv_op: type[nn.Module],
        kernel_sizes: int | Sequence,
        strides: int | Sequence,
        n_conv_per_stage: int | Sequence[int],
        num_classes: int,
        n_conv_per_stage_decoder: int | Sequence[int],
        conv_bias: bool = False,
        norm_op: Optional[type[nn.Module]] = None,
        norm_op_kwargs: Optional[dict] = None,
        dropout_op: Optional[type[nn.Module]] = None,
        dropout_op_kwargs: Optional[dict] = None,
        nonlin: Optional[type[nn.Module]] = None,
        nonlin_kwargs: Optional[dict] = None,
        deep_supervision: bool = False,
        attention_from_stage: int = 2,
        head_dim: int = 32,
        mlp_ratio: float = 3.0,
        topk: int | Sequence[int] = 8,
        grids: Optional[Sequence[Optional[Sequence[int]]]] = None,
        aggregation: str = "dwconv",
        aggregation_scales: Optional[Sequence[int]] = None,
        lce_kernel_size: int = 3,
        edm_local_branch: str = "conv",
    ) -> None:
        super().__init__()
        unet, mdsa = self.settings(locals())
        self.attention_stages = [s for s, a in enumerate(mdsa.attention) if a]
        self.encoder = MDSAEncoder(input_channels, unet, mdsa)
        self.decoder = MDSADecoder(self.encoder, num_classes, unet, mdsa, deep_supervision)
        # nnU-Net's keys for transfer of encoder weights between datasets (stage 0 opens with a conv block, or with
        # an EDM when the plans downsample at once)
        entry = "encoder.stages.0.0"
        in_proj = (
            ("convs.0.conv", "convs.0.all_modules.0")
            if isinstance(cast(nn.Sequential, self.encoder.stages[0])[0], StackedConvBlocks)
            else ("merge", "local")
        )
        self.key_to_encoder = "encoder.stages"
        self.key_to_stem = "encoder.stages.0"
        self.keys_to_in_proj = tuple(f"{entry}.{key}" for key in in_proj)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        ndim = conv_dims(self.encoder.conv_op)
        if len(input_size) != ndim:
            raise ValueError(f"input_size must be the {ndim} spatial sizes (no batch or channel), got {input_size}")
        return super().compute_conv_feature_map_size(input_size)

    @classmethod
    def fill_for_patch(cls, kwargs: Mapping[str, Any], patch_size: Sequence[int]) -> dict[str, Any]:
        """The region grids for the attention stages' shapes, unless the plans or the caller give them."""
        first = kwargs["attention_from_stage"]
        if kwargs["grids"] is not None or not isinstance(first, int):
            return {}
        first = min(first, kwargs["n_stages"] - 1)
        shapes = stage_shapes(patch_size, kwargs["strides"])
        return {"grids": [list(auto_grid(shape)) if s >= first else None for s, shape in enumerate(shapes)]}

    @classmethod
    def attention_layout(cls, kwargs: Mapping[str, Any], patch_size: Sequence[int]) -> list[StageAttention]:
        """Region grid and top-k of every attention stage (the bottleneck always attends)."""
        n = int(kwargs["n_stages"])
        shapes = stage_shapes(patch_size, kwargs["strides"])
        topk = per_stage(kwargs["topk"], n, "topk")
        grids = kwargs["grids"] or [None] * n
        out = []
        for s in range(min(kwargs["attention_from_stage"], n - 1), n):
            grid = grids[s] or [1] * len(shapes[s])
            count = math.prod(int(g) for g in grid)
            routing = "dense" if is_dense(topk[s], count) else f"top-{topk[s]}"
            out.append(StageAttention(s, shapes[s], f"grid {x_text(grid)} ({count} regions), {routing}"))
        return out

    @classmethod
    def check_own(cls, kwargs: Mapping[str, Any], patch_size: Optional[Sequence[int]] = None) -> MDSASettings:
        """Per-stage attention flags, grids and top-k and the blocks' settings (PlansError on values that do not fit
        the plans)."""
        n = kwargs["n_stages"]
        ndim = len(kwargs["strides"][0])
        first = min(check_int("attention_from_stage", kwargs["attention_from_stage"], 0), n - 1)  # bottleneck attends
        attention = [s >= first for s in range(n)]
        for s in range(first, n):
            heads_for(kwargs["features_per_stage"][s], kwargs["head_dim"], f"stage {s}")
        aggregation = check_choice("aggregation", kwargs["aggregation"], AGGREGATIONS)
        mlp_ratio = check_number("mlp_ratio", kwargs["mlp_ratio"], 0, open_min=True)
        edm = check_choice("edm_local_branch", kwargs["edm_local_branch"], ("conv", "maxpool"))
        lce = check_int("lce_kernel_size", kwargs["lce_kernel_size"], 0)
        if lce % 2 == 0 and lce:
            raise PlansError(f"lce_kernel_size={lce!r}: must be 0 (off) or an odd integer")
        scales = kwargs["aggregation_scales"]
        if scales is not None:
            if not (isinstance(scales, (list, tuple)) and scales and all(is_int(x) and x >= 1 for x in scales)):
                raise PlansError(f"aggregation_scales={scales!r} must be a non-empty list of integers >= 1")
            if aggregation == "dwconv" and any(x % 2 == 0 for x in scales):
                raise PlansError(f"aggregation_scales={scales!r}: depthwise kernels must be odd (e.g. [3, 5, 7])")
            scales = [int(x) for x in scales]
        grids = kwargs["grids"]
        if grids is None:
            grids = [None] * n
        if not isinstance(grids, (list, tuple)) or len(grids) != n:
            raise PlansError(
                f"grids={grids!r} must be null or a list of {n} entries (one per stage, each null or "
                f"{ndim} regions per axis)"
            )
        checked: list[Optional[tuple[int, ...]]] = []
        for s, g in enumerate(grids):
            if g is not None and not (
                isinstance(g, (list, tuple)) and len(g) == ndim and all(is_int(x) and x >= 1 for x in g)
            ):
                raise PlansError(f"grids[{s}]={g!r} must be null or {ndim} integers >= 1 (regions per axis)")
            checked.append(None if g is None else tuple(int(x) for x in g))
        key_regions = None
        if patch_size is not None and kwargs["topk"] != cls.own_defaults()["topk"]:  # a topk the plans or caller chose
            shapes = stage_shapes(patch_size, kwargs["strides"])
            key_regions = [
                None
                if not attention[s]
                else math.prod(region_layout(shapes[s], checked[s] or auto_grid(shapes[s])).grid)
                for s in range(n)
            ]
        return MDSASettings(
            attention_from_stage=first,
            attention=attention,
            grids=checked,
            topk=check_topk(kwargs["topk"], n, key_regions),
            edm_local_branch=edm,
            block=MDSABlockSettings(kwargs["head_dim"], aggregation, scales, mlp_ratio, lce),
        )


# ------------------------------------------------------------------------------------------------ paper scale
class MDSAPaperUNet(nn.Module):
    """The 2D network at the paper's scale: a BiFormer-like 4-stage pyramid at 1/4 ... 1/32 of the input.

    ::

        stem: conv3x3/2 BN GELU (3 -> c0/2, 1/2), conv3x3/2 BN (-> c0, 1/4)
        encoder: [EDM (i > 0)] + depths[i] MDSA blocks at channels[i], 1/4 1/8 1/16 1/32
        decoder: EUF (skip: encoder stage i) + decoder_depths[i] MDSA blocks, back to 1/4
        head: EUF to 1/2 (skip: the stem's first map), transposed conv x2, 1x1 conv -> classes

    Regions: a fixed grid of 7 x 7 per stage as BiFormer (8 x 8 tokens per region at 1/4, 4 x 4 at 1/8, 2 x 2 at
    1/16); ``topks`` per stage as BiFormer-T's (1, 4, 16, then dense at 1/32, where 49 tokens are left). BatchNorm
    in the convolutional parts (natural-image training), LayerNorm in the transformer blocks.

    The abstract gives no layout, only the scale. Widths (96, 128, 192, 256), depths (2, 2, 4, 1) and decoder
    depths (2, 2, 1) were chosen to land near it: 6.51 M parameters (paper 6.65 M) and 4.49 G multiply-adds at
    224 x 224 (paper 4.54 G "FLOPs", which we read as multiply-adds; torch.utils.flop_counter reports 8.99 G).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 2,
        channels: Sequence[int] = (96, 128, 192, 256),
        depths: Sequence[int] = (2, 2, 4, 1),
        decoder_depths: Sequence[int] = (2, 2, 1),
        topks: Sequence[int] = (1, 4, 16, 0),
        grid: int = 7,
        head_dim: int = 32,
        mlp_ratio: float = 3.0,
        aggregation: str = "dwconv",
    ) -> None:
        super().__init__()
        if not (len(channels) == len(depths) == len(topks) == len(decoder_depths) + 1):
            raise ValueError("channels, depths and topks need one entry per stage, decoder_depths one less")
        c0 = channels[0]
        bn = nn.BatchNorm2d
        self.stem1 = nn.Sequential(nn.Conv2d(in_channels, c0 // 2, 3, 2, 1, bias=False), bn(c0 // 2), nn.GELU())
        self.stem2 = nn.Sequential(nn.Conv2d(c0 // 2, c0, 3, 2, 1, bias=False), bn(c0))
        cfg = MDSABlockSettings(head_dim, aggregation, None, mlp_ratio, 3)
        g = (grid, grid)
        self.encoder = nn.ModuleList()
        for i, (c, d, k) in enumerate(zip(channels, depths, topks)):
            entry = [EnhancedDownsampling(channels[i - 1], c, 2, nn.Conv2d, 3, "conv", bn)] if i else []
            self.encoder.append(nn.Sequential(*entry, *_attention_blocks(d, c, nn.Conv2d, g, k, cfg)))
        self.upsampling = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in reversed(range(len(channels) - 1)):
            self.upsampling.append(
                EnhancedUpsampling(channels[i + 1], channels[i], channels[i], 2, nn.Conv2d, 3, bn, None, nn.GELU)
            )
            self.decoder.append(
                nn.Sequential(*_attention_blocks(decoder_depths[i], channels[i], nn.Conv2d, g, topks[i], cfg))
            )
        self.head_up = EnhancedUpsampling(c0, c0 // 2, c0 // 2, 2, nn.Conv2d, 3, bn, None, nn.GELU)
        self.head = nn.Sequential(nn.ConvTranspose2d(c0 // 2, c0 // 2, 2, 2), nn.Conv2d(c0 // 2, num_classes, 1))
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, MDSABlock):
            module.reset_parameters()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        half = self.stem1(image)
        x = self.stem2(half)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        for i, (up, stage) in enumerate(zip(self.upsampling, self.decoder)):
            x = stage(up(x, skips[-(i + 2)]))
        x = self.head_up(x, half)
        out = self.head(x)
        # odd input sizes: the stride-2 stem rounds up (ceil); crop back to the input
        return out[..., : image.shape[-2], : image.shape[-1]]


def mdsa_paper_network(num_classes: int = 2) -> nn.Module:
    """The paper-scale 2D configuration (3 input channels, 224 x 224); ``info --variant mdsa-paper`` counts it."""
    return MDSAPaperUNet(in_channels=PAPER_INPUT[1], num_classes=num_classes)
