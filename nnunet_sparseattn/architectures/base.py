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
             deep_supervision=False, <the network's own keyword arguments, listed in ``own_kwargs``>)

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

import pydoc
from typing import Any, ClassVar, Mapping, Optional, Sequence

import torch.nn as nn
from dynamic_network_architectures.architectures.abstract_arch import AbstractDynamicNetworkArchitectures
from dynamic_network_architectures.initialization.weight_init import InitWeights_He

from nnunet_sparseattn.errors import UserError, install_user_error_hook

__all__ = [
    "PlansError",
    "PlansNetwork",
    "REQUIRES_IMPORT",
    "SHARED_KWARGS",
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
SHARED_KWARGS: tuple[str, ...] = (
    "n_stages",
    "features_per_stage",
    "conv_op",
    "kernel_sizes",
    "strides",
    "n_conv_per_stage",
    "n_conv_per_stage_decoder",
    "conv_bias",
    "norm_op",
    "norm_op_kwargs",
    "dropout_op",
    "dropout_op_kwargs",
    "nonlin",
    "nonlin_kwargs",
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


def _per_axis(value: Any, ndim: int, name: str) -> list[int]:
    out = [int(value)] * ndim if isinstance(value, int) else [int(v) for v in value]
    if len(out) != ndim:
        raise PlansError(f"{name}={value!r} must have {ndim} entries (one per spatial axis)")
    return out


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
    ndim = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}.get(kw["conv_op"])
    if ndim is None:
        raise PlansError(f"conv_op={kw['conv_op']} is not torch.nn.Conv2d or Conv3d")
    kw["features_per_stage"] = [int(f) for f in per_stage(kw["features_per_stage"], n, "features_per_stage")]
    kw["kernel_sizes"] = [_per_axis(k, ndim, "kernel_sizes") for k in per_stage(kw["kernel_sizes"], n, "kernel_sizes")]
    kw["strides"] = [_per_axis(s, ndim, "strides") for s in per_stage(kw["strides"], n, "strides")]
    kw["n_conv_per_stage"] = [int(c) for c in per_stage(kw["n_conv_per_stage"], n, "n_conv_per_stage")]
    kw["n_conv_per_stage_decoder"] = [
        int(c) for c in per_stage(kw["n_conv_per_stage_decoder"], n - 1, "n_conv_per_stage_decoder")
    ]
    kw.setdefault("conv_bias", False)
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
    shape = [int(p) for p in patch_size]
    shapes = []
    for stride in strides:
        shape = [-(-a // int(s)) for a, s in zip(shape, stride)]
        shapes.append(tuple(shape))
    return shapes


class PlansNetwork(AbstractDynamicNetworkArchitectures):
    """Base of every network we ship (contracts in the module docstring).

    Subclasses list their own constructor arguments in ``own_kwargs`` and may resolve them for a configuration in
    :meth:`plans_arch_kwargs` (e.g. region sizes from the stage shapes) and validate them in
    :meth:`check_patch_size`.
    """

    own_kwargs: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def plans_arch_kwargs(cls, plans_kwargs: Mapping[str, Any], patch_size: Sequence[int]) -> dict[str, Any]:
        """The network's own arguments chosen for this configuration (JSON-serialisable). Default: none."""
        return {}

    @classmethod
    def check_patch_size(cls, patch_size: Sequence[int], arch_kwargs: Mapping[str, Any]) -> None:
        """Raise :class:`PlansError` (which stage, what to change) if ``patch_size`` does not suit the arguments."""

    @classmethod
    def resolve_arch_kwargs(
        cls,
        arch_kwargs: Mapping[str, Any],
        patch_size: Sequence[int],
        overrides: Optional[Mapping[str, Any]] = None,
    ) -> dict[str, Any]:
        """Shared plans arguments + own arguments: chosen for the patch < given in the plans < ``overrides``."""
        shared = normalize_plans_kwargs(arch_kwargs)
        unknown = set(overrides or {}) - set(cls.own_kwargs)
        if unknown:
            raise PlansError(
                f"{cls.__name__} has no argument(s) {sorted(unknown)}; its own arguments are {list(cls.own_kwargs)}"
            )
        own = dict(cls.plans_arch_kwargs(shared, patch_size))
        own.update({k: v for k, v in arch_kwargs.items() if k in cls.own_kwargs})
        own.update(overrides or {})
        kwargs = {**shared, **own}
        cls.check_patch_size(patch_size, kwargs)
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
        InitWeights_He(1e-2)(module)  # nnU-Net's convolution init; attention's Linear/1x1 layers keep torch's
