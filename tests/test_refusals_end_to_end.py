"""One-line refusals inside nnU-Net's own commands, where no entry point of ours runs: nnU-Net's STOCK trainer building
our network from a variant plans file that a user edited into something the network cannot be.

Slow (it needs the prepared Hippocampus data); it trains nothing: the refusal comes while nnU-Net builds the network.
Both commands run through the harness, with ``nnUNet_extTrainer`` unset (the stock trainer needs no shim).
"""

from __future__ import annotations

import json

import pytest
from helpers import plan_variant

from nnunet_sparseattn.errors import UserError
from nnunet_sparseattn.harness import commands

pytestmark = pytest.mark.slow


def test_stock_trainer_on_edited_variant_plans_refuses_in_one_line(hippocampus_nnunet, tmp_path):
    run = dict(hippocampus_nnunet)
    run["env"] = {k: v for k, v in run["env"].items() if k != "nnUNet_extTrainer"}
    plans_file = plan_variant(run, "bsa", "3d_fullres")
    plans = json.loads(plans_file.read_text())
    # a hand edit that loses a stage's entry: 3 region sizes for a 4-stage network
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    del arch["region_sizes"][0]
    edited = plans_file.with_name("nnUNetPlans_BSAedited.json")
    edited.write_text(json.dumps(dict(plans, plans_name="nnUNetPlans_BSAedited"), indent=2))
    log = tmp_path / "train.log"
    with pytest.raises(UserError, match=rf"nnUNetv2_train failed with exit code \d+: see {log}"):
        commands.train(
            run["id"], "3d_fullres", 0, "nnUNetTrainer", run["env"], log, plans="nnUNetPlans_BSAedited", echo=False
        )
    output = log.read_text()  # nnU-Net's stdout and stderr, as the user's terminal shows them
    assert "Traceback" not in output, output[-2000:]
    assert output.strip().splitlines()[-1] == (
        "nnunet-sparseattn: error: region_sizes has 3 entries, expected 4 (one per stage, null allowed)"
    ), output[-2000:]
