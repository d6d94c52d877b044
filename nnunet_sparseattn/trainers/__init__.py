"""Trainers found by ``nnUNetv2_train -tr NAME`` through ``nnUNet_extTrainer=$(nnunet-sparseattn ext-path)``.

Class names are part of every checkpoint (nnU-Net stores ``trainer_name``): never rename one once published.
"""

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_sparseattn.trainers.bilateral import (
    nnUNetTrainerBilateral,
    nnUNetTrainerBilateral_AdamW,
    nnUNetTrainerBilateral_noRendering,
    nnUNetTrainerBilateral_pretrained,
    nnUNetTrainerBilateral_SGD,
)
from nnunet_sparseattn.trainers.bsa import nnUNetTrainerBSA, nnUNetTrainerBSA_noNB
from nnunet_sparseattn.trainers.bsa_adamw import nnUNetTrainerBSA_AdamW
from nnunet_sparseattn.trainers.mdsa import nnUNetTrainerMDSA, nnUNetTrainerMDSA_AdamW, nnUNetTrainerMDSA_NB
from nnunet_sparseattn.trainers.narrow_band import nnUNetTrainerNB
from nnunet_sparseattn.trainers.short_schedule import SHORT_SCHEDULES, with_short_schedule

# Every full trainer we ship. Adding one here also ships its short variants (`<name>_debug`, `<name>_demo`).
SHIPPED_TRAINERS: tuple[type, ...] = (
    nnUNetTrainerNB,
    nnUNetTrainerBSA,
    nnUNetTrainerBSA_noNB,
    nnUNetTrainerBSA_AdamW,
    nnUNetTrainerMDSA,
    nnUNetTrainerMDSA_NB,
    nnUNetTrainerMDSA_AdamW,
    nnUNetTrainerBilateral,
    nnUNetTrainerBilateral_AdamW,
    nnUNetTrainerBilateral_noRendering,
    nnUNetTrainerBilateral_pretrained,
    nnUNetTrainerBilateral_SGD,
)

# One trainer per method: what `nnunet-sparseattn compare` and the accuracy benchmark set beside stock nnU-Net.
MAIN_TRAINERS: tuple[type, ...] = (nnUNetTrainerNB, nnUNetTrainerBSA, nnUNetTrainerMDSA, nnUNetTrainerBilateral)

# The trainer `make demo` trains: the flagship, BSA-Seg's sparse attention with the narrow-band loss.
DEMO_TRAINER: type = nnUNetTrainerBSA

# nnU-Net's own trainer under the same short schedules (`nnUNetTrainer_debug`, `nnUNetTrainer_demo`): the stock
# baseline `demo --compare` trains beside the demo trainer, and a network without attention for the tests.
STOCK_TRAINER: type = nnUNetTrainer

__all__ = [t.__name__ for t in SHIPPED_TRAINERS]
for _trainer in (*SHIPPED_TRAINERS, STOCK_TRAINER):
    for _suffix in SHORT_SCHEDULES:
        _variant = with_short_schedule(_trainer, _suffix, __name__)
        globals()[_variant.__name__] = _variant
        __all__.append(_variant.__name__)
del _trainer, _suffix, _variant
