"""Predictions on a dataset that ``convert-2d --resize`` shrank, brought back to each case's original size.

``convert-2d --resize`` records every case's size before resizing in the dataset's ``conversion.json`` and keeps
its labels at that size in ``original_size/labelsTr`` and ``original_size/labelsTs``. This module resizes
``nnUNetv2_predict``'s output back to those sizes, with Pillow: masks by nearest neighbour, the probabilities of
``--save_probabilities`` (``CASE.npz``, nnU-Net's layout: ``probabilities`` of shape (classes, 1, H, W))
bilinearly, class by class (a linear interpolation, so each pixel's probabilities still sum to 1).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from nnunet_sparseattn.convert2d import ORIGINAL_SIZE_FOLDER, read_conversion_record
from nnunet_sparseattn.errors import UserError, reading
from nnunet_sparseattn.outputs import publish_folder, staging_folder

__all__ = ["ORIGINAL_SIZE_FOLDER", "original_size_reference", "restore_original_size", "stage_original_size"]


def original_size_reference(reference: Path) -> Path:
    """The labels at their original size for ``reference`` (a converted dataset's ``labelsTs`` or ``labelsTr``)."""
    reference = Path(reference)
    record = read_conversion_record(reference.parent)
    if record.get("resize") is None:
        raise UserError(
            f"{reference.parent} was converted without --resize: its labels and predictions already "
            "have the original size; drop --original-size"
        )
    folder = reference.parent / ORIGINAL_SIZE_FOLDER / reference.name
    if not folder.is_dir():
        raise UserError(f"{folder} does not exist: pass the dataset's labelsTs or labelsTr folder as the reference")
    return folder


def _resize(array: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(array).resize((size[1], size[0]), resample))


def restore_original_size(predictions: Path, reference: Path, file_ending: str = ".png") -> Path:
    """Write ``predictions/original_size/``: every predicted case of a ``--resize``-converted dataset at its
    original size (``CASE.png``, and ``CASE.npz`` where the prediction has one). ``reference`` is the dataset's
    ``labelsTs``/``labelsTr`` folder; returns the new folder. Written whole or not at all."""
    predictions = Path(predictions)
    out = predictions / ORIGINAL_SIZE_FOLDER
    partial = staging_folder(out)
    try:
        stage_original_size(predictions, reference, partial, file_ending)
        publish_folder(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out


def stage_original_size(predictions: Path, reference: Path, out: Path, file_ending: str = ".png") -> None:
    """Write every predicted case at its original size into the existing folder ``out`` (see
    :func:`restore_original_size`, which renames it into place)."""
    predictions, reference = Path(predictions), Path(reference)
    original_size_reference(reference)  # refuses datasets converted without --resize
    cases = read_conversion_record(reference.parent)["cases"]
    files = sorted(predictions.glob(f"*{file_ending}"))
    if not files:
        raise UserError(f"no predictions (*{file_ending}) in {predictions}")
    for file in files:
        case = file.name[: -len(file_ending)]
        if case not in cases:
            raise UserError(
                f"prediction {file.name} is no case of {reference.parent.name} (its conversion.json "
                "lists the cases): pass the reference folder of the dataset it was predicted on"
            )
        size = tuple(cases[case]["original_size"])
        with reading(file, "prediction"), Image.open(file) as img:
            Image.fromarray(_resize(np.asarray(img), size, nearest=True)).save(out / file.name)
        probabilities = predictions / f"{case}.npz"
        if probabilities.is_file():
            with reading(probabilities, "probabilities"):
                p = np.load(probabilities)["probabilities"].astype(np.float32)
            restored = np.stack([_resize(channel[0], size, nearest=False) for channel in p])[:, None]
            np.savez_compressed(out / f"{case}.npz", probabilities=restored)
