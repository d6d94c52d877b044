"""The variant trainers (one change each to a main trainer) on MSD Hippocampus 3d_fullres.

Those whose network differs from their main trainer's (the bilateral ones) go through nnU-Net's own CLI:
``nnUNetv2_train`` (its final validation scores the network) and ``nnUNetv2_predict``, as a user types them (about a
minute each on 2 CPU cores); the predictions are checked against the references' grids and labels. The loss and
optimiser variants build their main trainer's network, which the main trainers' end-to-end tests train, predict and
evaluate through the CLI: here nnU-Net's own trainer lookup finds each (what ``nnUNetv2_train -tr`` runs), it is
built from the prepared dataset's plans, takes a training step and saves a checkpoint that names it (one training
per network and configuration per run). Slow: CI runs them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import assert_predicted

from nnunet_sparseattn.architectures.swin_weights import SWIN_WEIGHTS_ENV
from nnunet_sparseattn.harness import commands, datasets

pytestmark = pytest.mark.slow

# each differs from its main trainer in one thing: the rendering module (noRendering) or the initial ISAM weights
# (pretrained), so its network differs too
CLI_VARIANTS = ["nnUNetTrainerBilateral_noRendering", "nnUNetTrainerBilateral_pretrained"]
# the loss (noNB, NB) or the optimiser (AdamW): the main trainer's network
SAME_NETWORK_AS_MAIN = ["nnUNetTrainerBSA_noNB", "nnUNetTrainerBSA_AdamW", "nnUNetTrainerMDSA_NB"]


@pytest.fixture(scope="module")
def swin_tiny_checkpoint(tmp_path_factory) -> Path:
    """A Swin-T checkpoint in timm's layout (random weights: the layout is what the loader reads)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("swin") / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).state_dict()}, path)
    return path


@pytest.mark.parametrize("base", CLI_VARIANTS)
def test_variant_trains_predicts_and_evaluates_through_the_cli(base, hippocampus_nnunet, swin_tiny_checkpoint):
    run = hippocampus_nnunet  # shared: converted, 15 training cases preprocessed, 3 cases never trained on
    trainer = f"{base}_debug"
    env, log, dataset_id = dict(run["env"]), run["log"], run["id"]
    if base.endswith("_pretrained"):
        env[SWIN_WEIGHTS_ENV] = str(swin_tiny_checkpoint)

    commands.train(dataset_id, "3d_fullres", 0, trainer, env, log)
    model = datasets.model_folder(env, dataset_id, trainer, "3d_fullres")
    checkpoint = torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == trainer
    keys = checkpoint["network_weights"].keys()
    if base.startswith("nnUNetTrainerBilateral"):
        renders = any(k.startswith("rendering.") for k in keys)
        assert renders == (base != "nnUNetTrainerBilateral_noRendering"), list(keys)[-5:]
    if base.endswith("_pretrained"):
        training_log = "".join(p.read_text() for p in (model / "fold_0").glob("training_log_*.txt"))
        assert f"Swin weights from {swin_tiny_checkpoint}" in training_log

    predictions = run["work"] / f"predictions_{base}"
    commands.predict(run["images"], predictions, dataset_id, "3d_fullres", 0, trainer, env, log, sequential=True)
    assert_predicted(predictions, run["labels"], {0, 1, 2})


@pytest.mark.parametrize("base", SAME_NETWORK_AS_MAIN)
def test_loss_and_optimiser_variants_are_found_built_stepped_and_saved(
    base, hippocampus_nnunet, trainer_without_data, tmp_path
):
    import json

    import numpy as np

    from nnunet_sparseattn.discovery import require_trainer
    from nnunet_sparseattn.losses import NarrowBandCompoundLoss

    run = hippocampus_nnunet
    trainer_class = require_trainer(f"{base}_debug")  # nnU-Net's own lookup, as nnUNetv2_train -tr does
    preprocessed = Path(run["env"]["nnUNet_preprocessed"]) / run["dataset"].name
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    trainer = trainer_without_data(trainer_class, plans, "3d_fullres", dataset_json)
    # BSA's trainers add the NB loss unless _noNB; MDSA's only with _NB
    assert isinstance(trainer.loss, NarrowBandCompoundLoss) == (base != "nnUNetTrainerBSA_noNB")
    assert isinstance(trainer.optimizer, torch.optim.AdamW) == base.endswith("_AdamW")
    patch = trainer.configuration_manager.patch_size
    torch.manual_seed(0)
    data = torch.randn(2, 1, *patch)
    targets = [torch.randint(0, 3, (2, 1, *o.shape[2:])).float() for o in trainer.network(data)]
    assert np.isfinite(trainer.train_step({"data": data, "target": targets})["loss"])
    trainer.save_checkpoint(str(tmp_path / "checkpoint_final.pth"))
    checkpoint = torch.load(tmp_path / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == f"{base}_debug" and checkpoint["network_weights"]
