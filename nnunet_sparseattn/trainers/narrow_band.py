"""nnU-Net's own network trained with Dice + CE + lambda * narrow-band loss (BSA-Seg's NB loss)."""

from __future__ import annotations

import torch.nn as nn
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_sparseattn.losses import NarrowBandCompoundLoss, NarrowBandLoss, narrow_band_radii_per_scale


class nnUNetTrainerNB(nnUNetTrainer):
    """nnU-Net's default trainer whose loss gains ``nb_weight`` times the narrow-band loss.

    Configure through class attributes in a subclass (nnU-Net rebuilds ``__init__`` arguments from its signature,
    so trainers take no new ones)::

        class nnUNetTrainerNB_w05_r3mm(nnUNetTrainerNB):
            nb_weight = 0.5
            nb_radius_mm = 3.0
    """

    nb_weight: float = 1.0
    # Band half-width in millimetres, turned into voxels per axis with the configuration's spacing.
    # None: twice the finest spacing, i.e. 2 voxels along the finest axis.
    nb_radius_mm: float | None = None

    def _nb_radius_mm(self) -> float:
        if self.nb_radius_mm is not None:
            return float(self.nb_radius_mm)
        return 2.0 * float(min(self.configuration_manager.spacing))

    def _build_loss(self) -> nn.Module:
        base = super()._build_loss()  # nnU-Net's DC + CE (or DC + BCE for regions), deep supervision included
        scales = self._get_deep_supervision_scales()
        radii = narrow_band_radii_per_scale(self._nb_radius_mm(), self.configuration_manager.spacing, scales)
        nb_losses = [
            NarrowBandLoss(
                radius,
                apply_nonlin="sigmoid" if self.label_manager.has_regions else "softmax",
                ignore_label=self.label_manager.ignore_label,
                batch_dice=self.configuration_manager.batch_dice,
                ddp=self.is_ddp,  # as nnU-Net passes it to its Dice loss
            )
            for radius in radii
        ]
        weights = base.weight_factors if isinstance(base, DeepSupervisionWrapper) else None
        self.print_to_log_file(
            f"narrow-band loss: weight {self.nb_weight}, radius {self._nb_radius_mm():g} mm -> voxels per scale {radii}"
        )
        return NarrowBandCompoundLoss(base, nb_losses, self.nb_weight, weights)
