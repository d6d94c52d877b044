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
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Mapping, Optional, Protocol, Sequence, cast

import numpy as np
import torch
import torch.nn as nn
from dynamic_network_architectures.architectures.abstract_arch import AbstractDynamicNetworkArchitectures
from dynamic_network_architectures.initialization.weight_init import InitWeights_He

from nnunet_sparseattn.errors import UserError, install_user_error_hook
from nnunet_sparseattn.layers.checkpointing import checkpoint_blocks
from nnunet_sparseattn.layers.conv import conv_dims, conv_norm_act_options
from nnunet_sparseattn.layers.shapes import ceil_div, per_axis
from nnunet_sparseattn.layers.transformer import TransformerBlock, num_heads_for

__all__ = [
    "PlansError",
    "PlansNetwork",
    "REQUIRES_IMPORT",
    "SHARED_KWARGS",
    "SkipsEncoder",
    "StageAttention",
    "UNetSettings",
    "check_choice",
    "check_flag",
    "check_int",
    "check_number",
    "check_topk",
    "is_int",
    "heads_for",
    "conv_block_args",
    "normalize_plans_kwargs",
    "per_stage",
    "serialize_arch_kwargs",
    "stage_shapes",
    "x_text",
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


# ------------------------------------------------------------------------------------------ settings, validated
# One line each, naming the setting, what it may be and what was given: the same check where a plans file is
# written (``nnunet-sparseattn plan --set``) and where it is read (the network's constructor).
def is_int(value: Any) -> bool:
    """An integer, not a bool (JSON's true is not a count)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(name: str, value: Any, minimum: int, maximum: Optional[int] = None, allow_none: bool = False) -> Any:
    """``value`` if it is an integer in ``minimum..maximum`` (or None when allowed), else :class:`PlansError`."""
    if value is None and allow_none:
        return None
    if not is_int(value) or value < minimum or (maximum is not None and value > maximum):
        bound = f"in {minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise PlansError(f"{name}={value!r}: must be an integer {bound}" + (" or null" if allow_none else ""))
    return int(value)


def check_number(
    name: str, value: Any, minimum: float, maximum: Optional[float] = None, open_min: bool = False
) -> float:
    """``value`` if it is a number (not a bool) from ``minimum`` (excluded when ``open_min``) to ``maximum``."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    ok = ok and (value > minimum if open_min else value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        bound = f"{'>' if open_min else '>='} {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        raise PlansError(f"{name}={value!r}: must be a number {bound}")
    return float(value)


def check_flag(name: str, value: Any) -> bool:
    """``value`` if it is true or false (a plans file's JSON boolean)."""
    if not isinstance(value, (bool, np.bool_)):
        raise PlansError(f"{name}={value!r}: must be true or false")
    return bool(value)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise PlansError(f"{name}={value!r}: choose one of {', '.join(repr(c) for c in choices)}")
    return cast(str, value)


def check_topk(value: Any, n: int, key_regions: Optional[Sequence[Optional[int]]] = None) -> list[int]:
    """``topk`` as the plans give it (an integer, or one per stage) as one integer per stage: key regions each query
    region attends to, 0 for all (dense attention). ``key_regions`` (per stage; None where the stage does not attend),
    given when the patch is known: a ``topk`` above every attention stage's region count (or, per stage, above that
    stage's) would silently mean dense attention, and is refused."""
    entries = list(value) if isinstance(value, (list, tuple)) else [value] * n
    rule = f"an integer >= 0 (key regions per query region; 0: dense), or a list of {n} (one per stage)"
    if len(entries) != n or not all(is_int(t) and t >= 0 for t in entries):
        raise PlansError(f"topk={value!r}: must be {rule}")
    topk = [int(t) for t in entries]
    counts = [c for c in key_regions or [] if c is not None]
    if counts and not isinstance(value, (list, tuple)) and topk[0] > max(counts):
        raise PlansError(
            f"topk={value!r}: no attention stage has more than {max(counts)} key regions, so it would mean dense "
            f"attention everywhere; give 1..{max(counts)}, or 0 for dense"
        )
    for s, (t, c) in enumerate(zip(topk, key_regions or [])):
        if c is not None and isinstance(value, (list, tuple)) and t > c:
            raise PlansError(f"topk[{s}]={t}: stage {s} has {c} key regions; give 1..{c}, or 0 for dense")
    return topk


@dataclass(frozen=True)
class UNetSettings:
    """The plans' shared U-Net settings (``PlainConvUNet``'s names), normalised once: classes imported, one entry per
    stage (:func:`normalize_plans_kwargs`). What the networks' encoders and decoders take instead of long lists."""

    n_stages: int
    features_per_stage: list[int]
    conv_op: type[nn.Module]
    kernel_sizes: list[list[int]]
    strides: list[list[int]]
    n_conv_per_stage: list[int]
    n_conv_per_stage_decoder: list[int]
    conv_bias: bool
    norm_op: Optional[type[nn.Module]]
    norm_op_kwargs: dict
    dropout_op: Optional[type[nn.Module]]
    dropout_op_kwargs: dict
    nonlin: Optional[type[nn.Module]]
    nonlin_kwargs: dict

    @classmethod
    def from_plans(cls, arch_kwargs: Mapping[str, Any]) -> "UNetSettings":
        return cls(**normalize_plans_kwargs(arch_kwargs))

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def ndim(self) -> int:
        return len(self.strides[0])

    @property
    def conv_block_args(self) -> tuple[Any, ...]:
        """``StackedConvBlocks``' arguments after the stride (bias, norm, dropout, nonlinearity), in its order."""
        return conv_block_args(self.as_dict())

    def expose_to_decoder(self, encoder: nn.Module) -> None:
        """Set on ``encoder`` what nnU-Net's ``UNetDecoder`` reads from its encoder."""
        values = {
            "output_channels": list(self.features_per_stage),
            "strides": [list(s) for s in self.strides],
            "kernel_sizes": [list(k) for k in self.kernel_sizes],
            **{name: getattr(self, name) for name in ("conv_op", *CONV_BLOCK_KWARGS)},
        }
        for name, value in values.items():
            setattr(encoder, name, value)

    @property
    def conv_norm_act_options(self) -> dict[str, Any]:
        """``ConvNormAct``'s keyword options the plans choose (bias, norm, nonlinearity)."""
        return conv_norm_act_options(self.as_dict())


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


def x_text(values: Sequence[int]) -> str:
    """``[10, 14, 10]`` -> ``"10x14x10"``, as shapes are written in messages and tables."""
    return "x".join(str(int(v)) for v in values)


@dataclass(frozen=True)
class StageAttention:
    """Where a network attends, for ``info``: one encoder stage, its feature-map shape and how it attends."""

    stage: int
    shape: tuple[int, ...]
    text: str  # e.g. "regions of 5x7x5 tokens (4), top-4"


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
      them as one settings value (a frozen dataclass, one entry per stage where per stage). The constructor calls it
      through :meth:`settings` (without a patch), and so does :meth:`resolve_arch_kwargs` (with one): a plans file
      and a direct call are refused by the same code, in one line (:class:`PlansError`);
    - :meth:`attention_layout`: which stages attend and how, for ``info``.

    The constructor reads its arguments once, ``unet, own = self.settings(locals())``, and hands the two values on.

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

    @classmethod
    def settings(cls, arguments: Mapping[str, Any]) -> tuple[UNetSettings, Any]:
        """The constructor's arguments (its ``locals()``, read here once) as two values: the shared
        :class:`UNetSettings` and the network's own settings object (:meth:`check_own`, validated)."""
        unet = UNetSettings.from_plans({name: arguments[name] for name in SHARED_KWARGS})
        own = {name: arguments[name] for name in cls.own_defaults()}
        return unet, cls.check_own({**unet.as_dict(), **own})

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
    def attention_layout(cls, kwargs: Mapping[str, Any], patch_size: Sequence[int]) -> list[StageAttention]:
        """Which encoder stages attend, and how, for resolved arguments (:meth:`resolve_arch_kwargs`) and a patch
        size (``info`` prints it). Default: none."""
        return []

    @classmethod
    def is_named_by(cls, network_class_name: str) -> bool:
        """Whether a plans file's ``network_class_name`` names this class."""
        return network_class_name == f"{cls.__module__}.{cls.__qualname__}" or pydoc.locate(network_class_name) is cls

    @classmethod
    def resolve_arch_kwargs(
        cls,
        arch_kwargs: Mapping[str, Any],
        patch_size: Sequence[int],
        overrides: Optional[Mapping[str, Any]] = None,
        plans_network: Optional[str] = None,
    ) -> dict[str, Any]:
        """Shared plans arguments + own arguments: defaults < given in the plans < ``overrides``; then the values
        left at None that depend on the patch are chosen for it, and everything is checked against it.

        ``plans_network``: the configuration's ``network_class_name``. Own settings are read from the plans only when
        it names this network (or is not given): another network's plans (e.g. BSA's, read for MDSA) lend their
        U-Net stages, not their attention settings."""
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
        if plans_network is None or cls.is_named_by(plans_network):
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
        plans_network: Optional[str] = None,
    ) -> "PlansNetwork":
        """Build from one configuration's ``arch_kwargs`` (any U-Net plans), validated against ``patch_size``
        (``plans_network``: see :meth:`resolve_arch_kwargs`)."""
        kwargs = cls.resolve_arch_kwargs(arch_kwargs, patch_size, overrides, plans_network)
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
