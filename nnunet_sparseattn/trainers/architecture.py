"""Trainers that select one of our networks; everything else (data, loss, schedule) stays nnU-Net's."""

from __future__ import annotations

import pydoc
from typing import Any, ClassVar, Literal, Union

import torch.distributed as dist
import torch.nn as nn
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_sparseattn.architectures.base import PlansError, PlansNetwork, normalize_plans_kwargs
from nnunet_sparseattn.memory import (
    BUDGET_RATIO,
    PLANNER_TARGET_BYTES,
    TrainingBatch,
    memory_budget,
    optimizer_state_copies,
    predict_training_memory,
    unwrap_network,
)
from nnunet_sparseattn.model_stamp import check_installed_version

CheckpointingSetting = Union[bool, Literal["auto"]]


def checkpointing_setting(configuration_manager: ConfigurationManager) -> CheckpointingSetting:
    """The plans configuration's ``"activation_checkpointing"``: true, false or "auto" (the default)."""
    setting = configuration_manager.configuration.get("activation_checkpointing", "auto")
    if not isinstance(setting, bool) and setting != "auto":
        raise PlansError(f'activation_checkpointing={setting!r} in the plans configuration: use true, false or "auto"')
    return setting


def stock_network(configuration_manager: ConfigurationManager, input_channels: int, num_classes: int) -> nn.Module:
    """Stock nnU-Net's network for these plans (what ``nnUNetTrainer`` builds), deep supervision on: the network the
    plans name, or ``PlainConvUNet`` on the same stages where they name one of ours (variant plans)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    name = configuration_manager.network_arch_class_name
    located = pydoc.locate(name)
    if isinstance(located, type) and issubclass(located, PlansNetwork):
        shared = normalize_plans_kwargs(configuration_manager.network_arch_init_kwargs)
        return PlainConvUNet(input_channels, num_classes=num_classes, deep_supervision=True, **shared)
    return get_network_from_plans(
        name,
        configuration_manager.network_arch_init_kwargs,
        configuration_manager.network_arch_init_kwargs_req_import,
        input_channels,
        num_classes,
        deep_supervision=True,
    )


class ArchitectureTrainer(nnUNetTrainer):
    """nnU-Net's trainer with ``network_class`` built from the configuration's plans.

    The plans may be nnU-Net's default or ResEnc plans (their stages, kernels, strides and widths are kept; the
    network's own settings are chosen for the patch size) or our variant plans (their settings are used).
    ``network_kwargs`` fixes own settings for a trainer (an ablation is a subclass that changes one entry).
    """

    network_class: ClassVar[type[PlansNetwork]]
    network_kwargs: ClassVar[dict[str, Any]] = {}
    # Activation checkpointing of the attention blocks (less training memory, one more forward of the blocks): on for
    # a trainer that sets this, else as the plans configuration's "activation_checkpointing" says: true, false, or
    # "auto" (the default): on when CUDA training's predicted memory exceeds the budget (nnunet_sparseattn/memory.py)
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
        if cls.activation_checkpointing or checkpointing_setting(configuration_manager) is True:
            network.enable_activation_checkpointing()
        return network

    def initialize(self) -> None:
        first = not self.was_initialized
        super().initialize()
        if first and not self.activation_checkpointing and checkpointing_setting(self.configuration_manager) == "auto":
            # after nnU-Net's torch.compile, which is lazy: the first forward traces the checkpointed blocks
            self.checkpoint_if_over_budget(self.device.type)

    def checkpoint_if_over_budget(self, device_type: str) -> bool:
        """``"auto"``: on CUDA, predict one training step's memory at this trainer's batch (fp16 autocast, its
        optimizer) beside stock nnU-Net's on the same plans, and switch the attention blocks' activation
        checkpointing on when ours exceeds :func:`~nnunet_sparseattn.memory.memory_budget`. Off elsewhere:
        the plans' budget is GPU memory, and the recomputation costs CPU time. Returns whether it is on."""
        network = unwrap_network(self.network)
        assert isinstance(network, PlansNetwork)  # built by build_network_architecture
        if device_type != "cuda":
            self.print_to_log_file(
                'Activation checkpointing: off ("auto" decides for CUDA training, where the plans\' memory budget '
                f"applies; this trainer runs on {device_type})"
            )
            return False
        cm = self.configuration_manager
        # under DDP the largest per-GPU batch (nnU-Net gives the first ranks one more sample): every rank decides alike
        batch = -(-cm.batch_size // dist.get_world_size()) if self.is_ddp else self.batch_size
        step = TrainingBatch(
            cm.patch_size, batch, self.num_input_channels, self.label_manager.num_segmentation_heads, cm.batch_dice
        )
        copies = optimizer_state_copies(self.optimizer)
        ours = predict_training_memory(network, step, copies)  # fake CUDA tensors, fp16 autocast (the defaults)
        stock = stock_network(cm, step.input_channels, step.num_classes)
        # stock nnU-Net with its SGD (momentum: one copy of the parameters)
        reference = predict_training_memory(stock, step, 1)
        budget = memory_budget(reference.total_bytes)
        on = ours.total_bytes > budget
        capped = ", at most 8 GB" if reference.total_bytes <= PLANNER_TARGET_BYTES else ""
        text = (
            f"Training memory predicted for one CUDA step (batch {batch}, patch {list(cm.patch_size)}, fp16): "
            f"{ours.total_bytes / 1e9:.2f} GB, stock nnU-Net's {reference.total_bytes / 1e9:.2f} GB, budget "
            f"{budget / 1e9:.2f} GB ({BUDGET_RATIO}x stock's{capped})"
        )
        if on:
            blocks = network.enable_activation_checkpointing()
            after = predict_training_memory(network, step, copies)
            text += (
                f": activation checkpointing on for {blocks} blocks, {after.total_bytes / 1e9:.2f} GB predicted with "
                'it (plans "activation_checkpointing": false turns it off)'
            )
        else:
            text += ": activation checkpointing off"
        self.print_to_log_file(text)
        return on
