"""MDSA-UNet through nnU-Net's own CLI: 2D on ISIC 2017 (converted by convert_2d) and 3D on MSD Hippocampus.

Slow (minutes): CI runs them. Every nnU-Net command is a subprocess, as a user types it; small subsets of cases keep
each training run to a couple of minutes on 2 CPU cores.
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_explained, assert_predicted, explain, plan_variant

from nnunet_sparseattn.harness import commands, datasets

pytestmark = pytest.mark.slow

TRAINER = "nnUNetTrainerMDSA_debug"
VARIANT_PLANS = "nnUNetPlans_MDSA"


def _checkpoint(env: dict, dataset_id: int, plans: str, configuration: str) -> dict:
    model = datasets.model_folder(env, dataset_id, TRAINER, configuration, plans)
    return torch.load(model / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)


def _assert_mdsa_checkpoint(checkpoint: dict) -> None:
    assert checkpoint["trainer_name"] == TRAINER
    keys = checkpoint["network_weights"].keys()
    # MDSA blocks (encoder stage 2) and EUF upsampling: our network, not nnU-Net's U-Net
    assert any(k.startswith("encoder.stages.2.1.attn.aggregate.") for k in keys), list(keys)[:10]
    assert any(k.startswith("decoder.upsampling.0.gate.") for k in keys)


def test_isic_2017_in_2d_through_convert_2d_and_the_cli(isic_nnunet):
    run = isic_nnunet  # 20 training cases converted by convert_2d, 2 held out (imagesTs/labelsTs)
    env, log = run["env"], run["log"]
    commands.train(run["id"], "2d", 0, TRAINER, env, log)
    _assert_mdsa_checkpoint(_checkpoint(env, run["id"], "nnUNetPlans", "2d"))

    predictions = run["work"] / "predictions_mdsa"
    commands.predict(run["images"], predictions, run["id"], "2d", 0, TRAINER, env, log, sequential=True)
    assert_predicted(predictions, run["labels"], {0, 1})
    image = sorted(run["images"].glob("*.png"))[0]
    explain(run, TRAINER, "2d", image, run["work"] / "explain_mdsa")
    assert_explained(run["work"] / "explain_mdsa", image, {"routed"})


@pytest.fixture(scope="module")
def hippocampus(hippocampus_nnunet):
    run = dict(hippocampus_nnunet)
    plan_variant(run, "mdsa", "3d_fullres")
    return run


def test_hippocampus_in_3d_train_predict_evaluate(hippocampus):
    """Our trainer on nnU-Net's default plans (the variant plans are stepped below: one CPU training is enough)."""
    run = hippocampus
    plans = "nnUNetPlans"
    commands.train(run["id"], "3d_fullres", 0, TRAINER, run["env"], run["log"], plans=plans)
    _assert_mdsa_checkpoint(_checkpoint(run["env"], run["id"], plans, "3d_fullres"))
    out = run["work"] / f"pred_mdsa_{plans}"
    commands.predict(
        run["images"], out, run["id"], "3d_fullres", 0, TRAINER, run["env"], run["log"], plans=plans, sequential=True
    )
    assert_predicted(out, run["labels"], {0, 1, 2})
    image = run["images"] / f"{run['heldout'][0]}_0000.nii.gz"
    explain(run, TRAINER, "3d_fullres", image, run["work"] / "explain_mdsa_3d")
    assert_explained(run["work"] / "explain_mdsa_3d", image, {"routed"})


def test_variant_plans_name_mdsa_and_the_stock_trainer_trains_them(hippocampus, stock_trainer_step):
    """nnU-Net's own nnUNetTrainer, given nnUNetPlans_MDSA, builds and steps MDSA-UNet (no extTrainer needed)."""
    from nnunet_sparseattn.architectures.mdsa import MDSAUNet

    plans, network = stock_trainer_step(hippocampus, VARIANT_PLANS)
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    assert arch["network_class_name"] == "nnunet_sparseattn.architectures.mdsa.MDSAUNet"
    assert arch["arch_kwargs"]["grids"][2] is not None  # chosen for the patch and written down
    assert isinstance(network, MDSAUNet)
