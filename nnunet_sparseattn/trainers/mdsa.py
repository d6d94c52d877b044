"""Trainers of MDSA-UNet (Li et al., JBHI 2025) from any nnU-Net plans: ``-tr nnUNetTrainerMDSA[_NB|_AdamW]``."""

from __future__ import annotations

from nnunet_sparseattn.architectures.mdsa import MDSAUNet
from nnunet_sparseattn.trainers.architecture import ArchitectureTrainer
from nnunet_sparseattn.trainers.narrow_band import nnUNetTrainerNB
from nnunet_sparseattn.trainers.optimizers import AdamWWarmupMixin


class nnUNetTrainerMDSA(ArchitectureTrainer):
    """nnU-Net's trainer (data, Dice + CE loss, schedule) with MDSA-UNet built from the configuration's plans.

    Change a network setting in a subclass (trainer names go into checkpoints: give it a new name)::

        class nnUNetTrainerMDSA_pool(nnUNetTrainerMDSA):
            network_kwargs = {"aggregation": "pool"}
    """

    network_class = MDSAUNet


class nnUNetTrainerMDSA_NB(nnUNetTrainerMDSA, nnUNetTrainerNB):
    """MDSA-UNet trained with Dice + CE + ``nb_weight`` x the narrow-band loss (``nnUNetTrainerNB``'s loss).

    The network comes from ``nnUNetTrainerMDSA`` (first in the method order), the loss from ``nnUNetTrainerNB``
    (``_build_loss``; nnUNetTrainerMDSA does not define one), its settings (``nb_weight``, ``nb_radius_mm``) too.
    """


class nnUNetTrainerMDSA_AdamW(AdamWWarmupMixin, nnUNetTrainerMDSA):
    """nnUNetTrainerMDSA with AdamW, a linear warm-up, then poly decay (nnU-Net's own attention trainers' recipe,
    ``AdamWWarmupMixin``'s defaults) instead of nnU-Net's SGD."""
