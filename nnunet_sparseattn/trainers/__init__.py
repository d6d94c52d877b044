"""Trainers found by ``nnUNetv2_train -tr NAME`` through ``nnUNet_extTrainer=$(nnunet-sparseattn ext-path)``.

The methods' trainers are those their registrations name (``nnunet_sparseattn.plans.variants``): a new method's
trainer ships by being registered, with no edit here. Class names are part of every checkpoint (nnU-Net stores
``trainer_name``): never rename one once published.
"""

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_sparseattn.plans.variants import VARIANTS, Variant, locate
from nnunet_sparseattn.trainers.bsa import nnUNetTrainerBSA
from nnunet_sparseattn.trainers.controls import nnUNetTrainer_AdamW, nnUNetTrainerNB_AdamW
from nnunet_sparseattn.trainers.narrow_band import nnUNetTrainerNB
from nnunet_sparseattn.trainers.short_schedule import SHORT_SCHEDULES, with_short_schedule

# The loss-only method: stock nnU-Net's network, the narrow-band loss (no network of its own, so no registration).
LOSS_TRAINERS: tuple[type, ...] = (nnUNetTrainerNB,)

# The methods' AdamW recipe on the networks without attention (stock nnU-Net's, and with the NB loss): controls for
# the recipe benchmark, shipped so that anyone can rerun it (``trainers/controls.py``).
CONTROL_TRAINERS: tuple[type, ...] = (nnUNetTrainer_AdamW, nnUNetTrainerNB_AdamW)


def method_trainers(variant: Variant) -> tuple[type, ...]:
    """The trainer classes a registration names, its main trainer first."""
    return tuple(locate(path, f"variant {variant.name!r}: its trainer") for path in variant.trainers)


def main_trainers() -> tuple[type, ...]:
    """One trainer per method, as registered now: what `nnunet-sparseattn compare`, `info` and the accuracy
    benchmark set beside stock nnU-Net."""
    return (*LOSS_TRAINERS, *(method_trainers(v)[0] for v in VARIANTS.values() if v.trainers))


# Every full trainer we ship. Each also ships its short variants (`<name>_debug`, `<name>_demo`).
SHIPPED_TRAINERS: tuple[type, ...] = (
    *LOSS_TRAINERS,
    *(t for v in VARIANTS.values() for t in method_trainers(v)),
    *CONTROL_TRAINERS,
)

# One trainer per method (at import): `main_trainers()` reads the registry at call time.
MAIN_TRAINERS: tuple[type, ...] = main_trainers()

# The trainer `make demo` trains: the flagship, BSA-Seg's sparse attention with the narrow-band loss.
DEMO_TRAINER: type = nnUNetTrainerBSA

# nnU-Net's own trainer under the same short schedules (`nnUNetTrainer_debug`, `nnUNetTrainer_demo`): the stock
# baseline `demo --compare` trains beside the demo trainer, and a network without attention for the tests.
STOCK_TRAINER: type = nnUNetTrainer

__all__ = [t.__name__ for t in SHIPPED_TRAINERS]
for _trainer in SHIPPED_TRAINERS:
    globals()[_trainer.__name__] = _trainer
for _trainer in (*SHIPPED_TRAINERS, STOCK_TRAINER):
    for _suffix in SHORT_SCHEDULES:
        _variant = with_short_schedule(_trainer, _suffix, __name__)
        globals()[_variant.__name__] = _variant
        __all__.append(_variant.__name__)
del _trainer, _suffix, _variant
