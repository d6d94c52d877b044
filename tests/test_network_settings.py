"""Network settings are values: validated where a plans file is written (``nnunet-sparseattn plan --set``) and where
it is read (the network's constructor, nnU-Net's ``get_network_from_plans``), refused in one line naming the setting,
what it may be and the value given; ``topk`` keeps one form (an integer per stage) down to the router, and one
function decides whether it means dense attention."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from plans_cases import PLANS_CASES, plans_for

from nnunet_sparseattn.architectures.base import PlansError, UNetSettings
from nnunet_sparseattn.architectures.bilateral import BilateralUNet
from nnunet_sparseattn.architectures.bsa import BSASettings, BSAUNet
from nnunet_sparseattn.architectures.mdsa import MDSASettings, MDSAUNet
from nnunet_sparseattn.layers.routing import Router, clamp_topk, is_dense
from nnunet_sparseattn.plans import variant_plans

KW, PATCH = PLANS_CASES["hippocampus_3d"]  # stages 40x56x40, 20x28x20, 10x14x10, 5x7x5


def _one_line(error: pytest.ExceptionInfo, *parts: str) -> None:
    text = str(error.value)
    assert "\n" not in text, text
    for part in parts:
        assert part in text, (part, text)


@pytest.mark.parametrize(
    "variant,overrides,parts",
    [
        ("bsa", {"topk": 1.5}, ["topk=1.5", "integer >= 0"]),  # was written, then read as top-1
        ("bsa", {"topk": 1000}, ["topk=1000", "dense attention everywhere", "1..20"]),  # was silently dense
        ("bsa", {"topk": [4, 4, 4, 9]}, ["topk[3]=9", "stage 3 has 1 key regions"]),
        ("bsa", {"topk": -1}, ["topk=-1", "integer >= 0"]),
        ("bsa", {"topk": True}, ["topk=True"]),
        ("bsa", {"blocks_per_stage": 1.5}, ["blocks_per_stage=1.5", "integer >= 1"]),
        ("bsa", {"coarse_branch": "yes"}, ["coarse_branch='yes'", "true or false"]),
        ("bsa", {"attention_from_stage": 9}, ["attention_from_stage=9", "in 0..4"]),
        ("bsa", {"region_sizes": [None, None, [2.5, 7, 5], None]}, ["region_sizes[2]", "integers >= 1"]),
        ("mdsa", {"topk": 2.0}, ["topk=2.0", "integer >= 0"]),
        ("mdsa", {"topk": 1000}, ["topk=1000", "dense attention everywhere"]),
        ("mdsa", {"mlp_ratio": "3"}, ["mlp_ratio='3'", "number > 0"]),
        ("mdsa", {"edm_local_branch": "avg"}, ["edm_local_branch='avg'", "'conv', 'maxpool'"]),
        ("bilateral", {"isam_depth": 0}, ["isam_depth=0", "integer >= 1"]),
        ("bilateral", {"drop_path": 2}, ["drop_path=2", "<= 1"]),
        ("bilateral", {"fsam_weighted": "output"}, ["fsam_weighted='output'", "'input', 'dilated'"]),
        ("bilateral", {"rendering": "no"}, ["rendering='no'", "true or false"]),
        ("bilateral", {"isam_windows": [7, 7, 7.5, 7]}, ["isam_windows of stage 2"]),
    ],
)
def test_plans_writer_refuses_a_setting_of_the_wrong_type_or_range(variant, overrides, parts):
    with pytest.raises(PlansError) as error:
        variant_plans(plans_for(PLANS_CASES["hippocampus_3d"]), variant, overrides=overrides)
    _one_line(error, "configuration 3d_fullres", *parts)


def test_plan_command_refuses_topk_one_and_a_half_in_one_line(tmp_path, monkeypatch, capsys):
    from nnunet_sparseattn.cli import main

    folder = tmp_path / "Dataset004_Hippocampus"
    folder.mkdir()
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans_for(PLANS_CASES["hippocampus_3d"])))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    for value in ("1.5", "1000"):
        assert main(["plan", "-d", "4", "--variant", "bsa", "--set", f"topk={value}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"topk={value}" in err[0]
    assert not (folder / "nnUNetPlans_BSA.json").exists()


def test_settings_edited_into_a_plans_file_are_refused_where_the_network_is_built():
    """nnU-Net's stock trainer builds our network from the plans' arch_kwargs (no patch): the constructor checks."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    plans = variant_plans(plans_for(PLANS_CASES["hippocampus_3d"]), "bsa")
    arch = copy.deepcopy(plans["configurations"]["3d_fullres"]["architecture"])
    arch["arch_kwargs"]["topk"] = 1.5
    with pytest.raises(PlansError) as error:
        get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 1, 3)
    _one_line(error, "topk=1.5", "integer >= 0")
    with pytest.raises(PlansError) as error:
        MDSAUNet(input_channels=1, num_classes=2, **{**KW, "conv_op": torch.nn.Conv3d, "topk": "8"})
    _one_line(error, "topk='8'")


def test_a_network_reads_its_own_settings_from_the_plans_and_not_another_networks():
    """``info`` (and a trainer) building MDSA from BSA's plans took BSA's settings, then refused with MDSA's message."""
    from nnunet_sparseattn.harness.networks import network_kwargs
    from nnunet_sparseattn.trainers import nnUNetTrainerBSA, nnUNetTrainerMDSA

    plans = variant_plans(plans_for(PLANS_CASES["hippocampus_3d"]), "bsa", overrides={"topk": 3, "mlp_ratio": 2.0})
    _, bsa = network_kwargs(nnUNetTrainerBSA, plans, "3d_fullres")
    _, mdsa = network_kwargs(nnUNetTrainerMDSA, plans, "3d_fullres")
    assert (bsa["topk"], bsa["mlp_ratio"]) == (3, 2.0)
    assert (mdsa["topk"], mdsa["mlp_ratio"]) == (8, 3.0)  # MDSA's own defaults; the U-Net stages are the plans'
    assert mdsa["features_per_stage"] == bsa["features_per_stage"]


def test_topk_has_one_form_from_the_plans_to_the_router():
    net = BSAUNet.from_plans(KW, PATCH, 1, 2, False, overrides={"topk": [0, 0, 3, 0]})
    assert isinstance(net.encoder.settings, BSASettings) and net.encoder.settings.topk == [0, 0, 3, 0]
    assert net.encoder.stages[2][1].attn.router.topk == 3 and net.encoder.stages[3][1].attn.router.topk == 0
    assert not hasattr(net.encoder, "topk")  # no second copy to go stale
    with pytest.raises(ValueError, match="topk=1.5"):
        Router(1.5)
    mdsa = MDSAUNet.from_plans(KW, PATCH, 1, 2, False)
    assert mdsa.encoder.stages[3][1].attn.router.topk == 8
    assert isinstance(
        MDSAUNet.check_own({**UNetSettings.from_plans(KW).as_dict(), **MDSAUNet.own_defaults()}), MDSASettings
    )


def test_dense_or_routed_is_decided_by_one_function():
    assert [is_dense(k, 8) for k in (-1, 0, 1, 7, 8, 9)] == [True, True, False, False, True, True]
    assert [clamp_topk(k, 8) for k in (0, 3, 8, 12)] == [8, 3, 8, 8]
    layout = {
        a.stage: a.text for a in BSAUNet.attention_layout(BSAUNet.resolve_arch_kwargs(KW, PATCH, {"topk": 20}), PATCH)
    }
    assert layout[2].endswith("(20), dense") and layout[3].endswith("(1), dense")  # top-20 of 20 regions
    bilateral = BilateralUNet.check_own({**UNetSettings.from_plans(KW).as_dict(), **BilateralUNet.own_defaults()})
    assert bilateral.isam_stages == [1, 2, 3] and bilateral.rendering is True
