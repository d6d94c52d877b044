"""``nnunet-sparseattn evaluate REF_DIR PRED_DIR [PRED_DIR ...]``: a paper-style table, one row per prediction folder.

For each prediction folder (``nnUNetv2_predict``'s output):

- nnU-Net's own evaluation (``compute_metrics_on_folder``) gives Dice and IoU per class and writes its
  ``summary.json`` there, as ``nnUNetv2_evaluate_folder`` does;
- HD95 and NSD per class (:mod:`.metrics`: MONAI), spacing-aware: mm for medical images, pixels for PNG data;
- for 2D data, the bilateral paper's six metrics on the foreground (all labels > 0), image by image: from the
  foreground probability (1 - background probability) where every case has ``nnUNetv2_predict
  --save_probabilities`` output (``CASE.npz``), from the predicted mask otherwise; the output says which;
- ``summary_paper_metrics.json`` beside ``summary.json``: per case and mean, with the sources and the rules used.

``original_size=True`` first brings the predictions of a ``convert-2d --resize`` dataset back to the original
sizes (:mod:`.original_size`, into ``PRED_DIR/original_size``) and scores them there against the labels at their
original size, so each folder's files go to ``PRED_DIR/original_size/``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from nnunet_sparseattn.errors import UserError, check_output_path, reading, refuse_inside
from nnunet_sparseattn.evaluation.metrics import (
    FOREGROUND_MAP_METRICS,
    ForegroundMapMetrics,
    hd95,
    normalized_surface_dice,
)
from nnunet_sparseattn.evaluation.original_size import (
    ORIGINAL_SIZE_FOLDER,
    original_size_reference,
    stage_original_size,
)
from nnunet_sparseattn.outputs import publish_folder, staging_folder

__all__ = ["PAPER_METRICS_FILE", "TABLE_FILE", "evaluate_folders", "markdown_table"]

PAPER_METRICS_FILE = "summary_paper_metrics.json"
TABLE_FILE = "paper_table.md"
EMPTY_RULES = {
    "Dice, IoU (nnU-Net)": "NaN when reference and prediction are both empty (left out of nnU-Net's mean)",
    "HD95": "NaN when either mask is empty (left out of the mean; counted in hd95_undefined)",
    "NSD": "NaN when both are empty (left out of the mean), 0 when only one is",
    "mDSC, mIoU": "1 when both are empty, 0 for an empty reference and a non-empty prediction",
    "S_α, F^w_β, E^max_φ, MAE": "pysodmetrics' values for an empty reference: S = 1 - mean(map), F^w = 0, "
    "E^max = (N - pixels at the map's maximum)/(N - 1), MAE = mean(map)",
}


@dataclass
class _SurfaceScores:
    """One class's boundary metrics over the cases."""

    hd95: list[float] = field(default_factory=list)
    nsd: list[float] = field(default_factory=list)
    hd95_undefined: int = 0


@dataclass
class _Dataset:
    json: dict
    labels: dict[int, str]  # foreground label -> name
    reader: Any
    file_ending: str


def unscored_labels(dataset_json: dict) -> Optional[str]:
    """What in a dataset.json ``evaluate`` does not score (``"regions"``, ``"an ignore label"``), None for plain
    labels."""
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    manager = LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order"))
    if manager.has_regions:
        return "regions"
    return "an ignore label" if manager.has_ignore_label else None


def _load_dataset(reference: Path, predictions: Path, dataset_json: Optional[Path]) -> _Dataset:
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    candidates = (
        [dataset_json]
        if dataset_json is not None
        else [predictions / "dataset.json", reference.parent / "dataset.json"]
    )
    found = next((Path(c) for c in candidates if Path(c).is_file()), None)
    if found is None:
        raise UserError(
            f"no dataset.json in {predictions} (nnUNetv2_predict writes one) or beside {reference}: "
            "pass --dataset-json FILE"
        )
    with reading(found, "dataset.json"):
        meta = json.loads(found.read_text())
    if not isinstance(meta, dict) or "labels" not in meta or "file_ending" not in meta:
        raise UserError(f"{found} has no labels or file_ending: pass nnU-Net's dataset.json of the predicted dataset")
    beside = reference.parent / "dataset.json"
    if dataset_json is None and found != beside and beside.is_file():
        with reading(beside, "dataset.json"):
            other = json.loads(beside.read_text())
        if isinstance(other, dict) and other.get("labels") != meta["labels"]:
            raise UserError(
                f"{found} and {beside} define different labels ({meta['labels']} vs {other.get('labels')}): "
                "were the predictions made for another dataset? pass --dataset-json FILE to choose"
            )
    manager = LabelManager(meta["labels"], meta.get("regions_class_order"))
    unscored = unscored_labels(meta)
    if unscored is not None:
        raise UserError(
            f"{found} defines {unscored}: evaluate scores plain label datasets; use nnUNetv2_evaluate_folder for "
            "this one"
        )
    names = {int(v): k for k, v in meta["labels"].items()}
    example = next(iter(sorted(reference.glob(f"*{meta['file_ending']}"))), None)
    if example is None:
        raise UserError(f"no references (*{meta['file_ending']}) in {reference}")
    with reading(example, "reference", "nnU-Net's reader look-up"):
        reader = determine_reader_writer_from_dataset_json(meta, str(example), verbose=False)()
    foreground = {int(label): names[int(label)] for label in manager.foreground_labels}
    return _Dataset(meta, foreground, reader, meta["file_ending"])


def _cases(reference: Path, predictions: Path, ending: str, chill: bool) -> list[str]:
    def stems(folder: Path) -> list[str]:
        return sorted(p.name[: -len(ending)] for p in folder.glob(f"*{ending}") if p.is_file())

    predicted, referenced = stems(predictions), set(stems(reference))
    if not predicted:
        raise UserError(f"no predictions (*{ending}) in {predictions}")
    unreferenced = [c for c in predicted if c not in referenced]
    if unreferenced:
        raise UserError(
            f"{len(unreferenced)} prediction(s) in {predictions} have no reference in {reference} (e.g. "
            f"{', '.join(unreferenced[:3])}): pass the reference folder of the cases predicted"
        )
    missing = sorted(referenced - set(predicted))
    if missing and not chill:
        raise UserError(
            f"{len(missing)} reference case(s) in {reference} have no prediction in {predictions} (e.g. "
            f"{', '.join(missing[:3])}): predict them, or pass --chill to score only the predicted cases"
        )
    return predicted


def _spatial(seg: np.ndarray, spacing: Sequence[float], is_2d: bool) -> tuple[np.ndarray, tuple[float, ...]]:
    """nnU-Net's (1, *spatial) segmentation -> the spatial array and its spacing; 2D data drop the dummy axis
    (NaturalImage2DIO reads a PNG as (1, 1, H, W) with spacing (999, 1, 1))."""
    if is_2d:
        return seg[0, 0], tuple(float(s) for s in spacing[1:])
    return seg[0], tuple(float(s) for s in spacing)


def _nan_mean(values: list[float]) -> Optional[float]:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else None


def _json_number(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _score_folder(
    reference: Path, predictions: Path, dataset: _Dataset, nsd_tolerance: float, num_processes: int, chill: bool
) -> Generator[None, None, dict[str, Any]]:
    """Score one folder: read and check every case and compute our metrics, pause (``yield``) so that the caller
    checks every other folder before the slow part, then nnU-Net's evaluation; returns the folder's result."""
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    cases = _cases(reference, predictions, dataset.file_ending, chill)
    pairs = _Pairs(reference, predictions, dataset)
    # 2D data: nnU-Net reads every case as (1, 1, H, W)
    is_2d = pairs.read(cases[0])[0].shape[1] == 1
    with_probabilities = [c for c in cases if (predictions / f"{c}.npz").is_file()]
    scores = _Scores(
        cases,
        is_2d,
        "probabilities" if is_2d and len(with_probabilities) == len(cases) else "masks",
        len(with_probabilities),
        ForegroundMapMetrics() if is_2d else None,
        {name: _SurfaceScores() for name in dataset.labels.values()},
    )
    for case in cases:
        scores.per_case[case] = _score_case(case, pairs, scores, nsd_tolerance)

    # every case has passed the checks above: pause here until every other folder has too (all folders or none)
    yield
    nnunet = _nnunet_scores(reference, predictions, dataset, num_processes, scores)
    return {
        "reference": str(reference),
        "predictions": str(predictions),
        "dimensionality": "2d" if is_2d else "3d",
        "distance_unit": "px" if isinstance(dataset.reader, NaturalImage2DIO) else "mm",  # PNG & co carry no spacing
        "nsd_tolerance": nsd_tolerance,
        "num_cases": len(cases),
        "sources": scores.sources(),
        "empty_reference_rules": EMPTY_RULES,
        "mean": scores.mean(nnunet, dataset.labels),
        "per_case": scores.per_case,
        "nnunet_summary": nnunet,
    }


@dataclass
class _Pairs:
    """A folder's predictions and their references, read by nnU-Net's reader and checked case by case."""

    reference: Path
    predictions: Path
    dataset: _Dataset

    def read(self, case: str) -> tuple[np.ndarray, np.ndarray, Sequence[float]]:
        """(reference, prediction, spacing) of a case; refused in one line: colour files, sizes that differ, labels
        dataset.json does not define."""
        ending, how = self.dataset.file_ending, f"nnU-Net's {type(self.dataset.reader).__name__}"
        ref_file, pred_file = self.reference / f"{case}{ending}", self.predictions / f"{case}{ending}"
        with reading(ref_file, "reference", how):
            ref, props = self.dataset.reader.read_seg(str(ref_file))
        with reading(pred_file, "prediction", how):
            pred, _ = self.dataset.reader.read_seg(str(pred_file))
        for what, file, seg in (("prediction", pred_file, pred), ("reference", ref_file, ref)):
            if seg.shape[0] != 1:  # nnU-Net's readers give labels one channel; RGB(A) files come back with 3 or 4
                raise UserError(
                    f"{what} {file} has {seg.shape[0]} channels (a colour image?): save one label value per "
                    "pixel, as nnUNetv2_predict does"
                )
        if ref.shape != pred.shape:
            raise UserError(
                f"prediction {case}{ending} is {'x'.join(map(str, pred.shape[1:]))} but its reference is "
                f"{'x'.join(map(str, ref.shape[1:]))}: predictions of a --resize dataset are scored against the "
                "original labels only with --original-size"
            )
        for what, file, seg in (("prediction", pred_file, pred), ("reference", ref_file, ref)):
            self._check_labels(what, file, seg)
        return ref, pred, props["spacing"]

    def _check_labels(self, what: str, file: Path, seg: np.ndarray) -> None:
        defined = np.array(sorted({0, *self.dataset.labels}))
        undefined = np.setdiff1d(np.unique(seg), defined)
        if undefined.size:
            shown = ", ".join(f"{v:g}" for v in undefined[:5]) + (", ..." if undefined.size > 5 else "")
            hint = "; a 0/255 mask? labels are 0, 1, ..." if 255 in undefined else ""
            raise UserError(
                f"{what} {file} holds label(s) {shown} that dataset.json does not define (it defines "
                f"{', '.join(map(str, defined))}{hint}): they would be scored as background; fix the file "
                "or pass the matching --dataset-json"
            )


@dataclass
class _Scores:
    """A folder's scores as they are computed: per case, and what the means are taken over."""

    cases: list[str]
    is_2d: bool
    source: str  # of the foreground maps (2D): "probabilities" where every case has them, else "masks"
    with_probabilities: int  # cases with probabilities
    maps: Optional[ForegroundMapMetrics]  # 2D: the polyp papers' metrics on the foreground
    surface: dict[str, _SurfaceScores]
    per_case: dict[str, Any] = field(default_factory=dict)

    def mean(self, nnunet: dict[str, Any], labels: dict[int, str]) -> dict[str, Any]:
        classes = {}
        for label, name in labels.items():
            nnunet_mean = nnunet["mean"][label]
            classes[name] = {
                "Dice": _json_number(nnunet_mean["Dice"]),
                "IoU": _json_number(nnunet_mean["IoU"]),
                "HD95": _nan_mean(self.surface[name].hd95),
                "NSD": _nan_mean(self.surface[name].nsd),
                "hd95_undefined": self.surface[name].hd95_undefined,
            }
        mean: dict[str, Any] = {"classes": classes}
        if self.maps is not None:
            mean.update(self.maps.results())
        return mean

    def sources(self) -> dict[str, str]:
        sources = {"Dice, IoU, HD95, NSD": "masks"}
        if self.maps is not None:
            sources["mDSC, mIoU"] = "probabilities > 0.5" if self.source == "probabilities" else "masks"
            sources["S_α, F^w_β, E^max_φ, MAE"] = self.source
            if self.source == "masks" and self.with_probabilities:
                sources["note"] = (
                    f"only {self.with_probabilities} of {len(self.cases)} cases have probabilities (.npz): masks "
                    "used for all"
                )
        return sources


def _score_case(case: str, pairs: _Pairs, scores: _Scores, nsd_tolerance: float) -> dict[str, Any]:
    """Our metrics of one case: HD95 and NSD per class; 2D: the foreground map's metrics."""
    ending = pairs.dataset.file_ending
    ref, pred, spacing = pairs.read(case)
    if (ref.shape[1] == 1) != scores.is_2d:
        raise UserError(
            f"{case}{ending} is {'2D' if ref.shape[1] == 1 else '3D'} unlike {scores.cases[0]}{ending}: "
            "evaluate one kind of data per folder"
        )
    pred, _ = _spatial(pred, spacing, scores.is_2d)
    ref, spacing = _spatial(ref, spacing, scores.is_2d)
    entry: dict[str, Any] = {"classes": {}}
    for label, name in pairs.dataset.labels.items():
        in_ref, in_pred = ref == label, pred == label
        d, n = hd95(in_pred, in_ref, spacing), normalized_surface_dice(in_pred, in_ref, spacing, nsd_tolerance)
        surface = scores.surface[name]
        surface.hd95.append(d)
        surface.nsd.append(n)
        # one mask empty, the other not: HD95 is undefined there (a miss), not merely absent from both
        surface.hd95_undefined += int(math.isnan(d) and (in_ref.any() or in_pred.any()))
        entry["classes"][name] = {"HD95": _json_number(d), "NSD": _json_number(n)}
    if scores.maps is not None:
        foreground = _foreground(pairs.predictions, case, pred, ref) if scores.source == "probabilities" else None
        entry.update(scores.maps.add((pred > 0).astype(np.float64) if foreground is None else foreground, ref > 0))
    return entry


def _foreground(predictions: Path, case: str, pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """The foreground probability (1 - background) from the case's ``--save_probabilities`` output."""
    with reading(predictions / f"{case}.npz", "probabilities"):
        probabilities = np.load(predictions / f"{case}.npz")["probabilities"]
    foreground = 1.0 - probabilities[0, 0].astype(np.float64)
    if foreground.shape != ref.shape:
        raise UserError(
            f"{case}.npz holds probabilities of shape {foreground.shape} but the reference "
            f"is {ref.shape}: keep each prediction's .npz beside its mask"
        )
    return np.clip(foreground, 0.0, 1.0)  # float32 sums may overshoot 1 by an ulp


def _nnunet_scores(
    reference: Path, predictions: Path, dataset: _Dataset, num_processes: int, scores: _Scores
) -> dict[str, Any]:
    """nnU-Net's own Dice and IoU, added to each case's classes (its summary.json is written with our files, at the
    end); returns nnU-Net's summary."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder

    ending = dataset.file_ending
    nnunet = compute_metrics_on_folder(
        str(reference),
        str(predictions),
        None,  # written with the other files once every folder has been scored (all or none)
        dataset.reader,
        ending,
        list(dataset.labels),
        None,
        max(1, min(num_processes, len(scores.cases))),
        chill=True,
    )
    for scored in nnunet["metric_per_case"]:
        entry = scores.per_case[Path(scored["prediction_file"]).name[: -len(ending)]]
        for label, name in dataset.labels.items():
            metrics = scored["metrics"][label]
            entry["classes"][name] = {
                "Dice": _json_number(metrics["Dice"]),
                "IoU": _json_number(metrics["IoU"]),
                **entry["classes"][name],
            }
    return nnunet


def _finish(scoring: Generator[None, None, dict[str, Any]]) -> dict[str, Any]:
    """Run a paused :func:`_score_folder` to its end; return its result."""
    try:
        next(scoring)
    except StopIteration as done:
        return done.value
    raise AssertionError("_score_folder pauses once")


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """The paper's layout: one row per prediction folder; 2D: mDSC, mIoU, S_α, F^w_β, E^max_φ, MAE, then Dice,
    IoU, HD95 and NSD per class (3D: the per-class columns only)."""
    first = rows[0][1]
    names = list(first["mean"]["classes"])
    is_2d = first["dimensionality"] == "2d"
    unit, tolerance = first["distance_unit"], first["nsd_tolerance"]
    suffix = (lambda n: "") if len(names) == 1 else (lambda n: f" {n}")
    header = ["predictions"]
    if is_2d:
        header += [title for title, _ in FOREGROUND_MAP_METRICS.values()] + ["maps"]
    for what in ("Dice", "IoU", f"HD95 ({unit})", f"NSD ({tolerance:g} {unit})"):
        header += [f"{what}{suffix(n)}" for n in names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, result in rows:
        mean = result["mean"]
        cells = [label]
        if is_2d:
            cells += [_fmt(mean[key]) for key in FOREGROUND_MAP_METRICS]
            cells.append(result["sources"]["S_α, F^w_β, E^max_φ, MAE"])
        for key, digits in (("Dice", 3), ("IoU", 3), ("HD95", 2), ("NSD", 3)):
            cells += [_fmt(mean["classes"][n][key], digits) for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    n = rows[0][1]["num_cases"]
    lines.append("")
    lines.append(
        f"Per case, then averaged over the {n} case(s) of each row. Dice and IoU: nnU-Net's evaluation; "
        f"HD95 and NSD: MONAI (NSD at {tolerance:g} {unit})"
        + (
            "; mDSC and mIoU at threshold 0.5 and S_α, F^w_β (β = 1), E^max_φ, MAE from pysodmetrics, on the "
            "foreground of each image, from the column 'maps'."
            if is_2d
            else "."
        )
    )
    return "\n".join(lines) + "\n"


def evaluate_folders(
    reference: Path,
    predictions: Sequence[Path],
    dataset_json: Optional[Path] = None,
    nsd_tolerance: float = 1.0,
    original_size: bool = False,
    num_processes: Optional[int] = None,
    chill: bool = False,
    table: Optional[Path] = None,
) -> tuple[list[dict[str, Any]], str, Path]:
    """Score every prediction folder against ``reference``; write each folder's JSON and the Markdown table.
    Returns the results, the table and the table's path (default: ``paper_table.md`` in the folders' common
    folder)."""
    from nnunetv2.configuration import default_num_processes

    reference = Path(reference).expanduser()
    folders = [Path(p).expanduser() for p in predictions]
    _check_arguments(reference, folders, nsd_tolerance, dataset_json, table)
    num_processes = default_num_processes if num_processes is None else num_processes
    scored_reference = original_size_reference(reference) if original_size else reference
    rows, results, staged, pending = [], [], [], []
    try:
        # every folder is scored before anything is written: all folders get their files and the table, or none
        for given, folder in zip(predictions, folders):
            dataset = _load_dataset(reference, folder, Path(dataset_json) if dataset_json else None)
            scored = folder
            if original_size:
                staging = staging_folder(folder / ORIGINAL_SIZE_FOLDER)
                staged.append(staging)
                stage_original_size(folder, reference, staging, dataset.file_ending)
                scored = staging
            scoring = _score_folder(scored_reference, scored, dataset, nsd_tolerance, num_processes, chill)
            next(scoring)  # read and checked every case, our metrics computed
            pending.append((given, folder / ORIGINAL_SIZE_FOLDER if original_size else folder, scored, scoring))
        for given, out, scored, scoring in pending:  # nnU-Net's evaluation, the slow part, once all have passed
            result = _finish(scoring)
            result["original_size"] = original_size
            results.append((out, scored, result))
            rows.append((f"{given}" + (" (original size)" if original_size else ""), result))
        if len({json.dumps([r["dimensionality"], list(r["mean"]["classes"])]) for _, _, r in results}) > 1:
            raise UserError(
                "the prediction folders hold different datasets (classes or dimensionality differ): "
                "evaluate one dataset per table"
            )
        text = markdown_table(rows)
        final = [out for out, _, _ in results]
        path = Path(table).expanduser() if table is not None else Path(os.path.commonpath(final)) / TABLE_FILE
        for out, scored, result in results:
            _write_folder_files(out, scored, result)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_text(path, text)
    finally:
        for staging in staged:
            shutil.rmtree(staging, ignore_errors=True)
    return [r for _, _, r in results], text, path


def _check_arguments(
    reference: Path, folders: list[Path], nsd_tolerance: float, dataset_json: Optional[Path], table: Optional[Path]
) -> None:
    """Every argument refused in one line before anything is read."""
    if not reference.is_dir():
        what = "is a file, not a folder" if reference.exists() else "does not exist"
        raise UserError(f"reference folder {reference} {what}: pass the folder of reference labels")
    if nsd_tolerance < 0 or not math.isfinite(nsd_tolerance):
        raise UserError(f"--nsd-tolerance {nsd_tolerance}: give a distance >= 0 in the data's spacing unit")
    for folder in folders:
        if not folder.is_dir():
            what = "is a file, not a folder" if folder.exists() else "does not exist"
            raise UserError(f"prediction folder {folder} {what}: pass nnUNetv2_predict's output folder")
        # evaluate writes its summaries into each prediction folder: never into the reference labels
        refuse_inside(
            folder,
            {"reference folder": reference},
            "prediction folder",
            "evaluate writes its summaries into each prediction folder; pass nnUNetv2_predict's output folder",
        )
    seen: dict[str, Path] = {}
    for folder in folders:
        if str(folder.resolve()) in seen:
            raise UserError(f"prediction folder {folder} is given twice: name each folder once")
        seen[str(folder.resolve())] = folder
    if dataset_json is not None and not Path(dataset_json).expanduser().is_file():
        raise UserError(f"--dataset-json {dataset_json} is no file: pass the dataset.json of the predicted dataset")
    if table is not None:
        check_output_path(table, "--table", kind="file")
        refuse_inside(table, {"reference folder": reference}, "--table")


def _write_text(path: Path, text: str) -> None:
    """Write through a temporary file in the same folder and a rename: the file is whole or absent."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        try:
            handle.write(text)
        except BaseException:  # interrupted (SIGTERM, Ctrl-C) or the disk is full: leave no temporary file
            handle.close()
            os.unlink(handle.name)
            raise
    os.replace(handle.name, path)


def _write_folder_files(out: Path, scored: Path, result: dict[str, Any]) -> None:
    """nnU-Net's ``summary.json`` and ours into ``out``; a staged original-size folder ``scored`` becomes ``out``."""
    from nnunetv2.evaluation.evaluate_predictions import save_summary_json

    nnunet = result.pop("nnunet_summary")
    if scored != out:  # the staged folder's paths, as they will be once it is renamed
        result["predictions"] = str(out)
        for entry in nnunet["metric_per_case"]:
            entry["prediction_file"] = str(out / Path(entry["prediction_file"]).name)
    save_summary_json(nnunet, str(scored / "summary.json"))
    _write_text(scored / PAPER_METRICS_FILE, json.dumps(result, indent=2))
    if scored != out:
        publish_folder(scored, out)
