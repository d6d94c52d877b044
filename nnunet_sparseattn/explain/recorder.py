"""Forward hooks that record what the attention layers decide, per sliding window, while nnU-Net's predictor runs.

Which modules are hooked, and how, is each kind of attention's own business (:mod:`.kinds`: the routers of BSA and
MDSA and BSA's coarse attention, the bilateral network's Swin blocks, FSAM and attention rendering); the kinds are
read from the method registry (:func:`attention_kinds`). Nothing is computed for these hooks that the layer does not
compute anyway, except the Swin window weights a caller asks for.

A pre-hook on the network counts its calls: with test-time augmentation off, nnU-Net's predictor calls the network
once per sliding window, in the order of ``_internal_get_sliding_window_slicers``, so call ``i`` is window ``i``.
Every record is copied to the CPU as numpy; :meth:`Recorder.close` removes every hook and request, leaving the network
as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

import numpy as np
import torch
import torch.nn as nn

from nnunet_sparseattn.layers.routing import RegionLayout
from nnunet_sparseattn.plans.variants import VARIANTS, locate

__all__ = [
    "ChannelRecord",
    "CoarseRecord",
    "Recorder",
    "RenderRecord",
    "RoutingRecord",
    "WindowRecord",
    "KindHooks",
    "attention_kinds",
    "attention_modules",
]


@dataclass
class RoutingRecord:
    module: str  # the attention module that owns the router
    patch: int
    indices: np.ndarray  # (Nq, k) key regions per query region, ascending
    affinity: np.ndarray  # (Nq, Nk) float32
    query_layout: RegionLayout
    key_layout: RegionLayout

    def weights(self) -> np.ndarray:
        """Routing weights: the softmax of the region affinities over the key regions (``Routing.weights``)."""
        a = self.affinity.astype(np.float64)
        e = np.exp(a - a.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)


@dataclass
class CoarseRecord:
    module: str
    patch: int
    weights: np.ndarray  # (heads, Nr, Nr)
    layout: RegionLayout


@dataclass
class WindowRecord:
    module: str  # the Swin block
    patch: int
    spatial: tuple[int, ...]  # the block's map
    window: tuple[int, ...]
    shift: tuple[int, ...]
    windows: tuple[int, ...]  # the windows explained
    weights: np.ndarray  # (len(windows), heads, N, N)


@dataclass
class ChannelRecord:
    module: str
    patch: int
    weights: np.ndarray  # (C,)


@dataclass
class RenderRecord:
    module: str
    patch: int
    index: np.ndarray  # (N,) flat voxel indices into the patch
    shape: tuple[int, ...]  # the patch (the logits' spatial shape)


class KindHooks(Protocol):
    """What the recorder needs of a kind of attention (:class:`.kinds.AttentionKind`, which it reaches through the
    registry by name: the kinds import the recorder, not the other way round)."""

    key: str

    def owns(self, module: nn.Module) -> bool: ...

    def attach(self, recorder: Recorder, name: str, module: nn.Module) -> None: ...


def attention_kinds() -> list[KindHooks]:
    """The kinds of attention ``explain`` knows, one object each, in the order of the registry's methods (a kind two
    methods share, such as BSA's and MDSA's region routing, once)."""
    paths = dict.fromkeys(path for variant in VARIANTS.values() for path in variant.explain_kinds)
    return [locate(path, "explain kind")() for path in paths]


def attention_modules(network: nn.Module, kinds: Optional[Sequence[KindHooks]] = None) -> dict[str, list[str]]:
    """The network's explainable modules by kind (``routed``: attention with a ``Router``; ``window``: Swin blocks;
    ``channel``: FSAM; ``rendering``; and those of any kind a method registers), by module name. Empty for a network
    without attention (stock nnU-Net)."""
    kinds = attention_kinds() if kinds is None else kinds
    found: dict[str, list[str]] = {kind.key: [] for kind in kinds}
    for name, module in network.named_modules():
        kind = _kind_of(module, kinds)
        if kind is not None:
            found[kind.key].append(name)
    return found


def _kind_of(module: nn.Module, kinds: Sequence[KindHooks]) -> Optional[KindHooks]:
    return next((kind for kind in kinds if kind.owns(module)), None)


def numpy_of(t: torch.Tensor) -> np.ndarray:
    """A record's copy of a tensor: detached, float, on the CPU."""
    return t.detach().float().cpu().numpy()


@dataclass
class Recorder:
    """Hooks on ``network`` for one or more predictor runs. ``window_requests`` maps a sliding window's index to the
    patch-local voxels whose Swin-window weights to compute there (nothing is computed in other windows)."""

    network: nn.Module
    window_requests: Mapping[int, Sequence[Sequence[int]]] = field(default_factory=dict)
    routing: list[RoutingRecord] = field(default_factory=list)
    coarse: list[CoarseRecord] = field(default_factory=list)
    windows: list[WindowRecord] = field(default_factory=list)
    channels: list[ChannelRecord] = field(default_factory=list)
    rendered: list[RenderRecord] = field(default_factory=list)
    calls: int = 0
    patch_size: tuple[int, ...] = ()
    _handles: list[Any] = field(default_factory=list)
    _closing: list[Callable[[], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._handles.append(self.network.register_forward_pre_hook(self._count))
        kinds = attention_kinds()
        for name, module in self.network.named_modules():
            kind = _kind_of(module, kinds)
            if kind is not None:
                kind.attach(self, name, module)

    def keep(self, handle: Any) -> None:
        """A hook a kind registered: removed by :meth:`close`."""
        self._handles.append(handle)

    def on_close(self, undo: Callable[[], None]) -> None:
        """What a kind changed on a module besides hooks (a request for window weights): undone by :meth:`close`."""
        self._closing.append(undo)

    # the patch the network is running: its call count since the recorder was attached (or last reset)
    @property
    def patch(self) -> int:
        return self.calls - 1

    def reset(self, window_requests: Optional[Mapping[int, Sequence[Sequence[int]]]] = None) -> None:
        """Start counting windows again (a second predictor run), optionally with new window requests."""
        self.calls = 0
        if window_requests is not None:
            self.window_requests = window_requests

    def keep_first_run(self):
        """Before a second predictor run that is only for window weights: returns a function that, called after it,
        drops what that run recorded again (everything but the window weights)."""
        lengths = {name: len(getattr(self, name)) for name in ("routing", "coarse", "channels", "rendered")}

        def restore() -> None:
            for name, n in lengths.items():
                del getattr(self, name)[n:]

        return restore

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for undo in self._closing:
            undo()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _count(self, module: nn.Module, args: tuple) -> None:
        self.calls += 1
        self.patch_size = tuple(int(s) for s in args[0].shape[2:])
