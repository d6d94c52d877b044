"""The network variants a plans file can choose, and the paper-scale configurations ``info`` reports."""

from __future__ import annotations

import pydoc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from nnunet_sparseattn.errors import UserError

if TYPE_CHECKING:
    from nnunet_sparseattn.architectures.base import PlansNetwork


@dataclass(frozen=True)
class Variant:
    name: str  # --variant NAME
    plans_suffix: str  # nnUNetPlans -> nnUNetPlans_<suffix>
    network_class: str  # dotted path written into the plans (nnU-Net's pydoc.locate finds it)
    trainer: str  # our trainer that builds the same network from any plans


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("bsa", "BSA", "nnunet_sparseattn.architectures.bsa.BSAUNet", "nnUNetTrainerBSA"),
        Variant("mdsa", "MDSA", "nnunet_sparseattn.architectures.mdsa.MDSAUNet", "nnUNetTrainerMDSA"),
        Variant(
            "bilateral",
            "Bilateral",
            "nnunet_sparseattn.architectures.bilateral.BilateralUNet",
            "nnUNetTrainerBilateral",
        ),
    )
}


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
