"""Scoring predicted cases against their references: the one function ``compare`` and the benchmarks call.

Dice per case and class from nnU-Net's own evaluation (``compute_metrics``, what ``nnUNetv2_evaluate_folder`` runs
per case; means as nnU-Net takes them: per class over the cases where it is defined, then over classes), and HD95
from the ``evaluation`` package (MONAI's, the one HD95 of the project).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nnunet_sparseattn.errors import UserError
from nnunet_sparseattn.evaluation.metrics import hd95

METRIC_SOURCE = (
    "Dice: nnU-Net's compute_metrics (nnUNetv2_evaluate_folder's per-case evaluation); HD95: MONAI's "
    "(nnunet_sparseattn.evaluation.metrics.hd95)"
)


def drop_singleton_axes(seg: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, tuple[float, ...]]:
    """nnU-Net reads a segmentation as (1, *spatial) with one spacing per spatial axis, a 2D image as (1, 1, X, Y)
    with a dummy spacing (999) for the dummy axis: keep the real spatial axes and their spacings."""
    spatial = seg[0]
    keep = [i for i, n in enumerate(spatial.shape) if n > 1]
    return spatial.squeeze(tuple(i for i in range(spatial.ndim) if i not in keep)), tuple(spacing[i] for i in keep)


def class_names(dataset_json: dict, keys: Sequence) -> dict:
    """dataset.json's name of each foreground label (an int) or region (a tuple of labels, as nnU-Net keys them)."""
    by_value = {
        (tuple(v) if isinstance(v, (list, tuple)) else int(v)): name
        for name, v in dataset_json["labels"].items()
        if name != "ignore"
    }
    return {key: by_value.get(key, str(key)) for key in keys}


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(defined)) if defined else None


def score_predictions(
    predictions: Path, reference: Path, cases: Sequence[str], dataset_json: dict, plans_file: Path
) -> dict[str, Any]:
    """Dice and HD95 of ``cases`` (files ``<case><file_ending>`` in both folders), per case and class, with nnU-Net's
    reader for the dataset, its label handling (labels or regions, the ignore label) and its per-case metrics.

    Returns ``dice`` / ``hd95`` per class name (means over the cases where defined), ``mean_dice`` (nnU-Net's
    foreground mean: the mean of the class means), ``per_case`` (``dice``, ``hd95`` per class and the case's
    ``mean_dice`` over its defined classes: what a paired test compares) and how many cases HD95 could not score.
    Undefined values are None: Dice where neither reference nor prediction has the class, HD95 where either lacks it.
    """
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    if not cases:
        raise UserError(f"no cases to score in {predictions}")
    ending = dataset_json["file_ending"]
    manager = PlansManager(str(plans_file)).get_label_manager(dataset_json)
    keys = manager.foreground_regions if manager.has_regions else manager.foreground_labels
    keys = [tuple(k) if isinstance(k, (list, tuple)) else int(k) for k in keys]
    reader = determine_reader_writer_from_dataset_json(
        dataset_json, str(Path(reference) / f"{cases[0]}{ending}"), verbose=False
    )()
    scorer = _CaseScorer(reader, manager.ignore_label, keys, class_names(dataset_json, keys))
    per_case = {}
    for case in cases:
        ref_file, pred_file = Path(reference) / f"{case}{ending}", Path(predictions) / f"{case}{ending}"
        if not pred_file.is_file():
            raise UserError(f"the prediction of case {case} is missing: {pred_file}")
        per_case[case] = scorer.score(ref_file, pred_file)
    return _summary(per_case, [scorer.names[k] for k in keys], scorer.undefined)


@dataclass
class _CaseScorer:
    """Dice (nnU-Net's ``compute_metrics``) and HD95 of one case per class, with nnU-Net's reader and label
    handling; counts per class the cases where HD95 is undefined though the class is present."""

    reader: Any
    ignore_label: int | None
    keys: list  # labels (int) or regions (tuples of labels), as nnU-Net keys them
    names: dict
    undefined: dict[str, int] = field(default_factory=dict)

    def score(self, ref_file: Path, pred_file: Path) -> dict[str, Any]:
        from nnunetv2.evaluation.evaluate_predictions import compute_metrics, region_or_label_to_mask

        metrics = compute_metrics(str(ref_file), str(pred_file), self.reader, self.keys, self.ignore_label)["metrics"]
        ref, props = self.reader.read_seg(str(ref_file))
        pred, _ = self.reader.read_seg(str(pred_file))
        ignore = ref == self.ignore_label if self.ignore_label is not None else None
        ref_seg, spacing = drop_singleton_axes(ref, tuple(props["spacing"]))
        pred_seg, _ = drop_singleton_axes(pred, tuple(props["spacing"]))
        keep = None if ignore is None else ~drop_singleton_axes(ignore, tuple(props["spacing"]))[0]
        dice: dict[str, float | None] = {}
        distance: dict[str, float | None] = {}
        for key in self.keys:
            name = self.names[key]
            value = metrics[key]["Dice"]
            dice[name] = None if value is None or math.isnan(value) else float(value)
            in_ref, in_pred = region_or_label_to_mask(ref_seg, key), region_or_label_to_mask(pred_seg, key)
            if keep is not None:
                in_ref, in_pred = in_ref & keep, in_pred & keep
            if not in_ref.any() and not in_pred.any():
                distance[name] = None  # absent and not predicted: nothing to score (Dice is undefined too)
                continue
            d = hd95(in_pred, in_ref, spacing)
            distance[name] = None if math.isnan(d) else d
            self.undefined[name] = self.undefined.get(name, 0) + math.isnan(d)
        return {"dice": dice, "mean_dice": _mean(list(dice.values())), "hd95": distance}


def _summary(per_case: dict[str, dict[str, Any]], names: list[str], undefined: dict[str, int]) -> dict[str, Any]:
    """The means over the cases (per class, then nnU-Net's foreground mean over the classes) beside the cases."""
    dice_means = {n: _mean([c["dice"][n] for c in per_case.values()]) for n in names}
    hd_means = {n: _mean([c["hd95"][n] for c in per_case.values()]) for n in names}
    return {
        "metric_source": METRIC_SOURCE,
        "dice": dice_means,
        "mean_dice": float(np.mean([v for v in dice_means.values() if v is not None]))
        if any(v is not None for v in dice_means.values())
        else None,
        "hd95": hd_means,
        "mean_hd95": float(np.mean(list(hd_means.values()))) if all(v is not None for v in hd_means.values()) else None,
        "hd95_scored_cases": {n: sum(c["hd95"][n] is not None for c in per_case.values()) for n in names},
        "hd95_undefined_cases": {n: undefined.get(n, 0) for n in names},
        "per_case": per_case,
    }
