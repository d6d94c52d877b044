"""``nnunet-sparseattn convert-2d``: a folder of 2D images and a folder of masks -> an nnU-Net raw dataset.

nnU-Net reads 2D natural images through its ``NaturalImage2DIO`` (PNG, BMP, TIFF; no JPEG: lossy). The layout it
wants, which :func:`convert_2d` writes::

    <nnUNet_raw>/DatasetXXX_NAME/
        imagesTr/CASE_0000.png      one file per case; RGB stays ONE 3-channel PNG (channel_names R, G, B)
        labelsTr/CASE.png           uint8 labels 0..K (binary 0/255 masks become 0/1)
        imagesTs/, labelsTs/        held-out cases (--num-test, --test-list, --train-list), when asked for
        dataset.json                channel_names, labels, numTraining, file_ending ".png"
        conversion.json             ours, ignored by nnU-Net: source file of every case, its size before any
                                    resize, the threshold and resize used (:data:`CONVERSION_RECORD`)
        original_size/labelsTr/     with ``resize`` only: the labels at the source's own size, so predictions
        original_size/labelsTs/     brought back to that size can be scored (``evaluate --original-size``)

Images are paired with masks by name: ``mask stem = image stem + suffix``. The suffix is found from the files
when not given (ISIC: ``ISIC_0000000.jpg`` <-> ``ISIC_0000000_segmentation.png``, suffix ``_segmentation``;
the same stem in both folders: suffix ``""``). A stem that is not a plain nnU-Net case identifier (spaces, dots,
other punctuation) is mapped to one (``"polyp 1.v2"`` -> ``polyp_1_v2``) and the mapping is recorded.

Masks as public datasets distribute them:

- 0/255 masks (16-bit: 0/65535) become 0/1; integer labels 0..254 are kept (palette PNGs: the palette index is
  the label);
- RGB(A) masks whose colour channels are equal are read as grey (alpha ignored);
- ``threshold=T`` binarises every mask: foreground where the grey value > T. A colour mask's grey value is the
  brightest of its R, G and B (:data:`GREY_RULE`), so a white, red or green outline on black is foreground
  whatever its colour; palette masks are read through their palette's colours;
- without a threshold, a mask saved as JPEG, or one that looks like a lossily saved 0/255 mask (values other
  than 0 and 255, yet nearly all within 32 of them), is refused with the share of its ambiguous pixels: the
  conversion never guesses a threshold.

``resize=(H, W)`` (the papers' protocol: the bilateral paper trains at 256 x 256) resizes images bilinearly and
masks by nearest neighbour after thresholding.

Every problem (missing folder, an unpaired image or mask, an unreadable or ambiguous mask, images with different
channel counts, an image and its mask of different sizes, names in a split list that match no image) stops the
conversion with a one-line :class:`UserError` before anything is left in ``nnUNet_raw``: the dataset is written
into a hidden folder and renamed when complete (:mod:`..outputs`). So do inputs that cannot be meant (the images
folder given twice, masks that are copies of their images, ``--resize`` below 8 px). What converts but is unlikely
to be meant gets one warning line each: every mask empty, masks that look like photographs under ``threshold``,
labels above 20, images smaller than 32 px.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from nnunet_sparseattn.errors import UserError, check_output_path, reading, refuse_inside
from nnunet_sparseattn.outputs import publish_folder, staging_folder

__all__ = [
    "CONVERSION_RECORD",
    "GREY_RULE",
    "IMAGE_SUFFIXES",
    "ORIGINAL_SIZE_FOLDER",
    "Pair",
    "convert_2d",
    "pair_images_and_masks",
    "parse_size",
    "read_conversion_record",
    "read_mask",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LOSSY_SUFFIXES = (".jpg", ".jpeg")
CONVERSION_RECORD = "conversion.json"
ORIGINAL_SIZE_FOLDER = "original_size"
GREY_RULE = "the brightest of R, G and B at each pixel (alpha ignored; palette masks through their colours)"
# Modes whose pixels are colours: converted to RGB (alpha dropped: it is no image content).
_COLOUR_MODES = {"RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBa"}
_GREY_MODES = {"L", "LA", "La", "1", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_MIN_TRAINING = 5  # nnU-Net's 5-fold cross-validation split
# A lossily saved 0/255 mask: values other than 0/255, yet nearly all of them near 0 or 255 (JPEG ringing).
_NEAR_BINARY = 32
_LOSSY_SHARE = 0.9
_CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
# nnU-Net's planner stops pooling at feature maps of 4 px (ExperimentPlanner.UNet_featuremap_min_edge_length): below
# 8 px no pooling is left (refused); below 32 px fewer than three poolings (a warning)
_MIN_SIDE, _SMALL_SIDE = 8, 32
# labels beyond this many classes are more likely a photograph or a smoothed mask than a label map (a warning)
_MANY_LABELS = 20
# with --threshold, a mask with fewer than this share of its pixels near 0 or the maximum looks like a photograph
_PHOTO_SHARE = 0.5


def _warn(text: str) -> None:
    print(f"nnunet-sparseattn: warning: {text}", file=sys.stderr)


@dataclass(frozen=True)
class Pair:
    case: str  # nnU-Net case identifier: the image's stem, or a safe name mapped from it
    image: Path
    mask: Path

    @property
    def name(self) -> str:
        """The image's stem as distributed (what split lists name)."""
        return self.image.stem


def _files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _detect_suffix(image_stem: str, mask_stems: set[str]) -> str:
    if image_stem in mask_stems:
        return ""
    candidates = sorted(m[len(image_stem) :] for m in mask_stems if m.startswith(image_stem))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise UserError(
            f"no mask is named after image {image_stem!r} (expected {image_stem}<suffix>.png in the "
            "masks folder): pass the mask-name suffix (e.g. --mask-suffix _segmentation)"
        )
    examples = ", ".join(image_stem + c for c in candidates[:3])
    raise UserError(
        f"several masks could belong to image {image_stem!r} ({examples}): pass the mask-name suffix "
        "(e.g. --mask-suffix _segmentation)"
    )


def _case_identifiers(stems: Sequence[str]) -> list[str]:
    """A valid, unique nnU-Net case identifier per stem: kept when already one, else every run of other
    characters (spaces, dots, ...) becomes ``_``; clashes get ``_2``, ``_3``, ... in name order."""
    taken = {s for s in stems if _CASE_ID.fullmatch(s)}
    out = []
    for stem in stems:
        if _CASE_ID.fullmatch(stem):
            out.append(stem)
            continue
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_") or "case"
        base = base if base[0].isalnum() else f"case{base}"
        case, n = base, 1
        while case in taken:
            n += 1
            case = f"{base}_{n}"
        taken.add(case)
        out.append(case)
    return out


def pair_images_and_masks(images: Path, masks: Path, mask_suffix: Optional[str] = None) -> tuple[list[Pair], str]:
    """Pair every image with its mask (``mask stem = image stem + mask_suffix``); return the pairs and the suffix.

    ``mask_suffix=None`` detects it from the first image. Every image must have exactly one mask and every mask an
    image, otherwise :class:`UserError` (naming the first few unpaired files).
    """
    images, masks = Path(images).expanduser(), Path(masks).expanduser()
    for what, folder in (("images", images), ("masks", masks)):
        if not folder.is_dir():
            state = "is a file, not a folder" if folder.exists() else "does not exist"
            raise UserError(f"{what} folder {folder} {state}: pass the folder that holds the {what}")
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
    paired, unpaired = [], []
    used: set[str] = set()
    for image in image_files:
        mask = by_stem.get(image.stem + suffix)
        if mask is None:
            unpaired.append(image.name)
        else:
            used.add(mask.stem)
            paired.append((image, mask))
    if unpaired:
        raise UserError(
            f"{len(unpaired)} image(s) have no mask named <image>{suffix}.<ext> in {masks} "
            f"(e.g. {', '.join(unpaired[:3])}): add the masks, remove the images, or pass the right "
            "mask suffix"
        )
    orphans = [m.name for m in mask_files if m.stem not in used]
    if orphans:
        raise UserError(
            f"{len(orphans)} mask(s) have no image (e.g. {', '.join(orphans[:3])}; masks are paired as "
            f"<image>{suffix}.<ext>): remove them or pass the right mask suffix"
        )
    cases = _case_identifiers([image.stem for image, _ in paired])
    return [Pair(case, image, mask) for case, (image, mask) in zip(cases, paired)], suffix


def parse_size(text: str) -> tuple[int, int]:
    """``"256x256"`` -> ``(256, 256)`` (height, width)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if match is None:
        raise UserError(f"--resize {text!r}: expected HEIGHTxWIDTH in pixels, e.g. --resize 256x256")
    size = int(match.group(1)), int(match.group(2))
    if min(size) < _MIN_SIDE:
        raise UserError(
            f"--resize {text!r}: sides below {_MIN_SIDE} px leave nnU-Net's U-Net no pooling (it stops at 4 px); "
            "give at least 8x8, e.g. --resize 256x256"
        )
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and size[0] * size[1] > limit:
        raise UserError(
            f"--resize {text!r}: {size[0] * size[1]:,} pixels per image is above Pillow's limit of {limit:,} "
            "(its guard against decompression bombs); give a smaller size"
        )
    return size


def _read_image(path: Path) -> np.ndarray:
    """``(H, W)`` greyscale or ``(H, W, 3)`` RGB array, as it will be written (uint8, or uint16 for deep greys)."""
    with reading(path, "image"), Image.open(path) as img:
        mode = img.mode
        if mode in _COLOUR_MODES:
            return np.asarray(img.convert("RGB"))
        if mode in {"L", "LA", "La", "1"}:
            return np.asarray(img.convert("L"))
        if mode in _GREY_MODES:
            arr = np.asarray(img)
        else:
            raise UserError(
                f"image {path} has PIL mode {mode!r}, neither colour nor greyscale: convert it to RGB or greyscale PNG"
            )
    if arr.dtype.kind == "f" and not np.all(arr == np.round(arr)):
        raise UserError(f"image {path} holds non-integer values: PNG stores integers; rescale it to 8 or 16 bits")
    if arr.min() < 0 or arr.max() > 65535:
        raise UserError(f"image {path} has values outside 0..65535: rescale it to 8 or 16 bits")
    return arr.astype(np.uint8 if arr.max() <= 255 else np.uint16)


def _grey(img: Image.Image) -> np.ndarray:
    """A mask's grey values for thresholding (:data:`GREY_RULE`)."""
    if img.mode in _COLOUR_MODES:
        return np.asarray(img.convert("RGB")).max(axis=-1)
    if img.mode in {"LA", "La", "1"}:
        return np.asarray(img.convert("L"))
    return np.asarray(img)


def _ambiguous_share(grey: np.ndarray) -> float:
    return float(np.mean((grey != 0) & (grey != 255)))


def _looks_lossy_binary(grey: np.ndarray) -> bool:
    near = (grey <= _NEAR_BINARY) | (grey >= 255 - _NEAR_BINARY)
    return bool(_ambiguous_share(grey) > 0 and np.any(grey >= 255 - _NEAR_BINARY) and np.mean(near) >= _LOSSY_SHARE)


def _refuse_lossy(path: Path, why: str, grey: np.ndarray) -> UserError:
    return UserError(
        f"mask {path} {why}: {_ambiguous_share(grey):.1%} of its pixels are neither 0 nor 255; pass "
        "--threshold T to binarise the masks (foreground where the grey value > T, e.g. --threshold "
        "127)"
    )


def _photo_like(grey: np.ndarray) -> bool:
    """Most pixels neither near 0 nor near the type's maximum: a photograph rather than a (lossy) mask."""
    top = 65535 if grey.dtype.itemsize > 1 and grey.max() > 255 else 255
    margin = _NEAR_BINARY * (top // 255)
    return bool(np.mean((grey <= margin) | (grey >= top - margin)) < _PHOTO_SHARE)


def _read_thresholded(path: Path, threshold: float) -> tuple[np.ndarray, bool]:
    """A mask binarised at ``threshold`` and whether it looked like a photograph before."""
    with reading(path, "mask"), Image.open(path) as img:
        img.load()
        grey = _grey(img)
    return (grey > threshold).astype(np.uint8), _photo_like(grey)


def read_mask(path: Path, threshold: Optional[float] = None) -> np.ndarray:
    """A mask file -> ``(H, W)`` uint8 labels, by the rules in this module's docstring."""
    path = Path(path)
    if threshold is not None:
        return _read_thresholded(path, threshold)[0]
    with reading(path, "mask"), Image.open(path) as img:
        img.load()
        arr = np.asarray(img)
        grey = _grey(img)
    if arr.ndim == 3:  # a colour-saved mask is usable when its colour channels agree (alpha ignored)
        colour = arr[..., :3] if arr.shape[-1] >= 3 else arr[..., :1]
        if not np.all(colour == colour[..., :1]):
            if _looks_lossy_binary(grey):
                raise _refuse_lossy(
                    path,
                    "looks like a lossily saved 0/255 mask (colour channels that differ "
                    "slightly, values smeared around 0 and 255)",
                    grey,
                )
            raise UserError(
                f"mask {path} is a colour image: save one label value per class (0, 1, 2, ... or "
                "0/255) as a greyscale PNG, or pass --threshold T to binarise its brightest channel"
            )
        arr = colour[..., 0]
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    values = np.unique(arr)
    if np.all(np.isin(values, (0, 255))):
        return (arr == 255).astype(np.uint8)
    deep = arr.dtype.itemsize > 1 and values.max() > 255  # a 16/32-bit mask (PIL modes I;16, I)
    if deep and np.all(np.isin(values, (0, 65535))):  # a binary mask saved at 16 bits: 0/65535
        return (arr == 65535).astype(np.uint8)
    if path.suffix.lower() in LOSSY_SUFFIXES:
        raise _refuse_lossy(path, "is a JPEG, whose values are lossy", grey)
    if not deep and _looks_lossy_binary(grey):
        raise _refuse_lossy(path, "looks like a lossily saved 0/255 mask (values smeared around 0 and 255)", grey)
    integral = arr.dtype.kind in "iu" or bool(np.all(values == np.round(values)))
    if integral and values.min() >= 0 and values.max() < 255:
        return arr.astype(np.uint8)
    shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if len(values) > 6 else "")
    if deep:
        raise UserError(
            f"mask {path} is a {8 * arr.dtype.itemsize}-bit image with values {{{shown}}}, neither 0/65535 nor "
            "integer labels 0..254: save one value per class (0, 1, 2, ...), or pass --threshold T to binarise it"
        )
    raise UserError(
        f"mask {path} has values {{{shown}}} that are neither 0/255 nor integer labels 0..254 (a lossy "
        "save or a smoothed resize?): save masks losslessly with one value per class, or pass "
        "--threshold T to binarise them"
    )


def _resize(arr: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    """Resize an ``(H, W[, 3])`` array to ``size`` = (H, W) with Pillow: bilinear, or nearest for labels."""
    if arr.shape[:2] == tuple(size):
        return arr
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    wh = (size[1], size[0])
    if arr.dtype == np.uint16:  # Pillow interpolates 16-bit grey as 32-bit integers ("I")
        out = np.asarray(Image.fromarray(arr.astype(np.int32)).resize(wh, resample))
        return np.clip(out, 0, 65535).astype(np.uint16)
    return np.asarray(Image.fromarray(arr).resize(wh, resample))


def _read_name_list(path: Path, what: str) -> list[str]:
    """Image names, one per line (blank lines and ``#`` comments skipped; folders and image extensions dropped)."""
    path = Path(path).expanduser()
    if not path.is_file():
        state = "is a folder" if path.is_dir() else "does not exist"
        raise UserError(f"{what} {path} {state}: pass a text file with one image file name per line")
    with reading(path, what):
        text = path.read_text()
    names = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = Path(line.replace("\\", "/")).name
        if Path(name).suffix.lower() in IMAGE_SUFFIXES:
            name = Path(name).stem
        if name not in names:
            names.append(name)
    if not names:
        raise UserError(f"{what} {path} names no image: write one image file name per line")
    return names


def _split(
    pairs: list[Pair], num_test: int, test_list: Optional[Path], train_list: Optional[Path]
) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """(training, held-out, left out) cases: by lists of image names, else the last ``num_test`` by name."""
    if test_list is None and train_list is None:
        if num_test < 0:
            raise UserError(f"--num-test {num_test}: the number of test cases must be 0 or more")
        return pairs[: len(pairs) - num_test], pairs[len(pairs) - num_test :], []
    if num_test:
        raise UserError("--num-test and a split list (--test-list/--train-list) were both given: choose one")
    by_name = {p.name: p for p in pairs}
    chosen: dict[str, list[str]] = {}
    for what, path in (("test list", test_list), ("train list", train_list)):
        if path is None:
            continue
        names = _read_name_list(path, what)
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise UserError(
                f"{len(unknown)} name(s) in {what} {path} match no paired image (e.g. "
                f"{', '.join(unknown[:3])}): use the images' file names, one per line"
            )
        chosen[what] = names
    if "test list" in chosen and "train list" in chosen:
        both = sorted(set(chosen["test list"]) & set(chosen["train list"]))
        if both:
            raise UserError(
                f"{len(both)} image(s) are in both the train and the test list (e.g. "
                f"{', '.join(both[:3])}): a case is either trained on or held out"
            )
    test = set(chosen.get("test list", []))
    train = set(chosen["train list"]) if "train list" in chosen else {p.name for p in pairs} - test
    if "test list" not in chosen:
        test = {p.name for p in pairs} - train
    return (
        [p for p in pairs if p.name in train],
        [p for p in pairs if p.name in test],
        [p for p in pairs if p.name not in train | test],
    )


def _dataset_name(images: Path, name: Optional[str]) -> str:
    if name is None:
        folder = images.resolve()
        name = (
            folder.parent.name if folder.name.lower() in {"images", "imagestr", "image", "img", "imgs"} else folder.name
        )
        name = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "Converted2D"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise UserError(f"dataset name {name!r}: use letters, digits, '_' and '-' only (nnU-Net folder names)")
    return name


def read_conversion_record(dataset: Path) -> dict[str, Any]:
    """The record :func:`convert_2d` wrote into a raw dataset folder (:data:`CONVERSION_RECORD`)."""
    path = Path(dataset) / CONVERSION_RECORD
    if not path.is_file():
        raise UserError(
            f"{Path(dataset)} has no {CONVERSION_RECORD}: it was not written by nnunet-sparseattn "
            "convert-2d (or by a version before original sizes were recorded); convert it again"
        )
    with reading(path, CONVERSION_RECORD):
        return json.loads(path.read_text())


# long only by its documented keywords (the public entry the CLI, the tests and the benchmarks call); the steps are
# the functions below
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
    threshold: Optional[float] = None,
    resize: Optional[tuple[int, int]] = None,
    test_list: Optional[Path] = None,
    train_list: Optional[Path] = None,
) -> Path:
    """Write ``<raw_root>/Dataset{dataset_id:03d}_{name}`` in nnU-Net's raw format; return that folder.

    Args:
        images, masks: folders of 2D images (PNG/JPEG/BMP/TIFF; RGB(A) and palette kept as 3 channels, greyscale
            as 1) and of masks (0/255 binary, integer labels 0..K, palette PNGs, or lossy masks with ``threshold``).
        dataset_id: nnU-Net dataset id (1..999); name: the dataset's name (default: from the images' folder, e.g.
            ``ISIC2017_256`` for ``ISIC2017_256/images``).
        raw_root: nnU-Net's raw folder (default ``$nnUNet_raw``).
        mask_suffix: mask stem = image stem + this (default: detected, see :func:`pair_images_and_masks`).
        num_test: the last ``num_test`` cases (sorted by name) go to imagesTs/labelsTs instead of training.
        limit: convert only the first ``limit`` cases (sorted by name): quick experiments, tests.
        label_names: names of labels 1..K (default ``foreground`` for one label, else ``label_1`` ...).
        overwrite: replace an existing dataset folder of the same id AND name (never one of another name, nor
            one that holds the images or masks).
        threshold: binarise masks: foreground where the grey value (:data:`GREY_RULE`) > ``threshold``.
        resize: (height, width): images bilinear, masks nearest after thresholding; the original sizes and labels
            are kept (``conversion.json``, ``original_size/``).
        test_list, train_list: text files of image names (one a line, extension optional): a published split.
            With one list the other cases form the other set; with both, cases in neither are left out.
    """
    images, masks = Path(images).expanduser(), Path(masks).expanduser()
    raw_root = _check_inputs(images, masks, dataset_id, threshold, raw_root)
    name = _dataset_name(images, name)
    target = raw_root / f"Dataset{dataset_id:03d}_{name}"
    _check_target(raw_root, dataset_id, target, images, masks, overwrite)
    pairs, suffix = pair_images_and_masks(images, masks, mask_suffix)
    if limit is not None:
        if limit < 1:
            raise UserError(f"--limit {limit}: the number of pairs to convert must be 1 or more")
        if test_list is not None or train_list is not None:
            raise UserError("--limit and a split list were both given: a list names its cases; drop --limit")
        pairs = pairs[:limit]
    training, test, left_out = _split(pairs, num_test, test_list, train_list)
    if len(training) < _MIN_TRAINING:
        raise UserError(
            f"{len(pairs)} case(s) leave {len(training)} for training: nnU-Net's 5-fold "
            f"cross-validation needs at least {_MIN_TRAINING}"
        )

    raw_root.mkdir(parents=True, exist_ok=True)
    partial = staging_folder(target)
    try:
        written = _write_cases(training, test, partial, threshold, resize)
        dataset_json = _dataset_json(name, images, masks, written, label_names, len(training))
        (partial / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
        record = {
            "written_by": "nnunet-sparseattn convert-2d",
            "images": str(images.resolve()),
            "masks": str(masks.resolve()),
            "mask_suffix": suffix,
            "threshold": threshold,
            "grey_rule": GREY_RULE if threshold is not None else None,
            "resize": list(resize) if resize is not None else None,
            "cases": written["cases"],
            "left_out": [p.image.name for p in left_out],
        }
        (partial / CONVERSION_RECORD).write_text(json.dumps(record, indent=2))
        _warn_if_suspicious(written)
        publish_folder(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def _check_inputs(
    images: Path, masks: Path, dataset_id: int, threshold: Optional[float], raw_root: Optional[Path]
) -> Path:
    """The arguments refused in one line before anything is read; returns the raw folder."""
    if not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise UserError(f"dataset id {dataset_id!r} must be an integer from 1 to 999")
    if threshold is not None and not 0 <= threshold < 255:
        raise UserError(f"--threshold {threshold}: masks' grey values run from 0 to 255; choose T in 0..254")
    if raw_root is None:
        if not os.environ.get("nnUNet_raw"):
            raise UserError("nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw (or pass the raw folder)")
        raw_root = Path(os.environ["nnUNet_raw"])
    raw_root = Path(raw_root).expanduser()
    check_output_path(raw_root, "nnUNet_raw")
    for what, folder in (("images", images), ("masks", masks)):
        if not folder.is_dir():
            state = "is a file, not a folder" if folder.exists() else "does not exist"
            raise UserError(f"{what} folder {folder} {state}: pass the folder that holds the {what}")
    if images.resolve() == masks.resolve():
        raise UserError(
            f"the images folder and the masks folder are the same ({images}): pass the folder of masks second"
        )
    return raw_root


def _check_target(raw_root: Path, dataset_id: int, target: Path, images: Path, masks: Path, overwrite: bool) -> None:
    """The dataset folder to write: not holding the inputs, its id not taken (but by itself with ``overwrite``)."""
    refuse_inside(target, {"images folder": images, "masks folder": masks}, "the dataset")
    clash = [p for p in sorted(raw_root.glob(f"Dataset{dataset_id:03d}_*")) if p.is_dir()] if raw_root.is_dir() else []
    if clash and not (overwrite and clash == [target]):
        if clash == [target]:
            raise UserError(f"dataset id {dataset_id} is taken by {target}: pass --overwrite to replace it")
        other = ", ".join(p.name for p in clash if p != target)
        raise UserError(
            f"dataset id {dataset_id} is taken by {other}, of another name than {target.name}: --overwrite "
            "replaces only a dataset of the same id and name; choose another id, or remove it yourself"
        )
    if overwrite and target.is_dir():
        for what, folder in (("images", images), ("masks", masks)):
            if folder.resolve().is_relative_to(target.resolve()):
                raise UserError(
                    f"--overwrite would delete the {what} folder {folder}: it lies inside {target}; convert from "
                    "a copy outside it"
                )


def _dataset_json(
    name: str,
    images: Path,
    masks: Path,
    written: dict[str, Any],
    label_names: Optional[Sequence[str]],
    num_training: int,
) -> dict[str, Any]:
    """nnU-Net's dataset.json of the converted cases (labels named ``label_names``, by default as documented)."""
    max_label, channels = written["max_label"], written["channels"]
    names = (
        list(label_names)
        if label_names is not None
        else (["foreground"] if max_label <= 1 else [f"label_{i}" for i in range(1, max_label + 1)])
    )
    if len(names) != max(1, max_label):
        raise UserError(f"{len(names)} label name(s) given but the masks hold labels 1..{max_label}")
    return {
        "name": name,
        "description": f"2D images {images} and masks {masks}, converted by nnunet-sparseattn convert-2d",
        "channel_names": {"0": "R", "1": "G", "2": "B"} if channels == 3 else {"0": "grey"},
        "labels": {"background": 0, **{n: i for i, n in enumerate(names, start=1)}},
        "numTraining": num_training,
        "file_ending": ".png",
        "overwrite_image_reader_writer": "NaturalImage2DIO",
    }


def _warn_if_suspicious(written: dict[str, Any]) -> None:
    """One warning line per kind of input that converts but is unlikely to be what the user meant."""
    cases = written["cases"]
    if not written["any_foreground"]:
        _warn(
            f"all {len(cases)} masks are empty (no pixel above 0): nnU-Net will learn to predict background only; "
            "check the masks folder (or --threshold)"
        )
    photos = written["photo_like"]
    if photos:
        _warn(
            f"{len(photos)} of {len(cases)} masks look like photographs, not masks (most pixels neither near 0 nor "
            f"near the maximum; e.g. {', '.join(photos[:3])}): check that the second folder holds the masks"
        )
    if written["max_label"] > _MANY_LABELS:
        _warn(
            f"the masks hold labels up to {written['max_label']}: if they are not label maps (photographs, "
            "smoothed masks), pass --threshold T to binarise them"
        )
    smallest = written["smallest"]
    if min(smallest) < _SMALL_SIDE:
        _warn(
            f"images as small as {smallest[0]}x{smallest[1]} px: nnU-Net's U-Net pools down to 4 px, so below "
            f"{_SMALL_SIDE} px it gets fewer than three poolings (--resize to a larger size?)"
        )


@dataclass
class _Written:
    """What the cases written so far hold: checked across cases as they come, warned about at the end."""

    max_label: int = 0
    any_foreground: bool = False
    photo_like: list[str] = field(default_factory=list)
    smallest: Optional[tuple[int, int]] = None
    first: Optional[tuple[int, Path]] = None  # the first image's channel count and file
    cases: dict[str, dict[str, Any]] = field(default_factory=dict)

    def check_channels(self, image: np.ndarray, path: Path) -> None:
        n_channels = 3 if image.ndim == 3 else 1
        if self.first is None:
            self.first = (n_channels, path)
        elif n_channels != self.first[0]:
            raise UserError(
                f"images differ in channels: {self.first[1].name} has {self.first[0]}, {path.name} has "
                f"{n_channels}: convert them all to RGB or all to greyscale"
            )


def _write_cases(
    training: Sequence[Pair],
    test: Sequence[Pair],
    out: Path,
    threshold: Optional[float],
    resize: Optional[tuple[int, int]],
) -> dict[str, Any]:
    """Write every case; return the largest label, the channel count and each case's record."""
    splits = [("Tr", training)] + ([("Ts", test)] if test else [])
    for split, _ in splits:
        (out / f"images{split}").mkdir(parents=True)
        (out / f"labels{split}").mkdir(parents=True)
        if resize is not None:
            (out / ORIGINAL_SIZE_FOLDER / f"labels{split}").mkdir(parents=True)
    written = _Written()
    for split, pairs in splits:
        for pair in pairs:
            _write_case(pair, split, out, threshold, resize, written)
    if threshold is not None and not written.any_foreground:
        raise UserError(
            f"no mask has a grey value above --threshold {threshold:g}: every mask would be empty (masks "
            "of labels 0/1 need no threshold); drop --threshold or lower it"
        )
    assert written.first is not None
    return {
        "max_label": written.max_label,
        "channels": written.first[0],
        "cases": written.cases,
        "any_foreground": written.any_foreground,
        "photo_like": written.photo_like,
        "smallest": written.smallest,
    }


def _write_case(
    pair: Pair,
    split: str,
    out: Path,
    threshold: Optional[float],
    resize: Optional[tuple[int, int]],
    written: _Written,
) -> None:
    """One image and its mask, read, checked, resized and written into ``images<split>``/``labels<split>``."""
    if filecmp.cmp(pair.image, pair.mask, shallow=False):
        raise UserError(f"the mask {pair.mask} is a copy of its image {pair.image}: pass the folder of masks second")
    image = _read_image(pair.image)
    if threshold is None:
        mask = read_mask(pair.mask)
    else:
        mask, photo = _read_thresholded(pair.mask, threshold)
        if photo:
            written.photo_like.append(pair.mask.name)
    written.check_channels(image, pair.image)
    if image.shape[:2] != mask.shape:
        raise UserError(
            f"image {pair.image.name} is {image.shape[1]}x{image.shape[0]} but its mask "
            f"{pair.mask.name} is {mask.shape[1]}x{mask.shape[0]}: they must have the same size"
        )
    written.max_label = max(written.max_label, int(mask.max()))
    written.any_foreground |= bool(mask.any())
    original_size = [int(n) for n in mask.shape]
    if resize is not None:
        Image.fromarray(mask).save(out / ORIGINAL_SIZE_FOLDER / f"labels{split}" / f"{pair.case}.png")
        image, mask = _resize(image, resize, nearest=False), _resize(mask, resize, nearest=True)
    size = (int(mask.shape[0]), int(mask.shape[1]))
    smallest = written.smallest
    written.smallest = size if smallest is None or min(size) < min(smallest) else smallest
    Image.fromarray(image).save(out / f"images{split}" / f"{pair.case}_0000.png")
    Image.fromarray(mask).save(out / f"labels{split}" / f"{pair.case}.png")
    written.cases[pair.case] = {
        "image": pair.image.name,
        "mask": pair.mask.name,
        "split": split,
        "original_size": original_size,
    }


def add_parser(commands: argparse._SubParsersAction) -> None:
    """``nnunet-sparseattn convert-2d``."""
    p = commands.add_parser("convert-2d", help="a folder of 2D images and masks -> nnU-Net's raw format")
    p.add_argument("images", help="folder of images (png, jpg, ...)")
    p.add_argument("masks", help="folder of masks, paired with the images by name")
    p.add_argument("-d", "--dataset", type=int, required=True, help="dataset id to write (DatasetXXX_NAME)")
    p.add_argument("--name", help="dataset name (default: the images folder's parent's name)")
    p.add_argument("--mask-suffix", help="mask name = image stem + suffix, e.g. _segmentation (default: detected)")
    p.add_argument("--num-test", type=int, default=0, help="cases to hold out into imagesTs/labelsTs")
    p.add_argument("--limit", type=int, help="convert only the first N pairs (by name)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the existing dataset of this id and name (DatasetXXX_NAME; never one of another name)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        metavar="T",
        help="binarise masks: foreground where the grey value > T (RGB: the brightest channel); for "
        "masks saved lossily (JPEG)",
    )
    p.add_argument(
        "--resize",
        metavar="HxW",
        help="resize images (bilinear) and masks (nearest), e.g. 256x256; the original sizes are recorded",
    )
    p.add_argument("--test-list", metavar="FILE", help="image names (one a line) to hold out into imagesTs")
    p.add_argument("--train-list", metavar="FILE", help="image names (one a line) to train on")
    p.set_defaults(func=_convert_2d)


def _convert_2d(args: argparse.Namespace) -> int:
    folder = convert_2d(
        Path(args.images),
        Path(args.masks),
        args.dataset,
        name=args.name,
        mask_suffix=args.mask_suffix,
        num_test=args.num_test,
        limit=args.limit,
        overwrite=args.overwrite,
        threshold=args.threshold,
        resize=parse_size(args.resize) if args.resize else None,
        test_list=args.test_list,
        train_list=args.train_list,
    )
    print(folder)
    return 0
