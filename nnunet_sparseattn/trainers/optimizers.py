"""AdamW with a linear warm-up, then poly decay: the recipe of nnU-Net's own attention trainers (Primus), as a mixin.

Put :class:`AdamWWarmupMixin` in front of any of our trainers (``class T(AdamWWarmupMixin, nnUNetTrainerBSA)``)
and configure it with class attributes in a subclass, never with new ``__init__`` arguments (nnU-Net rebuilds
those from the signature)::

    class nnUNetTrainerBSA_AdamW1en3(nnUNetTrainerBSA_AdamW):
        adamw_lr = 1e-3
        warmup_fraction = 0.1

The schedules are nnU-Net's own (``nnunetv2.training.lr_scheduler.warmup``), in nnU-Net's unit, epochs, but
stepped once per training iteration with the fractional epoch ``epoch + i / iterations_per_epoch`` (nnU-Net steps
only once per epoch): a warm-up of a few hundred iterations then rises smoothly, and a 2-epoch ``_debug`` run still
warms up. At each epoch start nnU-Net steps (and logs) the same schedule with the integer epoch, so its logged
learning rate is the one the epoch's first iteration uses.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from nnunetv2.training.lr_scheduler.warmup import (
    Lin_incr_offset_LRScheduler,
    PolyLRScheduler_offset,
)

from nnunet_sparseattn.trainers.mixin_base import TrainerMixinBase

# nnU-Net's train_step clips the gradient norm at this value (a literal in nnUNetTrainer.train_step)
NNUNET_GRAD_CLIP = 12.0


class AdamWWarmupMixin(TrainerMixinBase):
    """AdamW, a linear warm-up over the first ``warmup_fraction`` of all training iterations, then nnU-Net's poly
    decay (exponent 0.9) to the last iteration. Defaults are Primus's (``AbstractPrimus``: lr 3e-4, weight decay
    5e-2, betas (0.9, 0.98)); its warm-up is 50 of 1000 epochs, i.e. 5%."""

    adamw_lr: ClassVar[float] = 3e-4
    adamw_weight_decay: ClassVar[float] = 5e-2
    adamw_betas: ClassVar[tuple[float, float]] = (0.9, 0.98)
    warmup_fraction: ClassVar[float] = 0.05
    # A warm-up is at least this many iterations (a ramp needs two points): short schedules still ramp.
    min_warmup_iterations: ClassVar[int] = 2
    # Gradient-norm clip. None keeps nnU-Net's 12. A smaller value is applied on top of nnU-Net's clip (a larger
    # one cannot undo it); Primus clips at 1.
    grad_clip_norm: ClassVar[float | None] = None

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # nnU-Net's own attribute names: its log, debug.json and hyper-parameter record then show the real values
        self.initial_lr = float(self.adamw_lr)
        self.weight_decay = float(self.adamw_weight_decay)
        self._epoch_iteration = 0
        self._schedules: tuple[Any, Any, tuple] | None = None

    # --- the schedule -------------------------------------------------------------------------------------------

    def warmup_iterations(self) -> int:
        """Warm-up length in training iterations for the current epochs x iterations per epoch."""
        total = self.num_epochs * self.num_iterations_per_epoch
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(
                f"{type(self).__name__}.warmup_fraction is {self.warmup_fraction}: use a value in "
                "[0, 1), e.g. 0.05 (5% of the training iterations)"
            )
        # at most all but the last iteration, so the decay always gets a turn
        return max(1, min(total - 1, max(self.min_warmup_iterations, round(self.warmup_fraction * total))))

    def _lr_schedules(self, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
        """(warm-up, decay) schedulers for the current epochs and iterations; rebuilt when those change (a
        short schedule's time budget cuts the epochs after the optimizer was built)."""
        key = (id(optimizer), self.num_epochs, self.num_iterations_per_epoch, self.initial_lr, self.warmup_iterations())
        if self._schedules is None or self._schedules[2] != key:
            per_epoch = self.num_iterations_per_epoch
            warmup_epochs = self.warmup_iterations() / per_epoch
            # (the horizon guard only matters for a 1-iteration run, whose warm-up is all of it)
            horizon = max(self.num_epochs, warmup_epochs + 1 / per_epoch)
            decay = PolyLRScheduler_offset(optimizer, self.initial_lr, horizon, warmup_epochs)
            # Lin_incr_offset gives lr / max_steps * (1 + t - start_step). With start_step one iteration short of
            # a whole epoch, iteration g (t = g / per_epoch) gets lr * (g + 1) / warm-up iterations: the first
            # step is not at 0 and the last warm-up step reaches lr, as nnU-Net's Lin_incr_LRScheduler does per
            # epoch. Built last, so the optimizer starts at the warm-up's first value.
            warmup = Lin_incr_offset_LRScheduler(optimizer, self.initial_lr, warmup_epochs, 1 - 1 / per_epoch)
            self._schedules = (warmup, decay, key)
            self.print_to_log_file(
                f"learning rate: linear warm-up to {self.initial_lr:g} over {self.warmup_iterations()} of "
                f"{self.num_epochs} x {per_epoch} iterations, then poly decay",
                also_print_to_console=False,
            )
        return self._schedules[0], self._schedules[1]

    def scheduler_at(self, iteration: int) -> Any:
        """The scheduler in charge of global training iteration ``iteration`` (counted from 0)."""
        warmup, decay = self._lr_schedules(self.optimizer)
        return warmup if iteration < self.warmup_iterations() else decay

    def set_lr_for_iteration(self, iteration: int) -> float:
        """Set the optimizer's learning rate for global training iteration ``iteration``; return it."""
        self.scheduler_at(iteration).step(iteration / self.num_iterations_per_epoch)
        return self.optimizer.param_groups[0]["lr"]

    # --- nnU-Net's hooks ----------------------------------------------------------------------------------------

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, Any]:
        params = list(self.network.parameters())
        settings: dict[str, Any] = {
            "lr": self.initial_lr,
            "weight_decay": self.weight_decay,
            "betas": tuple(self.adamw_betas),
        }
        try:
            # fused: one kernel for all parameters; on the CPU 4-6x faster than the default per-tensor loop over
            # BSA's 128 tensors (0.011 vs 0.05-0.07 s per step at Hippocampus's plans)
            optimizer = torch.optim.AdamW(params, fused=True, **settings)
        except RuntimeError:  # a device without fused kernels (older torch on the CPU, ...)
            optimizer = torch.optim.AdamW(params, **settings)
        if self.grad_clip_norm is not None:
            if not 0.0 < self.grad_clip_norm <= NNUNET_GRAD_CLIP:
                raise ValueError(
                    f"{type(self).__name__}.grad_clip_norm is {self.grad_clip_norm}: use a value in "
                    f"(0, {NNUNET_GRAD_CLIP:g}] (nnU-Net already clips at {NNUNET_GRAD_CLIP:g}), "
                    "or None for nnU-Net's clip alone"
                )
            # runs inside optimizer.step(), after nnU-Net's own clip (and GradScaler's unscale_): no copy of
            # nnU-Net's train_step needed. Clipping at 12 then at c equals clipping at min(12, c).
            optimizer.register_step_pre_hook(self._clip_gradients)
        self.print_to_log_file(
            f"optimizer: AdamW lr {self.initial_lr:g}, weight decay {self.weight_decay:g}, betas "
            f"{tuple(self.adamw_betas)}; gradient norm clipped at "
            f"{min(NNUNET_GRAD_CLIP, self.grad_clip_norm or NNUNET_GRAD_CLIP):g}"
        )
        self._schedules = None
        warmup, _ = self._lr_schedules(optimizer)
        return optimizer, warmup

    def _clip_gradients(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.grad_clip_norm is None:  # registered only with a clip of our own; None is nnU-Net's clip alone
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, self.grad_clip_norm)

    def on_train_epoch_start(self) -> None:
        self._epoch_iteration = 0
        # nnU-Net steps self.lr_scheduler with the integer epoch and logs the result: hand it the scheduler in
        # charge of this epoch's first iteration
        self.lr_scheduler = self.scheduler_at(self.current_epoch * self.num_iterations_per_epoch)
        super().on_train_epoch_start()

    def train_step(self, batch: dict) -> dict:
        self.set_lr_for_iteration(self.current_epoch * self.num_iterations_per_epoch + self._epoch_iteration)
        self._epoch_iteration += 1
        return super().train_step(batch)
