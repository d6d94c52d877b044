"""``nnunet-sparseattn evaluate``: prediction folders laid out as nnUNetv2_predict writes them (masks, dataset.json,
``--save_probabilities`` .npz), scored against a dataset converted by convert-2d; the way back to the original size;
3D NIfTI; the refusals; the CLI. The slow test runs the whole protocol through nnU-Net's own commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from plans_cases import dataset_json

from nnunet_sparseattn.convert2d import convert_2d
from nnunet_sparseattn.errors import UserError
from nnunet_sparseattn.evaluation import (
    PAPER_METRICS_FILE,
    TABLE_FILE,
    ForegroundMapMetrics,
    evaluate_folders,
    hd95,
    normalized_surface_dice,
)

SIZES = [(40, 52), (36, 36), (48, 30), (44, 40), (38, 50), (50, 46), (42, 34)]  # (H, W) per source image
RESIZE = (32, 32)


def _disk(shape, centre, radius) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


@pytest.fixture
def converted(tmp_path) -> Path:
    """Seven RGB images of mixed sizes with a lesion each, converted with --resize 32x32; two held out."""
    rng = np.random.default_rng(0)
    images, masks = tmp_path / "src" / "images", tmp_path / "src" / "masks"
    images.mkdir(parents=True), masks.mkdir(parents=True)
    for i, (h, w) in enumerate(SIZES):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"case {i}.jpg")
        mask = _disk((h, w), (h // 2, w // 2 - 2), min(h, w) // 4)
        Image.fromarray(mask.astype(np.uint8) * 255).save(masks / f"case {i}.png")
    return convert_2d(images, masks, 540, name="Lesions", raw_root=tmp_path / "raw", resize=RESIZE, num_test=2)


def _predict(dataset: Path, out: Path, shift: int, probabilities: bool) -> Path:
    """What nnUNetv2_predict writes: CASE.png, dataset.json, and with probabilities CASE.npz (classes, 1, H, W)."""
    out.mkdir(parents=True)
    shutil.copy(dataset / "dataset.json", out / "dataset.json")
    for label_file in sorted((dataset / "labelsTs").glob("*.png")):
        label = np.roll(np.asarray(Image.open(label_file)), shift, axis=1)
        Image.fromarray(label).save(out / label_file.name)
        if probabilities:
            foreground = np.clip(label * 0.8 + 0.1 + 0.05 * np.sin(np.arange(label.size)).reshape(label.shape), 0, 1)
            p = np.stack([1 - foreground, foreground]).astype(np.float32)[:, None]
            np.savez_compressed(out / f"{label_file.stem}.npz", probabilities=p)
    return out


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_paper_metrics_from_probabilities_or_masks_one_row_per_folder(converted, tmp_path):
    soft = _predict(converted, tmp_path / "preds" / "soft", shift=2, probabilities=True)
    hard = _predict(converted, tmp_path / "preds" / "hard", shift=3, probabilities=False)
    results, table, path = evaluate_folders(converted / "labelsTs", [soft, hard], num_processes=1)
    assert path == tmp_path / "preds" / TABLE_FILE and path.read_text() == table

    for folder, result, source in ((soft, results[0], "probabilities"), (hard, results[1], "masks")):
        assert json.loads((folder / PAPER_METRICS_FILE).read_text()) == json.loads(json.dumps(result))
        nnunet = json.loads((folder / "summary.json").read_text())  # nnU-Net's own evaluation, beside ours
        assert result["mean"]["classes"]["foreground"]["Dice"] == pytest.approx(nnunet["mean"]["1"]["Dice"])
        assert result["dimensionality"] == "2d" and result["distance_unit"] == "px" and result["num_cases"] == 2
        assert result["sources"]["S_α, F^w_β, E^max_φ, MAE"] == source
        assert result["sources"]["mDSC, mIoU"] == ("probabilities > 0.5" if source == "probabilities" else "masks")
        maps = ForegroundMapMetrics()
        for case, entry in result["per_case"].items():
            ref, pred = _read(converted / "labelsTs" / f"{case}.png"), _read(folder / f"{case}.png")
            cls = entry["classes"]["foreground"]
            assert cls["HD95"] == pytest.approx(hd95(pred == 1, ref == 1, (1.0, 1.0)))
            assert cls["NSD"] == pytest.approx(normalized_surface_dice(pred == 1, ref == 1, (1.0, 1.0), 1.0))
            inter = np.sum((pred == 1) & (ref == 1))
            assert cls["Dice"] == pytest.approx(2 * inter / (np.sum(pred == 1) + np.sum(ref == 1)))
            foreground = (
                1 - np.load(folder / f"{case}.npz")["probabilities"][0, 0].astype(float)
                if source == "probabilities"
                else (pred > 0).astype(float)
            )
            expected = maps.add(foreground, ref > 0)
            assert {k: entry[k] for k in expected} == pytest.approx(expected)
        assert {k: result["mean"][k] for k in maps.results()} == pytest.approx(maps.results())

    lines = table.splitlines()
    assert lines[0].split(" | ")[:8] == ["| predictions", "mDSC", "mIoU", "S_α", "F^w_β", "E^max_φ", "MAE", "maps"]
    assert lines[0].endswith("Dice | IoU | HD95 (px) | NSD (1 px) |")
    assert lines[2].startswith(f"| {soft} | {results[0]['mean']['dice']:.3f} |") and "| probabilities |" in lines[2]
    assert lines[3].startswith(f"| {hard} |") and "| masks |" in lines[3]


def test_predictions_go_back_to_the_original_size_through_the_cli(converted, tmp_path, capsys):
    from nnunet_sparseattn.cli import main

    preds = _predict(converted, tmp_path / "preds", shift=0, probabilities=True)  # perfect at 32 x 32
    record = json.loads((converted / "conversion.json").read_text())["cases"]
    assert (
        main(
            ["evaluate", str(converted / "labelsTs"), str(preds), "--original-size", "-np", "1", "--nsd-tolerance", "2"]
        )
        == 0
    )
    out = capsys.readouterr().out
    restored = preds / "original_size"
    assert "| mDSC | mIoU |" in out and "(original size)" in out and "NSD (2 px)" in out
    assert f"table: {restored / TABLE_FILE}" in out
    assert (restored / "summary.json").is_file()  # nnU-Net's, beside ours
    result = json.loads((restored / PAPER_METRICS_FILE).read_text())
    assert result["original_size"] and result["nsd_tolerance"] == 2.0
    assert result["reference"] == str(converted / "original_size" / "labelsTs")
    for case in result["per_case"]:
        h, w = record[case]["original_size"]
        mask = _read(restored / f"{case}.png")
        assert mask.shape == (h, w)
        assert np.array_equal(
            mask, np.asarray(Image.open(preds / f"{case}.png").resize((w, h), Image.Resampling.NEAREST))
        )
        p = np.load(restored / f"{case}.npz")["probabilities"]
        assert p.shape == (2, 1, h, w) and np.allclose(p.sum(axis=0), 1, atol=1e-5)
        small = np.load(preds / f"{case}.npz")["probabilities"][1, 0]
        assert np.allclose(p[1, 0], np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)))
    # a perfect prediction at 32 x 32 is not perfect at the original size: the nearest round trip costs a little
    assert 0.85 < result["mean"]["classes"]["foreground"]["Dice"] < 1.0
    assert main(["evaluate", str(converted / "labelsTs"), str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_3d_nifti_spacing_in_mm_empty_classes_and_no_2d_metrics(tmp_path):
    import SimpleITK as sitk

    ref_dir, pred_dir = tmp_path / "labelsTs", tmp_path / "pred"
    ref_dir.mkdir(), pred_dir.mkdir()
    meta = dataset_json(["anterior", "posterior"], num_training=3)
    (tmp_path / "dataset.json").write_text(json.dumps(meta))  # beside labelsTs, as in nnUNet_raw
    full = np.zeros((10, 16, 16), np.uint8)
    full[2:6, 4:12, 4:12], full[6:8, 4:8, 4:8] = 1, 2
    anterior_only = np.where(full == 2, 0, full).astype(np.uint8)
    # a: both classes; b: posterior in neither; c: posterior predicted but absent from the reference.
    # Every prediction is its reference's source one slice off along z (spaced 2 mm).
    for case, ref, source in (("a", full, full), ("b", anterior_only, anterior_only), ("c", anterior_only, full)):
        for folder, arr in ((ref_dir, ref), (pred_dir, np.roll(source, 1, axis=0))):
            image = sitk.GetImageFromArray(arr)
            image.SetSpacing((0.5, 1.0, 2.0))  # x, y, z
            sitk.WriteImage(image, str(folder / f"{case}.nii.gz"))
    results, table, _ = evaluate_folders(ref_dir, [pred_dir], num_processes=1)
    result = results[0]
    assert result["dimensionality"] == "3d" and result["distance_unit"] == "mm"
    assert "dice" not in result["mean"] and "S_α" not in json.dumps(result["sources"])
    anterior, posterior = result["mean"]["classes"]["anterior"], result["mean"]["classes"]["posterior"]
    assert anterior["HD95"] == pytest.approx(2.0)  # one slice, 2 mm
    assert anterior["Dice"] == pytest.approx(2 * 3 / 8)  # 4 slices against 4, 3 shared
    per_case = {c: v["classes"]["posterior"] for c, v in result["per_case"].items()}
    assert per_case["a"]["Dice"] == pytest.approx(0.5)  # 2 slices against 2, 1 shared
    # empty in both: nothing to score (nnU-Net's NaN, ours too): written as null, left out of the means
    assert per_case["b"] == {"Dice": None, "IoU": None, "HD95": None, "NSD": None}
    # empty reference, non-empty prediction: Dice 0, NSD 0, HD95 undefined and counted
    assert per_case["c"] == {"Dice": 0.0, "IoU": 0.0, "HD95": None, "NSD": 0.0}
    assert posterior["Dice"] == pytest.approx(0.25) and posterior["hd95_undefined"] == 1
    assert posterior["HD95"] == pytest.approx(per_case["a"]["HD95"])
    assert posterior["NSD"] == pytest.approx(per_case["a"]["NSD"] / 2)
    assert table.splitlines()[0] == (
        "| predictions | Dice anterior | Dice posterior | IoU anterior | IoU posterior | "
        "HD95 (mm) anterior | HD95 (mm) posterior | NSD (1 mm) anterior | "
        "NSD (1 mm) posterior |"
    )


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message
    return message


def test_refusals(converted, tmp_path):
    preds = _predict(converted, tmp_path / "preds", shift=0, probabilities=False)
    ref = converted / "labelsTs"
    cases = [
        (lambda: evaluate_folders(tmp_path / "nope", [preds]), "reference folder .* does not exist"),
        (lambda: evaluate_folders(ref, [tmp_path / "nope"]), "prediction folder .* does not exist"),
        (lambda: evaluate_folders(ref, [preds], nsd_tolerance=-1), "--nsd-tolerance"),
        (lambda: evaluate_folders(converted / "labelsTr", [preds]), r"2 prediction\(s\) .* have no reference"),
    ]
    for call, message in cases:
        with pytest.raises(UserError, match=message) as error:
            call()
        _one_line(error)
    # a reference case without a prediction: refused (or scored without it with chill, as nnU-Net's --chill)
    sparse = _predict(converted, tmp_path / "sparse", shift=0, probabilities=False)
    next(sparse.glob("*.png")).unlink()
    with pytest.raises(UserError, match=r"1 reference case\(s\) .* have no prediction .* --chill"):
        evaluate_folders(ref, [sparse])
    # no dataset.json anywhere
    bare = tmp_path / "bare"
    shutil.copytree(preds, bare)
    (bare / "dataset.json").unlink()
    lone_ref = tmp_path / "lone" / "labels"
    shutil.copytree(ref, lone_ref)
    with pytest.raises(UserError, match="pass --dataset-json"):
        evaluate_folders(lone_ref, [bare])
    # predictions at the resized size scored against the original-size labels without --original-size
    with pytest.raises(UserError, match="only with --original-size"):
        evaluate_folders(converted / "original_size" / "labelsTs", [preds], dataset_json=converted / "dataset.json")
    # --original-size on a dataset that was not resized
    plain = convert_2d(
        tmp_path / "src" / "images",
        tmp_path / "src" / "masks",
        541,
        name="Plain",
        raw_root=tmp_path / "raw",
        num_test=2,
    )
    with pytest.raises(UserError, match="converted without --resize"):
        evaluate_folders(plain / "labelsTs", [preds], original_size=True)
    # region-based datasets are nnUNetv2_evaluate_folder's
    regions = tmp_path / "regions"
    shutil.copytree(preds, regions)
    (regions / "dataset.json").write_text(
        json.dumps(
            {
                **json.loads((preds / "dataset.json").read_text()),
                "labels": {"background": 0, "whole": [1, 2], "core": 2},
                "regions_class_order": [1, 2],
            }
        )
    )
    with pytest.raises(UserError, match="defines regions"):
        evaluate_folders(ref, [regions], dataset_json=regions / "dataset.json")
    assert not (preds / "original_size").exists() and not (preds / PAPER_METRICS_FILE).exists()


# ------------------------------------------------------------------------------------------------ end to end
E2E_ID = 561  # resized to 64 x 64, predicted, evaluated
E2E_MIXED_ID = 562  # the same download at its own, mixed sizes: converted
E2E_CASES = 12
E2E_TEST = ("ISIC_0000003", "ISIC_0000007")  # the published split: held out by name


@pytest.mark.slow
def test_a_papers_protocol_end_to_end_through_nnunets_commands(
    shared_data, isic_nnunet, trained_debug_model, tmp_path, monkeypatch, capsys
):
    """From public data as distributed (RGB JPEG masks, mixed sizes) to the paper-style table: convert-2d with
    --threshold, --resize and a test list, nnUNetv2_predict --save_probabilities, evaluate at the network's size and
    at the original size; the same download converted without --resize keeps its mixed sizes. The predicting model is
    the run's shared 2D ``_debug`` model, trained by nnUNetv2_train on ISIC 2017 converted by convert_2d (the same
    kind of dataset, RGB in, one foreground label): training on a converted dataset is the 2D end-to-end tests'."""
    from nnunet_sparseattn.cli import main
    from nnunet_sparseattn.harness import commands

    isic = shared_data / "ISIC2017_256"
    images, masks = tmp_path / "download" / "images", tmp_path / "download" / "masks"
    images.mkdir(parents=True), masks.mkdir(parents=True)
    sizes = {}
    for i, image_path in enumerate(sorted((isic / "images").glob("*.jpg"))[:E2E_CASES]):
        h, w = 72 + 8 * (i % 3), 96 - 8 * (i % 4)  # mixed sizes, as in Kvasir-SEG
        sizes[image_path.stem] = [h, w]
        Image.open(image_path).convert("RGB").resize((w, h), Image.Resampling.BILINEAR).save(
            images / f"{image_path.stem}.jpg", quality=90
        )
        grey = np.asarray(
            Image.open(isic / "masks" / f"{image_path.stem}_segmentation.png")
            .convert("L")
            .resize((w, h), Image.Resampling.NEAREST)
        )
        tinted = np.stack([grey, grey, np.clip(grey.astype(int) - 6, 0, 255).astype(np.uint8)], axis=-1)
        Image.fromarray(tinted).save(masks / f"{image_path.stem}.jpg", quality=75)  # lossy RGB, as distributed
    (tmp_path / "test.txt").write_text("\n".join(f"{name}.jpg" for name in E2E_TEST) + "\n")

    work = tmp_path / "nnunet"
    env = commands.work_environment(work)
    log = work / "nnunet.log"
    monkeypatch.setenv("nnUNet_raw", env["nnUNet_raw"])
    convert = [
        "convert-2d",
        str(images),
        str(masks),
        "-d",
        str(E2E_ID),
        "--name",
        "PolypLike",
        "--test-list",
        str(tmp_path / "test.txt"),
    ]
    assert main(convert) == 2
    assert "--threshold T" in capsys.readouterr().err  # the raw download is refused, never guessed
    assert main(convert + ["--threshold", "127", "--resize", "64x64"]) == 0
    dataset = Path(capsys.readouterr().out.strip())
    record = json.loads((dataset / "conversion.json").read_text())["cases"]
    assert {c: v["original_size"] for c, v in record.items()} == sizes

    assert main(convert[:3] + ["-d", str(E2E_MIXED_ID), "--name", "PolypLikeMixed", "--threshold", "127"]) == 0
    mixed = Path(capsys.readouterr().out.strip())
    # without --resize every case keeps its own size, and without a test list all train. (nnU-Net plans mixed sizes
    # from their median and pads or crops each case to the patch: its own code. Its integrity checks on such a
    # dataset run in tests/test_convert2d.py.)
    kept = {p.name.removesuffix("_0000.png"): list(Image.open(p).size[::-1]) for p in (mixed / "imagesTr").iterdir()}
    assert kept == sizes
    trainer = "nnUNetTrainerBSA_debug"
    trained_debug_model(isic_nnunet, trainer)
    predictions = tmp_path / "predictions" / trainer
    commands.predict(
        dataset / "imagesTs",
        predictions,
        isic_nnunet["id"],
        "2d",
        0,
        trainer,
        isic_nnunet["env"],
        log,
        extra=["--save_probabilities"],
        sequential=True,
    )
    assert sorted(p.name for p in predictions.glob("*.npz")) == [f"{c}.npz" for c in E2E_TEST]

    assert main(["evaluate", str(dataset / "labelsTs"), str(predictions), "-np", "1"]) == 0
    at_64 = json.loads((predictions / PAPER_METRICS_FILE).read_text())
    assert at_64["sources"]["S_α, F^w_β, E^max_φ, MAE"] == "probabilities" and at_64["num_cases"] == 2
    for key in ("dice", "iou", "s_alpha", "weighted_f", "max_e", "mae"):
        assert 0.0 <= at_64["mean"][key] <= 1.0 + 1e-3, key
    assert main(["evaluate", str(dataset / "labelsTs"), str(predictions), "--original-size", "-np", "1"]) == 0
    table = capsys.readouterr().out
    assert f"| {predictions} (original size) |" in table
    for case in E2E_TEST:
        assert _read(predictions / "original_size" / f"{case}.png").shape == tuple(sizes[case])
        assert np.load(predictions / "original_size" / f"{case}.npz")["probabilities"].shape == (2, 1, *sizes[case])
