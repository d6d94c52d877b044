"""Narrow-band (NB) loss: a soft Dice restricted to a band around each target's boundary.

The band is built with separable max pooling on the target's own device (no distance transforms,
no CPU round trips), so it is cheap enough to compute in every training step, for 2D and 3D,
under deep supervision, for label (softmax) and region (sigmoid) training and with the ignore label.
The loss is BSA-Seg's (its authors' earlier "narrow-band loss", EMBC 2023); docs/narrow-band-loss.md states the formula.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "radius_in_voxels",
    "narrow_band",
    "NarrowBandLoss",
    "NarrowBandCompoundLoss",
    "narrow_band_radii_per_scale",
]

_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def radius_in_voxels(radius_mm: float, spacing: Sequence[float]) -> tuple[int, ...]:
    """Band radius in voxels per axis: round(radius_mm / spacing_a), at least 1.

    Rounds half up (not Python's banker's rounding) so that equal ratios always give the same radius.
    """
    if not radius_mm > 0 or not math.isfinite(radius_mm):
        raise ValueError(f"narrow-band radius must be a positive number of millimetres, got {radius_mm!r}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) == 0 or any(not (s > 0 and math.isfinite(s)) for s in spacing):
        raise ValueError(f"spacing must be positive and finite on every axis, got {spacing!r}")
    # At least one voxel: a band of width 0 on an axis would ignore boundaries crossing it.
    return tuple(max(1, int(math.floor(radius_mm / s + 0.5))) for s in spacing)


def narrow_band_radii_per_scale(
    radius_mm: float,
    spacing: Sequence[float],
    deep_supervision_scales: Optional[Sequence[Sequence[float]]],
) -> list[tuple[int, ...]]:
    """One voxel radius per deep-supervision output (one entry when deep supervision is off).

    ``deep_supervision_scales`` is what ``nnUNetTrainer._get_deep_supervision_scales()`` returns: per
    scale, per axis the size factor relative to full resolution, so that scale's spacing is spacing / factor.
    """
    spacing = tuple(float(s) for s in spacing)
    if deep_supervision_scales is None:
        return [radius_in_voxels(radius_mm, spacing)]
    radii = []
    for s, factors in enumerate(deep_supervision_scales):
        factors = tuple(float(f) for f in factors)
        if len(factors) != len(spacing):
            raise ValueError(
                f"deep-supervision scale {s} has {len(factors)} factors but the spacing has {len(spacing)} axes"
            )
        if any(not f > 0 for f in factors):
            raise ValueError(f"deep-supervision scale factors must be positive, got {factors!r} at scale {s}")
        radii.append(radius_in_voxels(radius_mm, [sp / f for sp, f in zip(spacing, factors)]))
    return radii


def _box_dilate(x: Tensor, radius: Sequence[int]) -> Tensor:
    """Max over a (2r+1)-box per voxel, as one 1D max pool per axis (a box is separable).

    max_pool pads with -inf, so voxels beyond the patch never count as foreground.
    """
    nd = x.ndim - 2
    pool = _MAX_POOL[nd]
    for axis, r in enumerate(radius):
        if r == 0:
            continue
        kernel = [1] * nd
        pad = [0] * nd
        kernel[axis] = 2 * r + 1
        pad[axis] = r
        x = pool(x, kernel_size=kernel, stride=1, padding=pad)
    return x


def _binary_float32(x: Tensor) -> Tensor:
    """0/1 float32 of a bool map, or of a numeric one thresholded at 0.5 (max_pool does not take bool)."""
    return x.to(torch.float32) if x.dtype == torch.bool else (x > 0.5).to(torch.float32)


def _is_label_map_of(x: Tensor, like: Tensor) -> bool:
    """``x`` is ``(B, 1, *S)`` with ``like``'s batch size and spatial shape."""
    return x.ndim == like.ndim and x.shape[1] == 1 and x.shape[0] == like.shape[0] and x.shape[2:] == like.shape[2:]


def narrow_band(target: Tensor, radius: Sequence[int], valid: Optional[Tensor] = None) -> Tensor:
    """Band of voxels within ``radius`` (a box, per axis) of a boundary of each target channel.

    target: (B, K, *S) binary (one-hot or region channels); radius: one int per spatial axis;
    valid: optional (B, 1, *S) mask of voxels that count (False/0 = nnU-Net's ignore label).
    Returns a float32 (B, K, *S) tensor of 0/1, without gradient.
    """
    nd = target.ndim - 2
    if nd not in _MAX_POOL:
        raise ValueError(f"target must be (B, K, *S) with 1 to 3 spatial axes, got shape {tuple(target.shape)}")
    radius = tuple(int(r) for r in radius)
    if len(radius) != nd:
        raise ValueError(f"radius has {len(radius)} entries but the target has {nd} spatial axes")
    if any(r < 0 for r in radius):
        raise ValueError(f"radius must be non-negative on every axis, got {radius}")
    with torch.no_grad():
        y = _binary_float32(target)
        if valid is None:
            fg, bg = y, 1.0 - y
            v = None
        else:
            if not _is_label_map_of(valid, target):
                raise ValueError(
                    f"valid must have shape (B, 1, *S) = {(target.shape[0], 1, *target.shape[2:])}, "
                    f"got {tuple(valid.shape)}"
                )
            v = _binary_float32(valid)
            # Invalid voxels are neither foreground (dilation sees them as background) nor background
            # (erosion sees them as foreground), so an ignored region creates no boundary of its own.
            fg, bg = y * v, (1.0 - y) * v
        # dilate(Y) - erode(Y) with erode(Y) = 1 - dilate(1 - Y) equals dilate(fg) * dilate(bg) for every valid
        # voxel (it lies in its own box, so at least one of the two is 1): a voxel is in the band iff its box holds
        # both foreground and background. One pooling pass over both halves stacked along channels.
        k = y.shape[1]
        d = _box_dilate(torch.cat([fg, bg], dim=1), radius)
        band = d[:, :k] * d[:, k:]
        if v is not None:
            band = band * v
    return band


class NarrowBandLoss(nn.Module):
    """1 - soft Dice inside the narrow band, averaged over the (class[, sample]) entries that have a band.

    ``apply_nonlin="softmax"``: nnU-Net label training. net_output (B, K, *S) logits, target (B, 1, *S)
    label map (or one-hot (B, K, *S)); voxels equal to ``ignore_label`` excluded; classes 1..K-1 used.
    ``apply_nonlin="sigmoid"``: nnU-Net region training. net_output (B, R, *S) logits, target (B, R, *S)
    region maps, plus one last ignore-mask channel when ``ignore_label`` is not None (as DC_and_BCE_loss).

    ``ddp`` with ``batch_dice``: the band sums are gathered over every rank before the Dice is taken, with nnU-Net's
    ``AllGatherGrad`` as its ``MemoryEfficientSoftDiceLoss`` does, so that each rank's loss is the loss of the whole
    distributed batch (nnU-Net's trainer passes ``ddp=self.is_ddp``).
    """

    def __init__(
        self,
        radius: Sequence[int],
        apply_nonlin: str = "softmax",
        ignore_label: Optional[int] = None,
        batch_dice: bool = False,
        smooth: float = 1e-5,
        ddp: bool = False,
    ) -> None:
        super().__init__()
        radius = tuple(int(r) for r in radius)
        if len(radius) == 0 or any(r < 0 for r in radius):
            raise ValueError(f"radius must be one non-negative int per spatial axis, got {radius}")
        if apply_nonlin not in ("softmax", "sigmoid"):
            raise ValueError(f"apply_nonlin must be 'softmax' or 'sigmoid', got {apply_nonlin!r}")
        self.radius = radius
        self.apply_nonlin = apply_nonlin
        self.ignore_label = ignore_label
        self.batch_dice = bool(batch_dice)
        self.smooth = float(smooth)
        self.ddp = bool(ddp)

    def extra_repr(self) -> str:
        return (
            f"radius={self.radius}, apply_nonlin={self.apply_nonlin!r}, ignore_label={self.ignore_label}, "
            f"batch_dice={self.batch_dice}, smooth={self.smooth}, ddp={self.ddp}"
        )

    def _targets(self, net_output: Tensor, target: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """Binary float32 targets matching the channels the loss uses, and the valid mask (or None)."""
        with torch.no_grad():
            if self.apply_nonlin == "softmax":
                if target.ndim == net_output.ndim - 1:
                    target = target.unsqueeze(1)
                if target.shape == net_output.shape and net_output.shape[1] != 1:
                    # Already one-hot (nnU-Net's Dice accepts that too); no ignore label possible here.
                    return target[:, 1:].to(torch.float32), None
                if not _is_label_map_of(target, net_output):
                    raise ValueError(
                        f"softmax NB loss expects a (B, 1, *S) label map matching net_output "
                        f"{tuple(net_output.shape)}, got {tuple(target.shape)}"
                    )
                valid = None
                if self.ignore_label is not None:
                    valid = target != self.ignore_label
                    target = torch.where(valid, target, torch.zeros_like(target))
                onehot = torch.zeros(net_output.shape, device=net_output.device, dtype=torch.float32)
                onehot.scatter_(1, target.long(), 1.0)
                return onehot[:, 1:], valid
            # sigmoid: region channels, optional ignore channel last (nnU-Net's convention).
            valid = None
            if self.ignore_label is not None:
                ign = target[:, -1:]
                valid = ~ign if ign.dtype == torch.bool else ign < 0.5
                target = target[:, :-1]
            if target.shape != net_output.shape:
                extra = " plus one ignore channel" if self.ignore_label is not None else ""
                raise ValueError(
                    f"sigmoid NB loss expects target regions{extra} matching net_output "
                    f"{tuple(net_output.shape)}, got {tuple(target.shape)} regions"
                )
            return target.to(torch.float32), valid

    def forward(self, net_output: Tensor, target: Tensor) -> Tensor:
        nd = net_output.ndim - 2
        if nd != len(self.radius):
            raise ValueError(
                f"NB loss has a {len(self.radius)}D radius {self.radius} but net_output has "
                f"{nd} spatial axes (shape {tuple(net_output.shape)})"
            )
        y, valid = self._targets(net_output, target)
        band = narrow_band(y, self.radius, valid)

        # float32 probabilities: fp16/bf16 sums over many voxels would lose precision or overflow.
        logits = net_output.float()
        if self.apply_nonlin == "softmax":
            p = torch.softmax(logits, dim=1)[:, 1:]
        else:
            p = torch.sigmoid(logits)

        axes = ([0] if self.batch_dice else []) + list(range(2, net_output.ndim))
        with torch.no_grad():
            band_y = band * y
            sum_y = band_y.sum(axes)
            band_voxels = band.sum(axes)
        band_p = band * p
        intersect = (band_p * y).sum(axes)
        sum_p = band_p.sum(axes)
        if self.batch_dice and self.ddp:
            intersect, sum_p, sum_y, band_voxels = _sum_over_ranks(intersect, sum_p, sum_y, band_voxels)
        has_band = band_voxels > 0
        nb = 1.0 - (2.0 * intersect + self.smooth) / (sum_p + sum_y + self.smooth).clamp_min(1e-8)
        # Masked mean rather than boolean indexing: with no band anywhere this is an exact 0 that still
        # belongs to net_output's graph (backward works, DDP sees the parameters used).
        w = has_band.to(nb.dtype)
        return (nb * w).sum() / w.sum().clamp_min(1.0)


def _sum_over_ranks(*sums: Tensor) -> tuple[Tensor, ...]:
    """Each per-class sum added up over the DDP ranks; gradients flow back to every rank's own terms."""
    # nnU-Net's own all-gather with a backward (its Dice loss gathers the same way); imported here, where DDP runs
    # (an nnU-Net trainer), so the loss itself needs torch alone
    from nnunetv2.utilities.ddp_allgather import AllGatherGrad

    return tuple(AllGatherGrad.apply(s).sum(0) for s in sums)


class NarrowBandCompoundLoss(nn.Module):
    """nnU-Net's own loss plus ``nb_weight`` times the NB loss, per deep-supervision scale.

    ``base_loss`` is what ``nnUNetTrainer._build_loss`` returned and is called unchanged. With deep
    supervision (``scale_weights`` given) outputs and targets are lists, highest resolution first, and
    scales whose weight is 0 get no NB term.
    """

    def __init__(
        self,
        base_loss: nn.Module,
        nb_losses: Sequence[NarrowBandLoss],
        nb_weight: float,
        scale_weights: Optional[Sequence[float]] = None,
    ) -> None:
        super().__init__()
        nb_losses = list(nb_losses)
        if len(nb_losses) == 0:
            raise ValueError("NarrowBandCompoundLoss needs at least one NarrowBandLoss")
        if scale_weights is None:
            if len(nb_losses) != 1:
                raise ValueError(
                    f"without deep supervision (scale_weights=None) exactly one NB loss is used, got {len(nb_losses)}"
                )
            self.scale_weights = None
        else:
            self.scale_weights = tuple(float(w) for w in scale_weights)
            if len(self.scale_weights) != len(nb_losses):
                raise ValueError(
                    f"{len(self.scale_weights)} deep-supervision weights but {len(nb_losses)} NB losses: "
                    "give one NB loss (radius) per scale"
                )
        if not math.isfinite(float(nb_weight)) or float(nb_weight) < 0:
            raise ValueError(f"nb_weight must be a finite number >= 0, got {nb_weight!r}")
        self.base_loss = base_loss
        self.nb_losses = nn.ModuleList(nb_losses)
        self.nb_weight = float(nb_weight)

    def forward(self, net_output: Union[Tensor, Sequence[Tensor]], target: Union[Tensor, Sequence[Tensor]]) -> Tensor:
        if self.scale_weights is None:
            if isinstance(net_output, (list, tuple)) or isinstance(target, (list, tuple)):
                raise ValueError(
                    "got lists of outputs/targets but the loss was built without deep supervision (scale_weights=None)"
                )
            total = self.base_loss(net_output, target)
            if self.nb_weight != 0:
                total = total + self.nb_weight * self.nb_losses[0](net_output, target)
            return total

        if not isinstance(net_output, (list, tuple)) or not isinstance(target, (list, tuple)):
            raise ValueError(
                "deep supervision is on (scale_weights given): net_output and target must be "
                f"lists/tuples, got {type(net_output).__name__} and {type(target).__name__}"
            )
        n = len(self.nb_losses)
        if len(net_output) != n or len(target) != n:
            # nnU-Net's DeepSupervisionWrapper zips and silently drops the extra ones; a mismatch is a bug.
            raise ValueError(
                f"deep supervision count mismatch: {len(net_output)} outputs, {len(target)} targets, "
                f"{n} NB losses (one per scale expected)"
            )
        total = self.base_loss(net_output, target)
        if self.nb_weight != 0:
            nb = None
            for w, loss, out, tgt in zip(self.scale_weights, self.nb_losses, net_output, target):
                if w == 0:
                    continue
                term = w * loss(out, tgt)
                nb = term if nb is None else nb + term
            if nb is not None:
                total = total + self.nb_weight * nb
        return total
