"""AdamW + warm-up + poly decay (``AdamWWarmupMixin``, ``nnUNetTrainerBSA_AdamW``), held to closed forms and to
nnU-Net's own warm-up trainer; short variants, budget cuts, clipping, checkpoints, pickling and lookup.

The trainers are nnU-Net's real classes built from a plans dict, without a dataset: the network (BSA at a small
width), optimizer and loss are made the way ``initialize`` makes them.
"""

from __future__ import annotations

import copy
import itertools
import os
import pickle
from unittest import mock

import numpy as np
import pytest
import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.lr_scheduler.warmup import (
    Lin_incr_LRScheduler,
    PolyLRScheduler_offset,
)
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from plans_cases import HIPPOCAMPUS_3D, dataset_json, plans_for

from nnunet_sparseattn.trainers import (
    SHIPPED_TRAINERS,
    nnUNetTrainerBSA,
    nnUNetTrainerBSA_AdamW,
    nnUNetTrainerBSA_AdamW_debug,
    nnUNetTrainerBSA_AdamW_demo,
)
from nnunet_sparseattn.trainers.optimizers import NNUNET_GRAD_CLIP, AdamWWarmupMixin

# Hippocampus's plans at a quarter of the width and a smaller patch: real BSA stages, fast steps
_ARCH, _ = HIPPOCAMPUS_3D
ARCH = dict(copy.deepcopy(_ARCH), features_per_stage=[8, 16, 32, 64])
PATCH = (16, 16, 16)
DATASET_JSON = dataset_json(["anterior", "posterior"], num_training=4)


def _trainer(make, cls: type, build: bool = True):
    """``make``: the ``trainer_without_data`` fixture; ``build``: what nnUNetTrainer.initialize does, minus the
    dataset (network, optimizer, schedule, loss)."""
    plans = plans_for((copy.deepcopy(ARCH), PATCH))
    plans["configurations"]["3d_fullres"]["batch_size"] = 2
    return make(cls, plans, "3d_fullres", DATASET_JSON, initialize=build)


def _batch(trainer, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(2, 1, *PATCH, generator=g)
    with torch.no_grad():
        shapes = [o.shape[2:] for o in trainer.network(data)]
    target = [torch.randint(0, 3, (2, 1, *s), generator=g).float() for s in shapes]
    return {"data": data, "target": target}


def _record_steps(monkeypatch) -> list[float]:
    """Replace nnU-Net's own train_step (forward, loss, backward, step) by a recorder of the learning rate it would
    step with: for schedule tests, which need no network compute (a BSA step takes seconds on a busy CPU)."""
    used: list[float] = []

    def step(self, batch):
        used.append(self.optimizer.param_groups[0]["lr"])
        return {"loss": np.float32(0.0)}

    monkeypatch.setattr(nnUNetTrainer, "train_step", step)
    return used


def _reference_lr(lr: float, warmup: int, total: int, g: int) -> float:
    """Closed form: linear to lr over ``warmup`` iterations (g + 1) / warmup, then poly 0.9 to the last one."""
    if g < warmup:
        return lr * (g + 1) / warmup
    return lr * (1 - (g - warmup) / (total - warmup)) ** 0.9


def test_adamw_trainer_builds_adamw_with_primus_settings_and_sgd_trainer_stays_sgd(trainer_without_data):
    adamw = _trainer(trainer_without_data, nnUNetTrainerBSA_AdamW)
    assert isinstance(adamw.optimizer, torch.optim.AdamW)
    group = adamw.optimizer.param_groups[0]
    assert group["betas"] == (0.9, 0.98) and group["weight_decay"] == 5e-2
    assert group["fused"] is True  # one kernel for all tensors, on the CPU too (4-6x faster than the loop there)
    assert (adamw.initial_lr, adamw.weight_decay) == (3e-4, 5e-2)  # nnU-Net's own attributes, as it logs them
    assert {id(p) for p in group["params"]} == {id(p) for p in adamw.network.parameters()}
    assert group["lr"] == pytest.approx(3e-4 / adamw.warmup_iterations())  # starts at the warm-up's first value
    sgd = _trainer(trainer_without_data, nnUNetTrainerBSA)
    assert type(sgd.optimizer) is torch.optim.SGD and isinstance(sgd.lr_scheduler, PolyLRScheduler)
    assert sgd.initial_lr == 1e-2
    # same network class and loss: only the optimizer differs
    assert type(adamw.network) is type(sgd.network) and type(adamw.loss) is type(sgd.loss)


@pytest.mark.parametrize(
    "name, sgd_name, network, lr",
    [
        ("nnUNetTrainerMDSA_AdamW", "nnUNetTrainerMDSA", "MDSAUNet", 3e-4),
        ("nnUNetTrainerBilateral_AdamW", "nnUNetTrainerBilateral_SGD", "BilateralUNet", 1e-3),
        (
            "nnUNetTrainerBilateral",
            "nnUNetTrainerBilateral_SGD",
            "BilateralUNet",
            1e-3,
        ),  # the default since the benchmark
    ],
)
def test_mdsa_and_bilateral_adamw_trainers_change_only_the_optimizer(trainer_without_data, name, sgd_name, network, lr):
    """The bilateral paper trained with Adam at 1e-3: its AdamW trainer starts from that rate; MDSA's from Primus's."""
    from nnunet_sparseattn import trainers

    adamw = _trainer(trainer_without_data, getattr(trainers, name))
    sgd = _trainer(trainer_without_data, getattr(trainers, sgd_name))
    assert isinstance(adamw.optimizer, torch.optim.AdamW) and type(sgd.optimizer) is torch.optim.SGD
    assert adamw.initial_lr == lr and adamw.optimizer.param_groups[0]["betas"] == (0.9, 0.98)
    assert type(adamw.network).__name__ == type(sgd.network).__name__ == network
    assert type(adamw.loss) is type(sgd.loss)
    assert adamw.set_lr_for_iteration(adamw.warmup_iterations() - 1) == pytest.approx(lr)


def test_class_attributes_configure_it(trainer_without_data):
    class Custom(nnUNetTrainerBSA_AdamW):
        adamw_lr = 1e-3
        adamw_weight_decay = 1e-2
        adamw_betas = (0.8, 0.9)
        warmup_fraction = 0.25

    trainer = _trainer(trainer_without_data, Custom)
    group = trainer.optimizer.param_groups[0]
    assert (group["betas"], group["weight_decay"], trainer.initial_lr) == ((0.8, 0.9), 1e-2, 1e-3)
    assert trainer.warmup_iterations() == 0.25 * 1000 * 250
    assert trainer.set_lr_for_iteration(trainer.warmup_iterations() - 1) == pytest.approx(1e-3)


@pytest.mark.parametrize("epochs,per_epoch", [(1000, 250), (8, 25), (3, 7)])
def test_lr_at_warmup_start_end_and_after_follows_the_closed_form(epochs, per_epoch, trainer_without_data):
    trainer = _trainer(trainer_without_data, nnUNetTrainerBSA_AdamW)
    trainer.num_epochs, trainer.num_iterations_per_epoch = epochs, per_epoch
    total = epochs * per_epoch
    warmup = trainer.warmup_iterations()
    assert warmup == max(2, round(0.05 * total))
    checked = sorted({0, 1, warmup - 1, warmup, warmup + 1, total // 2, total - 1})
    for g in checked:
        assert trainer.set_lr_for_iteration(g) == pytest.approx(_reference_lr(3e-4, warmup, total, g), rel=1e-9), g
    assert trainer.set_lr_for_iteration(0) < 3e-4 / 2
    assert trainer.set_lr_for_iteration(warmup - 1) == pytest.approx(3e-4)  # the peak, at the warm-up's end
    assert 0 < trainer.set_lr_for_iteration(total - 1) < 0.15 * 3e-4  # decayed, not zero, at the last step
    lrs = [trainer.set_lr_for_iteration(g) for g in range(0, total, max(1, total // 500))]
    peak = lrs.index(max(lrs))
    assert all(a <= b for a, b in itertools.pairwise(lrs[: peak + 1]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[peak:]))


def test_full_schedule_matches_nnunets_warmup_trainer_at_epoch_boundaries(trainer_without_data):
    # nnUNetTrainer_warmup / Primus: 50 warm-up epochs of 1000 (per epoch), then poly from epoch 50
    trainer = _trainer(trainer_without_data, nnUNetTrainerBSA_AdamW)
    lr, per_epoch = 3e-4, trainer.num_iterations_per_epoch
    assert trainer.warmup_iterations() == 50 * per_epoch
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    nnunet_warmup = Lin_incr_LRScheduler(opt, lr, 50)
    for epoch in (0, 10, 49):  # nnU-Net's warm-up value of epoch e is reached at the end of that epoch here
        nnunet_warmup.step(epoch)
        assert trainer.set_lr_for_iteration((epoch + 1) * per_epoch - 1) == pytest.approx(opt.param_groups[0]["lr"])
    nnunet_decay = PolyLRScheduler_offset(opt, lr, 1000, 50)
    for epoch in (50, 51, 500, 999):  # after the warm-up: nnU-Net's schedule exactly, at each epoch's start
        nnunet_decay.step(epoch)
        assert trainer.set_lr_for_iteration(epoch * per_epoch) == pytest.approx(opt.param_groups[0]["lr"])


def test_nnunet_logs_the_lr_of_each_epochs_first_iteration_and_train_step_moves_it(monkeypatch, trainer_without_data):
    trainer = _trainer(trainer_without_data, nnUNetTrainerBSA_AdamW_debug)  # 2 epochs x 2 iterations
    per_epoch = trainer.num_iterations_per_epoch
    total, warmup = trainer.num_epochs * per_epoch, trainer.warmup_iterations()
    assert 2 <= warmup < total
    used = _record_steps(monkeypatch)
    for epoch in range(trainer.num_epochs):
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()
        logged = trainer.logger.get_value("lrs", step=-1)
        assert logged == pytest.approx(_reference_lr(3e-4, warmup, total, epoch * per_epoch))
        for _ in range(trainer.num_iterations_per_epoch):
            trainer.train_step({})
    assert used == pytest.approx([_reference_lr(3e-4, warmup, total, g) for g in range(total)])
    # the debug run warms up (starts below the peak, reaches it), then decays, inside its 2 epochs
    assert used[0] < used[warmup - 1] == pytest.approx(3e-4) and used[-1] < 3e-4


def test_a_time_budget_cut_rebuilds_the_schedule_for_the_epochs_left(monkeypatch, trainer_without_data):
    trainer = _trainer(trainer_without_data, nnUNetTrainerBSA_AdamW_demo)  # 10 epochs x 20
    trainer.dataloader_train = itertools.repeat({})
    _record_steps(monkeypatch)
    ticks = itertools.count(0.0, 100.0)  # every timed step "takes" 100 s: the budget allows 1 epoch
    monkeypatch.setattr("nnunet_sparseattn.trainers.short_schedule.time.perf_counter", lambda: next(ticks))
    trainer._fit_epochs_to_budget(300.0)  # the demo mixin's own cut (it also edits lr_scheduler.max_steps)
    assert trainer.num_epochs == 1
    trainer.current_epoch = 0
    trainer.on_train_epoch_start()
    total = trainer.num_epochs * trainer.num_iterations_per_epoch
    warmup = trainer.warmup_iterations()
    assert warmup == 2  # 5% of 20 iterations is 1: the minimum ramp
    for g in (0, 1, 2, total - 1):
        assert trainer.set_lr_for_iteration(g) == pytest.approx(_reference_lr(3e-4, warmup, total, g))


def _with_small_network(trainer):
    """nnU-Net's real train_step on a one-layer network and a loss with gradients far above any clip (fast)."""
    trainer.network = torch.nn.Conv3d(1, 3, 3, padding=1)
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    trainer.loss = lambda output, target: 1e3 * ((output - target) ** 2).mean()
    g = torch.Generator().manual_seed(0)
    return {"data": torch.randn(2, 1, 6, 6, 6, generator=g), "target": torch.randn(2, 3, 6, 6, 6, generator=g)}


def _grad_norm(network: torch.nn.Module) -> float:
    return float(
        torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in network.parameters()]))
    )


def test_train_step_clips_at_the_configured_norm_and_refuses_a_clip_above_nnunets(trainer_without_data):
    class Clipped(nnUNetTrainerBSA_AdamW):
        grad_clip_norm = 0.5

    trainer = _trainer(trainer_without_data, Clipped, build=False)
    batch = _with_small_network(trainer)
    trainer.on_train_epoch_start()
    before = [p.detach().clone() for p in trainer.network.parameters()]
    trainer.train_step(batch)
    assert _grad_norm(trainer.network) == pytest.approx(0.5, rel=1e-5)  # the optimizer stepped with these
    assert all(not torch.equal(a, p) for a, p in zip(before, trainer.network.parameters()))

    default = _trainer(trainer_without_data, nnUNetTrainerBSA_AdamW, build=False)  # None: nnU-Net's clip at 12 alone
    batch = _with_small_network(default)
    assert not default.optimizer._optimizer_step_pre_hooks
    default.on_train_epoch_start()
    default.train_step(batch)
    assert _grad_norm(default.network) == pytest.approx(NNUNET_GRAD_CLIP, rel=1e-5)

    class TooLoose(nnUNetTrainerBSA_AdamW):
        grad_clip_norm = 20.0

    with pytest.raises(ValueError, match=rf"grad_clip_norm is 20.0: use a value in \(0, {NNUNET_GRAD_CLIP:g}\]"):
        _with_small_network(_trainer(trainer_without_data, TooLoose, build=False))


def test_checkpoint_resumes_adamw_state_and_the_schedule(tmp_path, trainer_without_data):
    trainer = _trainer(trainer_without_data, nnUNetTrainerBSA_AdamW)
    trainer.num_epochs, trainer.num_iterations_per_epoch = 6, 3
    trainer.on_train_epoch_start()
    trainer.train_step(_batch(trainer))
    trainer.current_epoch = 3  # as if epochs 0-3 ran; nnU-Net stores current_epoch + 1
    trainer.logger.log("lrs", 0.0, 1), trainer.logger.log("lrs", 0.0, 2), trainer.logger.log("lrs", 0.0, 3)
    path = str(tmp_path / "checkpoint.pth")
    trainer.save_checkpoint(path)

    resumed = _trainer(trainer_without_data, nnUNetTrainerBSA_AdamW)
    resumed.num_epochs, resumed.num_iterations_per_epoch = 6, 3
    resumed.load_checkpoint(path)
    assert resumed.current_epoch == 4
    state = resumed.optimizer.state_dict()["state"]
    assert state and all("exp_avg_sq" in s for s in state.values())  # Adam's moments came back
    resumed.on_train_epoch_start()
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(_reference_lr(3e-4, 2, 18, 12))
    assert resumed.scheduler_at(12) is resumed.lr_scheduler


def test_trainers_are_shipped_pickle_and_are_found_by_nnunet():
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    import nnunet_sparseattn
    from nnunet_sparseattn import trainers
    from nnunet_sparseattn.discovery import ext_trainer_path

    assert nnUNetTrainerBSA_AdamW in SHIPPED_TRAINERS
    assert issubclass(nnUNetTrainerBSA_AdamW, AdamWWarmupMixin) and issubclass(nnUNetTrainerBSA_AdamW, nnUNetTrainerBSA)
    assert nnunet_sparseattn.nnUNetTrainerBSA_AdamW is nnUNetTrainerBSA_AdamW
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    with_adamw = {
        "nnUNetTrainerMDSA_AdamW": trainers.nnUNetTrainerMDSA,
        "nnUNetTrainerBilateral_AdamW": trainers.nnUNetTrainerBilateral,
        # the controls: the same recipe on the networks without attention
        "nnUNetTrainer_AdamW": nnUNetTrainer,
        "nnUNetTrainerNB_AdamW": trainers.nnUNetTrainerNB,
    }
    for name, base in with_adamw.items():
        cls = getattr(trainers, name)
        assert cls in SHIPPED_TRAINERS and issubclass(cls, AdamWWarmupMixin) and issubclass(cls, base)
    assert set(trainers.CONTROL_TRAINERS).isdisjoint(trainers.MAIN_TRAINERS)
    with mock.patch.dict(os.environ, {"nnUNet_extTrainer": str(ext_trainer_path())}):
        for name in ("nnUNetTrainerBSA_AdamW", *with_adamw):
            for suffix in ("", "_debug", "_demo"):
                cls = getattr(trainers, name + suffix)
                assert pickle.loads(pickle.dumps(cls)) is cls
                assert recursive_find_trainer_class_by_name(cls.__name__) is cls


def _compare_run(trainer: str, per_case: list[float], digest: str = "d1") -> dict:
    return {
        "status": "done",
        "mean_dice": sum(per_case) / len(per_case),
        "dice": {"lesion": 0.0},
        "s_per_iter": 1.0,
        "per_case": {str(i): {"mean_dice": v} for i, v in enumerate(per_case)},
        "folds": {
            "0": {
                "batches_digest": digest,
                "loss_first_quarter": 1.0,
                "loss_last_quarter": 0.5,
                "grad_norm_median": 1.0,
                "grad_norm_max": 2.0,
                "iterations_clipped_at_12": 0,
                "curve": {"train_loss": [1.0, 0.5]},
            }
        },
    }


def test_optimizer_benchmark_calls_a_difference_clear_only_when_large_and_significant():
    pytest.importorskip("benchmarks.optimizer")
    from benchmarks import optimizer as bench

    sgd = [0.70, 0.72, 0.71, 0.69, 0.70, 0.73, 0.70, 0.71]
    runs = {
        "nnUNetTrainerBSA__nnUNetPlans": _compare_run("nnUNetTrainerBSA", sgd),
        "nnUNetTrainerBSA_AdamW__nnUNetPlans": _compare_run("nnUNetTrainerBSA_AdamW", [v + 0.05 for v in sgd]),
        "nnUNetTrainerMDSA__nnUNetPlans": _compare_run("nnUNetTrainerMDSA", sgd),
        "nnUNetTrainerMDSA_AdamW__nnUNetPlans": _compare_run(
            "nnUNetTrainerMDSA_AdamW", [v + (0.01 if i % 2 else -0.01) for i, v in enumerate(sgd)], "d2"
        ),
    }
    adamw = bench.pair({"runs": runs}, "nnUNetTrainerBSA", "nnUNetTrainerBSA_AdamW")
    assert adamw["verdict"] == "AdamW clearly better" and adamw["same_batches"]
    assert adamw["adamw_minus_sgd"]["mean_difference"] == pytest.approx(0.05)
    assert adamw["adamw_minus_sgd"]["p_value"] == pytest.approx(2 / 2**8)  # 8 of 8 better
    assert adamw["sgd"]["loss_last_quarter"] == 0.5 and adamw["adamw"]["trainer"] == "nnUNetTrainerBSA_AdamW"
    mixed = bench.pair({"runs": runs}, "nnUNetTrainerMDSA", "nnUNetTrainerMDSA_AdamW")
    assert mixed["verdict"] == "no clear difference" and not mixed["same_batches"]
    missing = bench.pair({"runs": runs}, *bench.NETWORKS["Bilateral"])
    assert missing["status"] == "incomplete"
    section = bench.render(
        {
            "command": "python benchmarks/optimizer.py",
            "training_cases": 40,
            "cases": 8,
            "budget": {"name": "cpu"},
            "budget_text": "8 x 16",
            "machine": "test CPU",
            "networks": {"BSA": adamw, "MDSA": mixed, "Bilateral": missing},
        }
    )
    assert (
        "| BSA | AdamW + warm-up | 0.758 | +5.0 (p 0.008, 8/8) | 1.000 -> 0.500 | 1.00, 2.00 (0) | 1.000 | yes "
        "| AdamW clearly better |" in section
    )
    assert "| Bilateral | – | – | – | – | – | – | – | incomplete |" in section


@pytest.mark.gpu
def test_cuda_step_uses_fused_adamw_under_autocast_and_grad_scaler_with_the_clip(tmp_path):
    # nnU-Net's CUDA path: fp16 autocast, GradScaler (unscale_, clip at 12, scaler.step), fused AdamW + our clip
    class Clipped(nnUNetTrainerBSA_AdamW):
        grad_clip_norm = 1e-3

    plans = plans_for((copy.deepcopy(ARCH), PATCH))
    plans["continue_training"] = False
    with mock.patch.dict(os.environ, {"nnUNet_results": str(tmp_path / "results")}):
        trainer = Clipped(plans, "3d_fullres", 0, DATASET_JSON, device=torch.device("cuda"))
    trainer.num_epochs, trainer.num_iterations_per_epoch = 1, 4  # first step at lr / 2: a visible update
    trainer.network = torch.nn.Conv3d(1, 3, 3, padding=1).cuda()
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    assert trainer.optimizer.defaults["fused"] is True and trainer.grad_scaler is not None
    # a moderate scale: fp16 gradients of this toy loss do not overflow, so the step is taken, not skipped
    trainer.grad_scaler = torch.amp.GradScaler("cuda", init_scale=2.0**4)
    trainer.loss = lambda output, target: ((output.float() - target) ** 2).mean()
    trainer.on_train_epoch_start()
    before = [p.detach().clone() for p in trainer.network.parameters()]
    g = torch.Generator().manual_seed(0)
    out = trainer.train_step(
        {"data": torch.randn(2, 1, 6, 6, 6, generator=g), "target": torch.randn(2, 3, 6, 6, 6, generator=g)}
    )
    assert np.isfinite(out["loss"])
    assert _grad_norm(trainer.network) == pytest.approx(1e-3, rel=1e-3)  # unscaled, then clipped
    assert all(not torch.equal(a, p) for a, p in zip(before, trainer.network.parameters()))
