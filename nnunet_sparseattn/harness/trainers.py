"""Trainer classes by name, and a trainer built without a preprocessed dataset (tests, benchmarks, ``info``).

nnU-Net's ``initialize`` opens the preprocessed dataset only to pick its dataset class; everything a test or a
measurement needs (network, optimizer, learning-rate schedule, loss) comes from the plans and dataset.json.
:func:`initialize_without_data` does what ``initialize`` does minus that, so the same trainer code runs on plans
alone; it also stands in for ``nnUNetTrainer.initialize`` where a subclass's own ``initialize`` is under test.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from unittest import mock

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_sparseattn.errors import UserError


def find_trainer_class(name: str) -> type[nnUNetTrainer]:
    """The trainer class ``name``: nnU-Net's stock trainer, one of ours, or one nnU-Net finds (its own variants,
    ``nnUNet_extTrainer``). Refused in one line when nnU-Net knows no such trainer."""
    if name == "nnUNetTrainer":
        return nnUNetTrainer
    from nnunet_sparseattn import trainers

    found = getattr(trainers, name, None)
    if isinstance(found, type) and issubclass(found, nnUNetTrainer):
        return found
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net narrates its search
            return recursive_find_trainer_class_by_name(name)
    except (RuntimeError, AssertionError):
        ours = ", ".join(t.__name__ for t in trainers.SHIPPED_TRAINERS)
        raise UserError(
            f"no nnU-Net trainer named {name}: ours are {ours} (each also as _debug and _demo); "
            "nnU-Net's own and those in nnUNet_extTrainer work too"
        ) from None


def initialize_without_data(trainer: nnUNetTrainer) -> None:
    """nnU-Net's ``initialize`` minus the preprocessed dataset: batch size, network (on the trainer's device),
    optimizer, learning-rate schedule and loss, built by the trainer's own methods (nnU-Net's protected ones too, as
    its ``initialize`` calls them, so a subclass's overrides apply); no ``torch.compile``, no DDP."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    trainer._set_batch_size_and_oversample()
    trainer.num_input_channels = determine_num_input_channels(
        trainer.plans_manager, trainer.configuration_manager, trainer.dataset_json
    )
    trainer.network = trainer.build_network_architecture(
        trainer.plans_manager,
        trainer.configuration_manager,
        trainer.num_input_channels,
        trainer.label_manager.num_segmentation_heads,
        trainer.enable_deep_supervision,
    ).to(trainer.device)
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    trainer.loss = trainer._build_loss()
    trainer.was_initialized = True


def trainer_without_data(
    trainer_class: type,
    plans: dict,
    configuration: str,
    dataset_json: dict,
    folder: str | Path,
    fold: int = 0,
    device: str | torch.device = "cpu",
    initialize: bool = True,
) -> nnUNetTrainer:
    """``trainer_class`` built from ``plans`` and ``dataset_json`` as ``nnUNetv2_train`` builds it, its log and
    output under ``folder`` (nnU-Net's results and preprocessed folders point there while it is built), then
    :func:`initialize_without_data` unless ``initialize`` is False."""
    folder = Path(folder)
    paths = {name: str(folder / name) for name in ("nnUNet_preprocessed", "nnUNet_results")}
    with mock.patch.dict(os.environ, paths):
        # nnU-Net's CLI adds continue_training; __init__ pops it
        trainer = trainer_class(
            dict(plans, continue_training=False), configuration, fold, dataset_json, device=torch.device(device)
        )
    if initialize:
        initialize_without_data(trainer)
    return trainer
