"""BSA-Seg trainers: the BSA network with nnU-Net's loss (ablation) or with the narrow-band loss (the paper)."""

from __future__ import annotations

from nnunet_sparseattn.architectures.bsa import BSAUNet
from nnunet_sparseattn.trainers.architecture import ArchitectureTrainer
from nnunet_sparseattn.trainers.narrow_band import nnUNetTrainerNB


class nnUNetTrainerBSA_noNB(ArchitectureTrainer):
    """BSA network, nnU-Net's Dice + CE: the paper's ablation without the narrow-band loss."""

    network_class = BSAUNet


class nnUNetTrainerBSA(nnUNetTrainerBSA_noNB, nnUNetTrainerNB):
    """BSA-Seg as published: BSA network + Dice + CE + narrow-band loss."""
