"""BSA-Seg through nnU-Net's own CLI on MSD Hippocampus: our trainer on the default plans, nnU-Net's STOCK trainer
and ours on the variant plans, prediction, evaluation, find_best_configuration and ensembling.

Slow (minutes): CI runs it. Every nnU-Net command is a subprocess, as a user types it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import assert_dice, assert_explained, explain, plan_variant

from nnunet_sparseattn.harness import commands, datasets

pytestmark = pytest.mark.slow

CONFIGURATION = "3d_fullres"
TRAINER = "nnUNetTrainerBSA_debug"
VARIANT_PLANS = "nnUNetPlans_BSA"


@pytest.fixture(scope="module")
def hippocampus(hippocampus_nnunet):
    run = dict(hippocampus_nnunet)
    plan_variant(run, "bsa", CONFIGURATION)
    for plans in ("nnUNetPlans", VARIANT_PLANS):
        commands.train(run["id"], CONFIGURATION, 0, TRAINER, run["env"], run["log"], plans=plans, extra=["--npz"])
    return run


def _model(run, plans: str) -> Path:
    return datasets.model_folder(run["env"], run["id"], TRAINER, CONFIGURATION, plans)


@pytest.mark.parametrize("plans", ["nnUNetPlans", VARIANT_PLANS])
def test_predict_and_evaluate_with_a_bsa_model(hippocampus, plans):
    run = hippocampus
    model = _model(run, plans)
    saved = json.loads((model / "plans.json").read_text())["configurations"][CONFIGURATION]["architecture"]
    # the default plans keep nnU-Net's U-Net in the file; the trainer builds BSA from it. The variant names ours.
    expected = "dynamic_network_architectures" if plans == "nnUNetPlans" else "nnunet_sparseattn.architectures.bsa"
    assert saved["network_class_name"].startswith(expected)
    training_log = next((model / "fold_0").glob("training_log_*.txt")).read_text()
    assert "narrow-band loss" in training_log and "Epoch 1" in training_log and "Epoch 2" not in training_log
    # the plans' "activation_checkpointing" is "auto" when absent: our initialize decided, after nnU-Net's, on the CPU
    assert 'Activation checkpointing: off ("auto" decides for CUDA training' in training_log
    out = run["work"] / f"pred_bsa_{plans}"
    commands.predict(
        run["images"],
        out,
        run["id"],
        CONFIGURATION,
        0,
        TRAINER,
        run["env"],
        run["log"],
        plans=plans,
        extra=["--save_probabilities"],
        sequential=True,
    )
    summary = commands.evaluate(run["labels"], out, model, run["env"], run["log"])
    assert_dice(summary, ["1", "2"], len(run["heldout"]))


def test_find_best_configuration_and_ensemble_accept_bsa_models(hippocampus):
    run = hippocampus
    for plans in ("nnUNetPlans", VARIANT_PLANS):  # the predictions the ensemble reads
        if not (run["work"] / f"pred_bsa_{plans}").is_dir():
            commands.predict(
                run["images"],
                run["work"] / f"pred_bsa_{plans}",
                run["id"],
                CONFIGURATION,
                0,
                TRAINER,
                run["env"],
                run["log"],
                plans=plans,
                extra=["--save_probabilities"],
                sequential=True,
            )
    commands.run_command(
        [
            "nnUNetv2_find_best_configuration",
            run["id"],
            "-p",
            "nnUNetPlans",
            VARIANT_PLANS,
            "-c",
            CONFIGURATION,
            "-tr",
            TRAINER,
            "-f",
            "0",
            "-np",
            "1",
        ],
        run["env"],
        run["log"],
    )
    results = _model(run, "nnUNetPlans").parent
    instructions = (results / "inference_instructions.txt").read_text()
    assert TRAINER in instructions
    ensembled = run["work"] / "ensemble_bsa"
    commands.run_command(
        [
            "nnUNetv2_ensemble",
            "-i",
            run["work"] / "pred_bsa_nnUNetPlans",
            run["work"] / f"pred_bsa_{VARIANT_PLANS}",
            "-o",
            ensembled,
            "-np",
            "1",
        ],
        run["env"],
        run["log"],
    )
    assert sorted(p.name for p in ensembled.glob("*.nii.gz")) == sorted(f"{c}.nii.gz" for c in run["heldout"])


def test_the_stock_trainer_trains_the_variant_plans(hippocampus, stock_trainer_step):
    """nnU-Net's own nnUNetTrainer, given nnUNetPlans_BSA, builds and steps our network (no extTrainer needed)."""
    from nnunet_sparseattn.architectures.bsa import BSAUNet

    _, network = stock_trainer_step(hippocampus, VARIANT_PLANS)
    assert isinstance(network, BSAUNet)


def test_explain_a_bsa_model_in_3d(hippocampus, tmp_path):
    """``explain`` on a held-out image with its reference and a given point: routing, regions and coarse attention
    of every routed block, drawn on the image in its own geometry."""
    import numpy as np
    import SimpleITK as sitk

    run = hippocampus
    case = run["heldout"][0]
    image = run["images"] / f"{case}_0000.nii.gz"
    printed = explain(
        run,
        TRAINER,
        CONFIGURATION,
        image,
        tmp_path / "explained",
        "--point",
        "10,20,15",
        "--reference",
        str(run["labels"] / f"{case}.nii.gz"),
    )
    summary = assert_explained(tmp_path / "explained", image, {"routed", "coarse"})
    assert summary["points"][0]["voxel"] == [10, 20, 15]
    routed = {m: e["points"]["point 0"] for m, e in summary["modules"].items() if e.get("points")}
    assert any(p["routed"] is not None for p in routed.values())  # BSA blocks at 1/4 resolution route
    assert all(len(p["routed"]) < p["regions"] for p in routed.values() if p["routed"] is not None)
    module, entry = next((m, e) for m, e in routed.items() if e["routed"] is not None)
    regions = sitk.GetArrayFromImage(
        sitk.ReadImage(str(tmp_path / "explained" / "points" / "point_0" / f"{module}_regions.nii.gz"))
    )
    assert regions[10, 20, 15] == 2 and set(np.unique(regions)) <= {0, 1, 2}  # the query's region holds the point
    weights = sitk.GetArrayFromImage(
        sitk.ReadImage(str(tmp_path / "explained" / "points" / "point_0" / f"{module}_routing.nii.gz"))
    )
    assert ((weights > 0) == ((regions == 1) | ((regions == 2) & (weights > 0)))).all()
    # the routed regions carry the routing weights explain.json lists for them (rounded there to 4 decimals)
    np.testing.assert_allclose(np.unique(weights[weights > 0]), sorted(entry["routing_weights"]), atol=6e-5)
    assert f"{module} query region {entry['query_region']}" in printed
    assert set(summary["routing_foreground"][module]) <= {"Anterior", "Posterior"}  # MSD's label names
