"""The base class our trainer mixins derive from: nnU-Net's trainer for the type checker, ``object`` at run time.

A mixin (:class:`~nnunet_sparseattn.trainers.short_schedule.ShortScheduleMixin`,
:class:`~nnunet_sparseattn.trainers.optimizers.AdamWWarmupMixin`, the harness's ``BudgetMixin``) always sits in front
of an nnU-Net trainer in the MRO, so its ``super()`` hooks and ``self.`` attributes are ``nnUNetTrainer``'s. Deriving
from ``nnUNetTrainer`` at run time would make every mixin a trainer of its own (nnU-Net's class search and
``issubclass`` checks would find it); the type checker alone is told the truth.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer as TrainerMixinBase
else:
    TrainerMixinBase = object

__all__ = ["TrainerMixinBase"]
