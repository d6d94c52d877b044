"""The references a comparison sets every trainer beside (``--baselines``). Imports nothing heavy: the CLI's help
lists them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Baseline:
    label: str
    trainer: str
    plans: str | None  # None: the comparison's plans (--plans)
    planner: str | None = None  # nnU-Net's planner that writes ``plans`` when they are missing


BASELINES: dict[str, Baseline] = {
    "stock": Baseline("stock nnU-Net", "nnUNetTrainer", None),
    # nnU-Net's ResEnc M preset: a stronger reference, planned by its own planner (same preprocessed data)
    "resenc-m": Baseline("ResEnc M", "nnUNetTrainer", "nnUNetResEncUNetMPlans", "nnUNetPlannerResEncM"),
}
