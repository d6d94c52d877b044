"""Bilateral spatial attention network (Sun et al., 2024) on nnU-Net plans, 2D and 3D.

Read top to bottom, this is the paper's Figure 1 on nnU-Net's stages::

    stem                 conv - norm - act (input channels -> stage 0 width)
    stage s              ResNeXt blocks (the plans' width, kernel and stride; grouped 3x3 convolutions)  -> f_s
    attention stages     f_s -> ISAM (6 Swin blocks + conv + residual) -> FSAM (channel weights + conv)  -> f_s
                         (default: the three largest stages of at most 4096 tokens, never full resolution:
                         the paper's 1/4 .. 1/16 maps of a 256 x 256 image; see default_isam_stages)
    decoder              nnU-Net's: transposed conv, concat skip, conv blocks, a head per stage
    rendering            the attention rendering module refines the most uncertain voxels of the
                         full-resolution logits with a point head on the last decoder features

Only the attended features go on, to the next stage and to the decoder (the paper's f_i). The point loss of the
rendering module is added by ``nnUNetTrainerBilateral``: after every forward, ``network.rendered`` holds the
points and their logits (:class:`~nnunet_sparseattn.layers.point_rendering.RenderedPoints`).

ISAM widths: the stage's width capped at ``isam_max_dim`` (a 1x1 conv in, the ISAM's conv out), or, with
``swin_embed_dim`` set, Swin's stage widths (embed x 1, 2, 4 for the third-deepest, second-deepest and deepest
attention stage), so a timm Swin checkpoint maps onto them (``swin_weights.py``). Windows are fitted to each
stage's shape (``fit_window``) and written into variant plans.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union, cast

import numpy as np
import torch
import torch.nn as nn
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder

from nnunet_sparseattn.architectures.base import (
    PlansError,
    PlansNetwork,
    StageAttention,
    UNetSettings,
    check_choice,
    check_flag,
    check_int,
    check_number,
    heads_for,
    is_int,
    per_stage,
    stage_shapes,
    x_text,
)
from nnunet_sparseattn.layers.conv import ConvNormAct
from nnunet_sparseattn.layers.fsam import FSAM, FSAM_WEIGHTINGS
from nnunet_sparseattn.layers.isam import ISAM
from nnunet_sparseattn.layers.point_rendering import AttentionRendering, RenderedPoints
from nnunet_sparseattn.layers.resnext import ResNeXtBlock, ResNeXtStage
from nnunet_sparseattn.layers.window_attention import fit_window

__all__ = [
    "PAPER_INPUT",
    "PAPER_PARAMS",
    "BilateralAttention",
    "BilateralDecoder",
    "BilateralEncoder",
    "BilateralUNet",
    "bilateral_paper_network",
    "default_isam_stages",
    "isam_widths",
]

PAPER_PARAMS = 6.36e6
PAPER_INPUT = (1, 3, 256, 256)

ISAM_MAX_TOKENS = 4096  # largest map (tokens) that gets ISAM by default
WINDOW = 7  # Swin's window; fitted per stage (fewer, even windows where the stage is not a multiple of 7)
TRAIN_POINTS = 2048  # PointRend's training points per image; at most a quarter of the patch's voxels
EVAL_POINTS = 8192  # PointRend's inference points; at most an eighth of the patch's voxels


def default_isam_stages(
    n_stages: int, shapes: Optional[Sequence[Sequence[int]]] = None, count: int = 3, max_tokens: int = ISAM_MAX_TOKENS
) -> list[int]:
    """Stages that get ISAM + FSAM: the ``count`` largest stages (never stage 0) whose maps have at most
    ``max_tokens`` tokens (64 x 64 in 2D, 16^3 in 3D: window attention stays affordable), or the bottleneck if no
    stage is that small. Without ``shapes``: the ``count`` deepest stages."""
    if shapes is None:
        return list(range(max(1, n_stages - count), n_stages))
    small = [s for s in range(1, n_stages) if math.prod(shapes[s]) <= max_tokens]
    return small[:count] if small else [n_stages - 1]


def isam_widths(
    features: Sequence[int], stages: Sequence[int], max_dim: int = 256, swin_embed_dim: Optional[int] = None
) -> list[int]:
    """Swin width of each ISAM (see the module docstring)."""
    if swin_embed_dim is None:
        return [min(int(features[s]), int(max_dim)) for s in stages]
    widths = []
    for j, s in enumerate(stages):
        depth_from_last = len(stages) - 1 - j  # 0: deepest attention stage -> Swin stage 2 (its 6-block stage)
        widths.append(
            int(swin_embed_dim) * 2 ** (2 - depth_from_last)
            if depth_from_last <= 2
            else min(int(features[s]), int(max_dim))
        )
    return widths


class BilateralAttention(nn.Sequential):
    """ISAM (image space) then FSAM (feature space) on one stage's features."""

    def __init__(self, isam: ISAM, fsam: FSAM):
        super().__init__()
        self.isam, self.fsam = isam, fsam

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        return self.isam.compute_conv_feature_map_size(input_size) + self.fsam.compute_conv_feature_map_size(input_size)


@dataclass(frozen=True)
class BilateralSettings:
    """The network's own settings, validated, defaults filled in (:meth:`BilateralUNet.check_own` builds it once)."""

    isam_stages: list[int]
    isam_dims: list[int]  # one per ISAM stage
    isam_windows: list[list[int]]  # one per stage
    isam_max_dim: int
    swin_embed_dim: Optional[int]
    isam_depth: int
    head_dim: int
    mlp_ratio: float
    drop_path: float
    cardinality: int
    fsam_reduction: int
    fsam_weighted: str
    rendering: bool
    render_train_points: int
    render_eval_points: int
    render_channels: int
    render_layers: int


class BilateralEncoder(nn.Module):
    """Stem + ResNeXt stages + bilateral attention on the chosen stages; exposes what ``UNetDecoder`` reads."""

    def __init__(self, input_channels: int, unet: UNetSettings, own: BilateralSettings) -> None:
        super().__init__()
        ops = unet.conv_norm_act_options
        conv_op, features_per_stage, kernel_sizes = unet.conv_op, unet.features_per_stage, unet.kernel_sizes
        self.stem = ConvNormAct(conv_op, input_channels, features_per_stage[0], kernel_sizes[0], **ops)
        stages, channels = [], features_per_stage[0]
        for s, features in enumerate(features_per_stage):
            stages.append(
                ResNeXtStage(
                    unet.n_conv_per_stage[s],  # ResNeXt blocks per stage
                    conv_op,
                    channels,
                    features,
                    kernel_sizes[s],
                    unet.strides[s],
                    cardinality=own.cardinality,
                    **ops,
                )
            )
            channels = features
        self.stages = nn.ModuleList(stages)
        self.attention = nn.ModuleDict()
        for s, dim in zip(own.isam_stages, own.isam_dims):
            isam = ISAM(
                features_per_stage[s],
                own.isam_windows[s],
                conv_op,
                dim=dim,
                depth=own.isam_depth,
                head_dim=own.head_dim,
                mlp_ratio=own.mlp_ratio,
                drop_path=own.drop_path,
                kernel_size=kernel_sizes[s],
                **ops,
            )
            fsam = FSAM(
                features_per_stage[s],
                conv_op,
                kernel_sizes[s],
                reduction=own.fsam_reduction,
                weighted=own.fsam_weighted,
                **ops,
            )
            self.attention[str(s)] = BilateralAttention(isam, fsam)
        unet.expose_to_decoder(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for s, stage in enumerate(self.stages):
            x = stage(x)
            if str(s) in self.attention:
                x = self.attention[str(s)](x)
            skips.append(x)
        return skips

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        total = np.int64(self.stem.compute_conv_feature_map_size(input_size))
        size = list(input_size)
        for s, module in enumerate(self.stages):
            stage = cast(ResNeXtStage, module)
            total += stage.compute_conv_feature_map_size(size)
            size = stage.output_size(size)
            if str(s) in self.attention:
                total += cast(BilateralAttention, self.attention[str(s)]).compute_conv_feature_map_size(size)
        return total


class BilateralDecoder(UNetDecoder):
    """nnU-Net's decoder, its forward unchanged, that also keeps the output of its last stage (the full-resolution
    features the rendering module reads) in ``features`` until the network takes them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.features: Optional[torch.Tensor] = None
        self.stages[-1].register_forward_hook(self._keep_features)

    def _keep_features(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self.features = output

    def take_features(self) -> torch.Tensor:
        """The last forward's full-resolution features (released here, so no activation outlives its step)."""
        features, self.features = self.features, None
        assert features is not None, "the decoder has not run"
        return features


class BilateralUNet(PlansNetwork):
    """The bilateral spatial attention network on nnU-Net plans (2D or 3D by ``conv_op``)."""

    encoder: BilateralEncoder
    checkpoint_block_types = (BilateralAttention, ResNeXtBlock)
    decoder: BilateralDecoder

    # long only by nnU-Net's plans signature and its documentation: the body builds encoder, decoder and rendering
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
        isam_stages: Optional[Sequence[int]] = None,
        isam_dims: Optional[Sequence[int]] = None,
        isam_windows: Optional[Sequence[Sequence[int]]] = None,
        isam_max_dim: int = 256,
        swin_embed_dim: Optional[int] = None,
        isam_depth: int = 6,
        head_dim: int = 32,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        cardinality: int = 32,
        fsam_reduction: int = 16,
        fsam_weighted: str = "input",
        rendering: bool = True,
        render_train_points: Optional[int] = None,
        render_eval_points: Optional[int] = None,
        render_channels: int = 64,
        render_layers: int = 3,
    ) -> None:
        """Plans' arguments as ``PlainConvUNet`` (``n_conv_per_stage``: ResNeXt blocks per stage); then our own:

        isam_stages: encoder stages followed by ISAM + FSAM (None: chosen for the patch by variant plans and our
            trainers, :func:`default_isam_stages`; the three deepest when the constructor is called without one).
        isam_dims: Swin width of each ISAM, aligned with ``isam_stages`` (None: :func:`isam_widths`).
        isam_windows: window per stage (one entry per stage; None: fitted to the patch's stage shapes by variant
            plans and our trainers, 7 per axis without a patch).
        isam_max_dim, swin_embed_dim: see :func:`isam_widths`.
        isam_depth: Swin blocks per ISAM (the paper: 6); head_dim: channels per attention head (Swin: 32).
        cardinality: most ResNeXt paths per grouped convolution (ResNeXt: 32; fewer at small widths).
        fsam_reduction: FSAM's MLP reduction ratio; fsam_weighted: 'input' (the paper) or 'dilated'.
        rendering: the attention rendering module (False: the ablation without it).
        render_train_points, render_eval_points: voxels refined per sample in training / inference (None:
            PointRend's 2048 / 8192, at most a quarter / an eighth of the patch's voxels when built from plans).
        render_channels, render_layers: the point head's MLP.
        """
        super().__init__()
        unet, own = self.settings(locals())
        self.encoder = BilateralEncoder(input_channels, unet, own)
        self.decoder = BilateralDecoder(self.encoder, num_classes, unet.n_conv_per_stage_decoder, deep_supervision)
        self.rendering = (
            AttentionRendering(
                unet.features_per_stage[0],
                num_classes,
                own.render_train_points,
                own.render_eval_points,
                channels=own.render_channels,
                num_layers=own.render_layers,
            )
            if own.rendering
            else None
        )
        # the points of the last forward (None without the rendering module); the trainer's point loss reads them
        self.rendered: Optional[RenderedPoints] = None
        # nnU-Net's keys for transfer of encoder weights between datasets
        self.key_to_encoder = "encoder.stages"
        self.key_to_stem = "encoder.stem"
        self.keys_to_in_proj = ("encoder.stem.0",)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, list[torch.Tensor]]:
        outputs = self.decoder(self.encoder(x))
        features = self.decoder.take_features()
        if self.rendering is None:
            return outputs
        top = outputs[0] if self.decoder.deep_supervision else outputs
        refined, self.rendered = self.rendering(top, features)
        return [refined, *outputs[1:]] if self.decoder.deep_supervision else refined

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        total = super().compute_conv_feature_map_size(input_size)
        if self.rendering is not None:
            total += self.rendering.compute_conv_feature_map_size(input_size)
        return np.int64(total)

    @classmethod
    def fill_for_patch(cls, kwargs: Mapping[str, Any], patch_size: Sequence[int]) -> dict[str, Any]:
        """Attention stages, windows and point counts for this patch, where the plans or the caller leave None."""
        shapes = stage_shapes(patch_size, kwargs["strides"])
        voxels = math.prod(int(p) for p in patch_size)
        chosen = {
            "isam_stages": default_isam_stages(int(kwargs["n_stages"]), shapes),
            "isam_windows": [list(fit_window(shape, WINDOW)) for shape in shapes],
            "render_train_points": max(1, min(TRAIN_POINTS, voxels // 4)),
            "render_eval_points": max(1, min(EVAL_POINTS, voxels // 8)),
        }
        return {key: value for key, value in chosen.items() if kwargs[key] is None}

    @classmethod
    def attention_layout(cls, kwargs: Mapping[str, Any], patch_size: Sequence[int]) -> list[StageAttention]:
        """The Swin windows of every stage with ISAM + FSAM."""
        shapes = stage_shapes(patch_size, kwargs["strides"])
        out = []
        for s in kwargs["isam_stages"]:
            window = per_stage(kwargs["isam_windows"][s], len(shapes[s]), "window")
            count = math.prod(-(-a // w) for a, w in zip(shapes[s], window))
            out.append(StageAttention(s, shapes[s], f"Swin windows of {x_text(window)} ({count}), ISAM + FSAM"))
        return out

    @classmethod
    def check_own(cls, kwargs: Mapping[str, Any], patch_size: Optional[Sequence[int]] = None) -> BilateralSettings:
        """The ISAM stages, widths and per-stage windows and the point counts, defaults filled in; PlansError on
        inconsistent values. Windows need not divide their stage (padding is masked)."""
        n = int(kwargs["n_stages"])
        stages = _isam_stages(kwargs["isam_stages"], n)
        max_dim = check_int("isam_max_dim", kwargs["isam_max_dim"], 1)
        embed = check_int("swin_embed_dim", kwargs["swin_embed_dim"], 1, allow_none=True)
        dims = _isam_dims(kwargs["isam_dims"], kwargs["features_per_stage"], stages, max_dim, embed)
        for s, d in zip(stages, dims):
            heads_for(d, kwargs["head_dim"], f"ISAM width at stage {s}")
        windows = _isam_windows(kwargs["isam_windows"], n, len(kwargs["strides"][0]))
        points = {}
        for key, default in (("render_train_points", TRAIN_POINTS), ("render_eval_points", EVAL_POINTS)):
            value = default if kwargs[key] is None else kwargs[key]
            if not is_int(value) or value < 1:
                raise PlansError(f"{key}={value!r}: must be an integer >= 1 (or null for the default)")
            points[key] = int(value)
        return BilateralSettings(
            isam_stages=stages,
            isam_dims=dims,
            isam_windows=windows,
            isam_max_dim=max_dim,
            swin_embed_dim=embed,
            isam_depth=check_int("isam_depth", kwargs["isam_depth"], 1),
            head_dim=kwargs["head_dim"],
            mlp_ratio=check_number("mlp_ratio", kwargs["mlp_ratio"], 0, open_min=True),
            drop_path=check_number("drop_path", kwargs["drop_path"], 0, 1),
            cardinality=check_int("cardinality", kwargs["cardinality"], 1),
            fsam_reduction=check_int("fsam_reduction", kwargs["fsam_reduction"], 1),
            fsam_weighted=check_choice("fsam_weighted", kwargs["fsam_weighted"], FSAM_WEIGHTINGS),
            rendering=check_flag("rendering", kwargs["rendering"]),
            render_channels=check_int("render_channels", kwargs["render_channels"], 1),
            render_layers=check_int("render_layers", kwargs["render_layers"], 1),
            **points,
        )


def _isam_stages(isam_stages: Any, n: int) -> list[int]:
    """The ISAM stages (default: :func:`default_isam_stages`), distinct indices in 0..n-1, ascending."""
    if isam_stages is None:
        stages = default_isam_stages(n)
    elif not (isinstance(isam_stages, (list, tuple)) and all(is_int(s) for s in isam_stages)):
        raise PlansError(f"isam_stages={isam_stages!r}: must be a list of stage indices in 0..{n - 1} or null")
    else:
        stages = [int(s) for s in isam_stages]
    if any(not 0 <= s < n for s in stages) or len(set(stages)) != len(stages):
        raise PlansError(f"isam_stages={list(stages)} must be distinct stage indices in 0..{n - 1}")
    return sorted(stages)


def _isam_dims(isam_dims: Any, features: Any, stages: list[int], max_dim: int, embed: Optional[int]) -> list[int]:
    """One ISAM width per ISAM stage (default: :func:`isam_widths`)."""
    if isam_dims is None:
        return isam_widths(features, stages, max_dim, embed)
    if not isinstance(isam_dims, (list, tuple)) or len(isam_dims) != len(stages):
        raise PlansError(
            f"isam_dims={isam_dims!r} has {len(isam_dims) if isinstance(isam_dims, (list, tuple)) else 'no'} "
            f"entries for {len(stages)} isam_stages {stages}: give one width per ISAM stage (or null for "
            "the default)"
        )
    return [check_int(f"ISAM width at stage {s}", d, 1) for s, d in zip(stages, isam_dims)]


def _isam_windows(isam_windows: Any, n: int, ndim: int) -> list[list[int]]:
    """Each stage's Swin window, ``ndim`` sizes (default :data:`WINDOW` on every axis)."""
    if isam_windows is None:
        return [[WINDOW] * ndim for _ in range(n)]
    if not isinstance(isam_windows, (list, tuple)) or len(isam_windows) != n:
        raise PlansError(f"isam_windows={isam_windows!r}: must be a list of {n} entries (one per stage)")
    windows = [[w] * ndim if not isinstance(w, (list, tuple)) else list(w) for w in isam_windows]
    bad = [s for s, w in enumerate(windows) if len(w) != ndim or not all(is_int(v) and v >= 1 for v in w)]
    if bad:
        raise PlansError(
            f"isam_windows of stage {bad[0]} is {isam_windows[bad[0]]}: give {ndim} positive window sizes per stage"
        )
    return [[int(v) for v in w] for w in windows]


def bilateral_paper_network(num_classes: int = 2) -> nn.Module:
    """The paper's 2D setting (RGB, 256 x 256): five ResNeXt stages (32..256 channels, BatchNorm + ReLU as the
    paper's convolution blocks), bilateral attention on the three deepest with Swin-T's first-stage width (96,
    3 heads: ImageNet Swin-T weights map onto every ISAM), the rendering module. The paper gives only the total
    (6.36 M); the widths were chosen to land near it. ``nnunet-sparseattn info --variant bilateral-paper``."""
    patch = PAPER_INPUT[2:]
    strides = [[1, 1]] + [[2, 2]] * 4
    plans = dict(
        n_stages=5,
        features_per_stage=[32, 64, 128, 192, 256],
        conv_op=nn.Conv2d,
        kernel_sizes=[[3, 3]] * 5,
        strides=strides,
        n_conv_per_stage=[1, 2, 2, 2, 1],
        n_conv_per_stage_decoder=[1, 1, 1, 1],
        conv_bias=False,
        norm_op=nn.BatchNorm2d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.ReLU,
        nonlin_kwargs={"inplace": True},
    )
    return BilateralUNet.from_plans(
        plans, patch, PAPER_INPUT[1], num_classes, deep_supervision=False, overrides={"isam_max_dim": 96}
    )
