"""convert_2d: folders of 2D images and masks -> nnU-Net's raw format, read back by nnU-Net's own reader/checker."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nnunet_sparseattn.convert2d import convert_2d, pair_images_and_masks
from nnunet_sparseattn.errors import UserError


def _write(folder: Path, name: str, array: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    Image.fromarray(array).save(path)
    return path


def _dataset(root: Path, n: int = 6, rgb: bool = True, suffix: str = "_segmentation", ext: str = ".jpg",
             mask_values=(0, 255), size=(20, 24), seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    images, masks = root / "src" / "images", root / "src" / "masks"
    for i in range(n):
        shape = (*size, 3) if rgb else size
        _write(images, f"CASE_{i:03d}{ext}", rng.integers(0, 256, shape, dtype=np.uint8))
        mask = np.zeros(size, np.uint8)
        mask[2 + i: 10 + i, 3:15] = mask_values[1]
        if len(mask_values) > 2:
            mask[12:16, 16:20] = mask_values[2]
        _write(masks, f"CASE_{i:03d}{suffix}.png", mask)
    return images, masks


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message
    return message


def test_rgb_jpegs_and_binary_masks_become_nnunet_raw_data(tmp_path):
    images, masks = _dataset(tmp_path)
    folder = convert_2d(images, masks, 501, name="Lesions", raw_root=tmp_path / "raw")
    assert folder == tmp_path / "raw" / "Dataset501_Lesions"
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert meta["labels"] == {"background": 0, "foreground": 1}
    assert meta["numTraining"] == 6 and meta["file_ending"] == ".png"
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"CASE_{i:03d}_0000.png" for i in range(6)]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [f"CASE_{i:03d}.png" for i in range(6)]
    assert not (folder / "imagesTs").exists()
    # what nnU-Net reads: ONE file with 3 channels per RGB case, labels {0, 1}, pixels unchanged (PNG is lossless)
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO

    img, _ = NaturalImage2DIO().read_images([str(folder / "imagesTr" / "CASE_002_0000.png")])
    seg, _ = NaturalImage2DIO().read_seg(str(folder / "labelsTr" / "CASE_002.png"))
    assert img.shape == (3, 1, 20, 24) and seg.shape == (1, 1, 20, 24)
    assert set(np.unique(seg)) == {0, 1}
    source = np.asarray(Image.open(images / "CASE_002.jpg").convert("RGB"))
    assert np.array_equal(img[:, 0].transpose(1, 2, 0), source)
    original = np.asarray(Image.open(masks / "CASE_002_segmentation.png"))
    assert np.array_equal(seg[0, 0], original // 255)


def test_nnunet_verifies_the_converted_dataset(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    images, masks = _dataset(tmp_path, n=5)
    folder = convert_2d(images, masks, 502, name="Check", raw_root=tmp_path / "raw")
    verify_dataset_integrity(str(folder), num_processes=1)  # raises on any inconsistency


def test_greyscale_images_multilabel_masks_same_names_test_split_and_limit(tmp_path):
    images, masks = _dataset(tmp_path, n=9, rgb=False, suffix="", ext=".png", mask_values=(0, 1, 2))
    folder = convert_2d(images, masks, 7, name="Grey", raw_root=tmp_path / "raw", num_test=2, limit=8,
                        label_names=["tumour", "cyst"])
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "grey"}
    assert meta["labels"] == {"background": 0, "tumour": 1, "cyst": 2}
    assert meta["numTraining"] == 6
    assert len(list((folder / "imagesTr").iterdir())) == 6
    # the last cases by name are held out, with their labels
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == ["CASE_006_0000.png", "CASE_007_0000.png"]
    assert sorted(p.name for p in (folder / "labelsTs").iterdir()) == ["CASE_006.png", "CASE_007.png"]
    label = np.asarray(Image.open(folder / "labelsTr" / "CASE_000.png"))
    assert set(np.unique(label)) == {0, 1, 2}
    assert np.asarray(Image.open(folder / "imagesTr" / "CASE_000_0000.png")).ndim == 2


def test_mask_suffix_detection_and_explicit_suffix(tmp_path):
    images, masks = _dataset(tmp_path, n=5, suffix="_mask")
    pairs, suffix = pair_images_and_masks(images, masks)
    assert suffix == "_mask" and [p.case for p in pairs] == [f"CASE_{i:03d}" for i in range(5)]
    assert all(p.mask.name == f"{p.case}_mask.png" for p in pairs)
    with pytest.raises(UserError, match="no mask named") as error:
        pair_images_and_masks(images, masks, mask_suffix="_segmentation")
    _one_line(error)


def test_isic_pairs_by_its_segmentation_suffix(shared_data, tmp_path):
    isic = shared_data / "ISIC2017_256"
    folder = convert_2d(isic / "images", isic / "masks", 503, raw_root=tmp_path / "raw", limit=6)
    assert folder.name == "Dataset503_ISIC2017_256"  # named after the folder that holds images/
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "R", "1": "G", "2": "B"} and meta["numTraining"] == 6
    assert sorted(p.name for p in (folder / "labelsTr").iterdir())[0] == "ISIC_0000000.png"
    label = np.asarray(Image.open(folder / "labelsTr" / "ISIC_0000000.png"))
    assert label.shape == (256, 256) and set(np.unique(label)) == {0, 1}


def _corrupt(tmp_path, kind):
    images, masks = _dataset(tmp_path)
    if kind == "unpaired image":
        _write(images, "EXTRA.jpg", np.zeros((20, 24, 3), np.uint8))
    elif kind == "orphan mask":
        _write(masks, "LONELY_segmentation.png", np.zeros((20, 24), np.uint8))
    elif kind == "mask values":
        m = np.zeros((20, 24), np.uint8)
        m[:5], m[5:10] = 128, 255
        _write(masks, "CASE_003_segmentation.png", m)
    elif kind == "channels":
        _write(images, "CASE_004.jpg", np.zeros((20, 24), np.uint8))
    elif kind == "size":
        _write(masks, "CASE_001_segmentation.png", np.zeros((10, 24), np.uint8))
    elif kind == "colour mask":
        m = np.zeros((20, 24, 3), np.uint8)
        m[3:6, :, 0] = 255
        _write(masks, "CASE_002_segmentation.png", m)
    return images, masks


@pytest.mark.parametrize("kind,message", [
    ("unpaired image", "have no mask"),
    ("orphan mask", "have no image"),
    ("mask values", "neither 0/255 nor integer labels"),
    ("channels", "differ in channels"),
    ("size", "same size"),
    ("colour mask", "colour image"),
])
def test_bad_inputs_are_refused_in_one_line_and_leave_nothing_behind(tmp_path, kind, message):
    images, masks = _corrupt(tmp_path, kind)
    raw = tmp_path / "raw"
    with pytest.raises(UserError, match=message) as error:
        convert_2d(images, masks, 504, name="Bad", raw_root=raw)
    _one_line(error)
    assert not raw.exists() or not any(raw.iterdir())  # no partial dataset in nnUNet_raw


def test_missing_folders_taken_ids_too_few_cases_and_no_raw_folder(tmp_path, monkeypatch):
    images, masks = _dataset(tmp_path, n=5)
    raw = tmp_path / "raw"
    with pytest.raises(UserError, match="images folder .* does not exist") as error:
        convert_2d(tmp_path / "nope", masks, 1, raw_root=raw)
    _one_line(error)
    with pytest.raises(UserError, match="masks folder .* does not exist"):
        convert_2d(images, tmp_path / "nope", 1, raw_root=raw)
    convert_2d(images, masks, 9, name="First", raw_root=raw)
    with pytest.raises(UserError, match="taken by"):
        convert_2d(images, masks, 9, name="Second", raw_root=raw)
    with pytest.raises(UserError, match="pass overwrite"):
        convert_2d(images, masks, 9, name="First", raw_root=raw)
    convert_2d(images, masks, 9, name="First", raw_root=raw, overwrite=True)
    with pytest.raises(UserError, match="at least 5"):
        convert_2d(images, masks, 10, raw_root=raw, num_test=1)
    with pytest.raises(UserError, match="1 to 999"):
        convert_2d(images, masks, 1000, raw_root=raw)
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(UserError, match="nnUNet_raw is not set"):
        convert_2d(images, masks, 11)
    monkeypatch.setenv("nnUNet_raw", str(raw))
    assert convert_2d(images, masks, 11, name="FromEnv").parent == raw


def test_the_cli_command_converts(tmp_path, monkeypatch, capsys):
    from nnunet_sparseattn.cli import main

    images, masks = _dataset(tmp_path, n=5)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    assert main(["convert-2d", str(images), str(masks), "-d", "12", "--name", "Cli"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "raw" / "Dataset012_Cli")
    assert main(["convert-2d", str(tmp_path / "missing"), str(masks), "-d", "13"]) == 2
    assert "does not exist" in capsys.readouterr().err
