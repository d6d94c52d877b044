"""Every network we ship against nnU-Net's network contracts, on real and harder plans.

Held to what nnU-Net itself does with a network (``nnunetv2`` 2.8.1): ``get_network_from_plans`` builds variant
plans through ``pydoc.locate``; the trainer toggles ``decoder.deep_supervision``; inference rebuilds the network
with deep supervision off and loads the checkpoint strictly; ``DeepSupervisionWrapper`` zips n_stages - 1 outputs
with targets, highest resolution first; DDP needs a gradient for every parameter.
"""

from __future__ import annotations

import math
import pydoc

import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from plans_cases import PLANS_CASES, plans_for

from nnunet_sparseattn.architectures.base import PlansNetwork, stage_shapes
from nnunet_sparseattn.layers.window_attention import fit_window
from nnunet_sparseattn.plans import VARIANTS, variant_plans

NETWORKS = {name: v.network_class for name, v in VARIANTS.items()}
FAST_CASES = ("hippocampus_3d", "hippocampus_2d", "hippocampus_resenc_3d")
SLOW_CASES = ("five_stage_3d", "seven_stage_2d", "anisotropic_3d")
NUM_CLASSES = 3


def _cls(variant: str) -> type[PlansNetwork]:  # read at call time: a registered test method is checked the same way
    path = VARIANTS[variant].network_class
    cls = pydoc.locate(path)
    assert isinstance(cls, type) and issubclass(cls, PlansNetwork), f"{path} is not an importable PlansNetwork"
    return cls


def _build(variant: str, case: str, deep_supervision: bool, seed: int = 0):
    torch.manual_seed(seed)
    arch_kwargs, patch = PLANS_CASES[case]
    in_channels = 3 if len(patch) == 2 else 1
    return _cls(variant).from_plans(arch_kwargs, patch, in_channels, NUM_CLASSES, deep_supervision), patch, in_channels


def _check_outputs(out, case: str) -> None:
    arch_kwargs, patch = PLANS_CASES[case]
    shapes = stage_shapes(patch, arch_kwargs["strides"])
    n = arch_kwargs["n_stages"]
    assert isinstance(out, (list, tuple)) and len(out) == n - 1, f"expected {n - 1} deep-supervision outputs"
    for i, o in enumerate(out):  # i-th output at encoder stage i's resolution
        assert tuple(o.shape) == (1, NUM_CLASSES, *shapes[i]), (i, tuple(o.shape), shapes[i])


def _contract(variant: str, case: str, backward: bool) -> None:
    net, patch, c = _build(variant, case, True)
    net.train()
    x = torch.randn(1, c, *patch)
    if backward:
        out = net(x)
        _check_outputs(out, case)
        sum(o.float().square().mean() for o in out).backward()
        missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"parameters without gradient (DDP would fail): {missing[:5]}"
    else:
        with torch.no_grad():
            _check_outputs(net(x), case)
    # nnU-Net's toggle, then inference's strict load into a network built with deep supervision off
    net.decoder.deep_supervision = False
    net.eval()
    with torch.no_grad():
        single = net(x)
    assert isinstance(single, torch.Tensor) and tuple(single.shape) == (1, NUM_CLASSES, *patch)
    off, _, _ = _build(variant, case, False, seed=1)
    off.load_state_dict(net.state_dict(), strict=True)
    net.load_state_dict(off.state_dict(), strict=True)
    size = net.compute_conv_feature_map_size(list(patch))
    bigger = net.compute_conv_feature_map_size([2 * p for p in patch])
    assert 0 < int(size) < int(bigger)


@pytest.mark.parametrize("case", FAST_CASES)
@pytest.mark.parametrize("variant", list(NETWORKS))
def test_contracts_on_hippocampus_plans(variant, case):
    _contract(variant, case, backward=True)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_CASES)
@pytest.mark.parametrize("variant", list(NETWORKS))
def test_contracts_on_harder_plans(variant, case):
    _contract(variant, case, backward=False)


@pytest.mark.parametrize("variant", list(NETWORKS))
def test_variant_plans_build_the_same_network_through_nnunet(variant):
    """The stock trainer's path (get_network_from_plans on our variant plans) == our trainer's path."""
    plans = variant_plans(plans_for(PLANS_CASES["hippocampus_3d"]), variant)
    conf = PlansManager(plans).get_configuration("3d_fullres")
    assert conf.network_arch_class_name == VARIANTS[variant].network_class
    assert conf.data_identifier == "nnUNetPlans_3d_fullres"  # default preprocessed data reused
    stock = get_network_from_plans(
        conf.network_arch_class_name,
        conf.network_arch_init_kwargs,
        conf.network_arch_init_kwargs_req_import,
        1,
        NUM_CLASSES,
        deep_supervision=True,
    )
    ours, _, _ = _build(variant, "hippocampus_3d", True)
    assert type(stock) is type(ours)
    assert {k: v.shape for k, v in stock.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}


@pytest.mark.parametrize("variant", list(NETWORKS))
def test_trainer_builds_from_default_plans_in_both_modes(variant):
    from nnunet_sparseattn.trainers import method_trainers

    trainer = method_trainers(VARIANTS[variant])[0]
    manager = PlansManager(plans_for(PLANS_CASES["hippocampus_2d"]))
    conf = manager.get_configuration("2d")
    train_net = trainer.build_network_architecture(manager, conf, 3, NUM_CLASSES, True)
    infer_net = trainer.build_network_architecture(manager, conf, 3, NUM_CLASSES, False)
    assert type(train_net).__name__ == VARIANTS[variant].network_class.rsplit(".", 1)[1]
    infer_net.load_state_dict(train_net.state_dict(), strict=True)
    assert infer_net.decoder.deep_supervision is False and train_net.decoder.deep_supervision is True


# what the registry cannot say: how to read, in the built network, that the stage got regions (windows) for its shape
def _bsa_stage_one(net, arch, shapes):
    assert arch["region_sizes"][1] is not None and math.prod(arch["region_sizes"][1]) < math.prod(shapes[1])
    attn = net.encoder.stages[1][1].attn
    assert attn.region_size == tuple(arch["region_sizes"][1]) and attn.topk < math.prod(attn.grid_for(shapes[1]))


def _mdsa_stage_one(net, arch, shapes):
    assert arch["grids"][1] is not None and math.prod(arch["grids"][1]) > net.encoder.stages[1][1].attn.topk
    assert net.attention_stages == [1, 2, 3]


def _bilateral_stage_one(net, arch, shapes):
    assert arch["isam_stages"] == [1, 2] and sorted(net.encoder.attention) == ["1", "2"]
    assert tuple(net.encoder.attention["1"].isam.window) == fit_window(shapes[1], 7)


STAGE_ONE_CHECKS = {"bsa": _bsa_stage_one, "mdsa": _mdsa_stage_one, "bilateral": _bilateral_stage_one}


@pytest.mark.parametrize("variant", list(NETWORKS))
def test_moving_attention_to_an_earlier_stage_configures_that_stage(variant):
    """``nnunet-sparseattn plan --set`` of the first attention stage: the stage gets regions (windows) chosen for
    its shape, not the defaults for the stages attention used to start at (BSA ran dense attention there)."""
    kw, patch = PLANS_CASES["hippocampus_3d"]
    shapes = stage_shapes(patch, kw["strides"])
    plans = variant_plans(
        plans_for(PLANS_CASES["hippocampus_3d"]), variant, overrides=VARIANTS[variant].earlier_attention
    )
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    cls = _cls(variant)
    net = cls.from_plans(arch, patch, 1, NUM_CLASSES, True)
    layout = {a.stage: a for a in cls.attention_layout(arch, patch)}
    assert 1 in layout and "dense" not in layout[1].text, layout  # the network's own account: stage 1 attends
    if variant in STAGE_ONE_CHECKS:
        STAGE_ONE_CHECKS[variant](net, arch, shapes)
