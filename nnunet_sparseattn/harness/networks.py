"""The network a trainer builds for a dataset's plans: its size, its cost and where its attention sits.

``compare`` records parameters and FLOPs of every compared trainer's inference network, and ``nnunet-sparseattn info
-d ID -c CONFIG`` prints them with the attention layout; both come from here, counted one way
(``nnunet_sparseattn.complexity``).
"""

from __future__ import annotations

import pydoc
from typing import TYPE_CHECKING, Any, Sequence

import torch

from nnunet_sparseattn.architectures.base import PlansNetwork, StageAttention, x_text
from nnunet_sparseattn.complexity import count_flops, count_parameters
from nnunet_sparseattn.trainers.architecture import ArchitectureTrainer

if TYPE_CHECKING:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


def _managers(plans: dict, configuration: str, dataset_json: dict):
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(plans)
    config = plans_manager.get_configuration(configuration)
    inputs = determine_num_input_channels(plans_manager, config, dataset_json)
    outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    return plans_manager, config, inputs, outputs


def inference_network(
    trainer_class: type[nnUNetTrainer], plans: dict, configuration: str, dataset_json: dict, seed: int = 0
) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """The network ``nnUNetv2_predict`` builds for ``trainer_class`` (deep supervision off), and the input shape of
    one patch, batch 1."""
    plans_manager, config, inputs, outputs = _managers(plans, configuration, dataset_json)
    torch.manual_seed(seed)
    network = trainer_class.build_network_architecture(
        plans_manager, config, inputs, outputs, enable_deep_supervision=False
    )
    return network, (1, inputs, *config.patch_size)


def network_cost(
    trainer_class: type[nnUNetTrainer], plans: dict, configuration: str, dataset_json: dict
) -> dict[str, Any]:
    """Parameters and forward FLOPs (2 per multiply-add) of the inference network at the plans' patch size."""
    network, shape = inference_network(trainer_class, plans, configuration, dataset_json)
    return {"params": count_parameters(network), "flops": count_flops(network, shape), "flops_input": list(shape)}


# ------------------------------------------------------------------------------------------- attention layout
def network_kwargs(
    trainer_class: type[nnUNetTrainer], plans: dict, configuration: str
) -> tuple[type[PlansNetwork] | None, dict[str, Any]]:
    """Our network class and its resolved arguments for this configuration (None, {} for nnU-Net's networks): a
    trainer of ours builds its ``network_class`` from any plans; a variant plans file names one of our networks."""
    config = plans["configurations"][configuration]
    while "architecture" not in config and "inherits_from" in config:  # e.g. 3d_cascade_fullres
        config = plans["configurations"][config["inherits_from"]]
    arch = config["architecture"]
    if issubclass(trainer_class, ArchitectureTrainer):
        cls, overrides = trainer_class.network_class, trainer_class.network_kwargs
    else:
        located = pydoc.locate(arch["network_class_name"])
        if not (isinstance(located, type) and issubclass(located, PlansNetwork)):
            return None, {}
        cls, overrides = located, {}
    return cls, cls.resolve_arch_kwargs(
        arch["arch_kwargs"], config["patch_size"], overrides, arch["network_class_name"]
    )


def attention_layout(
    network_class: type[PlansNetwork] | None, kwargs: dict[str, Any], patch_size: Sequence[int]
) -> list[StageAttention]:
    """Which encoder stages attend, and how (the network's own :meth:`~PlansNetwork.attention_layout`)."""
    return [] if network_class is None else network_class.attention_layout(kwargs, patch_size)


def describe_layout(layout: list[StageAttention]) -> str:
    if not layout:
        return "none (convolutions only)"
    return "; ".join(f"stage {a.stage} ({x_text(a.shape)}): {a.text}" for a in layout)


def dataset_networks(
    dataset: int | str, configuration: str, plans_name: str = "nnUNetPlans", preprocessed: str | None = None
) -> list[dict[str, Any]]:
    """For a planned dataset: stock nnU-Net's network and each of our main trainers' networks built from its plans
    (``configuration``): parameters, FLOPs at the patch size and the attention layout. nnU-Net's stock trainer
    also gets the ResEnc M plans' network when those plans exist."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_sparseattn.harness import datasets
    from nnunet_sparseattn.trainers import main_trainers

    root = datasets.nnunet_folder("nnUNet_preprocessed", preprocessed)
    path = datasets.plans_file(root, datasets.parse_dataset(dataset), plans_name)
    plans = datasets.read_plans(path, configuration)
    folder = path.parent
    dataset_json = datasets.read_json(folder / "dataset.json")
    entries = [(nnUNetTrainer, plans_name, plans)]
    resenc = folder / "nnUNetResEncUNetMPlans.json"
    if resenc.is_file() and plans_name != resenc.stem:
        entries.append((nnUNetTrainer, resenc.stem, datasets.read_plans(resenc)))
    entries += [(t, plans_name, plans) for t in main_trainers() if issubclass(t, ArchitectureTrainer)]
    rows = []
    for trainer, name, content in entries:
        if configuration not in content["configurations"]:
            continue
        cls, kwargs = network_kwargs(trainer, content, configuration)
        network, shape = inference_network(trainer, content, configuration, dataset_json)
        patch = content["configurations"][configuration].get("patch_size") or list(shape[2:])
        rows.append(
            {
                "trainer": trainer.__name__,
                "plans": name,
                "network": type(network).__name__,
                "params": count_parameters(network),
                "flops": count_flops(network, shape),
                "input": list(shape),
                "attention": attention_layout(cls, kwargs, patch),
            }
        )
        del network
    return rows


def dataset_networks_table(dataset: int | str, configuration: str, plans_name: str = "nnUNetPlans") -> str:
    """``dataset_networks`` as the text ``nnunet-sparseattn info -d ID -c CONFIG`` prints."""
    rows = dataset_networks(dataset, configuration, plans_name)
    shape = rows[0]["input"]
    lines = [
        f"networks for {configuration} ({plans_name}), one patch {'x'.join(map(str, shape[2:]))} with "
        f"{shape[1]} input channel(s); FLOPs: torch.utils.flop_counter, 2 per multiply-add, batch 1, inference",
        f"{'trainer':<24} {'plans':<24} {'network':<22} {'params':>9} {'FLOPs':>9}  attention",
    ]
    for row in rows:
        lines.append(
            f"{row['trainer']:<24} {row['plans']:<24} {row['network']:<22} {row['params'] / 1e6:8.2f}M "
            f"{row['flops'] / 1e9:8.2f}G  {describe_layout(row['attention'])}"
        )
    from nnunet_sparseattn.trainers import main_trainers

    same = [t.__name__ for t in main_trainers() if not issubclass(t, ArchitectureTrainer)]
    if same:
        lines.append(f"({', '.join(same)}: stock nnU-Net's network, another loss)")
    return "\n".join(lines)
