"""What every network we ship shares: nnU-Net plans in, nnU-Net's network contracts out.

A network here is built in one of two ways, and both end in the same constructor call:

- by our trainers (``ArchitectureTrainer.build_network_architecture``) from ANY configuration of any nnU-Net plans
  (default ``PlainConvUNet`` or ResEnc plans, or our own variant plans) through :meth:`PlansNetwork.from_plans`;
- by nnU-Net's stock trainer from a variant plans file (``nnunet-sparseattn plan --variant ...``) whose
  ``network_class_name`` is the dotted path of the class: ``get_network_from_plans`` calls the constructor with the
  plans' ``arch_kwargs`` and then ``network.apply(network.initialize)``.

Constructor contract of every :class:`PlansNetwork` subclass (mirrors ``PlainConvUNet``)::

    __init__(self, input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides,
             n_conv_per_stage, num_classes, n_conv_per_stage_decoder, conv_bias=False, norm_op=None,
             norm_op_kwargs=None, dropout_op=None, dropout_op_kwargs=None, nonlin=None, nonlin_kwargs=None,
             deep_supervision=False, <the network's own keyword arguments, each with its default>)

and nnU-Net's contracts (checked by ``tests/test_architecture_contracts.py`` for every shipped network):

- ``self.decoder.deep_supervision`` toggles deep supervision (nnU-Net's trainer sets it);
- with it on, ``forward`` returns ``n_stages - 1`` logit maps, highest resolution first, the i-th at the
  resolution of encoder stage i; with it off, one tensor at full resolution;
- every head exists in both modes, so a checkpoint trained with deep supervision loads strictly without it;
- ``compute_conv_feature_map_size(input_size)`` estimates stored activations (nnU-Net's planners size patches and
  batches with it);
- every parameter gets a gradient in every training step (DDP runs without ``find_unused_parameters``).
"""

from __future__ import annotations

import inspect
import pydoc
from typing import Any, ClassVar, Mapping, Optional, Protocol, Sequence, cast

import numpy as np
import torch
import torch.nn as nn
from dynamic_network_architectures.architectures.abstract_arch import AbstractDynamicNetworkArchitectures
from dynamic_network_architectures.initialization.weight_init import InitWeights_He

from nnunet_sparseattn.errors import UserError, install_user_error_hook
from nnunet_sparseattn.layers.checkpointing import checkpoint_blocks
from nnunet_sparseattn.layers.conv import conv_dims
from nnunet_sparseattn.layers.shapes import ceil_div, per_axis
from nnunet_sparseattn.layers.transformer import TransformerBlock, num_heads_for

__all__ = [
    "PlansError",
    "PlansNetwork",
    "REQUIRES_IMPORT",
    "SHARED_KWARGS",
    "SkipsEncoder",
    "heads_for",
    "conv_block_args",
    "normalize_plans_kwargs",
    "per_stage",
    "serialize_arch_kwargs",
    "stage_shapes",
]


class PlansError(UserError):
    """A plans configuration this network cannot be built from (the message says what to change)."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        # nnU-Net's stock trainer builds our networks from variant plans (pydoc.locate) with no entry point of ours
        # in the process: the refusal itself makes sure it prints as one line there
        install_user_error_hook()


# The plans' architecture arguments every network here takes (PlainConvUNet's names).
# The last of them, in StackedConvBlocks' positional order after its stride.
CONV_BLOCK_KWARGS: tuple[str, ...] = (
    "conv_bias",
    "norm_op",
    "norm_op_kwargs",
    "dropout_op",
    "dropout_op_kwargs",
    "nonlin",
    "nonlin_kwargs",
)
SHARED_KWARGS: tuple[str, ...] = (
    "n_stages",
    "features_per_stage",
    "conv_op",
    "kernel_sizes",
    "strides",
    "n_conv_per_stage",
    "n_conv_per_stage_decoder",
    *CONV_BLOCK_KWARGS,
)
# Arguments nnU-Net stores as dotted names in plans files (``_kw_requires_import``).
REQUIRES_IMPORT: tuple[str, ...] = ("conv_op", "norm_op", "dropout_op", "nonlin")
_REQUIRED = ("n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides")


def _locate(name: Any, key: str) -> Any:
    if name is None or not isinstance(name, str):
        return name
    obj = pydoc.locate(name)
    if obj is None:
        raise PlansError(f"plans argument {key}={name!r} names nothing importable; use a torch.nn class path")
    return obj


def per_stage(value: Any, n: int, name: str) -> list:
    """``value`` broadcast to a list of ``n`` entries (a scalar or a length-``n`` sequence)."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise PlansError(f"{name} has {len(value)} entries, expected {n} (one per stage)")
        return list(value)
    return [value] * n


def _plans_per_axis(value: Any, ndim: int, name: str) -> list[int]:
    try:
        return list(per_axis(value, ndim, name))
    except (TypeError, ValueError) as error:
        raise PlansError(str(error)) from None


def heads_for(channels: int, head_dim: Any, where: str) -> int:
    """:func:`~nnunet_sparseattn.layers.transformer.num_heads_for`, refusing in one line what it refuses."""
    if not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim < 1:
        raise PlansError(f"head_dim={head_dim!r} must be an integer >= 1")
    try:
        return num_heads_for(int(channels), head_dim)
    except ValueError as error:
        raise PlansError(f"{where}: {error}") from None


def conv_block_args(kw: Mapping[str, Any]) -> tuple[Any, ...]:
    """``StackedConvBlocks``' arguments after the stride (bias, norm, dropout, nonlinearity), from normalised
    shared arguments, in its positional order."""
    return tuple(kw[name] for name in CONV_BLOCK_KWARGS)


def normalize_plans_kwargs(arch_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The shared U-Net arguments of a plans configuration, classes imported and lists made per stage.

    Accepts nnU-Net's default (``PlainConvUNet``: ``n_conv_per_stage``) and ResEnc (``ResidualEncoderUNet``:
    ``n_blocks_per_stage``, read as convolutions per stage) plans, and our own variant plans. Architectures without
    U-Net stages (e.g. Primus) are refused.
    """
    missing = [k for k in _REQUIRED if k not in arch_kwargs]
    if missing:
        raise PlansError(
            f"this plans configuration has no U-Net stages (missing {', '.join(missing)}); build from nnU-Net's "
            "default or ResEnc plans (nnUNetv2_plan_and_preprocess / -pl nnUNetPlannerResEnc*)"
        )
    kw = {k: arch_kwargs[k] for k in SHARED_KWARGS if k in arch_kwargs}
    if "n_conv_per_stage" not in kw:
        kw["n_conv_per_stage"] = arch_kwargs.get("n_blocks_per_stage", 2)
    kw.setdefault("n_conv_per_stage_decoder", 2)
    for key in REQUIRES_IMPORT:
        kw[key] = _locate(kw.get(key), key)
    n = int(kw["n_stages"])
    if n < 2:
        raise PlansError(f"n_stages={n}: a U-Net needs at least 2 stages")
    kw["n_stages"] = n
    conv_op = kw["conv_op"]
    if not (isinstance(conv_op, type) and issubclass(conv_op, (nn.Conv2d, nn.Conv3d))):
        raise PlansError(f"conv_op={conv_op} is not torch.nn.Conv2d or Conv3d")
    ndim = conv_dims(conv_op)
    kw["features_per_stage"] = [int(f) for f in per_stage(kw["features_per_stage"], n, "features_per_stage")]
    kw["kernel_sizes"] = [
        _plans_per_axis(k, ndim, "kernel_sizes") for k in per_stage(kw["kernel_sizes"], n, "kernel_sizes")
    ]
    kw["strides"] = [_plans_per_axis(s, ndim, "strides") for s in per_stage(kw["strides"], n, "strides")]
    kw["n_conv_per_stage"] = [int(c) for c in per_stage(kw["n_conv_per_stage"], n, "n_conv_per_stage")]
    kw["n_conv_per_stage_decoder"] = [
        int(c) for c in per_stage(kw["n_conv_per_stage_decoder"], n - 1, "n_conv_per_stage_decoder")
    ]
    kw.setdefault("conv_bias", False)
    for key in ("norm_op_kwargs", "dropout_op_kwargs", "nonlin_kwargs"):
        kw[key] = kw.get(key) or {}
    return kw


def serialize_arch_kwargs(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``(arch_kwargs, _kw_requires_import)`` as a plans file stores them: classes as dotted names."""
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if isinstance(value, type):
            value = f"{value.__module__}.{value.__qualname__}"
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out, [k for k in REQUIRES_IMPORT if k in out]


def stage_shapes(patch_size: Sequence[int], strides: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Feature-map shape of every encoder stage for ``patch_size`` (stride-s convs with 'same' padding: ceil)."""
    shape = tuple(int(p) for p in patch_size)
    shapes = []
    for stride in strides:
        shape = ceil_div(shape, stride)
        shapes.append(shape)
    return shapes


class SkipsEncoder(nn.Module):
    """An encoder whose ``forward`` runs ``self.stages`` in turn and returns every stage's output: the skips,
    bottleneck last, as nnU-Net's decoders read them."""

    stages: nn.ModuleList

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class _FeatureMapSized(Protocol):
    """A part of a network that estimates its stored activations (nnU-Net's planners size patches by it)."""

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int | np.int64: ...


class PlansNetwork(AbstractDynamicNetworkArchitectures):
    """Base of every network we ship (contracts in the module docstring).

    A subclass states its own arguments and their defaults once, in its constructor's signature (after
    ``deep_supervision``), and meets the plans through two class methods:

    - :meth:`fill_for_patch`: values of its own arguments left at ``None`` that depend on the stage shapes (region
      sizes, windows), chosen for a configuration's patch size;
    - :meth:`check_own`: validate its own arguments against the shared ones (and the patch, when known) and return
      them normalised per stage. The constructor calls it (without a patch), and so does :meth:`resolve_arch_kwargs`
      (with one): a plans file and a direct call are refused by the same code, in one line (:class:`PlansError`).

    Like nnU-Net's U-Nets it runs ``decoder(encoder(x))`` and sums their activation estimates; a network with more
    than that overrides ``forward`` and ``compute_conv_feature_map_size``.
    """

    encoder: nn.Module
    decoder: nn.Module
    # The attention blocks activation checkpointing wraps (:meth:`enable_activation_checkpointing`)
    checkpoint_block_types: ClassVar[tuple[type[nn.Module], ...]] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.decoder(self.encoder(x))

    def enable_activation_checkpointing(self) -> int:
        """Run every attention block (``checkpoint_block_types``) under activation checkpointing: a training step
        keeps only each block's input for backward and recomputes the block in backward (same outputs and gradients,
        one more forward of the blocks; ``benchmarks/training_memory.py`` measures both). Returns how many blocks."""
        return checkpoint_blocks(self, self.checkpoint_block_types)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        parts = (cast(_FeatureMapSized, part) for part in (self.encoder, self.decoder))
        return np.int64(sum(part.compute_conv_feature_map_size(input_size) for part in parts))

    @classmethod
    def own_defaults(cls) -> dict[str, Any]:
        """The network's own arguments and their defaults, read from the constructor's signature."""
        params = list(inspect.signature(cls.__init__).parameters.values())
        names = [p.name for p in params]
        return {p.name: p.default for p in params[names.index("deep_supervision") + 1 :]}

    @staticmethod
    def shared_values(arguments: Mapping[str, Any]) -> dict[str, Any]:
        """The shared U-Net arguments among ``arguments`` (a constructor passes its ``locals()``), normalised by
        :func:`normalize_plans_kwargs` (classes imported, one entry per stage)."""
        return normalize_plans_kwargs({name: arguments[name] for name in SHARED_KWARGS})

    @classmethod
    def own_values(cls, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """The own arguments among ``arguments`` (a constructor passes its ``locals()``)."""
        return {name: arguments[name] for name in cls.own_defaults()}

    @classmethod
    def fill_for_patch(cls, kwargs: Mapping[str, Any], patch_size: Sequence[int]) -> dict[str, Any]:
        """Own arguments to set for this patch size (``kwargs``: shared + own so far). Default: none."""
        return {}

    @classmethod
    def check_own(cls, kwargs: Mapping[str, Any], patch_size: Optional[Sequence[int]] = None) -> Any:
        """Raise :class:`PlansError` (what to change) for own arguments that do not suit the shared ones (or the
        patch); return them normalised for the constructor. Default: nothing to check."""
        return None

    @classmethod
    def resolve_arch_kwargs(
        cls,
        arch_kwargs: Mapping[str, Any],
        patch_size: Sequence[int],
        overrides: Optional[Mapping[str, Any]] = None,
    ) -> dict[str, Any]:
        """Shared plans arguments + own arguments: defaults < given in the plans < ``overrides``; then the values
        left at None that depend on the patch are chosen for it, and everything is checked against it."""
        shared = normalize_plans_kwargs(arch_kwargs)
        defaults = cls.own_defaults()
        unknown = set(overrides or {}) - set(defaults)
        if unknown:
            raise PlansError(
                f"{cls.__name__} has no argument(s) {sorted(unknown)}; its own arguments are {list(defaults)}"
            )
        ndim = len(shared["strides"][0])
        if len(patch_size) != ndim:
            raise PlansError(
                f"patch size {list(patch_size)} has {len(patch_size)} axes but the plans' conv_op is {ndim}D"
            )
        own = dict(defaults)
        own.update({k: v for k, v in arch_kwargs.items() if k in defaults})
        own.update(overrides or {})
        kwargs = {**shared, **own}
        kwargs.update(cls.fill_for_patch(kwargs, patch_size))
        cls.check_own(kwargs, patch_size)
        return kwargs

    @classmethod
    def from_plans(
        cls,
        arch_kwargs: Mapping[str, Any],
        patch_size: Sequence[int],
        input_channels: int,
        num_classes: int,
        deep_supervision: bool,
        overrides: Optional[Mapping[str, Any]] = None,
        initialize: bool = True,
    ) -> "PlansNetwork":
        """Build from one configuration's ``arch_kwargs`` (any U-Net plans), validated against ``patch_size``."""
        kwargs = cls.resolve_arch_kwargs(arch_kwargs, patch_size, overrides)
        net = cls(input_channels=input_channels, num_classes=num_classes, deep_supervision=deep_supervision, **kwargs)
        if initialize:  # as nnU-Net's get_network_from_plans does
            net.apply(net.initialize)
        return net

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """nnU-Net's He initialisation of the convolutions; then, since ``apply`` visits a block after its children,
        the transformer initialisation of the blocks that ask for it (``TransformerBlock(transformer_init=True)``)."""
        InitWeights_He(1e-2)(module)
        if isinstance(module, TransformerBlock) and module.transformer_init:
            module.reset_parameters()
