"""``nnunet-sparseattn export`` (nnU-Net's zip, stamped) and the version check on the receiving side.

Fast: a model folder laid out as nnUNetv2_train leaves it (the files nnU-Net's export copies, with stand-in bytes for
the checkpoint: the exporter copies files, it does not load them). A real model trained, exported, installed and
used for prediction in a fresh environment: ``tests/test_fresh_install.py``.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
from nnunetv2.model_sharing.model_export import export_pretrained_model
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from plans_cases import PLANS_CASES, plans_for

import nnunet_sparseattn
from nnunet_sparseattn.cli import main
from nnunet_sparseattn.errors import UserError
from nnunet_sparseattn.export import export_model
from nnunet_sparseattn.model_stamp import STAMP_KEY, ModelVersionError, check_installed_version, stamp

TRAINER = "nnUNetTrainerBSA"
MODEL = f"{TRAINER}__nnUNetPlans__2d"


@pytest.fixture
def results(tmp_path, monkeypatch) -> Path:
    """nnUNet_results with Dataset123_Fake/nnUNetTrainerBSA__nnUNetPlans__2d, folds 0 and 1 finished, 2 not."""
    root = tmp_path / "nnUNet_results"
    model = root / "Dataset123_Fake" / MODEL
    for fold in (0, 1, 2):
        (model / f"fold_{fold}" / "validation").mkdir(parents=True)
        (model / f"fold_{fold}" / "checkpoint_latest.pth").write_bytes(b"latest")
        (model / f"fold_{fold}" / "progress.png").write_bytes(b"png")
        (model / f"fold_{fold}" / "validation" / "summary.json").write_text("{}")
        if fold != 2:
            (model / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(f"weights {fold}".encode())
    (model / "plans.json").write_text(json.dumps(plans_for(PLANS_CASES["hippocampus_2d"]), indent=4))
    (model / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "lesion": 1}}))
    (model / "dataset_fingerprint.json").write_text("{}")
    monkeypatch.setenv("nnUNet_results", str(root))
    for name in ("nnUNet_raw", "nnUNet_preprocessed"):
        monkeypatch.delenv(name, raising=False)
    return root


def _tree_digest(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_export_is_nnunets_zip_with_plans_stamped_and_the_results_untouched(results, tmp_path):
    before = _tree_digest(results)
    model = export_model(123, ["2d"], TRAINER, ["0", "1"], tmp_path / "model.zip")
    assert _tree_digest(results) == before  # read only: the stamp lives in the zip
    assert model.path == tmp_path / "model.zip" and model.stamped_plans == 1
    export_pretrained_model(123, str(tmp_path / "nnunet.zip"), ("2d",), TRAINER, folds=(0, 1))
    with zipfile.ZipFile(tmp_path / "model.zip") as ours, zipfile.ZipFile(tmp_path / "nnunet.zip") as theirs:
        assert ours.namelist() == theirs.namelist()  # the layout nnUNetv2_install_pretrained_model_from_zip expects
        plans_member = f"Dataset123_Fake/{MODEL}/plans.json"
        for name in theirs.namelist():
            if name != plans_member:
                assert ours.read(name) == theirs.read(name), name
        stamped, original = json.loads(ours.read(plans_member)), json.loads(theirs.read(plans_member))
    assert stamped.pop(STAMP_KEY) == {"version": nnunet_sparseattn.__version__}
    assert stamped == original
    assert f"Dataset123_Fake/{MODEL}/fold_1/checkpoint_final.pth" in theirs.namelist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zip", "nnUNet_results", "nnunet.zip"]  # no leftovers


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            dict(folds=["2"]),
            (
                f"fold_2 has no checkpoint_final.pth (training not finished): finish it (nnUNetv2_train "
                f"Dataset123_Fake 2d 2 -tr {TRAINER} -p nnUNetPlans --c) or leave fold 2 out of -f"
            ),
        ),
        (dict(folds=["0", "3"]), "fold_3 has no checkpoint_final.pth"),
        (dict(configurations=["3d_fullres"]), "no trained model in "),
        (dict(trainer="nnUNetTrainerMDSA"), "no trained model in "),
        (dict(folds=["first"]), "fold 'first' is not a fold"),
        (dict(dataset=7), "no dataset 7 in nnUNet_results="),
    ],
)
def test_export_refuses_in_one_line_and_writes_nothing(results, tmp_path, args, expected):
    call = dict(dataset=123, configurations=["2d"], trainer=TRAINER, folds=["0"], output=tmp_path / "out.zip")
    call.update(args)
    with pytest.raises(UserError) as error:
        export_model(**call)
    assert expected in str(error.value) and "\n" not in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nnUNet_results"]


def test_export_command_prints_one_line_either_way(results, tmp_path, capsys):
    out = tmp_path / "model.zip"
    assert main(["export", "-d", "123", "-c", "2d", "-tr", TRAINER, "-f", "0", "1", "-o", str(out)]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith(f"{out}: Dataset123_Fake {MODEL}, folds 0 1; plans stamped with nnunet-sparseattn ")
    assert "\n" not in printed
    assert main(["export", "-d", "123", "-c", "2d", "-tr", TRAINER, "-o", str(out)]) == 2  # default folds 0-4
    assert capsys.readouterr().err.startswith("nnunet-sparseattn: error: ")


def test_the_stamp_is_checked_against_the_installed_version():
    plans = plans_for(PLANS_CASES["hippocampus_2d"])
    check_installed_version(plans)  # a model trained here carries no stamp
    check_installed_version(stamp(plans))  # same version
    check_installed_version({STAMP_KEY: {"version": "0.1.0"}}, installed="0.2.0")  # older model
    with pytest.raises(ModelVersionError) as error:
        check_installed_version({STAMP_KEY: {"version": "0.10.0"}}, installed="0.9.1")  # compared as versions
    assert str(error.value) == (
        "this model needs nnunet-sparseattn >= 0.10.0 (installed: 0.9.1): pip install -U nnunet-sparseattn"
    )
    with pytest.raises(ModelVersionError, match="'soon', which is not a version number"):
        check_installed_version({STAMP_KEY: {"version": "soon"}})


def test_our_trainer_refuses_a_model_from_a_newer_version_before_building():
    from nnunet_sparseattn.trainers import nnUNetTrainerBSA

    plans = plans_for(PLANS_CASES["hippocampus_2d"])
    newer = dict(plans, **{STAMP_KEY: {"version": "99.0"}})
    manager = PlansManager(newer)
    with pytest.raises(ModelVersionError, match=r"this model needs nnunet-sparseattn >= 99.0 \(installed: "):
        nnUNetTrainerBSA.build_network_architecture(manager, manager.get_configuration("2d"), 3, 2, False)
    manager = PlansManager(stamp(plans))
    net = nnUNetTrainerBSA.build_network_architecture(manager, manager.get_configuration("2d"), 3, 2, False)
    assert type(net).__name__ == "BSAUNet"
