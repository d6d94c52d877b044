"""``nnunet-sparseattn convert-2d``: a folder of 2D images and a folder of masks -> an nnU-Net raw dataset.

nnU-Net reads 2D natural images through its ``NaturalImage2DIO`` (PNG, BMP, TIFF; no JPEG: lossy). The layout it
wants, which :func:`convert_2d` writes::

    <nnUNet_raw>/DatasetXXX_NAME/
        imagesTr/CASE_0000.png      one file per case; RGB stays ONE 3-channel PNG (channel_names R, G, B)
        labelsTr/CASE.png           uint8 labels 0..K (binary 0/255 masks become 0/1)
        imagesTs/, labelsTs/        the last ``num_test`` cases (sorted by name), when asked for
        dataset.json                channel_names, labels, numTraining, file_ending ".png"

Images are paired with masks by name: ``mask stem = image stem + suffix``. The suffix is found from the files
when not given (ISIC: ``ISIC_0000000.jpg`` <-> ``ISIC_0000000_segmentation.png``, suffix ``_segmentation``;
the same stem in both folders: suffix ``""``). Every problem (missing folder, an unpaired image or mask, a mask
whose values are neither 0/255 nor small integer labels, images with different channel counts, an image and
its mask of different sizes) stops the conversion with a one-line :class:`UserError` before anything is left
in ``nnUNet_raw``: the dataset is written into a hidden folder and renamed when complete.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from nnunet_sparseattn.errors import UserError

__all__ = ["IMAGE_SUFFIXES", "Pair", "convert_2d", "pair_images_and_masks"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Modes whose pixels are colours: converted to RGB (alpha dropped: it is no image content).
_COLOUR_MODES = {"RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBa"}
_GREY_MODES = {"L", "LA", "La", "1", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_MIN_TRAINING = 5  # nnU-Net's 5-fold cross-validation split


@dataclass(frozen=True)
class Pair:
    case: str  # nnU-Net case identifier (the image's stem)
    image: Path
    mask: Path


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def _detect_suffix(image_stem: str, mask_stems: set[str]) -> str:
    if image_stem in mask_stems:
        return ""
    candidates = sorted(m[len(image_stem):] for m in mask_stems if m.startswith(image_stem))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise UserError(f"no mask is named after image {image_stem!r} (expected {image_stem}<suffix>.png in the "
                        "masks folder): pass the mask-name suffix (e.g. --mask-suffix _segmentation)")
    raise UserError(f"several masks could belong to image {image_stem!r} ({', '.join(image_stem + c for c in candidates[:3])}):"
                    " pass the mask-name suffix (e.g. --mask-suffix _segmentation)")


def pair_images_and_masks(images: Path, masks: Path, mask_suffix: Optional[str] = None) -> tuple[list[Pair], str]:
    """Pair every image with its mask (``mask stem = image stem + mask_suffix``); return the pairs and the suffix.

    ``mask_suffix=None`` detects it from the first image. Every image must have exactly one mask and every mask an
    image, otherwise :class:`UserError` (naming the first few unpaired files).
    """
    images, masks = Path(images).expanduser(), Path(masks).expanduser()
    for what, folder in (("images", images), ("masks", masks)):
        if not folder.is_dir():
            raise UserError(f"{what} folder {folder} does not exist: pass the folder that holds the {what}")
    image_files, mask_files = _files(images), _files(masks)
    kinds = "/".join(IMAGE_SUFFIXES)
    if not image_files:
        raise UserError(f"no images ({kinds}) in {images}")
    if not mask_files:
        raise UserError(f"no masks ({kinds}) in {masks}")
    by_stem: dict[str, Path] = {}
    for what, files in (("image", image_files), ("mask", mask_files)):
        seen: dict[str, Path] = {}
        for f in files:
            if f.stem in seen:
                raise UserError(f"two {what}s share the name {f.stem!r} ({seen[f.stem].name}, {f.name}): keep one")
            seen[f.stem] = f
        if what == "mask":
            by_stem = seen
    suffix = _detect_suffix(image_files[0].stem, set(by_stem)) if mask_suffix is None else mask_suffix
    pairs, unpaired = [], []
    used: set[str] = set()
    for image in image_files:
        mask = by_stem.get(image.stem + suffix)
        if mask is None:
            unpaired.append(image.name)
        else:
            used.add(mask.stem)
            pairs.append(Pair(image.stem, image, mask))
    if unpaired:
        raise UserError(f"{len(unpaired)} image(s) have no mask named <image>{suffix}.<ext> in {masks} "
                        f"(e.g. {', '.join(unpaired[:3])}): add the masks, remove the images, or pass the right "
                        "mask suffix")
    orphans = [m.name for m in mask_files if m.stem not in used]
    if orphans:
        raise UserError(f"{len(orphans)} mask(s) have no image (e.g. {', '.join(orphans[:3])}; masks are paired as "
                        f"<image>{suffix}.<ext>): remove them or pass the right mask suffix")
    return pairs, suffix


def _read_image(path: Path) -> np.ndarray:
    """``(H, W)`` greyscale or ``(H, W, 3)`` RGB array, as it will be written (uint8, or uint16 for deep greys)."""
    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode in _COLOUR_MODES:
                return np.asarray(img.convert("RGB"))
            if mode in {"L", "LA", "La", "1"}:
                return np.asarray(img.convert("L"))
            if mode in _GREY_MODES:
                arr = np.asarray(img)
            else:
                raise UserError(f"image {path} has PIL mode {mode!r}, neither colour nor greyscale: convert it to "
                                "RGB or greyscale PNG")
    except UserError:
        raise
    except Exception as error:  # PIL raises many kinds for unreadable files
        raise UserError(f"cannot read image {path}: {error}") from error
    if arr.dtype.kind == "f" and not np.all(arr == np.round(arr)):
        raise UserError(f"image {path} holds non-integer values: PNG stores integers; rescale it to 8 or 16 bits")
    if arr.min() < 0 or arr.max() > 65535:
        raise UserError(f"image {path} has values outside 0..65535: rescale it to 8 or 16 bits")
    return arr.astype(np.uint8 if arr.max() <= 255 else np.uint16)


def _read_mask(path: Path) -> np.ndarray:
    """``(H, W)`` uint8 labels: 0/255 -> 0/1; integer labels 0..254 kept; anything else refused."""
    try:
        with Image.open(path) as img:
            arr = np.asarray(img)
    except Exception as error:
        raise UserError(f"cannot read mask {path}: {error}") from error
    if arr.ndim == 3:  # a colour-saved mask is usable when its colour channels agree (alpha ignored)
        colour = arr[..., :3] if arr.shape[-1] >= 3 else arr[..., :1]
        if not np.all(colour == colour[..., :1]):
            raise UserError(f"mask {path} is a colour image: save one label value per class (0, 1, 2, ... or 0/255) "
                            "as a greyscale PNG")
        arr = colour[..., 0]
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    values = np.unique(arr)
    if np.all(np.isin(values, (0, 255))):
        return (arr == 255).astype(np.uint8)
    integral = arr.dtype.kind in "iu" or bool(np.all(values == np.round(values)))
    if integral and values.min() >= 0 and values.max() < 255:
        return arr.astype(np.uint8)
    shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
    raise UserError(f"mask {path} has values {{{shown}}} that are neither 0/255 nor integer labels 0..254 (a lossy "
                    "JPEG or a smoothed resize?): save masks losslessly with one value per class")


def _dataset_name(images: Path, name: Optional[str]) -> str:
    if name is None:
        folder = images.resolve()
        name = folder.parent.name if folder.name.lower() in {"images", "imagestr", "image", "img", "imgs"} \
            else folder.name
        name = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "Converted2D"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise UserError(f"dataset name {name!r}: use letters, digits, '_' and '-' only (nnU-Net folder names)")
    return name


def convert_2d(
    images: Path,
    masks: Path,
    dataset_id: int,
    name: Optional[str] = None,
    raw_root: Optional[Path] = None,
    mask_suffix: Optional[str] = None,
    num_test: int = 0,
    limit: Optional[int] = None,
    label_names: Optional[Sequence[str]] = None,
    overwrite: bool = False,
) -> Path:
    """Write ``<raw_root>/Dataset{dataset_id:03d}_{name}`` in nnU-Net's raw format; return that folder.

    Args:
        images, masks: folders of 2D images (PNG/JPEG/BMP/TIFF; RGB kept as 3 channels, greyscale as 1) and of
            masks (0/255 binary or integer labels 0..K).
        dataset_id: nnU-Net dataset id (1..999); name: the dataset's name (default: from the images' folder, e.g.
            ``ISIC2017_256`` for ``ISIC2017_256/images``).
        raw_root: nnU-Net's raw folder (default ``$nnUNet_raw``).
        mask_suffix: mask stem = image stem + this (default: detected, see :func:`pair_images_and_masks`).
        num_test: the last ``num_test`` cases (sorted by name) go to imagesTs/labelsTs instead of training.
        limit: convert only the first ``limit`` cases (sorted by name): quick experiments, tests.
        label_names: names of labels 1..K (default ``foreground`` for one label, else ``label_1`` ...).
        overwrite: replace an existing dataset folder of the same id AND name (never one of another name).
    """
    images, masks = Path(images).expanduser(), Path(masks).expanduser()
    if not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise UserError(f"dataset id {dataset_id!r} must be an integer from 1 to 999")
    if raw_root is None:
        if not os.environ.get("nnUNet_raw"):
            raise UserError("nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw (or pass the raw folder)")
        raw_root = Path(os.environ["nnUNet_raw"])
    raw_root = Path(raw_root).expanduser()
    name = _dataset_name(images, name)
    target = raw_root / f"Dataset{dataset_id:03d}_{name}"
    clash = [p for p in sorted(raw_root.glob(f"Dataset{dataset_id:03d}_*")) if p.is_dir()] if raw_root.is_dir() else []
    if clash and not (overwrite and clash == [target]):
        hint = " (pass overwrite to replace it)" if clash == [target] else ""
        raise UserError(f"dataset id {dataset_id} is taken by {clash[0]}{hint}: choose another id or remove it")

    pairs, _ = pair_images_and_masks(images, masks, mask_suffix)
    if limit is not None:
        if limit < 1:
            raise UserError(f"limit={limit} must be >= 1")
        pairs = pairs[:limit]
    if num_test < 0 or len(pairs) - num_test < _MIN_TRAINING:
        raise UserError(f"{len(pairs)} case(s) with num_test={num_test} leave {len(pairs) - num_test} for training: "
                        f"nnU-Net's 5-fold cross-validation needs at least {_MIN_TRAINING}")

    raw_root.mkdir(parents=True, exist_ok=True)
    partial = raw_root / f".{target.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        max_label, channels = _write_cases(pairs, len(pairs) - num_test, partial)
        names = list(label_names) if label_names is not None else \
            (["foreground"] if max_label <= 1 else [f"label_{i}" for i in range(1, max_label + 1)])
        if len(names) != max(1, max_label):
            raise UserError(f"{len(names)} label name(s) given but the masks hold labels 1..{max_label}")
        channel_names = {"0": "R", "1": "G", "2": "B"} if channels == 3 else {"0": "grey"}
        dataset_json = {
            "name": name,
            "description": f"2D images {images} and masks {masks}, converted by nnunet-sparseattn convert-2d",
            "channel_names": channel_names,
            "labels": {"background": 0, **{n: i for i, n in enumerate(names, start=1)}},
            "numTraining": len(pairs) - num_test,
            "file_ending": ".png",
            "overwrite_image_reader_writer": "NaturalImage2DIO",
        }
        (partial / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
        if target.exists():
            shutil.rmtree(target)
        partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def _write_cases(pairs: Sequence[Pair], num_training: int, out: Path) -> tuple[int, int]:
    """Write every case (the first ``num_training`` to imagesTr/labelsTr); return the largest label, channels."""
    folders = {k: out / k for k in ("imagesTr", "labelsTr", "imagesTs", "labelsTs")}
    for key in ("imagesTr", "labelsTr"):
        folders[key].mkdir(parents=True)
    if num_training < len(pairs):
        folders["imagesTs"].mkdir()
        folders["labelsTs"].mkdir()
    max_label = 0
    first: Optional[tuple[int, Path]] = None
    for i, pair in enumerate(pairs):
        image, mask = _read_image(pair.image), _read_mask(pair.mask)
        n_channels = 3 if image.ndim == 3 else 1
        if first is None:
            first = (n_channels, pair.image)
        elif n_channels != first[0]:
            raise UserError(f"images differ in channels: {first[1].name} has {first[0]}, {pair.image.name} has "
                            f"{n_channels}: convert them all to RGB or all to greyscale")
        if image.shape[:2] != mask.shape:
            raise UserError(f"image {pair.image.name} is {image.shape[1]}x{image.shape[0]} but its mask "
                            f"{pair.mask.name} is {mask.shape[1]}x{mask.shape[0]}: they must have the same size")
        max_label = max(max_label, int(mask.max()))
        split = "Tr" if i < num_training else "Ts"
        Image.fromarray(image).save(folders[f"images{split}"] / f"{pair.case}_0000.png")
        Image.fromarray(mask).save(folders[f"labels{split}"] / f"{pair.case}.png")
    assert first is not None
    return max_label, first[0]
