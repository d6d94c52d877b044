"""One mechanism that gives every shipped trainer the same short variants (``<Trainer>_debug``, ``<Trainer>_demo``).

nnU-Net sets ``num_epochs`` and the iterations per epoch in ``__init__`` (instance attributes), so a variant must
set them after the base ``__init__``; its signature stays the base's, as nnU-Net rebuilds the arguments from it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from nnunet_sparseattn.trainers.mixin_base import TrainerMixinBase

# written into the fold folder when a time budget fitted the epochs: what was planned, what the budget allowed
TIME_BUDGET_RECORD = "time_budget.json"


@dataclass(frozen=True)
class ShortSchedule:
    num_epochs: int
    num_iterations_per_epoch: int
    num_val_iterations_per_epoch: int
    # Wall-clock budget for the training epochs (None: no budget). Before the first epoch the epochs are cut,
    # never raised, to fit it, from the measured time of a real training step: a demo then ends in minutes on a
    # small synthetic dataset and on a real task with 4x larger batches alike.
    time_budget_s: float | None = None
    # Cap on the plans' batch size (None: the plans'). nnU-Net plans batches for a GPU (9 for Hippocampus); on
    # 2 CPU cores a smoke run only needs every code path, not the batch.
    max_batch_size: int | None = None
    # nnU-Net's final validation predicts with test-time mirroring (8 forward passes per 3D patch, 4 in 2D). A smoke
    # run only needs the code path once: False predicts each patch once there (the checkpoint keeps the plans' axes).
    validation_mirroring: bool = True


SHORT_SCHEDULES: dict[str, ShortSchedule] = {
    # CPU smoke runs (tests, CI): seconds per epoch
    "_debug": ShortSchedule(
        num_epochs=2,
        num_iterations_per_epoch=2,
        num_val_iterations_per_epoch=1,
        max_batch_size=2,
        validation_mirroring=False,
    ),
    # `make demo`: at most 8 minutes of training on 2 CPU cores (BSA-Seg's step takes ~4x the U-Net's there: 5 minutes
    # gave it 2 epochs), so that the whole demo stays within 15 minutes
    "_demo": ShortSchedule(
        num_epochs=10, num_iterations_per_epoch=20, num_val_iterations_per_epoch=3, time_budget_s=480.0
    ),
}


class ShortScheduleMixin(TrainerMixinBase):
    short_schedule: ShortSchedule
    batch_size: int  # nnU-Net's (set by _set_batch_size_and_oversample); declared as this mixin reassigns it
    inference_allowed_mirroring_axes: tuple[int, ...] | None  # nnU-Net's; this mixin hides it during validation

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.short_schedule.num_epochs
        self.num_iterations_per_epoch = self.short_schedule.num_iterations_per_epoch
        self.num_val_iterations_per_epoch = self.short_schedule.num_val_iterations_per_epoch

    def _set_batch_size_and_oversample(self) -> None:
        super()._set_batch_size_and_oversample()
        cap = self.short_schedule.max_batch_size
        if cap is not None and not self.is_ddp:  # under DDP the plans' batch is split over the GPUs: keep it
            self.batch_size = min(self.batch_size, cap)

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        if self.short_schedule.validation_mirroring:
            return super().perform_actual_validation(save_probabilities)
        axes = self.inference_allowed_mirroring_axes
        self.inference_allowed_mirroring_axes = None  # nnU-Net's predictor mirrors only along the axes it is given
        try:
            super().perform_actual_validation(save_probabilities)
        finally:
            self.inference_allowed_mirroring_axes = axes

    def on_train_start(self) -> None:
        super().on_train_start()  # nnU-Net's run_training reads num_epochs only after this returns
        if self.short_schedule.time_budget_s is not None and self.current_epoch == 0:
            self._fit_epochs_to_budget(self.short_schedule.time_budget_s)

    def _fit_epochs_to_budget(self, budget_s: float) -> None:
        # two real training steps (they train the network like any other); the second, past warm-up, is timed,
        # data loading included
        self.train_step(next(self.dataloader_train))
        started = time.perf_counter()
        self.train_step(next(self.dataloader_train))
        step_s = time.perf_counter() - started
        # a validation step is a forward pass: about a third of a training step
        epoch_s = step_s * (self.num_iterations_per_epoch + self.num_val_iterations_per_epoch / 3)
        epochs = max(1, min(self.num_epochs, int(budget_s // epoch_s)))
        if epochs < self.num_epochs:
            self.num_epochs = epochs
            if hasattr(self.lr_scheduler, "max_steps"):  # nnU-Net's poly schedule must still end at ~0
                self.lr_scheduler.max_steps = epochs
        self.print_to_log_file(
            f"time budget {budget_s:.0f} s: a training step takes {step_s:.2f} s, so "
            f"{self.num_epochs} epochs of {self.num_iterations_per_epoch} iterations",
            also_print_to_console=True,
        )
        if self.local_rank == 0:  # for what reports the run (the demo's summary says when the budget cut training)
            record = {
                "time_budget_s": budget_s,
                "step_s": step_s,
                "planned_epochs": self.short_schedule.num_epochs,
                "epochs": self.num_epochs,
                "iterations_per_epoch": self.num_iterations_per_epoch,
            }
            (Path(self.output_folder) / TIME_BUDGET_RECORD).write_text(json.dumps(record, indent=2))


def with_short_schedule(trainer: type, suffix: str, module: str) -> type:
    """Return ``trainer`` + ``suffix`` with the schedule ``SHORT_SCHEDULES[suffix]``.

    ``module`` must be the module that binds the returned class under its name, so that pickle finds it.
    """
    schedule = SHORT_SCHEDULES[suffix]
    name = trainer.__name__ + suffix
    budget = f", cut to fit {schedule.time_budget_s:.0f} s" if schedule.time_budget_s is not None else ""
    if schedule.max_batch_size is not None:
        budget += f", batches of at most {schedule.max_batch_size}"
    if not schedule.validation_mirroring:
        budget += ", final validation without test-time mirroring"
    doc = (
        f"{trainer.__name__} cut to {schedule.num_epochs} epochs x {schedule.num_iterations_per_epoch} "
        f"iterations (+{schedule.num_val_iterations_per_epoch} validation iterations){budget}."
    )
    return type(
        name,
        (ShortScheduleMixin, trainer),
        {"short_schedule": schedule, "__module__": module, "__qualname__": name, "__doc__": doc},
    )
