"""The network speed benchmark (benchmarks/network_speed.py) measures what nnU-Net's trainers would run.

Held to nnU-Net itself: the networks against each trainer's ``build_network_architecture`` (same class, same weights
under the same seed), the loss and optimizer against what ``nnUNetTrainer.initialize`` builds, the sliding window
against ``nnUNetPredictor``; the FLOP count against the attention's own arithmetic. The speed itself is measured by
the benchmark, not asserted here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from benchmarks import network_speed as ns


def _trainer_class(name: str) -> type:
    if name == "nnUNetTrainer":
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        return nnUNetTrainer
    import nnunet_sparseattn.trainers as trainers

    return getattr(trainers, name)


@pytest.mark.parametrize("plan_name", ns.PLANS)
def test_the_plans_are_nnunets_plans_as_kept(plan_name):
    record = json.loads((ns.PLANS_DIR / f"{plan_name}.json").read_text())
    assert set(record["plans"]["configurations"]) == {record["configuration"]}  # one configuration each
    plan = ns.load_plan(plan_name)
    expected = {
        "hippocampus_3d_fullres": ((40, 56, 40), 9),
        "isic2017_2d": ((256, 256), 49),
        "six_stage_128_3d": ((128, 128, 128), 2),
    }[plan_name]
    assert (plan.patch_size, plan.batch_size) == expected
    if plan_name == "six_stage_128_3d":
        assert len(plan.arch_kwargs["features_per_stage"]) == 6


@pytest.mark.parametrize("key", list(ns.NETWORKS))
@pytest.mark.parametrize("plan_name", ns.PLANS)
def test_each_network_is_the_one_its_trainer_builds(plan_name, key):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plan = ns.load_plan(plan_name)
    record = json.loads((ns.PLANS_DIR / f"{plan_name}.json").read_text())
    manager = PlansManager(record["plans"])
    configuration = manager.get_configuration(record["configuration"])
    trainer = _trainer_class(ns.NETWORKS[key].trainer)
    torch.manual_seed(0)
    theirs = trainer.build_network_architecture(manager, configuration, plan.input_channels, plan.num_classes, True)
    torch.manual_seed(0)
    ours = ns.build_network(key, plan, deep_supervision=True)
    assert type(ours) is type(theirs)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)  # same construction, same initialisation


def test_loss_and_optimizer_are_those_nnunets_trainer_builds(trainer_without_data):
    record = json.loads((ns.PLANS_DIR / "hippocampus_3d_fullres.json").read_text())
    trainer = _trainer_class("nnUNetTrainer")
    made = trainer_without_data(trainer, record["plans"], "3d_fullres", record["dataset_json"])
    plan = ns.load_plan("hippocampus_3d_fullres")
    loss = ns.build_loss(plan, compile_dice=False)
    assert type(loss) is type(made.loss)
    np.testing.assert_array_equal(loss.weight_factors, made.loss.weight_factors)
    ours, theirs = loss.loss, made.loss.loss
    assert type(ours) is type(theirs) and type(ours.dc) is type(theirs.dc)
    for name in ("batch_dice", "do_bg", "smooth", "ddp"):
        assert getattr(ours.dc, name) == getattr(theirs.dc, name)
    assert (ours.weight_ce, ours.weight_dice, ours.ignore_label) == (
        theirs.weight_ce,
        theirs.weight_dice,
        theirs.ignore_label,
    )
    optimizer = ns.build_optimizer(nn.Linear(2, 2))
    assert type(optimizer) is type(made.optimizer)
    keys = ("lr", "momentum", "nesterov", "weight_decay", "dampening")
    assert {k: optimizer.param_groups[0][k] for k in keys} == {k: made.optimizer.param_groups[0][k] for k in keys}
    assert plan.deep_supervision_scales() == [list(s) for s in made._get_deep_supervision_scales()]


@pytest.mark.parametrize("plan_name", ["hippocampus_3d_fullres", "isic2017_2d"])
def test_sliding_window_equals_nnunets_predictor(plan_name):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plan = ns.tiny_plan(ns.load_plan(plan_name))
    record = json.loads((ns.PLANS_DIR / f"{plan_name}.json").read_text())
    record["plans"]["configurations"][record["configuration"]] = plan.configuration
    manager = PlansManager(record["plans"])
    torch.manual_seed(0)
    network = ns.build_network("stock", plan, deep_supervision=False)
    shape = [p + p // 2 + 1 for p in plan.patch_size]  # several tiles, a ragged last one
    image = torch.randn(plan.input_channels, *shape)
    predictor = nnUNetPredictor(
        tile_step_size=0.5, use_gaussian=True, use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False
    )
    predictor.manual_initialization(
        network,
        manager,
        manager.get_configuration(record["configuration"]),
        None,
        record["dataset_json"],
        "nnUNetTrainer",
        None,
    )
    theirs = predictor.predict_sliding_window_return_logits(image if len(shape) == 3 else image[:, None])
    ours = ns.sliding_window_logits(network, image, plan.patch_size, plan.num_classes, torch.device("cpu"))
    torch.testing.assert_close(ours, theirs if len(shape) == 3 else theirs[:, 0], rtol=0, atol=0)


def test_routed_attention_flops_are_counted_as_their_arithmetic():
    """flex's formula counts every key region; while counting, routed attention runs through gather instead."""
    from torch.utils.flop_counter import FlopCounterMode

    from nnunet_sparseattn.complexity import flop_counter
    from nnunet_sparseattn.layers import RoutedAttention

    routed = RoutedAttention(32, 1, (2, 2, 2), topk=2, backend="gather")
    x = torch.randn(1, 32, 8, 8, 8)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:  # torch's own counter: CPU SDPA counts 0
        routed(x)
    without = counter.get_total_flops()  # the projections, LCE and region affinity
    routed.backend = "flex"
    with torch.no_grad(), ns.countable_attention(routed), flop_counter() as counter:
        routed(x)
        assert routed.backend == "gather"
    assert routed.backend == "flex"  # restored
    # 8 query regions of 64 tokens, each over its 2 routed key regions (128 tokens), 32 channels, one head
    assert counter.get_total_flops() - without == 2 * 2 * (8 * 64 * 128 * 32)


def test_a_tiny_run_interleaves_before_and_after_and_writes_its_tables(tmp_path):
    """The CPU at dry-run sizes, our networks also as ``HEAD`` builds them (a worker on a ``git archive``)."""
    out = tmp_path / "speed.json"
    ns.main(
        [
            "--tiny",
            "--plans",
            "isic2017_2d",
            "--networks",
            "stock,mdsa",
            "--repeats",
            "2",
            "--before",
            "HEAD",
            "--no-profile",
            "--out",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    plan = result["plans"]["isic2017_2d"]
    for entry in [*plan["networks"].values(), *plan["before"]["networks"].values()]:
        assert entry["status"] == "done" and entry["losses_finite"]
        assert len(entry["s_per_step_runs"]) == 2 and entry["flops"] > 0
    assert list(plan["before"]["networks"]) == ["mdsa"]  # stock is nnU-Net's in both trees
    assert plan["before"]["networks"]["mdsa"]["first_loss_difference"] < 1e-5  # same code, same loss
    assert plan["before"]["networks"]["mdsa"]["flops"] == plan["networks"]["mdsa"]["flops"]
    text = ns.render(result)
    assert "Before (`HEAD`" in text and "| MDSA |" in text and "CPU time per FLOP" in text
    cuda = ns.render({**result, "device": "cuda", "mode": "compiled"})  # the GPU run's columns render too
    assert "of the planner's 8 GB" in cuda and "graph breaks" in cuda


def test_the_time_split_groups_the_costliest_operators_and_implies_the_step():
    """Hand-computed: operators worth 60 % of a 1000 ms step; the rest of the step is "everything else"."""
    top_ops = [
        {"op": "aten::convolution_backward", "self_ms": 300.0, "share": 0.3},
        {"op": "aten::mkldnn_convolution", "self_ms": 100.0, "share": 0.1},
        {"op": "aten::_scaled_dot_product_flash_attention_for_cpu", "self_ms": 50.0, "share": 0.05},
        {"op": "aten::mm", "self_ms": 50.0, "share": 0.05},
        {"op": "aten::copy_", "self_ms": 40.0, "share": 0.04},
        {"op": "aten::native_layer_norm", "self_ms": 60.0, "share": 0.06},
    ]
    result = {"plans": {"p": {"networks": {"x": {"label": "X", "top_ops": top_ops}, "y": {"label": "Y"}}}}}
    rows = ns.split_table(result, "p").splitlines()
    assert len(rows) == 3  # header, rule, X (Y has no profile)
    assert rows[2] == "| X | 1000 | 400 | 100 | 40 | 460 |"
