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


def _dataset(
    root: Path,
    n: int = 6,
    rgb: bool = True,
    suffix: str = "_segmentation",
    ext: str = ".jpg",
    mask_values=(0, 255),
    size=(20, 24),
    seed: int = 0,
) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    images, masks = root / "src" / "images", root / "src" / "masks"
    for i in range(n):
        shape = (*size, 3) if rgb else size
        _write(images, f"CASE_{i:03d}{ext}", rng.integers(0, 256, shape, dtype=np.uint8))
        mask = np.zeros(size, np.uint8)
        mask[2 + i : 10 + i, 3:15] = mask_values[1]
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
    folder = convert_2d(
        images, masks, 7, name="Grey", raw_root=tmp_path / "raw", num_test=2, limit=8, label_names=["tumour", "cyst"]
    )
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


@pytest.mark.parametrize(
    "kind,message",
    [
        ("unpaired image", "have no mask"),
        ("orphan mask", "have no image"),
        ("mask values", "neither 0/255 nor integer labels"),
        ("channels", "differ in channels"),
        ("size", "same size"),
        ("colour mask", "colour image"),
    ],
)
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
    with pytest.raises(UserError, match="pass --overwrite"):
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


# ------------------------------------------------------------------------------ public datasets as distributed
def _isic_copies(shared_data: Path, root: Path, n: int, mask_format: str, size=None) -> tuple[Path, Path]:
    """The first ``n`` ISIC 2017 images and masks, masks re-saved as ``mask_format`` (``"rgb-jpeg"``: RGB JPEG,
    quality 75, with a faint tint so that the channels differ, as Kvasir-SEG ships its masks; ``"tiff"``: grey
    TIFF, CVC-ClinicDB's layout), images optionally
    resized to ``size`` = [(H, W), ...] per case (mixed sizes)."""
    isic = shared_data / "ISIC2017_256"
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    for i, image_path in enumerate(sorted((isic / "images").glob("*.jpg"))[:n]):
        image = Image.open(image_path).convert("RGB")
        mask = Image.open(isic / "masks" / f"{image_path.stem}_segmentation.png").convert("L")
        if size is not None:
            h, w = size[i % len(size)]
            image, mask = image.resize((w, h), Image.Resampling.BILINEAR), mask.resize((w, h), Image.Resampling.NEAREST)
        if mask_format == "rgb-jpeg":
            image.save(images / f"{image_path.stem}.jpg", quality=90)
            grey = np.asarray(mask)
            tinted = np.stack([grey, grey, np.clip(grey.astype(int) - 6, 0, 255).astype(np.uint8)], axis=-1)
            Image.fromarray(tinted).save(masks / f"{image_path.stem}.jpg", quality=75)
        elif mask_format == "tiff":
            image.save(images / f"{image_path.stem}.tif")
            mask.save(masks / f"{image_path.stem}.tif")
        else:
            raise ValueError(mask_format)
    return images, masks


def test_rgb_jpeg_masks_are_refused_without_threshold_and_binarised_with_it(shared_data, tmp_path):
    images, masks = _isic_copies(shared_data, tmp_path / "src", 5, "rgb-jpeg")
    first = np.asarray(Image.open(min(masks.iterdir())))
    assert first.ndim == 3 and not np.all(first == first[..., :1])  # channels differ slightly: lossy colour
    raw = tmp_path / "raw"
    with pytest.raises(UserError, match=r"\d+\.\d% of its pixels are neither 0 nor 255; pass --threshold T") as error:
        convert_2d(images, masks, 520, name="Jpeg", raw_root=raw)
    _one_line(error)
    assert not raw.exists() or not any(raw.iterdir())

    folder = convert_2d(images, masks, 520, name="Jpeg", raw_root=raw, threshold=127)
    record = json.loads((folder / "conversion.json").read_text())
    assert record["threshold"] == 127 and "brightest" in record["grey_rule"] and record["resize"] is None
    isic = shared_data / "ISIC2017_256" / "masks"
    for case in sorted(record["cases"]):
        label = np.asarray(Image.open(folder / "labelsTr" / f"{case}.png"))
        original = np.asarray(Image.open(isic / f"{case}_segmentation.png")) // 255
        assert set(np.unique(label)) == {0, 1}
        assert np.mean(label == original) > 0.995  # thresholding recovers the lossless mask up to JPEG ringing


def test_the_grey_rule_takes_the_brightest_channel(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    for i in range(5):
        _write(images, f"c{i}.png", np.zeros((8, 8, 3), np.uint8))
        m = np.zeros((8, 8, 3), np.uint8)
        m[0, 0] = (200, 0, 0)  # red: grey 200 (luma would give 60)
        m[0, 1] = (0, 0, 120)  # dark blue: grey 120
        m[0, 2] = (90, 90, 90)
        _write(masks, f"c{i}.png", m)
    folder = convert_2d(images, masks, 521, name="Grey", raw_root=tmp_path / "raw", threshold=100)
    label = np.asarray(Image.open(folder / "labelsTr" / "c0.png"))
    assert label[0, :3].tolist() == [1, 1, 0] and label.sum() == 2


def test_grey_jpeg_masks_and_lossy_looking_pngs_are_refused_without_threshold(tmp_path):
    images, masks = _dataset(tmp_path, n=5)
    for i in range(5):  # a grey JPEG whose values happen to be exact is still a JPEG: lossy
        (masks / f"CASE_{i:03d}_segmentation.png").unlink()
        m = np.zeros((20, 24), np.uint8)
        m[2:12, 3:15] = 255
        Image.fromarray(m).save(masks / f"CASE_{i:03d}_segmentation.jpg", quality=75)
    with pytest.raises(UserError, match="is a JPEG, whose values are lossy: .* --threshold T"):
        convert_2d(images, masks, 522, raw_root=tmp_path / "raw")
    # a PNG with values smeared near 0 and 255 (a JPEG re-saved as PNG) looks lossy too
    m = np.zeros((20, 24), np.uint8)
    m[2:12, 3:15] = 250
    m[2, 3:15] = 140
    m[15, :] = 3
    for i in range(5):
        (masks / f"CASE_{i:03d}_segmentation.jpg").unlink()
        _write(masks, f"CASE_{i:03d}_segmentation.png", m)
    with pytest.raises(UserError, match=r"looks like a lossily saved 0/255 mask .*: 30\.0% of its pixels"):
        convert_2d(images, masks, 522, raw_root=tmp_path / "raw")
    # label masks 0..K are never taken for lossy ones
    folder = convert_2d(images, masks, 522, raw_root=tmp_path / "raw", threshold=127)
    assert np.asarray(Image.open(folder / "labelsTr" / "CASE_000.png")).sum() == 120


def test_a_threshold_above_every_mask_value_is_refused(tmp_path):
    images, masks = _dataset(tmp_path, n=5, mask_values=(0, 1))
    with pytest.raises(UserError, match="no mask has a grey value above --threshold 127") as error:
        convert_2d(images, masks, 523, raw_root=tmp_path / "raw", threshold=127)
    _one_line(error)
    with pytest.raises(UserError, match="choose T in 0..254"):
        convert_2d(images, masks, 523, raw_root=tmp_path / "raw", threshold=255)
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())


def test_tiff_images_and_masks_cvc_clinicdb_layout(shared_data, tmp_path):
    images, masks = _isic_copies(shared_data, tmp_path / "src", 5, "tiff")
    folder = convert_2d(images, masks, 524, name="Tiff", raw_root=tmp_path / "raw")
    isic = shared_data / "ISIC2017_256"
    case = min(json.loads((folder / "conversion.json").read_text())["cases"])
    image = np.asarray(Image.open(folder / "imagesTr" / f"{case}_0000.png"))
    assert np.array_equal(image, np.asarray(Image.open(isic / "images" / f"{case}.jpg").convert("RGB")))
    label = np.asarray(Image.open(folder / "labelsTr" / f"{case}.png"))
    assert np.array_equal(label, np.asarray(Image.open(isic / "masks" / f"{case}_segmentation.png")) // 255)


def test_bmp_rgba_and_grey_images_palette_and_equal_channel_rgb_masks(tmp_path):
    rng = np.random.default_rng(1)
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255]  # background, three coloured classes
    for i in range(5):
        rgba = rng.integers(0, 256, (10, 12, 4), dtype=np.uint8)
        Image.fromarray(rgba, "RGBA").save(images / f"p{i}.png") if i % 2 else Image.fromarray(rgba[..., :3]).save(
            images / f"p{i}.bmp"
        )
        labels = np.zeros((10, 12), np.uint8)
        labels[1:4, 1:4], labels[5:8, 2:6], labels[2:4, 8:11] = 1, 2, 3
        mask = Image.fromarray(labels, "P")
        mask.putpalette(palette)
        mask.save(masks / f"p{i}.png")
    folder = convert_2d(
        images, masks, 525, name="Palette", raw_root=tmp_path / "raw", label_names=["polyp", "instrument", "other"]
    )
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "polyp": 1, "instrument": 2, "other": 3}
    assert meta["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    label = np.asarray(Image.open(folder / "labelsTr" / "p0.png"))
    assert label[2, 2] == 1 and label[6, 3] == 2 and label[3, 9] == 3 and label[0, 0] == 0
    rgba = np.asarray(Image.open(images / "p1.png"))
    assert np.array_equal(np.asarray(Image.open(folder / "imagesTr" / "p1_0000.png")), rgba[..., :3])  # alpha dropped

    # greyscale images with RGB masks whose channels are equal (a grey mask saved as RGB)
    grey_images, rgb_masks = tmp_path / "grey", tmp_path / "rgbmasks"
    for i in range(5):
        _write(grey_images, f"g{i}.png", rng.integers(0, 256, (10, 12), dtype=np.uint8))
        m = np.zeros((10, 12), np.uint8)
        m[2:5, 2:9] = 255
        _write(rgb_masks, f"g{i}.png", np.repeat(m[..., None], 3, axis=-1))
    folder = convert_2d(grey_images, rgb_masks, 526, name="GreyRgb", raw_root=tmp_path / "raw")
    assert json.loads((folder / "dataset.json").read_text())["channel_names"] == {"0": "grey"}
    assert np.asarray(Image.open(folder / "labelsTr" / "g0.png")).sum() == 21


def _mixed_sizes(root: Path, n: int = 6) -> tuple[Path, Path, list[tuple[int, int]]]:
    rng = np.random.default_rng(2)
    sizes = [(20 + 4 * i, 30 - 2 * i) for i in range(n)]
    images, masks = root / "images", root / "masks"
    for i, (h, w) in enumerate(sizes):
        _write(images, f"m{i}.jpg", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        m = np.zeros((h, w), np.uint8)
        m[h // 4 : 3 * h // 4, w // 4 : w // 2] = 255
        _write(masks, f"m{i}.png", m)
    return images, masks, sizes


def test_mixed_image_sizes_convert_and_pass_nnunets_checks(tmp_path):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    images, masks, sizes = _mixed_sizes(tmp_path)
    folder = convert_2d(images, masks, 527, name="Mixed", raw_root=tmp_path / "raw")
    for i, (h, w) in enumerate(sizes):
        assert np.asarray(Image.open(folder / "imagesTr" / f"m{i}_0000.png")).shape == (h, w, 3)
        assert np.asarray(Image.open(folder / "labelsTr" / f"m{i}.png")).shape == (h, w)
    assert not (folder / "original_size").exists()  # nothing was resized
    verify_dataset_integrity(str(folder), num_processes=1)


def test_resize_bilinear_images_nearest_masks_and_the_original_sizes_kept(tmp_path):
    images, masks, sizes = _mixed_sizes(tmp_path)
    folder = convert_2d(images, masks, 528, name="Resized", raw_root=tmp_path / "raw", resize=(16, 24), num_test=1)
    record = json.loads((folder / "conversion.json").read_text())
    assert record["resize"] == [16, 24]
    for i, (h, w) in enumerate(sizes):
        split = "Ts" if i == 5 else "Tr"
        case = record["cases"][f"m{i}"]
        assert case == {"image": f"m{i}.jpg", "mask": f"m{i}.png", "split": split, "original_size": [h, w]}
        image = np.asarray(Image.open(folder / f"images{split}" / f"m{i}_0000.png"))
        label = np.asarray(Image.open(folder / f"labels{split}" / f"m{i}.png"))
        source = Image.open(images / f"m{i}.jpg").convert("RGB")
        assert np.array_equal(image, np.asarray(source.resize((24, 16), Image.Resampling.BILINEAR)))
        original = np.asarray(Image.open(masks / f"m{i}.png")) // 255
        assert np.array_equal(label, np.asarray(Image.fromarray(original).resize((24, 16), Image.Resampling.NEAREST)))
        assert set(np.unique(label)) == {0, 1}  # nearest: no interpolated label values
        # the labels at their own size, for scoring predictions brought back to it
        assert np.array_equal(
            np.asarray(Image.open(folder / "original_size" / f"labels{split}" / f"m{i}.png")), original
        )
    # that conversion.json and original_size/ do not disturb nnU-Net is checked by the slow end-to-end test
    # (tests/test_evaluate.py), whose nnUNetv2_plan_and_preprocess runs --verify_dataset_integrity on such a dataset


def test_published_split_lists_by_file_name(tmp_path):
    images, masks = _dataset(tmp_path, n=9)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "test.txt").write_text("# PraNet-style test split\nCASE_001.png\n\nTestDataset/Kvasir/images/CASE_004\n")
    folder = convert_2d(images, masks, 530, name="TestList", raw_root=tmp_path / "raw", test_list=lists / "test.txt")
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == ["CASE_001_0000.png", "CASE_004_0000.png"]
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 7

    (lists / "train.txt").write_text("\n".join(f"CASE_{i:03d}.jpg" for i in (2, 3, 5, 6, 7)))
    folder = convert_2d(
        images,
        masks,
        531,
        name="BothLists",
        raw_root=tmp_path / "raw",
        test_list=lists / "test.txt",
        train_list=lists / "train.txt",
    )
    record = json.loads((folder / "conversion.json").read_text())
    assert sorted(c for c, v in record["cases"].items() if v["split"] == "Tr") == [
        "CASE_002",
        "CASE_003",
        "CASE_005",
        "CASE_006",
        "CASE_007",
    ]
    assert record["left_out"] == ["CASE_000.jpg", "CASE_008.jpg"]  # in neither list

    folder = convert_2d(images, masks, 532, name="TrainList", raw_root=tmp_path / "raw", train_list=lists / "train.txt")
    assert sorted(p.name for p in (folder / "labelsTs").iterdir()) == [
        "CASE_000.png",
        "CASE_001.png",
        "CASE_004.png",
        "CASE_008.png",
    ]


@pytest.mark.parametrize(
    "lists,message",
    [
        (
            {"test": "CASE_001\nNOT_THERE.jpg\n"},
            r"1 name\(s\) in test list .* match no paired image \(e.g. NOT_THERE\)",
        ),
        ({"test": "CASE_001\n", "train": "CASE_001\nCASE_002\n"}, "in both the train and the test list"),
        ({"test": "# nothing\n"}, "names no image"),
        ({"test": "CASE_001\n", "num_test": 1}, "--num-test and a split list"),
        ({"test": "CASE_001\n", "limit": 6}, "--limit and a split list"),
        ({"missing": True}, "test list .* does not exist"),
    ],
)
def test_bad_split_lists_are_refused_in_one_line(tmp_path, lists, message):
    images, masks = _dataset(tmp_path, n=8)
    kwargs = {}
    for key in ("test", "train"):
        if key in lists:
            (tmp_path / f"{key}.txt").write_text(lists[key])
            kwargs[f"{key}_list"] = tmp_path / f"{key}.txt"
    if lists.get("missing"):
        kwargs["test_list"] = tmp_path / "absent.txt"
    for key in ("num_test", "limit"):
        if key in lists:
            kwargs[key] = lists[key]
    with pytest.raises(UserError, match=message) as error:
        convert_2d(images, masks, 533, raw_root=tmp_path / "raw", **kwargs)
    _one_line(error)
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())


def test_names_with_spaces_and_dots_become_valid_case_identifiers(tmp_path):
    from nnunetv2.utilities.utils import create_paths_fn, get_identifiers_from_splitted_dataset_folder

    images, masks = tmp_path / "images", tmp_path / "masks"
    names = ["polyp 1.v2", "polyp_1_v2", "polyp 1,v2", "a.b.c", "plain", " leading space"]
    for i, name in enumerate(names):
        _write(images, f"{name}.jpg", np.full((8, 9, 3), 10 * i, np.uint8))
        m = np.zeros((8, 9), np.uint8)
        m[1:3, 1:3] = 255
        _write(masks, f"{name}_mask.png", m)
    (tmp_path / "test.txt").write_text("a.b.c.jpg\n")
    pairs, suffix = pair_images_and_masks(images, masks)
    assert suffix == "_mask"
    assert {p.name: p.case for p in pairs} == {
        " leading space": "leading_space",
        "a.b.c": "a_b_c",
        "plain": "plain",
        "polyp 1,v2": "polyp_1_v2_2",
        "polyp 1.v2": "polyp_1_v2_3",
        "polyp_1_v2": "polyp_1_v2",
    }
    folder = convert_2d(images, masks, 534, name="Names", raw_root=tmp_path / "raw", test_list=tmp_path / "test.txt")
    record = json.loads((folder / "conversion.json").read_text())["cases"]
    assert record["polyp_1_v2_3"]["image"] == "polyp 1.v2.jpg" and record["a_b_c"]["split"] == "Ts"
    assert (folder / "imagesTs" / "a_b_c_0000.png").is_file()
    # the content follows the mapping (image i is filled with 10 * i)
    assert np.asarray(Image.open(folder / "imagesTr" / "polyp_1_v2_3_0000.png")).max() == 0
    assert np.asarray(Image.open(folder / "imagesTr" / "polyp_1_v2_2_0000.png")).max() == 20
    # nnU-Net's own reading of the folder finds exactly these cases, each with its one image file
    identifiers = list(get_identifiers_from_splitted_dataset_folder(str(folder / "imagesTr"), ".png"))
    assert identifiers == sorted(c for c, v in record.items() if v["split"] == "Tr")
    files = sorted(p.name for p in (folder / "imagesTr").iterdir())
    assert all(
        create_paths_fn(str(folder / "imagesTr"), files, ".png", c) == [str(folder / "imagesTr" / f"{c}_0000.png")]
        for c in identifiers
    )


def test_the_cli_takes_threshold_resize_and_lists(tmp_path, monkeypatch, capsys):
    from nnunet_sparseattn.cli import main

    images, masks = _dataset(tmp_path, n=6)
    (tmp_path / "test.txt").write_text("CASE_005\n")
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    assert (
        main(
            [
                "convert-2d",
                str(images),
                str(masks),
                "-d",
                "14",
                "--name",
                "Cli",
                "--threshold",
                "127",
                "--resize",
                "16x12",
                "--test-list",
                str(tmp_path / "test.txt"),
            ]
        )
        == 0
    )
    folder = Path(capsys.readouterr().out.strip())
    assert np.asarray(Image.open(folder / "imagesTs" / "CASE_005_0000.png")).shape == (16, 12, 3)
    assert main(["convert-2d", str(images), str(masks), "-d", "15", "--resize", "16by12"]) == 2
    assert "expected HEIGHTxWIDTH" in capsys.readouterr().err
