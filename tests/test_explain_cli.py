"""``nnunet-sparseattn explain``'s one-line refusals, before any network is built: a model folder without the
checkpoint, an unreadable image, a point outside the image, contradicting or missing model arguments."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from plans_cases import dataset_json

from nnunet_sparseattn.cli import main


def _model(tmp_path: Path, checkpoint: bool = True) -> Path:
    """A model folder as nnUNetv2_train leaves it (plans.json, dataset.json, fold_0/checkpoint_final.pth); the
    refusals come before the checkpoint is read, so an empty file stands in for it."""
    folder = tmp_path / "Dataset990_X" / "nnUNetTrainerBSA_debug__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(
        json.dumps(
            {
                "dataset_name": "Dataset990_X",
                "plans_name": "nnUNetPlans",
                "image_reader_writer": "SimpleITKIO",
                "transpose_forward": [0, 1, 2],
                "transpose_backward": [0, 1, 2],
                "configurations": {},
            }
        )
    )
    (folder / "dataset.json").write_text(json.dumps(dataset_json(["organ"], channels=["MR"])))
    if checkpoint:
        (folder / "fold_0").mkdir()
        (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    return folder


def _image(tmp_path: Path, shape=(6, 8, 10)) -> Path:
    import SimpleITK as sitk

    path = tmp_path / "case_0000.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones(shape, np.float32)), str(path))
    return path


def _refused(capsys, args: list[str]) -> str:
    assert main(["explain", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_a_model_folder_without_the_checkpoint(tmp_path, capsys):
    folder = _model(tmp_path, checkpoint=False)
    err = _refused(capsys, ["-m", str(folder), "-i", str(_image(tmp_path)), "-o", str(tmp_path / "out")])
    assert f"the model folder {folder} has no fold_0/checkpoint_final.pth (it holds no checkpoint)" in err
    folder = _model(tmp_path / "other")
    err = _refused(
        capsys,
        [
            "-m",
            str(folder),
            "-i",
            str(_image(tmp_path)),
            "-o",
            str(tmp_path / "out"),
            "--checkpoint",
            "checkpoint_best.pth",
        ],
    )
    assert "has no fold_0/checkpoint_best.pth (it holds fold_0/checkpoint_final.pth)" in err
    assert not (tmp_path / "out").exists()


def test_an_unreadable_image(tmp_path, capsys):
    folder = _model(tmp_path)
    broken = tmp_path / "broken_0000.nii.gz"
    broken.write_bytes(b"not an image")
    err = _refused(capsys, ["-m", str(folder), "-i", str(broken), "-o", str(tmp_path / "out")])
    assert f"cannot read the image {broken} with nnU-Net's SimpleITKIO" in err
    err = _refused(capsys, ["-m", str(folder), "-i", str(tmp_path / "missing_0000.nii.gz"), "-o", str(tmp_path)])
    assert "does not exist" in err


@pytest.mark.parametrize(
    "point, expected",
    [
        ("6,0,0", "point 6,0,0 lies outside the image (6x8x10 voxels)"),
        ("0,-1,3", "point 0,-1,3 lies outside the image"),
        ("1,2", "--point '1,2': give 3 integer voxel coordinates z,y,x"),
        ("a,b,c", "--point 'a,b,c': give 3 integer voxel coordinates z,y,x"),
    ],
)
def test_a_point_outside_the_image_or_malformed(tmp_path, capsys, point, expected):
    err = _refused(
        capsys,
        [
            "-m",
            str(_model(tmp_path)),
            "-i",
            str(_image(tmp_path)),
            "-o",
            str(tmp_path / "out"),
            "--point",
            "1,1,1",
            "--point",
            point,
        ],
    )
    assert expected in err
    assert not (tmp_path / "out").exists()


def test_model_arguments_either_a_folder_or_dataset_configuration_trainer(tmp_path, capsys, monkeypatch):
    image = str(_image(tmp_path))
    err = _refused(capsys, ["-m", str(_model(tmp_path)), "-d", "990", "-i", image, "-o", str(tmp_path)])
    assert "give either -m MODEL_FOLDER or -d ID -c CONFIGURATION -tr TRAINER, not both" in err
    err = _refused(capsys, ["-d", "990", "-c", "3d_fullres", "-i", image, "-o", str(tmp_path)])
    assert "(-tr missing)" in err
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    err = _refused(capsys, ["-m", str(tmp_path), "-i", image, "-o", str(tmp_path / "out")])
    assert "is not a trained nnU-Net model folder (it lacks plans.json or dataset.json)" in err
