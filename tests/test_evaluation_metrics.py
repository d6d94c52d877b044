"""The metric wrappers of ``evaluate`` (nnunet_sparseattn/evaluation/metrics.py), held to values computed by hand or
independently (pixel counts, scipy distance transforms) and to the libraries' own results (MONAI, pysodmetrics)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from nnunet_sparseattn.evaluation.metrics import (
    ForegroundMapMetrics,
    dice_iou_at_half,
    hd95,
    normalized_surface_dice,
)


def _disk(shape=(64, 64), centre=(32, 32), radius=12) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _square(shift: int = 0) -> np.ndarray:
    mask = np.zeros((48, 40), bool)
    mask[10 + shift : 30 + shift, 10:30] = True
    return mask


def _independent_hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """The same definition from scipy: edge pixels (mask minus its erosion), the Euclidean distance of each to the
    other mask's edge, the 95th percentile (linear interpolation) of each direction, the larger one."""
    edge_a, edge_b = a & ~ndimage.binary_erosion(a), b & ~ndimage.binary_erosion(b)
    to_b = ndimage.distance_transform_edt(~edge_b, sampling=spacing)[edge_a]
    to_a = ndimage.distance_transform_edt(~edge_a, sampling=spacing)[edge_b]
    return max(np.percentile(to_b, 95), np.percentile(to_a, 95))


# -------------------------------------------------------------------------------------------- hand-made cases
def test_a_perfect_prediction():
    disk = _disk()
    assert hd95(disk, disk, (1.0, 1.0)) == 0.0
    assert normalized_surface_dice(disk, disk, (1.0, 1.0), tolerance=0.0) == pytest.approx(1.0)
    assert dice_iou_at_half(disk.astype(float), disk) == (1.0, 1.0)
    values = ForegroundMapMetrics().add(disk.astype(float), disk)
    n = disk.size
    assert values == pytest.approx(
        {"dice": 1.0, "iou": 1.0, "s_alpha": 1.0, "weighted_f": 1.0, "max_e": n / (n - 1), "mae": 0.0}
    )  # the library divides by N - 1


def test_a_square_shifted_by_three_pixels():
    ref, pred = _square(), _square(shift=3)
    # 20 x 20 squares overlapping in 17 x 20 pixels
    assert dice_iou_at_half(pred.astype(float), ref) == pytest.approx((2 * 340 / 800, 340 / 460))
    # every edge pixel lies within 3 pixels of the other edge, and 20 of each edge's 76 pixels (its far side) at
    # exactly 3: the 95th percentile of both directions is 3 pixels, 6 mm where that axis is spaced 2 mm
    assert hd95(pred, ref, (1.0, 1.0)) == pytest.approx(3.0)
    assert hd95(pred, ref, (2.0, 0.5)) == pytest.approx(6.0)
    assert normalized_surface_dice(pred, ref, (1.0, 1.0), tolerance=3.0) == pytest.approx(1.0)
    assert normalized_surface_dice(pred, ref, (2.0, 0.5), tolerance=6.0) == pytest.approx(1.0)
    assert normalized_surface_dice(pred, ref, (1.0, 1.0), tolerance=1.0) < 1.0
    assert normalized_surface_dice(pred, ref, (2.0, 0.5), tolerance=3.0) < normalized_surface_dice(
        pred, ref, (1.0, 1.0), tolerance=3.0
    )  # spacing counts


def test_a_voxel_against_a_voxel_in_3d_with_anisotropic_spacing():
    a, b = np.zeros((5, 9, 5), bool), np.zeros((5, 9, 5), bool)
    a[2, 1, 2], b[2, 4, 2] = True, True
    assert hd95(a, b, (1.0, 2.0, 1.0)) == pytest.approx(6.0) == hd95(b, a, (1.0, 2.0, 1.0))
    # NSD measures between surfaces: the facing faces of the two voxels are 6 - 2 x 1 = 4 mm apart
    assert normalized_surface_dice(a, b, (1.0, 2.0, 1.0), tolerance=3.5) == 0.0
    assert normalized_surface_dice(a, b, (1.0, 2.0, 1.0), tolerance=20.0) == 1.0


def test_a_shifted_disk_against_pixel_counts_and_scipy():
    ref, pred = _disk(), _disk(centre=(35, 30))
    inter, union = (ref & pred).sum(), (ref | pred).sum()
    dice, iou = dice_iou_at_half(pred.astype(float), ref)
    assert dice == pytest.approx(2 * inter / (ref.sum() + pred.sum())) and iou == pytest.approx(inter / union)
    for spacing in ((1.0, 1.0), (0.7, 1.3)):
        assert hd95(pred, ref, spacing) == pytest.approx(_independent_hd95(pred, ref, spacing), rel=1e-5)
    values = ForegroundMapMetrics().add(pred.astype(float), ref)
    assert values["mae"] == pytest.approx((ref ^ pred).mean())  # binary maps: the share of differing pixels
    assert 0 < values["s_alpha"] < 1 and 0 < values["weighted_f"] < 1 and 0 < values["max_e"] < 1


# ----------------------------------------------------------------------------------------------- empty masks
def test_what_each_metric_gives_for_empty_masks():
    empty, disk = np.zeros((64, 64), bool), _disk()
    n = empty.size
    # empty reference, empty prediction
    assert math.isnan(hd95(empty, empty, (1.0, 1.0)))
    assert math.isnan(normalized_surface_dice(empty, empty, (1.0, 1.0), 1.0))
    assert ForegroundMapMetrics().add(empty.astype(float), empty) == pytest.approx(
        {"dice": 1.0, "iou": 1.0, "s_alpha": 1.0, "weighted_f": 0.0, "max_e": n / (n - 1), "mae": 0.0}
    )
    # empty reference, non-empty prediction (a binary map: its maximum is the predicted pixels)
    assert math.isnan(hd95(disk, empty, (1.0, 1.0)))
    assert normalized_surface_dice(disk, empty, (1.0, 1.0), 1.0) == 0.0
    share = disk.mean()
    assert ForegroundMapMetrics().add(disk.astype(float), empty) == pytest.approx(
        {
            "dice": 0.0,
            "iou": 0.0,
            "s_alpha": 1 - share,
            "weighted_f": 0.0,
            "max_e": (n - disk.sum()) / (n - 1),
            "mae": share,
        }
    )
    # non-empty reference, empty prediction
    assert math.isnan(hd95(empty, disk, (1.0, 1.0)))
    assert normalized_surface_dice(empty, disk, (1.0, 1.0), 1.0) == 0.0
    assert dice_iou_at_half(empty.astype(float), disk) == (0.0, 0.0)


def test_the_empty_mask_shortcuts_agree_with_monai():
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    empty, disk = np.zeros((1, 1, 64, 64), np.float32), _disk()[None, None].astype(np.float32)
    t = torch.from_numpy
    with warnings.catch_warnings():  # MONAI warns about the empty masks: that is the point here
        warnings.simplefilter("ignore")
        one_empty = [
            compute_surface_dice(t(a), t(b), [1.0], include_background=True, use_subvoxels=True)
            for a, b in ((disk, empty), (empty, disk))
        ]
        both_empty = compute_surface_dice(t(empty), t(empty), [1.0], include_background=True, use_subvoxels=True)
        hd = compute_hausdorff_distance(t(disk), t(empty), include_background=True, percentile=95)
    assert [float(v) for v in one_empty] == [0.0, 0.0]
    assert torch.isnan(both_empty).all()
    assert not torch.isfinite(hd).all()  # undefined: our NaN


def test_shapes_and_spacings_must_agree():
    full = np.ones((4, 4), bool)
    with pytest.raises(ValueError, match="same dimensions"):
        hd95(full, full, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="same dimensions"):
        normalized_surface_dice(full, np.ones((4, 5), bool), (1.0, 1.0), 1.0)
    with pytest.raises(ValueError, match="one 2D shape"):
        ForegroundMapMetrics().add(np.ones((4, 5)), full)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ForegroundMapMetrics().add(np.full((4, 4), 2.0), full)
    with pytest.raises(ValueError, match="no image"):
        ForegroundMapMetrics().results()


# ------------------------------------------------------------------------------------- the libraries' results
@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's notes about its own internals, called directly here
def test_per_image_and_dataset_values_are_the_libraries_own():
    import py_sod_metrics as sod
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    rng = np.random.default_rng(0)
    refs = [_disk(radius=r, centre=(30 + r // 3, 33)) for r in (8, 12, 16)]
    # soft maps: a blurred, shifted disk plus noise, as a network's foreground probability looks
    maps = [
        np.clip(
            ndimage.gaussian_filter(_disk(radius=r + 2, centre=(32, 31)).astype(float), 2)
            + rng.normal(0, 0.05, (64, 64)),
            0,
            1,
        )
        for r in (8, 12, 16)
    ]
    ours = ForegroundMapMetrics()
    for prob, ref in zip(maps, refs):
        values = ours.add(prob, ref)
        pred, gt = np.round(prob * 255).astype(np.uint8), ref.astype(np.uint8) * 255
        s, wf, e, mae = sod.Smeasure(), sod.WeightedFmeasure(), sod.Emeasure(), sod.MAE()
        for metric in (s, wf, e, mae):
            metric.step(pred, gt)
        assert values["s_alpha"] == pytest.approx(s.get_results()["sm"])
        assert values["weighted_f"] == pytest.approx(wf.get_results()["wfm"])
        assert values["max_e"] == pytest.approx(e.get_results()["em"]["curve"].max())
        assert values["mae"] == pytest.approx(mae.get_results()["mae"])
        binary = prob > 0.5
        assert values["dice"] == pytest.approx(2 * (binary & ref).sum() / (binary.sum() + ref.sum()))
        assert values["iou"] == pytest.approx((binary & ref).sum() / (binary | ref).sum())
    together = [sod.Smeasure(), sod.WeightedFmeasure(), sod.Emeasure(), sod.MAE()]
    for prob, ref in zip(maps, refs):
        for metric in together:
            metric.step(np.round(prob * 255).astype(np.uint8), ref.astype(np.uint8) * 255)
    results = ours.results()
    assert results["s_alpha"] == pytest.approx(together[0].get_results()["sm"])
    assert results["weighted_f"] == pytest.approx(together[1].get_results()["wfm"])
    # max E over a dataset: the maximum of the mean curve (not the mean of each image's maximum)
    curve = together[2].get_results()["em"]["curve"]
    assert results["max_e"] == pytest.approx(curve.max())
    assert results["mae"] == pytest.approx(together[3].get_results()["mae"])

    ref, pred = refs[1], maps[0] > 0.5

    def t(m):
        return torch.from_numpy(m[None, None].astype(np.float32))

    assert hd95(pred, ref, (0.5, 2.0)) == pytest.approx(
        float(compute_hausdorff_distance(t(pred), t(ref), include_background=True, percentile=95, spacing=[0.5, 2.0]))
    )
    assert normalized_surface_dice(pred, ref, (0.5, 2.0), 2.0) == pytest.approx(
        float(
            compute_surface_dice(
                t(pred), t(ref), [2.0], include_background=True, spacing=[0.5, 2.0], use_subvoxels=True
            )
        )
    )
