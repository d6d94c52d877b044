"""Behaviour at the places the type check narrowed: what was an ``AttributeError``/``TypeError`` deep in a stack is
now a one-line refusal, or a path that cannot run is a clean no-op. Fast: no training, no dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nnunet_sparseattn.architectures.bsa import BSAUNet
from nnunet_sparseattn.compare.run import Comparison
from nnunet_sparseattn.errors import UserError
from nnunet_sparseattn.harness.budgets import BudgetMixin
from nnunet_sparseattn.plans.variants import Variant, get_variant, network_class
from nnunet_sparseattn.trainers.optimizers import AdamWWarmupMixin


def test_a_variant_names_a_plans_network_or_is_refused_in_one_line():
    assert network_class(get_variant("bsa")) is BSAUNet
    not_a_network = Variant("conv", "Conv", "torch.nn.Conv3d", "nnUNetTrainerBSA")
    with pytest.raises(UserError, match=r"variant 'conv': torch.nn.Conv3d is not a network built from plans"):
        network_class(not_a_network)
    missing = Variant("gone", "Gone", "nnunet_sparseattn.architectures.NoSuchNet", "nnUNetTrainerBSA")
    with pytest.raises(UserError, match="is not importable"):
        network_class(missing)


def test_the_budget_timing_record_exists_only_after_on_train_start():
    mixin = object.__new__(BudgetMixin)
    mixin._timing = None
    with pytest.raises(RuntimeError, match="the timing record is made in on_train_start"):
        mixin._timing_record()
    # nnU-Net's _save_debug_information (in on_train_start, before the record exists) reads every attribute
    # that is not callable: none of ours may raise there
    for name in dir(mixin):
        if not name.startswith("__") and name not in {"_timing_file", "output_folder"}:
            getattr(mixin, name)
    mixin._timing = {"epochs": {}, "sessions": [], "iterations": []}
    assert mixin._timing_record() is mixin._timing


@pytest.mark.parametrize("clip, expected_norm", [(None, 10.0), (1.0, 1.0)])
def test_the_clip_hook_without_a_clip_of_its_own_leaves_the_gradient(clip, expected_norm):
    class Clipped(AdamWWarmupMixin):
        grad_clip_norm = clip

    weight = torch.nn.Parameter(torch.zeros(2))
    weight.grad = torch.tensor([6.0, 8.0])  # norm 10
    optimizer = torch.optim.SGD([weight], lr=0.1)
    object.__new__(Clipped)._clip_gradients(optimizer, (), {})
    assert float(weight.grad.norm()) == pytest.approx(expected_norm)


def test_compare_needs_the_preprocessed_dataset_once_planned(tmp_path: Path):
    comparison = object.__new__(Comparison)
    comparison.preprocessed_root, comparison.dataset_id = tmp_path, 4
    assert comparison._plans_file_if_planned("nnUNetPlans") is None  # before planning: nnU-Net's planner runs
    with pytest.raises(UserError, match=r"no Dataset004_\* in nnUNet_preprocessed"):
        comparison._plans_file("nnUNetPlans")
    (tmp_path / "Dataset004_Hippocampus").mkdir()
    expected = tmp_path / "Dataset004_Hippocampus" / "nnUNetPlans.json"
    assert comparison._plans_file("nnUNetPlans") == comparison._plans_file_if_planned("nnUNetPlans") == expected
