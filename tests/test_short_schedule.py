"""The short-schedule mechanism on a stand-in trainer (no data): epochs, iterations and the time budget."""

from __future__ import annotations

import itertools
import json
import tempfile
import time
from pathlib import Path

import pytest
import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

from nnunet_sparseattn.trainers.short_schedule import (
    SHORT_SCHEDULES,
    TIME_BUDGET_RECORD,
    ShortSchedule,
    with_short_schedule,
)


class StandInTrainer:
    """Just the parts of nnUNetTrainer the mechanism touches."""

    step_s = 0.2
    local_rank = 0

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 1000, 250, 50
        self.current_epoch = 0
        self.steps = 0
        self.optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
        self.lr_scheduler = PolyLRScheduler(self.optimizer, 0.01, self.num_epochs)
        self.log = []
        self.output_folder = tempfile.mkdtemp(prefix="stand_in_fold_")

    def on_train_start(self):
        self.dataloader_train = itertools.repeat({"data": None})

    def train_step(self, batch):
        self.steps += 1
        time.sleep(self.step_s)

    def print_to_log_file(self, *args, **kwargs):
        self.log.append(" ".join(map(str, args)))


def _variant(monkeypatch, schedule: ShortSchedule) -> type:
    monkeypatch.setitem(SHORT_SCHEDULES, "_test", schedule)
    return with_short_schedule(StandInTrainer, "_test", __name__)


def test_variant_sets_epochs_and_iterations_after_init(monkeypatch):
    trainer = _variant(monkeypatch, ShortSchedule(3, 5, 2))({}, "3d_fullres", 0, {})
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == (3, 5, 2)
    trainer.on_train_start()
    assert trainer.steps == 0 and trainer.num_epochs == 3  # no budget: nothing measured, nothing cut


def test_time_budget_cuts_epochs_and_the_lr_schedule(monkeypatch):
    # a step takes >= 0.2 s, so an epoch of 4 + 3/3 steps >= 1 s: a 4 s budget allows at most 4 of 10 epochs
    trainer = _variant(monkeypatch, ShortSchedule(10, 4, 3, time_budget_s=4.0))({}, "3d_fullres", 0, {})
    trainer.on_train_start()
    assert trainer.steps == 2
    assert 1 <= trainer.num_epochs <= 4
    assert trainer.lr_scheduler.max_steps == trainer.num_epochs
    assert "time budget 4 s" in trainer.log[-1]
    # what the demo's summary reports: the planned schedule beside what the budget allowed
    record = json.loads((Path(trainer.output_folder) / TIME_BUDGET_RECORD).read_text())
    assert record["planned_epochs"] == 10 and record["epochs"] == trainer.num_epochs
    assert record["iterations_per_epoch"] == 4 and record["step_s"] >= 0.2 and record["time_budget_s"] == 4.0


def test_time_budget_never_raises_epochs_nor_cuts_a_continued_run(monkeypatch):
    variant = _variant(monkeypatch, ShortSchedule(2, 1, 0, time_budget_s=1000.0))
    trainer = variant({}, "3d_fullres", 0, {})
    trainer.on_train_start()
    assert trainer.num_epochs == 2
    continued = _variant(monkeypatch, ShortSchedule(10, 4, 3, time_budget_s=0.1))({}, "3d_fullres", 0, {})
    continued.current_epoch = 5  # nnUNetv2_train -c: the budget was applied when the run started
    continued.on_train_start()
    assert continued.num_epochs == 10 and continued.steps == 0


@pytest.mark.parametrize("suffix", list(SHORT_SCHEDULES))
def test_shipped_schedules_are_short(suffix):
    schedule = SHORT_SCHEDULES[suffix]
    assert schedule.num_epochs * schedule.num_iterations_per_epoch <= 250


class StandInWithBatch(StandInTrainer):
    is_ddp = False

    def _set_batch_size_and_oversample(self):
        self.batch_size = 9  # what nnU-Net plans for Hippocampus 3d_fullres


@pytest.mark.parametrize("is_ddp,expected", [(False, 2), (True, 9)])
def test_debug_caps_the_plans_batch_size_except_under_ddp(monkeypatch, is_ddp, expected):
    variant = with_short_schedule(StandInWithBatch, "_debug", __name__)
    trainer = variant({}, "3d_fullres", 0, {})
    trainer.is_ddp = is_ddp
    trainer._set_batch_size_and_oversample()
    assert trainer.batch_size == expected
    assert "batches of at most 2" in variant.__doc__


class StandInWithValidation(StandInTrainer):
    inference_allowed_mirroring_axes = (0, 1, 2)

    def perform_actual_validation(self, save_probabilities=False):
        self.validated_with = self.inference_allowed_mirroring_axes  # what nnU-Net's predictor would be given


@pytest.mark.parametrize("mirroring", [True, False])
def test_final_validation_mirrors_only_where_the_schedule_says(monkeypatch, mirroring):
    monkeypatch.setitem(SHORT_SCHEDULES, "_test", ShortSchedule(1, 1, 1, validation_mirroring=mirroring))
    trainer = with_short_schedule(StandInWithValidation, "_test", __name__)({}, "3d_fullres", 0, {})
    trainer.perform_actual_validation()
    assert trainer.validated_with == ((0, 1, 2) if mirroring else None)
    assert trainer.inference_allowed_mirroring_axes == (0, 1, 2)  # what the checkpoint and nnUNetv2_predict keep


def test_the_debug_schedule_validates_without_mirroring_and_says_so():
    assert not SHORT_SCHEDULES["_debug"].validation_mirroring and SHORT_SCHEDULES["_demo"].validation_mirroring
    assert "without test-time mirroring" in with_short_schedule(StandInTrainer, "_debug", __name__).__doc__
