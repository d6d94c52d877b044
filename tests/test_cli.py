"""The command-line tool: doctor's findings and one-line errors for bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import run_cli

from nnunet_sparseattn.cli import main
from nnunet_sparseattn.demo.dataset import DEMO_LABELS, make_demo_dataset, synthesize_case
from nnunet_sparseattn.discovery import ext_trainer_path
from nnunet_sparseattn.doctor import run_doctor


def test_doctor_names_each_missing_variable_and_its_fix():
    findings = run_doctor(environ={})
    fixes = [f.message for f in findings if f.status == "fix"]
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        assert any(m.startswith(f"{name} is not set: export {name}=") for m in fixes)
    # what nothing set it by (no startup hook in this environment, or one that did not run), then the line to add
    assert any(m.startswith("nnUNet_extTrainer is not set") and ": export nnUNet_extTrainer=" in m for m in fixes)


def test_doctor_passes_on_a_good_setup(tmp_path):
    env = dict(os.environ, nnUNet_extTrainer=str(ext_trainer_path()))
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / name).mkdir()
        env[name] = str(tmp_path / name)
    result = run_cli("doctor", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok   nnU-Net finds nnUNetTrainerBSA in nnunet_sparseattn" in result.stdout  # the demo trainer
    assert "torchvision" in result.stdout and ("GPU" in result.stdout or "CUDA" in result.stdout)


def test_doctor_flags_a_missing_folder_and_a_wrong_ext_path(tmp_path):
    env = {"nnUNet_raw": str(tmp_path / "missing"), "nnUNet_extTrainer": str(tmp_path)}
    messages = [f.message for f in run_doctor(environ=env) if f.status == "fix"]
    assert f"nnUNet_raw={tmp_path / 'missing'} does not exist: mkdir -p {tmp_path / 'missing'}" in messages
    assert any(m.startswith(f"nnUNet_extTrainer={tmp_path} does not list our trainers") for m in messages)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["make-demo-dataset", "--raw", "/nonexistent/raw"], "the nnUNet_raw folder /nonexistent/raw does not exist"),
        (["demo", "--msd", "/nonexistent/Task04_Hippocampus"], "MSD folder /nonexistent/Task04_Hippocampus does not"),
    ],
)
def test_bad_paths_give_one_line_errors(args, expected):
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stderr.startswith(f"nnunet-sparseattn: error: {expected}")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_a_folder_that_is_not_an_msd_task_is_refused(tmp_path, capsys):
    (tmp_path / "Task07_Pancreas").mkdir()
    assert main(["demo", "--msd", str(tmp_path / "Task07_Pancreas"), "--work", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "is not an MSD task folder (it lacks dataset.json, imagesTr, labelsTr, imagesTs)" in err
    assert not (tmp_path / "w").exists()  # refused before any work


def test_demo_refuses_an_unknown_trainer_before_any_work(tmp_path, capsys):
    assert main(["demo", "--work", str(tmp_path / "w"), "--trainer", "nnUNetTrainerNope"]) == 2
    assert "no nnU-Net trainer named nnUNetTrainerNope" in capsys.readouterr().err
    assert not (tmp_path / "w" / "nnUNet_raw").exists() or not any((tmp_path / "w" / "nnUNet_raw").iterdir())


def test_make_demo_dataset_without_nnunet_raw(monkeypatch, capsys):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    assert main(["make-demo-dataset"]) == 2
    assert "nnUNet_raw is not set" in capsys.readouterr().err


def test_demo_cases_are_deterministic_with_structures_of_very_different_sizes():
    image_a, label_a = synthesize_case(7)
    image_b, label_b = synthesize_case(7)
    assert np.array_equal(image_a, image_b) and np.array_equal(label_a, label_b)
    assert not np.array_equal(synthesize_case(8)[1], label_a)
    sizes = [(label_a == k).sum() for k in (1, 2, 3)]
    assert all(s > 0 for s in sizes)
    assert sizes[0] > 5 * sizes[1] > 0 and sizes[0] > 15 * sizes[2]
    # fuzzy boundaries: intensities inside the organ vary, and the bias field makes the background uneven
    assert image_a[label_a == 1].std() > 30


def test_make_demo_dataset_writes_nnunet_raw_format(tmp_path):
    import json

    import SimpleITK as sitk

    folder = make_demo_dataset(tmp_path, 991, num_training=3, num_test=1, shape=(12, 16, 16))
    meta = json.loads((folder / "dataset.json").read_text())
    assert folder.name == "Dataset991_SparseAttnDemo" and meta["labels"] == DEMO_LABELS
    assert meta["numTraining"] == 3 and len(list((folder / "imagesTr").iterdir())) == 3
    assert sorted(p.name for p in (folder / "labelsTs").iterdir()) == ["demo_003.nii.gz"]
    image = sitk.ReadImage(str(folder / "imagesTr" / "demo_000_0000.nii.gz"))
    assert image.GetSize() == (16, 16, 12) and image.GetSpacing() == pytest.approx((1.0, 1.0, 1.2))
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(folder), num_processes=1)  # nnU-Net's own checks: raises on any inconsistency


def test_every_subcommand_comes_from_its_module_and_help_imports_no_torch():
    """cli.py assembles the subcommands from their own modules (``add_parser``); reading them all, as ``--help``
    does, imports neither torch, nnU-Net nor scipy (what a command runs is imported when it runs)."""
    code = (
        "import sys\n"
        "from nnunet_sparseattn.cli import build_parser\n"
        "names = list(build_parser()._subparsers._group_actions[0].choices)\n"
        "print(','.join(names))\n"
        "print(','.join(sorted({'torch', 'nnunetv2', 'scipy'} & set(sys.modules))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    names, heavy = result.stdout.splitlines()
    assert names.split(",") == [
        "ext-path",
        "doctor",
        "plan",
        "info",
        "compare",
        "convert-2d",
        "export",
        "evaluate",
        "explain",
        "make-demo-dataset",
        "demo",
    ]
    assert heavy == ""
