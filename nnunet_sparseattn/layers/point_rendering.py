"""Attention rendering module: PointRend-style refinement of uncertain voxels (Kirillov et al., CVPR 2020), 2D/3D.

Segmentation as rendering: a prediction is refined only where it is uncertain (near boundaries), by a small point
head that reads fine features and the logits at those points.

- Uncertainty of a voxel: the margin between its two largest logits, negated (``-|logit|`` for one channel).
- Training: ``oversample_ratio * N`` distinct random voxels; the ``importance_ratio * N`` most uncertain of them
  plus random others for the rest (PointRend's importance sampling).
- Inference: the ``eval_points`` most uncertain voxels.
- In both modes the chosen voxels of the logits are replaced by the point head's logits there, so one logits
  tensor comes out and training sees what inference will produce. The head predicts a correction
  (``coarse + head(...)``, its last layer initialised near 0): an untrained head leaves the prediction as it is.
  The trainer adds a cross-entropy on the points (nnU-Net computes the loss outside the network):
  :func:`point_loss`.

Departure from PointRend, on purpose: its coarse prediction is at 1/4 or 1/8 resolution, so it samples continuous
points and interpolates. Here the coarse prediction is nnU-Net's full-resolution output, so points are voxels:
features and labels are read exactly (no interpolated labels), and because the refined voxels are part of the
network's output, nnU-Net's own loss reaches every parameter of the head (DDP without unused parameters).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .precision import at_least_float32

__all__ = [
    "AttentionRendering",
    "PointHead",
    "RenderedPoints",
    "gather_points",
    "importance_sample_voxels",
    "point_loss",
    "scatter_points",
    "top_uncertain_voxels",
    "uncertainty",
]


class RenderedPoints(NamedTuple):
    index: torch.Tensor  # type: ignore[assignment]  # (B, N) flat voxel indices (shadows tuple.index; the name says it)
    logits: torch.Tensor  # (B, K, N) the point head's logits there


def uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, ...) -> (B, ...): larger = less certain (negated top-2 logit margin; -|logit| for one channel)."""
    if logits.shape[1] == 1:
        return -logits[:, 0].abs()
    top2 = logits.topk(2, dim=1).values
    return top2[:, 1] - top2[:, 0]


def gather_points(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Values of ``x`` (B, C, *S) at flat voxel ``index`` (B, N): (B, C, N)."""
    return x.flatten(2).gather(2, index[:, None].expand(-1, x.shape[1], -1))


def scatter_points(x: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, *S) with the voxels ``index`` (B, N) replaced by ``values`` (B, C, N) (out of place)."""
    flat = x.flatten(2).scatter(2, index[:, None].expand(-1, x.shape[1], -1), values.to(x.dtype))
    return flat.view_as(x)


@torch.no_grad()
def importance_sample_voxels(
    coarse: torch.Tensor, num_points: int, oversample_ratio: float = 3.0, importance_ratio: float = 0.75
) -> torch.Tensor:
    """PointRend's importance sampling over the voxels of ``coarse`` (B, K, *S): (B, N) distinct flat indices,
    N = min(num_points, voxels)."""
    if num_points < 1 or oversample_ratio < 1 or not 0 <= importance_ratio <= 1:
        raise ValueError(
            f"num_points {num_points} >= 1, oversample_ratio {oversample_ratio} >= 1 and "
            f"importance_ratio {importance_ratio} in [0, 1] are required"
        )
    b = coarse.shape[0]
    voxels = coarse[0, 0].numel()
    n = min(int(num_points), voxels)
    n_candidates = min(max(n, int(n * oversample_ratio)), voxels)
    # distinct, uniformly random voxels (in random order)
    candidates = torch.rand(b, voxels, device=coarse.device).topk(n_candidates, dim=1).indices
    scores = uncertainty(gather_points(at_least_float32(coarse), candidates))  # (B, kN)
    n_important = min(int(importance_ratio * n), n)
    important = scores.topk(n_important, dim=1).indices  # positions among the candidates
    # the rest: random candidates that were not chosen for their uncertainty
    keys = torch.rand(b, n_candidates, device=coarse.device).scatter(1, important, -1.0)
    rest = keys.topk(n - n_important, dim=1).indices
    return candidates.gather(1, torch.cat([important, rest], dim=1))


@torch.no_grad()
def top_uncertain_voxels(coarse: torch.Tensor, num_points: int) -> torch.Tensor:
    """Flat indices (B, N) of the ``num_points`` most uncertain voxels of ``coarse`` (B, K, *S)."""
    scores = uncertainty(at_least_float32(coarse)).flatten(1)
    return scores.topk(min(int(num_points), scores.shape[1]), dim=1).indices


class PointHead(nn.Module):
    """Point-wise MLP (1x1 Conv1d) on [fine features, coarse logits]; the coarse logits re-enter every layer
    (PointRend's standard head). Returns coarse + correction."""

    def __init__(self, fine_channels: int, num_classes: int, channels: int = 64, num_layers: int = 3):
        super().__init__()
        self.fcs = nn.ModuleList()
        width = fine_channels + num_classes
        for _ in range(num_layers):
            fc = nn.Conv1d(width, channels, 1)
            nn.init.kaiming_normal_(fc.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(fc.bias)  # type: ignore[arg-type]  # Conv1d's default bias=True
            self.fcs.append(fc)
            width = channels + num_classes
        self.predictor = nn.Conv1d(width, num_classes, 1)
        nn.init.normal_(self.predictor.weight, std=1e-3)
        nn.init.zeros_(self.predictor.bias)  # type: ignore[arg-type]  # Conv1d's default bias=True

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        x = torch.cat([fine, coarse], dim=1)
        for fc in self.fcs:
            x = torch.cat([F.relu(fc(x)), coarse], dim=1)
        return coarse + self.predictor(x)


class AttentionRendering(nn.Module):
    """``(logits, fine) -> (refined logits, RenderedPoints)``; training: ``train_points`` importance-sampled voxels,
    eval: the ``eval_points`` most uncertain voxels. Only those voxels change."""

    def __init__(
        self,
        fine_channels: int,
        num_classes: int,
        train_points: int = 2048,
        eval_points: int = 8192,
        oversample_ratio: float = 3.0,
        importance_ratio: float = 0.75,
        channels: int = 64,
        num_layers: int = 3,
    ):
        super().__init__()
        self.train_points, self.eval_points = int(train_points), int(eval_points)
        self.oversample_ratio, self.importance_ratio = float(oversample_ratio), float(importance_ratio)
        self.head = PointHead(fine_channels, num_classes, channels, num_layers)

    def select(self, coarse: torch.Tensor) -> torch.Tensor:
        if self.training:
            return importance_sample_voxels(coarse, self.train_points, self.oversample_ratio, self.importance_ratio)
        return top_uncertain_voxels(coarse, self.eval_points)

    def forward(self, coarse: torch.Tensor, fine: torch.Tensor) -> tuple[torch.Tensor, RenderedPoints]:
        if coarse.shape[2:] != fine.shape[2:]:
            raise ValueError(
                f"logits {tuple(coarse.shape)} and fine features {tuple(fine.shape)} must share their spatial shape"
            )
        index = self.select(coarse.detach())
        logits = self.head(gather_points(fine, index), gather_points(coarse, index))
        return scatter_points(coarse, index, logits), RenderedPoints(index, logits)

    def compute_conv_feature_map_size(self, input_size) -> int:
        points = max(self.train_points, self.eval_points)
        return points * (self.head.predictor.in_channels * (len(self.head.fcs) + 1))


def point_loss(
    points: RenderedPoints,
    target: torch.Tensor,
    regions: bool = False,
    ignore_label: Optional[int] = None,
) -> torch.Tensor:
    """Loss of the point logits against ``target`` at the points, float32.

    ``target`` is nnU-Net's full-resolution target: a label map (B, 1, *S) -> cross-entropy; with ``regions`` the
    region masks (B, R, *S) -> binary cross-entropy, nnU-Net's extra last channel marking ignored voxels when
    ``ignore_label`` is set. Ignored points do not count (the loss is 0 when every point is ignored).
    """
    logits = at_least_float32(points.logits)
    sampled = gather_points(target, points.index).to(logits.dtype)  # (B, Ct, N)
    if regions:
        valid = torch.ones_like(sampled[:, :1])
        if ignore_label is not None:
            valid, sampled = 1 - sampled[:, -1:], sampled[:, :-1]
        if sampled.shape[1] != logits.shape[1]:
            raise ValueError(f"{sampled.shape[1]} region target channels for {logits.shape[1]} point logits")
        bce = F.binary_cross_entropy_with_logits(logits, sampled, reduction="none") * valid
        return bce.sum() / (valid.sum() * logits.shape[1]).clamp_min(1.0)
    labels = sampled[:, 0].round().long()
    ignore = -100 if ignore_label is None else int(ignore_label)
    ce = F.cross_entropy(logits, labels, ignore_index=ignore, reduction="sum")
    return ce / (labels != ignore).sum().clamp_min(1)
