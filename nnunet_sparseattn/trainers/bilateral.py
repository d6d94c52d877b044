"""Trainers of the bilateral spatial attention network: nnU-Net's loss + the rendering module's point loss.

nnU-Net computes the loss outside the network, in ``train_step`` and ``validation_step``, as
``self.loss(output, target)``. Both steps are kept as they are: the loss built here adds
``point_loss_weight`` x the point cross-entropy of the last forward pass (``network.rendered``) to nnU-Net's
Dice + CE (Dice + BCE for regions), so training and validation losses both include it.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Union

import torch
import torch.nn as nn

from nnunet_sparseattn.architectures.bilateral import BilateralUNet
from nnunet_sparseattn.architectures.swin_weights import (
    SWIN_WEIGHTS_ENV,
    load_swin_into,
)
from nnunet_sparseattn.errors import UserError
from nnunet_sparseattn.layers.point_rendering import point_loss
from nnunet_sparseattn.memory import unwrap_network
from nnunet_sparseattn.trainers.architecture import ArchitectureTrainer
from nnunet_sparseattn.trainers.optimizers import AdamWWarmupMixin

__all__ = [
    "PointRenderingLoss",
    "nnUNetTrainerBilateral",
    "nnUNetTrainerBilateral_AdamW",
    "nnUNetTrainerBilateral_SGD",
    "nnUNetTrainerBilateral_noRendering",
    "nnUNetTrainerBilateral_pretrained",
]


class PointRenderingLoss(nn.Module):
    """``base(output, target) + weight * point_loss(network.rendered, full-resolution target)``."""

    def __init__(
        self,
        base: nn.Module,
        network: Callable[[], nn.Module],
        weight: float,
        regions: bool,
        ignore_label: Optional[int],
    ):
        super().__init__()
        self.base = base
        self._network = network  # a getter, not a submodule: the loss must not own the network's parameters
        self.weight, self.regions, self.ignore_label = float(weight), bool(regions), ignore_label

    def point_term(self, target: Union[torch.Tensor, list[torch.Tensor]]) -> Optional[torch.Tensor]:
        points = getattr(unwrap_network(self._network()), "rendered", None)
        if points is None:
            return None
        full = target[0] if isinstance(target, (list, tuple)) else target
        return point_loss(points, full, self.regions, self.ignore_label)

    def forward(self, output, target) -> torch.Tensor:
        loss = self.base(output, target)
        if self.weight == 0:
            return loss
        term = self.point_term(target)
        return loss if term is None else loss + self.weight * term


class nnUNetTrainerBilateral_SGD(ArchitectureTrainer):
    """Bilateral spatial attention network from any nnU-Net plans; loss = nnU-Net's + ``point_loss_weight`` x the
    attention rendering module's point cross-entropy; nnU-Net's own optimizer (SGD, lr 1e-2, Nesterov momentum 0.99,
    poly decay). The default, :class:`nnUNetTrainerBilateral`, trains the same with AdamW."""

    network_class = BilateralUNet
    point_loss_weight: float = 1.0

    def _build_loss(self) -> nn.Module:
        base = super()._build_loss()
        rendering = getattr(unwrap_network(self.network), "rendering", None)
        if rendering is None:
            return base
        self.print_to_log_file(
            f"attention rendering: point loss weight {self.point_loss_weight}, "
            f"{rendering.train_points} training / {rendering.eval_points} inference "
            "points per sample"
        )
        return PointRenderingLoss(
            base,
            lambda: self.network,
            self.point_loss_weight,
            self.label_manager.has_regions,
            self.label_manager.ignore_label,
        )


class nnUNetTrainerBilateral(AdamWWarmupMixin, nnUNetTrainerBilateral_SGD):
    """The bilateral network's default trainer: AdamW, a linear warm-up, then poly decay, at the paper's learning
    rate (it trained with Adam at 1e-3); weight decay, betas and warm-up as the mixin's. Chosen over nnU-Net's SGD by
    ``benchmarks/optimizer.py`` on ISIC 2017 (+3.5 Dice points, p 0.016, BENCHMARKS.md); ``_SGD`` keeps SGD."""

    adamw_lr = 1e-3


class nnUNetTrainerBilateral_pretrained(nnUNetTrainerBilateral):
    """ISAM widths of Swin-T/S (96, 192, 384 on the three attention stages), initialised from a local timm Swin
    checkpoint named by the environment variable ``nnUNet_sparseattn_swin_weights`` (never downloaded).

    For Swin-B (widths 128, 256, 512) subclass with ``network_kwargs = {"swin_embed_dim": 128}``.
    """

    network_kwargs = {"swin_embed_dim": 96}

    def initialize(self) -> None:
        path = os.environ.get(SWIN_WEIGHTS_ENV)
        if not path:  # before any work: the trainer's name promises pretrained weights
            raise UserError(
                f"{type(self).__name__} needs a local Swin checkpoint: export {SWIN_WEIGHTS_ENV}="
                "/path/to/swin_tiny_patch4_window7_224.pth (timm's Swin state dict)"
            )
        super().initialize()
        report = load_swin_into(unwrap_network(self.network), path)
        self.print_to_log_file(report.summary(), also_print_to_console=True)


class nnUNetTrainerBilateral_noRendering(nnUNetTrainerBilateral):
    """The ablation without the attention rendering module (nnU-Net's loss only): its effect is the difference."""

    network_kwargs = {"rendering": False}


class nnUNetTrainerBilateral_AdamW(nnUNetTrainerBilateral):
    """The default trainer under the name the optimizer comparison trained it with (names are in checkpoints, so
    it stays)."""
