"""One-line refusals inside nnU-Net's own commands, where no entry point of ours runs: nnU-Net's STOCK trainer building
our network from a variant plans file that a user edited into something the network cannot be.

Slow (it needs the prepared Hippocampus data); it trains nothing: the refusal comes while nnU-Net builds the network.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_stock_trainer_on_edited_variant_plans_refuses_in_one_line(hippocampus_nnunet):
    run = hippocampus_nnunet
    env = {k: v for k, v in run["env"].items() if k != "nnUNet_extTrainer"}  # the stock trainer needs no shim
    bin_dir = Path(sys.executable).parent
    plan = subprocess.run([str(bin_dir / "nnunet-sparseattn"), "plan", "-d", str(run["id"]), "--variant", "bsa",
                           "-c", "3d_fullres"], env=env, capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    plans_file = Path(plan.stdout.splitlines()[0])
    plans = json.loads(plans_file.read_text())
    # a hand edit that loses a stage's entry: 3 region sizes for a 4-stage network
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    del arch["region_sizes"][0]
    edited = plans_file.with_name("nnUNetPlans_BSAedited.json")
    edited.write_text(json.dumps(dict(plans, plans_name="nnUNetPlans_BSAedited"), indent=2))
    result = subprocess.run([str(bin_dir / "nnUNetv2_train"), str(run["id"]), "3d_fullres", "0",
                             "-p", "nnUNetPlans_BSAedited", "-device", "cpu"],
                            env=dict(env, nnUNet_n_proc_DA="0"), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last == ("nnunet-sparseattn: error: region_sizes has 3 entries, expected 4 (one per stage, null "
                    "allowed)"), result.stderr[-2000:]
