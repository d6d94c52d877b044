"""The bilateral network through nnU-Net's own CLI: ISIC 2017 in 2D (our trainer on nnU-Net's default plans) and
MSD Hippocampus in 3D (``nnunet-sparseattn plan --variant bilateral``, then training on those plans), each trained
with ``nnUNetTrainerBilateral_debug`` on the CPU, then predicted and evaluated.

Slow (minutes): CI runs them. They check the plumbing, not accuracy, on 2 CPU cores: the shared small subsets (ISIC
at 128 x 128: at 256 x 256 one CPU training step of the 7-stage 2D network takes over 10 s; the paper-scale figures are
``info --variant bilateral-paper``'s) and the plans' batch size cut to 2.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_explained, assert_predicted, explain, plan_variant

from nnunet_sparseattn.harness import commands, datasets

pytestmark = pytest.mark.slow

TRAINER = "nnUNetTrainerBilateral_debug"


def _check_run(env: dict, dataset_id: int, configuration: str, plans: str) -> dict:
    model = datasets.model_folder(env, dataset_id, TRAINER, configuration, plans)
    fold = model / "fold_0"
    log = next(fold.glob("training_log_*.txt")).read_text()
    assert "attention rendering: point loss weight 1.0" in log
    assert "Epoch 1" in log and "Epoch 2" not in log
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == TRAINER
    weights = checkpoint["network_weights"]
    assert any(k.startswith("rendering.head.") for k in weights)
    assert any(".isam.blocks.5.attn.relative_position_bias_table" in k for k in weights)
    assert (fold / "validation" / "summary.json").is_file()  # nnU-Net's final sliding-window validation ran
    return json.loads((model / "plans.json").read_text())


def test_isic2017_2d_through_the_cli(isic_nnunet, trained_debug_model):
    run = isic_nnunet  # shared: ISIC 2017 at 128 x 128 through convert_2d, 2 cases in imagesTs/labelsTs
    env, log = run["env"], run["log"]
    trained_debug_model(run, TRAINER)
    saved = _check_run(env, run["id"], "2d", "nnUNetPlans")
    # the default plans keep nnU-Net's U-Net in the file; our trainer builds the bilateral network from it
    assert saved["configurations"]["2d"]["architecture"]["network_class_name"].startswith("dynamic_network")

    predictions = run["work"] / "predictions_bilateral"
    commands.predict(run["images"], predictions, run["id"], "2d", 0, TRAINER, env, log, sequential=True)
    assert_predicted(predictions, run["labels"], {0, 1})
    image = sorted(run["images"].glob("*.png"))[0]
    explain(run, TRAINER, "2d", image, run["work"] / "explain_bilateral_2d")
    assert_explained(run["work"] / "explain_bilateral_2d", image, {"window", "channel", "rendering"})


def test_hippocampus_3d_variant_plans_through_the_cli(hippocampus_nnunet):
    run = hippocampus_nnunet  # shared: converted, 15 training cases preprocessed, 3 cases never trained on
    env, log, dataset_id = run["env"], run["log"], run["id"]
    written = plan_variant(run, "bilateral", "3d_fullres")
    assert written.name == "nnUNetPlans_Bilateral.json"
    variant = json.loads(written.read_text())
    arch = variant["configurations"]["3d_fullres"]["architecture"]
    assert arch["network_class_name"] == "nnunet_sparseattn.architectures.bilateral.BilateralUNet"
    assert (
        arch["arch_kwargs"]["isam_stages"]
        and len(arch["arch_kwargs"]["isam_windows"]) == arch["arch_kwargs"]["n_stages"]
    )

    commands.train(dataset_id, "3d_fullres", 0, TRAINER, env, log, plans="nnUNetPlans_Bilateral")
    saved = _check_run(env, dataset_id, "3d_fullres", "nnUNetPlans_Bilateral")
    assert saved["configurations"]["3d_fullres"]["architecture"] == arch

    predictions = run["work"] / "predictions_bilateral"
    commands.predict(
        run["images"],
        predictions,
        dataset_id,
        "3d_fullres",
        0,
        TRAINER,
        env,
        log,
        plans="nnUNetPlans_Bilateral",
        sequential=True,
    )
    assert_predicted(predictions, run["labels"], {0, 1, 2})
    image = run["images"] / f"{run['heldout'][0]}_0000.nii.gz"
    explain(run, TRAINER, "3d_fullres", image, run["work"] / "explain_bilateral", plans="nnUNetPlans_Bilateral")
    assert_explained(run["work"] / "explain_bilateral", image, {"window", "channel", "rendering"})
