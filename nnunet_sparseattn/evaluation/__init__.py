"""``nnunet-sparseattn evaluate``: nnU-Net's Dice/IoU, HD95 and NSD (MONAI), the polyp metrics (pysodmetrics)."""

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
