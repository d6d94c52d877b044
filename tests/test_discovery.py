"""Trainer discovery through nnU-Net's own lookup (``nnUNet_extTrainer``), pickling, and the short variants."""

from __future__ import annotations

import inspect
import os
import pickle
import subprocess
import sys

import pytest
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

import nnunet_sparseattn
from nnunet_sparseattn import trainers
from nnunet_sparseattn.discovery import ext_trainer_is_configured, ext_trainer_path, require_trainer
from nnunet_sparseattn.errors import UserError
from nnunet_sparseattn.trainers.short_schedule import SHORT_SCHEDULES


def test_ext_path_holds_only_the_shim_module():
    entries = sorted(p.name for p in ext_trainer_path().iterdir() if p.name != "__pycache__")
    assert entries == ["nnunet_sparseattn_shim.py"]


def test_ext_path_command_prints_the_folder():
    out = subprocess.run(
        [sys.executable, "-m", "nnunet_sparseattn.cli", "ext-path"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == str(ext_trainer_path())


@pytest.mark.parametrize("name", trainers.__all__)
def test_nnunet_finds_the_very_class_and_it_pickles(name, monkeypatch):
    monkeypatch.setenv("nnUNet_extTrainer", str(ext_trainer_path()))
    found = recursive_find_trainer_class_by_name(name)
    assert found is getattr(nnunet_sparseattn, name) is getattr(trainers, name)
    assert pickle.loads(pickle.dumps(found)) is found
    # nnU-Net dropped the shim from sys.modules; the class must still live in our package
    assert "nnunet_sparseattn_shim" not in sys.modules
    assert found.__module__.startswith("nnunet_sparseattn.trainers")


def test_lookup_survives_a_second_search(monkeypatch):
    # nnUNetv2_predict searches again after training did: both must give the same object
    monkeypatch.setenv("nnUNet_extTrainer", os.pathsep.join(["/nonexistent", str(ext_trainer_path())]))
    first = recursive_find_trainer_class_by_name("nnUNetTrainerNB")
    second = recursive_find_trainer_class_by_name("nnUNetTrainerNB")
    assert first is second is trainers.nnUNetTrainerNB


def test_missing_ext_trainer_is_a_one_line_error(monkeypatch):
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    with pytest.raises(UserError, match="export nnUNet_extTrainer=") as error:
        require_trainer("nnUNetTrainerNB")
    assert "\n" not in str(error.value)
    monkeypatch.setenv("nnUNet_extTrainer", "/somewhere/else")
    assert not ext_trainer_is_configured()
    with pytest.raises(UserError, match="nnUNet_extTrainer"):
        require_trainer("nnUNetTrainerNB_debug")


def test_unknown_trainer_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("nnUNet_extTrainer", str(ext_trainer_path()))
    with pytest.raises(UserError, match="no nnU-Net trainer named nnUNetTrainerDoesNotExist"):
        require_trainer("nnUNetTrainerDoesNotExist")


@pytest.mark.parametrize("trainer", trainers.SHIPPED_TRAINERS, ids=lambda t: t.__name__)
@pytest.mark.parametrize("suffix", list(SHORT_SCHEDULES))
def test_every_shipped_trainer_has_each_short_variant(trainer, suffix):
    variant = getattr(trainers, trainer.__name__ + suffix)
    assert issubclass(variant, trainer) and variant.__name__ in trainers.__all__
    assert variant.short_schedule is SHORT_SCHEDULES[suffix]
    # nnU-Net rebuilds __init__ arguments from the signature: it must stay the base trainer's
    ours, base = inspect.signature(variant.__init__), inspect.signature(nnUNetTrainer.__init__)
    assert [(p.name, p.default) for p in ours.parameters.values()] == [
        (p.name, p.default) for p in base.parameters.values()
    ]
    schedule = SHORT_SCHEDULES[suffix]
    assert schedule.num_epochs < 1000 and schedule.num_iterations_per_epoch < 250
    assert schedule.num_val_iterations_per_epoch < 50


@pytest.mark.parametrize("name", trainers.__all__)
def test_trainer_names_are_unique_across_nnunet(name, monkeypatch):
    # nnU-Net searches its own folder first: a class of the same name there would shadow ours
    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    with pytest.raises(RuntimeError, match=f"Could not find requested nnunet trainer {name}"):
        recursive_find_trainer_class_by_name(name)
