"""The methods we ship, one registration each, and the paper-scale configurations ``info`` reports.

A method is ONE :class:`Variant` in :data:`VARIANTS` (or :func:`register`): everything that lists, builds, explains
or benchmarks our networks reads it from here (the trainers' list, ``info``, ``compare``, ``explain``, the speed
benchmark, the contract and saved-network tests). ``docs/adding-a-method.md`` walks through adding one. Only names
(dotted paths) live here, so the registry is read without importing torch, by the trainers below the commands and
by the commands alike.
"""

from __future__ import annotations

import importlib
import pydoc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from nnunet_sparseattn.errors import UserError

if TYPE_CHECKING:
    from nnunet_sparseattn.architectures.base import PlansNetwork


@dataclass(frozen=True)
class Variant:
    """One method: its network, its trainers, its attention layer, and the settings its tests build it with."""

    name: str  # --variant NAME
    plans_suffix: str  # nnUNetPlans -> nnUNetPlans_<suffix>
    network_class: str  # dotted path written into the plans (nnU-Net's pydoc.locate finds it)
    trainer: str  # class name of our trainer that builds the same network from any plans (nnUNetv2_train -tr NAME)
    # dotted paths of the trainers shipped for this method, the main trainer (``trainer``) first; each also ships its
    # short-schedule variants (<name>_debug, <name>_demo). Empty: a network without trainers of its own
    trainers: tuple[str, ...] = ()
    label: str = ""  # what tables and figures call it (default: plans_suffix)
    attention_layer: str = ""  # dotted path of the attention module class (explain names its modules by ``label``)
    # dotted paths of the kinds of attention ``explain`` shows for it (nnunet_sparseattn.explain.kinds): each finds
    # its modules, records them and writes its part of the explanation. Empty: explain writes only the prediction
    explain_kinds: tuple[str, ...] = ()
    # own settings that make attention start one stage earlier than by default (tests: the stage gets configured)
    earlier_attention: Mapping[str, Any] = field(default_factory=dict)
    # per spatial dimension (2, 3): own settings of a small network with every mechanism on (saved networks, tests)
    small_settings: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.trainers and self.trainers[0].rpartition(".")[2] != self.trainer:
            raise ValueError(f"variant {self.name!r}: trainers must start with its main trainer {self.trainer}")
        if not self.label:
            object.__setattr__(self, "label", self.plans_suffix)


def _bsa_small(ndim: int) -> dict[str, Any]:
    regions = [None, None, [2, 3, 4], [1, 3, 2]] if ndim == 3 else [None, None, [4, 4], [2, 4], None]
    return {"head_dim": 4, "topk": 2, "region_sizes": regions}


def _mdsa_small(ndim: int) -> dict[str, Any]:
    grids = [None, None, [2, 2, 2], [2, 2, 2]] if ndim == 3 else [None, None, [2, 4], [2, 2], None]
    return {"head_dim": 4, "topk": 2, "grids": grids}


_BILATERAL_SMALL = {
    "head_dim": 4,
    "isam_depth": 2,
    "isam_stages": [1, 2, 3],
    "render_train_points": 64,
    "render_eval_points": 128,
}
_TRAINERS = "nnunet_sparseattn.trainers"
_KINDS = "nnunet_sparseattn.explain.kinds"

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            name="bsa",
            label="BSA",
            plans_suffix="BSA",
            network_class="nnunet_sparseattn.architectures.bsa.BSAUNet",
            trainer="nnUNetTrainerBSA",
            trainers=(
                f"{_TRAINERS}.bsa.nnUNetTrainerBSA",
                f"{_TRAINERS}.bsa.nnUNetTrainerBSA_noNB",
                f"{_TRAINERS}.bsa_adamw.nnUNetTrainerBSA_AdamW",
            ),
            attention_layer="nnunet_sparseattn.layers.bilevel_attention.BiLevelSparseAttention",
            explain_kinds=(f"{_KINDS}.RegionRouting",),
            earlier_attention={"attention_from_stage": 1},
            small_settings={2: _bsa_small(2), 3: _bsa_small(3)},
        ),
        Variant(
            name="mdsa",
            label="MDSA",
            plans_suffix="MDSA",
            network_class="nnunet_sparseattn.architectures.mdsa.MDSAUNet",
            trainer="nnUNetTrainerMDSA",
            trainers=(
                f"{_TRAINERS}.mdsa.nnUNetTrainerMDSA",
                f"{_TRAINERS}.mdsa.nnUNetTrainerMDSA_NB",
                f"{_TRAINERS}.mdsa.nnUNetTrainerMDSA_AdamW",
            ),
            attention_layer="nnunet_sparseattn.layers.multiscale_attention.MultiScaleDynamicSparseAttention",
            explain_kinds=(f"{_KINDS}.RegionRouting",),
            earlier_attention={"attention_from_stage": 1},
            small_settings={2: _mdsa_small(2), 3: _mdsa_small(3)},
        ),
        Variant(
            name="bilateral",
            label="Bilateral",
            plans_suffix="Bilateral",
            network_class="nnunet_sparseattn.architectures.bilateral.BilateralUNet",
            trainer="nnUNetTrainerBilateral",
            trainers=(
                f"{_TRAINERS}.bilateral.nnUNetTrainerBilateral",
                f"{_TRAINERS}.bilateral.nnUNetTrainerBilateral_AdamW",
                f"{_TRAINERS}.bilateral.nnUNetTrainerBilateral_noRendering",
                f"{_TRAINERS}.bilateral.nnUNetTrainerBilateral_pretrained",
                f"{_TRAINERS}.bilateral.nnUNetTrainerBilateral_SGD",
            ),
            attention_layer="nnunet_sparseattn.architectures.bilateral.BilateralAttention",
            explain_kinds=(f"{_KINDS}.SwinWindows", f"{_KINDS}.ChannelWeights", f"{_KINDS}.Rendering"),
            earlier_attention={"isam_stages": [1, 2]},
            small_settings={2: _BILATERAL_SMALL, 3: _BILATERAL_SMALL},
        ),
    )
}


def register(variant: Variant) -> None:
    """Add a method (a package of its own may register its network beside ours). Refuses a name already taken."""
    if variant.name in VARIANTS:
        raise UserError(f"a variant named {variant.name!r} is already registered")
    VARIANTS[variant.name] = variant


def unregister(name: str) -> None:
    """Remove a registered method (the registry-driven tests register one and remove it after)."""
    VARIANTS.pop(name, None)


def locate(path: str, what: str) -> Any:
    """The object a registration names by dotted path (one line naming the path when it is not importable)."""
    # importlib, not pydoc.locate: the trainers package reads its trainers while it is being imported itself, when
    # pydoc's attribute walk from the top package does not see it yet
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise UserError(f"{what} {path} is not importable") from None


def attention_label(layer: object) -> str:
    """What a method calls its attention layer (``explain`` names modules so); the class name for other layers."""
    cls = type(layer)
    path = f"{cls.__module__}.{cls.__qualname__}"
    for v in VARIANTS.values():
        if v.attention_layer == path:
            return v.label
    return cls.__name__


@dataclass(frozen=True)
class PaperConfiguration:
    """A fixed network at a paper's scale, reported beside the paper's own figures by ``info``."""

    name: str
    module: str  # holds the builder and PAPER_* constants
    builder: str  # function name: () -> nn.Module

    def load(self) -> tuple[Callable, dict]:
        mod = pydoc.locate(self.module)
        if mod is None:
            raise UserError(f"{self.name}: {self.module} is not importable")
        figures = {k: getattr(mod, k) for k in ("PAPER_PARAMS", "PAPER_FLOPS", "PAPER_INPUT") if hasattr(mod, k)}
        return getattr(mod, self.builder), figures


PAPER_CONFIGURATIONS: dict[str, PaperConfiguration] = {
    p.name: p
    for p in (
        PaperConfiguration("mdsa-paper", "nnunet_sparseattn.architectures.mdsa", "mdsa_paper_network"),
        PaperConfiguration("bilateral-paper", "nnunet_sparseattn.architectures.bilateral", "bilateral_paper_network"),
    )
}


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise UserError(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}") from None


def network_class(variant: Variant) -> type[PlansNetwork]:
    # imported here: the variants' names are read (the CLI's choices) without loading torch
    from nnunet_sparseattn.architectures.base import PlansNetwork

    cls = pydoc.locate(variant.network_class)
    if cls is None:
        raise UserError(f"variant {variant.name!r}: its network {variant.network_class} is not importable")
    if not (isinstance(cls, type) and issubclass(cls, PlansNetwork)):
        raise UserError(
            f"variant {variant.name!r}: {variant.network_class} is not a network built from plans (a PlansNetwork)"
        )
    return cls
