"""benchmarks/rendering_effect.py's scoring: Dice and HD95 are compare's (one HD95 in the project, MONAI's); only
the boundary metrics, which no library the project uses computes, are its own. Fast (a few PNGs)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from benchmarks import rendering_effect


def _square(shift: int = 0, size: int = 64) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[16 + shift : 40 + shift, 16:40] = 1
    return mask


def test_boundary_metrics_by_hand():
    square = _square().astype(bool)
    assert rendering_effect.boundary_metrics(square, square) == {"boundary_iou": 1.0, "boundary_f1": 1.0}
    empty = np.zeros_like(square)
    assert rendering_effect.boundary_metrics(empty, empty) == {"boundary_iou": 1.0, "boundary_f1": 1.0}
    assert rendering_effect.boundary_metrics(empty, square) == {"boundary_iou": 0.0, "boundary_f1": 0.0}
    # shifted by 1 pixel, within the tolerance d = 2% of the diagonal (1.8 px): every contour pixel is matched
    shifted = rendering_effect.boundary_metrics(_square(1).astype(bool), square)
    assert shifted["boundary_f1"] == 1.0 and 0.5 < shifted["boundary_iou"] < 1.0
    far = rendering_effect.boundary_metrics(_square(8).astype(bool), square)
    assert far["boundary_f1"] < shifted["boundary_f1"] and far["boundary_iou"] < shifted["boundary_iou"]


def test_score_run_takes_dice_and_hd95_from_compares_record(tmp_path):
    predictions, labels = tmp_path / "pred", tmp_path / "labels"
    predictions.mkdir(), labels.mkdir()
    for case, shift in (("a", 0), ("b", 8)):
        Image.fromarray(_square(shift)).save(predictions / f"{case}.png")
        Image.fromarray(_square()).save(labels / f"{case}.png")
    run = {"mean_dice": 0.81234567, "mean_hd95": 4.56789, "hd95_undefined_cases": {"foreground": 1}}
    scores = rendering_effect.score_run(run, predictions, labels, ["a", "b"])
    far = rendering_effect.boundary_metrics(_square(8).astype(bool), _square().astype(bool))
    assert scores == pytest.approx(
        {
            "cases": 2,
            "dice": 0.8123,
            "hd95": 4.5679,
            "hd95_undefined_cases": 1,
            "boundary_iou": round((1.0 + far["boundary_iou"]) / 2, 4),
            "boundary_f1": round((1.0 + far["boundary_f1"]) / 2, 4),
        }
    )
    assert rendering_effect.score_run(dict(run, mean_hd95=None), predictions, labels, ["a"])["hd95"] is None
