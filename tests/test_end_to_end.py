"""The NB trainer through nnU-Net's own CLI on MSD Hippocampus: train (short variant, CPU), predict, evaluate,
explain; and its loss terms for labels, regions and ignore labels on the same plans.

Slow (minutes): CI runs them. Each command is a subprocess, exactly as a user types it. (The synthetic demo dataset
passes nnU-Net's integrity checks in tests/test_cli.py; it trains no differently.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import assert_dice, explain

from nnunet_sparseattn.harness import commands, datasets

pytestmark = pytest.mark.slow

CONFIGURATION = "3d_fullres"
TRAINER = "nnUNetTrainerNB_debug"


LABELS = {"background": 0, "organ": 1, "vessel": 2, "nodule": 3}
REGIONS = {"background": 0, "organ_and_nodule": [1, 3], "vessel": [2], "nodule": [3]}


@pytest.mark.parametrize(
    "labels",
    [LABELS, dict(LABELS, ignore=4), REGIONS, dict(REGIONS, ignore=4)],
    ids=["labels", "labels+ignore", "regions", "regions+ignore"],
)
def test_trainer_builds_one_nb_term_per_deep_supervision_output(hippocampus_nnunet, trainer_without_data, labels):
    from nnunet_sparseattn.losses import NarrowBandCompoundLoss
    from nnunet_sparseattn.trainers import nnUNetTrainerNB_debug
    from nnunet_sparseattn.trainers.short_schedule import SHORT_SCHEDULES

    run = hippocampus_nnunet  # its plans; the labels (and regions, ignore label) are each case's own
    preprocessed = datasets.require_dataset(run["env"]["nnUNet_preprocessed"], run["id"], "nnUNet_preprocessed")
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    dataset_json["labels"] = labels
    regions = "organ_and_nodule" in labels
    if regions:
        dataset_json["regions_class_order"] = [1, 2, 3]
    trainer = trainer_without_data(nnUNetTrainerNB_debug, plans, CONFIGURATION, dataset_json)
    debug = SHORT_SCHEDULES["_debug"]
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == (
        debug.num_epochs,
        debug.num_iterations_per_epoch,
        debug.num_val_iterations_per_epoch,
    )
    assert isinstance(trainer.loss, NarrowBandCompoundLoss)
    assert trainer.label_manager.has_regions == regions
    assert all(nb.apply_nonlin == ("sigmoid" if regions else "softmax") for nb in trainer.loss.nb_losses)

    patch = trainer.configuration_manager.patch_size
    data = torch.randn(2, 1, *patch)
    outputs = trainer.network(data)
    assert len(outputs) == len(trainer.loss.nb_losses) == len(trainer._get_deep_supervision_scales())
    has_ignore = "ignore" in labels
    labelmaps = [torch.randint(0, 5 if has_ignore else 4, (2, 1, *o.shape[2:])).float() for o in outputs]
    if regions:  # what nnU-Net's region conversion hands the loss: one channel per region (+ the ignore mask)
        targets = [
            torch.cat(
                [
                    torch.isin(m, torch.tensor(r, dtype=m.dtype)).float()
                    for name, r in REGIONS.items()
                    if name != "background"
                ]
                + ([(m == 4).float()] if has_ignore else []),
                1,
            )
            for m in labelmaps
        ]
    else:
        targets = labelmaps
    step = trainer.train_step({"data": data, "target": targets})
    assert np.isfinite(step["loss"])
    # nnU-Net weights its lowest deep-supervision output 0 (seg_layers[0], the deepest): only it gets no gradient
    unused = {id(p) for p in trainer.network.decoder.seg_layers[0].parameters()}
    used = [p for p in trainer.network.parameters() if id(p) not in unused]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in used)
    # (conv biases feed instance norms, which cancel them: their gradient is ~0 by design; weights must move)
    assert all(p.grad.abs().sum() > 0 for p in used if p.ndim > 1)


def test_msd_hippocampus_through_the_cli(hippocampus_nnunet):
    run = hippocampus_nnunet  # converted with nnUNetv2_convert_MSD_dataset, 15 training cases, 3 held out
    assert run["id"] == 4
    env, log = run["env"], run["log"]
    commands.train(run["id"], CONFIGURATION, 0, TRAINER, env, log)
    predictions = run["work"] / "predictions_nb"
    commands.predict(run["images"], predictions, run["id"], CONFIGURATION, 0, TRAINER, env, log, sequential=True)
    model = datasets.model_folder(env, run["id"], TRAINER, CONFIGURATION)
    summary = commands.evaluate(run["labels"], predictions, model, env, log)
    assert_dice(summary, ["1", "2"])
    assert len(summary["metric_per_case"]) == len(run["heldout"]) == 3
    fold = model / "fold_0"
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == TRAINER
    training_log = next(fold.glob("training_log_*.txt")).read_text()
    assert "narrow-band loss: weight 1.0, radius 2 mm -> voxels per scale [(2, 2, 2)," in training_log
    # the short variant cut epochs (2) and iterations: no third epoch, final validation done
    assert "Epoch 1" in training_log and "Epoch 2" not in training_log
    assert (fold / "validation" / "summary.json").is_file()
    # a trainer without attention: explain gives the prediction picture and says there is nothing else to show
    explained = run["work"] / "explain_nb"
    printed = explain(run, TRAINER, CONFIGURATION, run["images"] / f"{run['heldout'][0]}_0000.nii.gz", explained)
    assert "no attention to show: nnUNetTrainerNB_debug's network (PlainConvUNet) has no routed attention" in printed
    assert {p.name for p in explained.iterdir()} == {"case.png", "prediction.nii.gz", "explain.json"}
