"""``nnunet-sparseattn evaluate``: nnU-Net's Dice/IoU, HD95 and NSD (MONAI), the polyp metrics (pysodmetrics).

The names below are loaded on first use: the CLI reads the command's arguments (:mod:`.command`) without importing
numpy and the metrics' libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nnunet_sparseattn.evaluation.evaluate import (
        PAPER_METRICS_FILE,
        TABLE_FILE,
        evaluate_folders,
        markdown_table,
        unscored_labels,
    )
    from nnunet_sparseattn.evaluation.metrics import (
        ForegroundMapMetrics,
        dice_iou_at_half,
        hd95,
        normalized_surface_dice,
    )
    from nnunet_sparseattn.evaluation.original_size import original_size_reference, restore_original_size

_WHERE = {
    "PAPER_METRICS_FILE": "evaluate",
    "TABLE_FILE": "evaluate",
    "evaluate_folders": "evaluate",
    "markdown_table": "evaluate",
    "unscored_labels": "evaluate",
    "ForegroundMapMetrics": "metrics",
    "dice_iou_at_half": "metrics",
    "hd95": "metrics",
    "normalized_surface_dice": "metrics",
    "original_size_reference": "original_size",
    "restore_original_size": "original_size",
}

__all__ = [
    "PAPER_METRICS_FILE",
    "TABLE_FILE",
    "ForegroundMapMetrics",
    "dice_iou_at_half",
    "evaluate_folders",
    "hd95",
    "markdown_table",
    "normalized_surface_dice",
    "original_size_reference",
    "restore_original_size",
    "unscored_labels",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
