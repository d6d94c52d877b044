"""A deterministic synthetic 3D dataset in nnU-Net's raw format, written by ``nnunet-sparseattn make-demo-dataset``.

Each case holds three structures of very different sizes (a large organ, a thin vessel, a small nodule that often
sits inside the organ with little contrast), with blurred (fuzzy) boundaries, noise and a multiplicative intensity
bias field: region overlap is easy for the organ and hard for the thin and small structures, so boundary-aware
training matters.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from scipy import ndimage

from nnunet_sparseattn.demo import DEMO_DATASET_ID
from nnunet_sparseattn.errors import UserError
from nnunet_sparseattn.outputs import publish_folder, staging_folder

DEMO_DATASET_NAME = "SparseAttnDemo"
DEMO_LABELS = {"background": 0, "organ": 1, "vessel": 2, "nodule": 3}
DEMO_SHAPE = (40, 48, 48)  # z, y, x voxels
DEMO_SPACING = (1.2, 1.0, 1.0)  # mm, z, y, x: mildly anisotropic, so the NB radius differs per axis
# mean intensity of each label before blur, bias and noise: a bright vessel, a dark (hypo-intense) nodule whose
# contrast against the organ is under half the organ's against the background
_INTENSITY = {0: 0.0, 1: 1.0, 2: 1.8, 3: 0.45}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field / (np.abs(field).max() + 1e-8)


def _grid(shape: tuple[int, ...], spacing: tuple[float, ...]) -> list[np.ndarray]:
    return list(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"))


def synthesize_case(
    seed: int, shape: tuple[int, ...] = DEMO_SHAPE, spacing: tuple[float, ...] = DEMO_SPACING
) -> tuple[np.ndarray, np.ndarray]:
    """One (image float32, label uint8) pair, both of ``shape``; the same seed gives the same case."""
    rng = np.random.default_rng(seed)
    coords = _grid(shape, spacing)
    extent = np.array(shape) * np.array(spacing)
    label = np.zeros(shape, dtype=np.uint8)

    # organ: a large ellipsoid whose surface is pushed in and out by smooth noise
    centre = extent * rng.uniform(0.42, 0.58, 3)
    semi_axes = extent * rng.uniform(0.22, 0.3, 3)
    radius2 = sum(((c - m) / a) ** 2 for c, m, a in zip(coords, centre, semi_axes))
    organ = radius2 < 1.0 + 0.35 * _smooth_noise(rng, shape, sigma=5.0)
    label[organ] = 1

    # vessel: a tube of radius ~1.5-2.5 mm along a random smooth curve crossing the volume
    t = np.linspace(0.0, 1.0, 200)[:, None]
    start, end = extent * rng.uniform(0.05, 0.25, 3), extent * rng.uniform(0.75, 0.95, 3)
    bend = extent * rng.uniform(-0.25, 0.25, 3)
    curve = start + (end - start) * t + bend * np.sin(np.pi * t)
    on_curve = np.zeros(shape, dtype=bool)
    index = np.clip(np.round(curve / np.array(spacing)).astype(int), 0, np.array(shape) - 1)
    on_curve[tuple(index.T)] = True
    distance = ndimage.distance_transform_edt(~on_curve, sampling=spacing)
    label[distance < rng.uniform(1.5, 2.5)] = 2

    # nodule: a small sphere (radius 3-4.5 mm), inside the organ in about half of the cases
    inside = rng.random() < 0.5
    while True:
        nodule_centre = centre + semi_axes * rng.uniform(-0.5, 0.5, 3) if inside else extent * rng.uniform(0.2, 0.8, 3)
        nodule = sum((c - m) ** 2 for c, m in zip(coords, nodule_centre)) < rng.uniform(3.0, 4.5) ** 2
        if (label[nodule] != 2).mean() > 0.8:  # keep it mostly clear of the vessel, so every case has all three
            break
    label[nodule] = 3

    intensity = np.vectorize(_INTENSITY.get, otypes=[np.float64])(label)
    image = ndimage.gaussian_filter(intensity, sigma=1.2 / np.array(spacing))  # fuzzy boundaries
    image *= np.exp(0.35 * _smooth_noise(rng, shape, sigma=12.0))  # bias field, as in MR
    image += rng.normal(0.0, 0.15, shape)
    return (200.0 * image + 100.0).astype(np.float32), label


def _write_nifti(array: np.ndarray, spacing: tuple[float, ...], path: Path) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in reversed(spacing)))  # SimpleITK orders axes x, y, z
    sitk.WriteImage(image, str(path), useCompression=True)


def make_demo_dataset(
    raw_root: str | Path,
    dataset_id: int = DEMO_DATASET_ID,
    num_training: int = 24,
    num_test: int = 6,
    seed: int = 0,
    shape: tuple[int, ...] = DEMO_SHAPE,
    spacing: tuple[float, ...] = DEMO_SPACING,
) -> Path:
    """Write ``Dataset<ID>_SparseAttnDemo`` into ``raw_root`` (nnU-Net's ``nnUNet_raw``) and return its folder.

    Training cases go to imagesTr/labelsTr; held-out cases to imagesTs/labelsTs (nnU-Net ignores labelsTs).
    """
    raw_root = Path(raw_root)
    if raw_root.exists() and not raw_root.is_dir():
        raise UserError(f"the nnUNet_raw folder {raw_root} is a file: pass a folder")
    if not raw_root.is_dir():
        raise UserError(
            f"the nnUNet_raw folder {raw_root} does not exist: create it (mkdir -p {raw_root}) "
            "or pass an existing folder"
        )
    if not 1 <= dataset_id <= 999:
        raise UserError(f"dataset id {dataset_id} is not in 1..999, as nnU-Net requires")
    if num_training < 1 or num_test < 0:
        raise UserError(
            f"--num-training {num_training} --num-test {num_test}: give 1 or more training cases (5 or more "
            "for nnU-Net's 5-fold cross-validation) and 0 or more held-out cases"
        )
    target = raw_root / f"Dataset{dataset_id:03d}_{DEMO_DATASET_NAME}"
    folder = staging_folder(target)  # written whole, then swapped in: no mix with an earlier dataset's cases
    try:
        _write_demo_cases(folder, num_training, num_test, seed, shape, spacing)
        return publish_folder(folder, target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _write_demo_cases(
    folder: Path, num_training: int, num_test: int, seed: int, shape: tuple[int, ...], spacing: tuple[float, ...]
) -> None:
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for case in range(num_training + num_test):
        image, label = synthesize_case(seed * 100_003 + case, shape, spacing)
        images, labels = ("imagesTr", "labelsTr") if case < num_training else ("imagesTs", "labelsTs")
        name = f"demo_{case:03d}"
        _write_nifti(image, spacing, folder / images / f"{name}_0000.nii.gz")
        _write_nifti(label, spacing, folder / labels / f"{name}.nii.gz")
    dataset_json = {
        "name": DEMO_DATASET_NAME,
        "description": "Synthetic 3D dataset of nnunet-sparseattn: organ, vessel and nodule with fuzzy boundaries, "
        "noise and a bias field",
        "channel_names": {"0": "MR"},  # any name but CT gives nnU-Net's z-score normalisation
        "labels": DEMO_LABELS,
        "numTraining": num_training,
        "file_ending": ".nii.gz",
        "licence": "CC0 (generated)",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
