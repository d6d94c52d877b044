"""The AdamW recipe on networks without attention: the controls that tell an optimizer's gain from an attention gain.

A method's AdamW trainer (``nnUNetTrainerBSA_AdamW``, ...) can beat its SGD default because AdamW suits the method's
attention, or because AdamW suits this data and budget whatever the network. The same recipe on nnU-Net's own network
(``nnUNetTrainer_AdamW``) and on the narrow-band trainer (``nnUNetTrainerNB_AdamW``) answers which: issue 21's rule
credits a method's attention only with a gain these controls do not get too (``benchmarks/curves.py``'s recipes).
"""

from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_sparseattn.trainers.narrow_band import nnUNetTrainerNB
from nnunet_sparseattn.trainers.optimizers import AdamWWarmupMixin


class nnUNetTrainer_AdamW(AdamWWarmupMixin, nnUNetTrainer):
    """nnU-Net's own trainer, network and loss with AdamW, linear warm-up, then poly decay (the mixin's defaults)."""


class nnUNetTrainerNB_AdamW(AdamWWarmupMixin, nnUNetTrainerNB):
    """nnUNetTrainerNB (nnU-Net's network, Dice + CE + narrow-band loss) with the same AdamW recipe."""
