"""Trainers that select one of our networks; everything else (data, loss, schedule) stays nnU-Net's."""

from __future__ import annotations

from typing import Any, ClassVar

import torch.nn as nn
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_sparseattn.architectures.base import PlansError, PlansNetwork
from nnunet_sparseattn.model_stamp import check_installed_version


class ArchitectureTrainer(nnUNetTrainer):
    """nnU-Net's trainer with ``network_class`` built from the configuration's plans.

    The plans may be nnU-Net's default or ResEnc plans (their stages, kernels, strides and widths are kept; the
    network's own settings are chosen for the patch size) or our variant plans (their settings are used).
    ``network_kwargs`` fixes own settings for a trainer (an ablation is a subclass that changes one entry).
    """

    network_class: ClassVar[type[PlansNetwork]]
    network_kwargs: ClassVar[dict[str, Any]] = {}
    # Activation checkpointing of the attention blocks (less training memory, one more forward of the blocks):
    # on for a trainer that sets it, or by the plans configuration's "activation_checkpointing": true
    # (benchmarks/training_memory.py predicts each network's training memory with and without it)
    activation_checkpointing: ClassVar[bool] = False

    # A classmethod: nnU-Net calls it on the class at inference and on the instance in training. A shared model's plans
    # carry the version that exported it (model_stamp.py): a newer one than ours is refused before anything is built.
    @classmethod
    def build_network_architecture(
        cls,
        plans_manager: PlansManager,
        configuration_manager: ConfigurationManager,
        num_input_channels: int,
        num_output_channels: int,
        enable_deep_supervision: bool = True,
    ) -> nn.Module:
        check_installed_version(plans_manager.plans)
        network = cls.network_class.from_plans(
            configuration_manager.network_arch_init_kwargs,
            configuration_manager.patch_size,
            num_input_channels,
            num_output_channels,
            enable_deep_supervision,
            overrides=cls.network_kwargs,
            plans_network=configuration_manager.network_arch_class_name,
        )
        setting = configuration_manager.configuration.get("activation_checkpointing", False)
        if not isinstance(setting, bool):
            raise PlansError(f"activation_checkpointing={setting!r} in the plans configuration: use true or false")
        if cls.activation_checkpointing or setting:
            network.enable_activation_checkpointing()
        return network
