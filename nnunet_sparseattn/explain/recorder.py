"""Forward hooks that record what the attention layers decide, per sliding window, while nnU-Net's predictor runs.

What each layer exposes (nothing is computed for these hooks that the layer does not compute anyway, except the
window weights a caller asks for):

- ``Router`` (BSA, MDSA): its output, a ``Routing`` (top-k key regions and the region affinities);
- ``CoarseRegionAttention`` (BSA): the patch-level attention weights of every head;
- ``SwinBlock`` / ``WindowWeights`` (bilateral ISAM): a pre-hook on the block sees the map's shape and asks its window
  attention for the windows that hold the query points of this patch; a hook on ``WindowWeights`` reads their
  weights;
- ``FSAM``'s channel gate (bilateral): the per-channel weights;
- ``AttentionRendering`` (bilateral): the voxels it refined.

A pre-hook on the network counts its calls: with test-time augmentation off, nnU-Net's predictor calls the network
once per sliding window, in the order of ``_internal_get_sliding_window_slicers``, so call ``i`` is window ``i``.
Every record is copied to the CPU as numpy; :meth:`Recorder.close` removes every hook and request, leaving the network
as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from nnunet_sparseattn.explain.geometry import token_of
from nnunet_sparseattn.layers.bilevel_attention import CoarseRegionAttention
from nnunet_sparseattn.layers.fsam import FSAM
from nnunet_sparseattn.layers.point_rendering import AttentionRendering
from nnunet_sparseattn.layers.routing import RegionLayout, Router
from nnunet_sparseattn.layers.window_attention import SwinBlock, locate_in_windows

__all__ = [
    "ChannelRecord",
    "CoarseRecord",
    "Recorder",
    "RenderRecord",
    "RoutingRecord",
    "WindowRecord",
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


def _owner(name: str, suffix: str) -> str:
    return name[: -len(suffix)] if name.endswith(suffix) else name


def attention_modules(network: nn.Module) -> dict[str, list[str]]:
    """The network's explainable modules by kind (``routed``: attention with a ``Router``; ``window``: Swin blocks;
    ``channel``: FSAM; ``rendering``), by module name. Empty for a network without attention (stock nnU-Net)."""
    found: dict[str, list[str]] = {"routed": [], "window": [], "channel": [], "rendering": []}
    for name, module in network.named_modules():
        if isinstance(getattr(module, "router", None), Router):
            found["routed"].append(name)
        elif isinstance(module, SwinBlock):
            found["window"].append(name)
        elif isinstance(module, FSAM):
            found["channel"].append(name)
        elif isinstance(module, AttentionRendering):
            found["rendering"].append(name)
    return found


def _numpy(t: torch.Tensor) -> np.ndarray:
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
    _swin: list[SwinBlock] = field(default_factory=list)
    _spatial: dict[int, tuple[int, ...]] = field(default_factory=dict)  # a Swin block's map, while it runs

    def __post_init__(self) -> None:
        self._handles.append(self.network.register_forward_pre_hook(self._count))
        for name, module in self.network.named_modules():
            if isinstance(module, Router):
                self._handles.append(module.register_forward_hook(self._routing_hook(_owner(name, ".router"))))
            elif isinstance(module, CoarseRegionAttention):
                self._handles.append(module.register_forward_hook(self._coarse_hook(_owner(name, ".coarse"))))
            elif isinstance(module, SwinBlock):
                self._swin.append(module)
                self._handles.append(module.register_forward_pre_hook(self._request_windows))
                self._handles.append(module.attn.weights.register_forward_hook(self._window_hook(name, module)))
                self._handles.append(module.register_forward_hook(self._end_request))
            elif isinstance(module, FSAM):
                self._handles.append(module.gate.register_forward_hook(self._channel_hook(name)))
            elif isinstance(module, AttentionRendering):
                self._handles.append(module.register_forward_hook(self._render_hook(name)))

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
        for block in self._swin:
            block.attn.weights.windows = None

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------- hooks
    def _count(self, module: nn.Module, args: tuple) -> None:
        self.calls += 1
        self.patch_size = tuple(int(s) for s in args[0].shape[2:])

    def _routing_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            self.routing.append(
                RoutingRecord(
                    name,
                    self.patch,
                    output.indices[0].cpu().numpy(),
                    _numpy(output.affinity[0]),
                    output.query_layout,
                    output.key_layout,
                )
            )

        return hook

    def _coarse_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            self.coarse.append(CoarseRecord(name, self.patch, _numpy(output.weights[0]), args[3]))

        return hook

    def _request_windows(self, block: nn.Module, args: tuple) -> None:
        assert isinstance(block, SwinBlock)
        voxels = self.window_requests.get(self.patch)
        if not voxels:
            return
        spatial = tuple(int(s) for s in args[0].shape[1:-1])
        self._spatial[id(block)] = spatial
        shift = block.shifts(spatial)
        wanted = {
            locate_in_windows(token_of(v, spatial, self.patch_size), spatial, block.window, shift)[0] for v in voxels
        }
        block.attn.weights.windows = tuple(sorted(wanted))

    def _end_request(self, block: nn.Module, args: tuple, output: Any) -> None:
        assert isinstance(block, SwinBlock)
        block.attn.weights.windows = None

    def _window_hook(self, name: str, block: SwinBlock):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            windows = tuple(block.attn.weights.windows or ())
            spatial = self._spatial[id(block)]  # set by the block's pre-hook, with the windows
            self.windows.append(
                WindowRecord(name, self.patch, spatial, block.window, block.shifts(spatial), windows, _numpy(output[0]))
            )

        return hook

    def _channel_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            self.channels.append(ChannelRecord(name, self.patch, _numpy(output[0].flatten())))

        return hook

    def _render_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            self.rendered.append(
                RenderRecord(name, self.patch, output[1].index[0].cpu().numpy(), tuple(args[0].shape[2:]))
            )

        return hook
