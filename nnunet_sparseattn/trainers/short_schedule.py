"""One mechanism that gives every shipped trainer the same short variants (``<Trainer>_debug``, ``<Trainer>_demo``).

nnU-Net sets ``num_epochs`` and the iterations per epoch in ``__init__`` (instance attributes), so a variant must
set them after the base ``__init__``; its signature stays the base's, as nnU-Net rebuilds the arguments from it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ShortSchedule:
    num_epochs: int
    num_iterations_per_epoch: int
    num_val_iterations_per_epoch: int


SHORT_SCHEDULES: dict[str, ShortSchedule] = {
    # CPU smoke runs (tests, CI): seconds per epoch
    "_debug": ShortSchedule(num_epochs=2, num_iterations_per_epoch=4, num_val_iterations_per_epoch=2),
    # `make demo`: a few minutes on 2 CPU cores for the embedded demo dataset
    "_demo": ShortSchedule(num_epochs=10, num_iterations_per_epoch=20, num_val_iterations_per_epoch=3),
}


class _ShortScheduleMixin:
    short_schedule: ShortSchedule

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.short_schedule.num_epochs
        self.num_iterations_per_epoch = self.short_schedule.num_iterations_per_epoch
        self.num_val_iterations_per_epoch = self.short_schedule.num_val_iterations_per_epoch


def with_short_schedule(trainer: type, suffix: str, module: str) -> type:
    """Return ``trainer`` + ``suffix`` with the schedule ``SHORT_SCHEDULES[suffix]``.

    ``module`` must be the module that binds the returned class under its name, so that pickle finds it.
    """
    schedule = SHORT_SCHEDULES[suffix]
    name = trainer.__name__ + suffix
    doc = (f"{trainer.__name__} cut to {schedule.num_epochs} epochs x {schedule.num_iterations_per_epoch} "
           f"iterations (+{schedule.num_val_iterations_per_epoch} validation iterations).")
    return type(name, (_ShortScheduleMixin, trainer),
                {"short_schedule": schedule, "__module__": module, "__qualname__": name, "__doc__": doc})
