"""BSA-Seg with AdamW + warm-up + poly decay (Primus's recipe) in place of nnU-Net's SGD (issue 4's comparison)."""

from __future__ import annotations

from nnunet_sparseattn.trainers.bsa import nnUNetTrainerBSA
from nnunet_sparseattn.trainers.optimizers import AdamWWarmupMixin


class nnUNetTrainerBSA_AdamW(AdamWWarmupMixin, nnUNetTrainerBSA):
    """nnUNetTrainerBSA (BSA network, Dice + CE + narrow-band loss) with AdamW, linear warm-up, then poly decay."""
