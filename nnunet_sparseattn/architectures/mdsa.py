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
from typing import Any, Mapping, Optional, Sequence, cast

import numpy as np
import torch
import torch.nn as nn
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks

from nnunet_sparseattn.architectures.base import (
    PlansError,
    PlansNetwork,
    SkipsEncoder,
    conv_block_args,
    heads_for,
    stage_shapes,
)
from nnunet_sparseattn.layers.conv import conv_dims
from nnunet_sparseattn.layers.multiscale_attention import AGGREGATIONS, MDSABlock, auto_grid
from nnunet_sparseattn.layers.resampling import EnhancedDownsampling, EnhancedUpsampling
from nnunet_sparseattn.layers.transformer import num_heads_for

__all__ = [
    "MDSAPaperUNet",
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
def _attention_blocks(
    n: int, channels: int, conv_op: type[nn.Module], grid: Optional[Sequence[int]], topk: int, cfg: Mapping[str, Any]
) -> list[nn.Module]:
    return [
        MDSABlock(
            channels,
            num_heads_for(channels, cfg["head_dim"]),
            conv_op,
            grid,
            topk,
            cfg["aggregation"],
            cfg["aggregation_scales"],
            cfg["mlp_ratio"],
            cfg["lce_kernel_size"],
        )
        for _ in range(n)
    ]


def _stage_blocks(
    rest: int,
    channels: int,
    kernel_size: Sequence[int],
    conv_op: type[nn.Module],
    conv_args: Sequence[Any],
    attends: bool,
    grid: Optional[Sequence[int]],
    topk: int,
    cfg: Mapping[str, Any],
) -> list[nn.Module]:
    """What follows a stage's entry (its down- or upsampling) in place of nnU-Net's ``rest`` further conv blocks:
    that many MDSA blocks (at least one) where the stage attends, else the conv blocks."""
    if attends:
        return _attention_blocks(max(1, rest), channels, conv_op, grid, topk, cfg)
    return [StackedConvBlocks(rest, conv_op, channels, channels, kernel_size, 1, *conv_args)] if rest > 0 else []


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

    def __init__(
        self,
        input_channels: int,
        kw: Mapping[str, Any],
        attention: Sequence[bool],
        grids: Sequence[Optional[Sequence[int]]],
        topks: Sequence[int],
        cfg: Mapping[str, Any],
    ) -> None:
        super().__init__()
        conv_op = kw["conv_op"]
        self.conv_op = conv_op
        self.output_channels = list(kw["features_per_stage"])
        self.strides = [tuple(s) for s in kw["strides"]]
        self.kernel_sizes = [tuple(k) for k in kw["kernel_sizes"]]
        conv_args = conv_block_args(kw)
        stages = []
        in_ch = input_channels
        for s, out_ch in enumerate(self.output_channels):
            if s == 0 and all(st == 1 for st in self.strides[0]):
                entry: nn.Module = StackedConvBlocks(1, conv_op, in_ch, out_ch, self.kernel_sizes[0], 1, *conv_args)
            else:
                entry = EnhancedDownsampling(
                    in_ch,
                    out_ch,
                    self.strides[s],
                    conv_op,
                    self.kernel_sizes[s],
                    cfg["edm_local_branch"],
                    kw["norm_op"],
                    kw["norm_op_kwargs"],
                    kw["conv_bias"],
                )
            rest = kw["n_conv_per_stage"][s] - 1
            blocks = _stage_blocks(
                rest, out_ch, self.kernel_sizes[s], conv_op, conv_args, attention[s], grids[s], topks[s], cfg
            )
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
        self,
        encoder: MDSAEncoder,
        num_classes: int,
        kw: Mapping[str, Any],
        attention: Sequence[bool],
        grids: Sequence[Optional[Sequence[int]]],
        topks: Sequence[int],
        cfg: Mapping[str, Any],
        deep_supervision: bool,
    ) -> None:
        super().__init__()
        self.deep_supervision = deep_supervision
        self.num_classes = num_classes
        conv_op = encoder.conv_op
        ch, strides, kernels = encoder.output_channels, encoder.strides, encoder.kernel_sizes
        self.strides = strides
        conv_args = conv_block_args(kw)
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
                    kw["norm_op"],
                    kw["norm_op_kwargs"],
                    kw["nonlin"],
                    kw["nonlin_kwargs"],
                    kw["conv_bias"],
                )
            )
            rest = kw["n_conv_per_stage_decoder"][i] - 1
            blocks = _stage_blocks(
                rest, ch[level], kernels[level], conv_op, conv_args, attention[level], grids[level], topks[level], cfg
            )
            stages.append(nn.Sequential(*blocks))
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
        kw = self.shared_values(locals())
        cfg = self.own_values(locals())
        attention, grid_list, topk_list = self.check_own({**kw, **cfg})
        self.attention_stages = [s for s, a in enumerate(attention) if a]
        self.encoder = MDSAEncoder(input_channels, kw, attention, grid_list, topk_list, cfg)
        self.decoder = MDSADecoder(
            self.encoder, num_classes, kw, attention, grid_list, topk_list, cfg, deep_supervision
        )
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
    def check_own(
        cls, kwargs: Mapping[str, Any], patch_size: Optional[Sequence[int]] = None
    ) -> tuple[list[bool], list, list[int]]:
        """Per-stage attention flags, grids and top-k (PlansError on values that do not fit the plans)."""
        n = kwargs["n_stages"]
        ndim = len(kwargs["strides"][0])
        first = kwargs["attention_from_stage"]
        if not isinstance(first, int) or first < 0:
            raise PlansError(f"attention_from_stage={first!r} must be an integer >= 0")
        first = min(first, n - 1)  # the bottleneck always attends
        attention = [s >= first for s in range(n)]
        for s in range(first, n):
            heads_for(kwargs["features_per_stage"][s], kwargs["head_dim"], f"stage {s}")
        if kwargs["aggregation"] not in AGGREGATIONS:
            raise PlansError(f"aggregation={kwargs['aggregation']!r}: choose one of {', '.join(AGGREGATIONS)}")
        if not (isinstance(kwargs["mlp_ratio"], (int, float)) and kwargs["mlp_ratio"] > 0):
            raise PlansError(f"mlp_ratio={kwargs['mlp_ratio']!r} must be a number > 0")
        if kwargs["edm_local_branch"] not in ("conv", "maxpool"):
            raise PlansError(f"edm_local_branch={kwargs['edm_local_branch']!r}: choose 'conv' or 'maxpool'")
        lce = kwargs["lce_kernel_size"]
        if not isinstance(lce, int) or lce < 0 or (lce and lce % 2 == 0):
            raise PlansError(f"lce_kernel_size={lce!r} must be 0 (off) or an odd integer")
        scales = kwargs["aggregation_scales"]
        if scales is not None:
            if not (
                isinstance(scales, (list, tuple)) and scales and all(isinstance(x, int) and x >= 1 for x in scales)
            ):
                raise PlansError(f"aggregation_scales={scales!r} must be a non-empty list of integers >= 1")
            if kwargs["aggregation"] == "dwconv" and any(x % 2 == 0 for x in scales):
                raise PlansError(f"aggregation_scales={scales!r}: depthwise kernels must be odd (e.g. [3, 5, 7])")
        topk = kwargs["topk"]
        topks = list(topk) if isinstance(topk, (list, tuple)) else [topk] * n
        if len(topks) != n or not all(isinstance(t, int) for t in topks):
            raise PlansError(f"topk={topk!r} must be an integer or a list of {n} integers (one per stage; <= 0: dense)")
        grids = kwargs["grids"]
        if grids is None:
            grids = [None] * n
        if not isinstance(grids, (list, tuple)) or len(grids) != n:
            raise PlansError(
                f"grids={grids!r} must be null or a list of {n} entries (one per stage, each null or "
                f"{ndim} regions per axis)"
            )
        checked = []
        for s, g in enumerate(grids):
            if g is not None and not (
                isinstance(g, (list, tuple)) and len(g) == ndim and all(isinstance(x, int) and x >= 1 for x in g)
            ):
                raise PlansError(f"grids[{s}]={g!r} must be null or {ndim} integers >= 1 (regions per axis)")
            checked.append(None if g is None else tuple(g))
        return attention, checked, topks


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
        cfg = dict(
            head_dim=head_dim, aggregation=aggregation, aggregation_scales=None, mlp_ratio=mlp_ratio, lce_kernel_size=3
        )
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
