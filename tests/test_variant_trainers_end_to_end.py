"""The variant trainers (one change each to a main trainer) through nnU-Net's own CLI on MSD Hippocampus 3d_fullres:
``nnUNetv2_train``, ``nnUNetv2_predict`` and ``nnUNetv2_evaluate_folder``, as a user types them.

The main trainers have their own end-to-end tests; these make sure nnU-Net finds and trains every variant we ship,
and predicts with those whose network differs from their main trainer's (the bilateral ones). Slow (about a minute
each on 2 CPU cores): CI runs them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import assert_dice

from nnunet_sparseattn.architectures.swin_weights import SWIN_WEIGHTS_ENV
from nnunet_sparseattn.harness import commands, datasets

pytestmark = pytest.mark.slow

# each differs from its main trainer in one thing: the loss (noNB, NB), the optimiser (AdamW), the rendering module
# (noRendering) or the initial ISAM weights (pretrained)
VARIANTS = [
    "nnUNetTrainerBSA_noNB",
    "nnUNetTrainerBSA_AdamW",
    "nnUNetTrainerMDSA_NB",
    "nnUNetTrainerBilateral_noRendering",
    "nnUNetTrainerBilateral_pretrained",
]

# a loss or optimiser variant builds its main trainer's network: nnUNetv2_predict and evaluate of it run in the main
# trainer's end-to-end test (test_bsa_end_to_end, test_mdsa_end_to_end); here training and the checkpoint suffice
SAME_NETWORK_AS_MAIN = {"nnUNetTrainerBSA_noNB", "nnUNetTrainerBSA_AdamW", "nnUNetTrainerMDSA_NB"}


@pytest.fixture(scope="module")
def swin_tiny_checkpoint(tmp_path_factory) -> Path:
    """A Swin-T checkpoint in timm's layout (random weights: the layout is what the loader reads)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("swin") / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).state_dict()}, path)
    return path


@pytest.mark.parametrize("base", VARIANTS)
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

    if base in SAME_NETWORK_AS_MAIN:
        return  # its main trainer's end-to-end test predicts and evaluates the same network class
    predictions = run["work"] / f"predictions_{base}"
    commands.predict(run["images"], predictions, dataset_id, "3d_fullres", 0, trainer, env, log)
    summary = commands.evaluate(run["labels"], predictions, model, env, log)
    assert_dice(summary, ["1", "2"], len(run["heldout"]))
