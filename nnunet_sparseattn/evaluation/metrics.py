"""The metrics ``nnunet-sparseattn evaluate`` reports beside nnU-Net's Dice and IoU, each from a maintained library.

- HD95 and normalised surface Dice (NSD): MONAI (``monai.metrics``), spacing-aware, on one class's binary masks.
  HD95 is MONAI's: the larger of the two directed 95th percentiles of the distances between the masks' edge
  pixels/voxels. NSD is MONAI's with ``use_subvoxels=True``, which follows DeepMind's surface-distance (boundary
  elements weighted by their area; Nikolov et al. 2021): the share of both boundaries within ``tolerance`` of the
  other, in the spacing's unit.
- The polyp/skin-lesion metrics of the bilateral paper's tables, per image on the foreground:
  - mDice and mIoU at threshold 0.5: MONAI's ``compute_dice``/``compute_iou`` (``ignore_empty=False``) on
    ``foreground > 0.5``;
  - S-alpha (structure measure, alpha 0.5), weighted F-beta (beta 1), max E-measure and MAE: pysodmetrics, fed as
    the benchmarks feed it (a uint8 map 0..255 that the library min-max normalises, as the MATLAB toolbox's
    ``mapminmax`` does; the reference binarised at 128).
  Over a dataset, each is the mean over images; max E-measure is the maximum over the 256 thresholds of the
  E-measure curve averaged over images, as the library and the polyp benchmarks compute it (per image: that
  image's own maximum).

What each gives for an empty reference (the library's own value where it defines one):

    metric            empty ref, empty prediction          empty ref, non-empty prediction
    HD95              NaN (nothing to score)               NaN (undefined: no reference boundary); counted
    NSD               NaN (MONAI)                          0 (MONAI)
    mDice, mIoU       1 (MONAI, ignore_empty=False)        0 (MONAI)
    S-alpha           1 (pysodmetrics: 1 - mean(map))      1 - mean of the normalised map
    weighted F-beta   0 (pysodmetrics: 0 for any map)      0
    max E-measure     N/(N-1), about 1 (pysodmetrics)      (N - pixels at the map's maximum)/(N-1)
    MAE               0                                    mean of the normalised map

A non-empty reference with an empty prediction gives HD95 NaN (undefined, counted) and NSD 0; the others are
defined as usual.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["FOREGROUND_MAP_METRICS", "ForegroundMapMetrics", "dice_iou_at_half", "hd95", "normalized_surface_dice"]

# key -> (table header, what it is): the order of the paper's tables
FOREGROUND_MAP_METRICS = {
    "dice": ("mDSC", "Dice at threshold 0.5"),
    "iou": ("mIoU", "IoU at threshold 0.5"),
    "s_alpha": ("S_α", "structure measure, alpha 0.5"),
    "weighted_f": ("F^w_β", "weighted F-measure, beta 1"),
    "max_e": ("E^max_φ", "max E-measure over 256 thresholds"),
    "mae": ("MAE", "mean absolute error"),
}


def _binary_pair(
    prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    prediction, reference = np.asarray(prediction, bool), np.asarray(reference, bool)
    if prediction.shape != reference.shape or len(spacing) != prediction.ndim:
        raise ValueError(
            f"prediction {prediction.shape}, reference {reference.shape} and spacing {tuple(spacing)} "
            "must have the same dimensions"
        )
    return prediction, reference, [float(s) for s in spacing]


def _batch(mask: np.ndarray) -> torch.Tensor:
    import torch

    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]


def hd95(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> float:
    """HD95 between two binary masks (MONAI's, in the unit of ``spacing``); NaN where either mask is empty."""
    prediction, reference, spacing = _binary_pair(prediction, reference, spacing)
    if not prediction.any() or not reference.any():
        return math.nan
    from monai.metrics import compute_hausdorff_distance

    with warnings.catch_warnings():  # MONAI's deprecation notices about its own internals
        warnings.simplefilter("ignore")
        value = compute_hausdorff_distance(
            _batch(prediction), _batch(reference), include_background=True, percentile=95, spacing=spacing
        )
    return float(value[0, 0])


def normalized_surface_dice(
    prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float], tolerance: float
) -> float:
    """NSD of two binary masks at ``tolerance`` (unit of ``spacing``): MONAI's, DeepMind's boundary areas;
    NaN where both masks are empty, 0 where one is."""
    prediction, reference, spacing = _binary_pair(prediction, reference, spacing)
    if not prediction.any() and not reference.any():
        return math.nan
    if not prediction.any() or not reference.any():
        return 0.0  # MONAI's value too (tested); returned here to skip its empty-mask warnings
    from monai.metrics import compute_surface_dice

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = compute_surface_dice(
            _batch(prediction),
            _batch(reference),
            [float(tolerance)],
            include_background=True,
            spacing=spacing,
            use_subvoxels=True,
        )
    return float(value[0, 0])


def dice_iou_at_half(foreground: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of ``foreground > 0.5`` (a probability map or a 0/1 mask) against a binary reference."""
    from monai.metrics import compute_dice, compute_iou

    predicted, expected = _batch(np.asarray(foreground) > 0.5), _batch(np.asarray(reference, bool))
    dice = compute_dice(predicted, expected, include_background=True, ignore_empty=False)
    iou = compute_iou(predicted, expected, include_background=True, ignore_empty=False)
    return float(dice[0, 0]), float(iou[0, 0])


class ForegroundMapMetrics:
    """The paper tables' six metrics, image by image (:meth:`add`) and over the images added (:meth:`results`)."""

    def __init__(self) -> None:
        import py_sod_metrics as sod

        self._s, self._wf, self._e, self._mae = sod.Smeasure(), sod.WeightedFmeasure(), sod.Emeasure(), sod.MAE()
        self._dice: list[float] = []
        self._iou: list[float] = []

    def add(self, foreground: np.ndarray, reference: np.ndarray) -> dict[str, float]:
        """Score one 2D image: ``foreground`` in [0, 1] (probabilities or a 0/1 mask), ``reference`` binary.
        Returns this image's values."""
        foreground, reference = np.asarray(foreground, np.float64), np.asarray(reference, bool)
        if foreground.ndim != 2 or foreground.shape != reference.shape:
            raise ValueError(f"foreground map {foreground.shape} and reference {reference.shape} must be one 2D shape")
        if foreground.min() < 0 or foreground.max() > 1:
            raise ValueError("the foreground map must lie in [0, 1]")
        dice, iou = dice_iou_at_half(foreground, reference)
        self._dice.append(dice)
        self._iou.append(iou)
        # what the benchmarks read: 8-bit maps and 0/255 references
        pred = np.round(foreground * 255).astype(np.uint8)
        gt = reference.astype(np.uint8) * 255
        for metric in (self._s, self._wf, self._e, self._mae):
            metric.step(pred, gt)
        # the library keeps one entry per image added; the last is this image's
        return {
            "dice": dice,
            "iou": iou,
            "s_alpha": float(self._s.sms[-1]),
            "weighted_f": float(self._wf.weighted_fms[-1]),
            "max_e": float(np.max(self._e.changeable_ems[-1])),
            "mae": float(self._mae.maes[-1]),
        }

    def results(self) -> dict[str, float]:
        """The dataset's values: means over images; max E-measure from the library's mean curve."""
        if not self._dice:
            raise ValueError("no image was added")
        return {
            "dice": float(np.mean(self._dice)),
            "iou": float(np.mean(self._iou)),
            "s_alpha": float(self._s.get_results()["sm"]),
            "weighted_f": float(self._wf.get_results()["wfm"]),
            "max_e": float(np.max(self._e.get_results()["em"]["curve"])),
            "mae": float(self._mae.get_results()["mae"]),
        }
