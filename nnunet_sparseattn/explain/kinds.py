"""The kinds of attention ``explain`` shows, one object each: how it finds its modules in a network, the forward hooks
that record what they decide (into the :class:`.recorder.Recorder`'s lists), and how it writes its part of a case's
explanation (maps, figures, its entries of ``explain.json``, its lines on the console, its panels of the overview).

- :class:`RegionRouting`: attention with a ``Router`` (BSA, MDSA): the query's region and its routed key regions,
  BSA's coarse attention, and with a reference how often routed regions hold foreground;
- :class:`SwinWindows`: the bilateral network's ISAM Swin blocks: the query token's weights inside its window;
- :class:`ChannelWeights`: the bilateral network's FSAM channel gate;
- :class:`Rendering`: the bilateral network's attention rendering: the voxels it refined.

Which kinds exist is read from the method registry (each :class:`~nnunet_sparseattn.plans.variants.Variant` names
the kinds of its attention in ``explain_kinds``; :func:`.recorder.attention_kinds` collects them), so a method that
brings a new kind of attention registers its kind beside its network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np
import torch.nn as nn

from nnunet_sparseattn.errors import UserError
from nnunet_sparseattn.explain import analysis, figures
from nnunet_sparseattn.explain.geometry import Geometry, Patch, token_of
from nnunet_sparseattn.explain.model import Case, Model
from nnunet_sparseattn.explain.recorder import (
    ChannelRecord,
    CoarseRecord,
    Recorder,
    RenderRecord,
    RoutingRecord,
    WindowRecord,
    attention_kinds,
    numpy_of,
)
from nnunet_sparseattn.layers.bilevel_attention import CoarseRegionAttention
from nnunet_sparseattn.layers.fsam import FSAM
from nnunet_sparseattn.layers.point_rendering import AttentionRendering
from nnunet_sparseattn.layers.routing import Router
from nnunet_sparseattn.layers.window_attention import SwinBlock, locate_in_windows
from nnunet_sparseattn.plans.variants import attention_label

__all__ = [
    "AttentionKind",
    "CaseOutput",
    "ChannelWeights",
    "RegionRouting",
    "Rendering",
    "SwinWindows",
    "module_label",
    "registered_kinds",
    "say",
    "say_routing",
]


def say(text: str) -> None:
    print(text, flush=True)


def file_name(module: str) -> str:
    return module.replace("/", "_")


class MapWriter(Protocol):
    def write(self, folder: Path, name: str, array: np.ndarray) -> str: ...


@dataclass
class CaseOutput:
    """One case's explanation while it is written: what every kind reads, and what they write into (``summary``: the
    case's ``explain.json``; ``overview``: per point, the panels of ``overview.png``)."""

    model: Model
    case: Case
    reference: Optional[np.ndarray]
    seg: np.ndarray
    geometry: Geometry
    patches: list[Patch]
    points: list[analysis.QueryPoint]
    modules: dict[str, list[str]]  # per kind, its modules (:func:`.recorder.attention_modules`)
    recorder: Recorder
    out: Path
    writer: MapWriter
    structures: figures.Structures  # outlined on every attention picture
    summary: dict[str, Any]
    overview: dict[str, list] = field(default_factory=dict)

    @property
    def spacing(self) -> Any:
        return self.case.properties["spacing"]

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(self.model.configuration_manager.patch_size)

    def coords(self, point: analysis.QueryPoint) -> str:
        values = point.voxel[1:] if self.case.is_2d else point.voxel
        return ("(y,x)=" if self.case.is_2d else "(z,y,x)=") + ",".join(map(str, values))

    def label_of(self, module: str) -> str:
        return module_label(self.model.network, module)

    def point_folder(self, point: analysis.QueryPoint) -> Path:
        return self.out / "points" / point.slug


def module_label(network: nn.Module, module: str) -> str:
    return attention_label(network.get_submodule(module))  # what the method's registration calls it


class AttentionKind:
    """One kind of attention: ``key`` names its modules in :func:`.recorder.attention_modules`; ``described`` is how
    the note on a network without any explainable module names it."""

    key = ""
    described = ""
    asked_for_points = False  # records only at the query points (known before the predictor runs)

    def owns(self, module: nn.Module) -> bool:
        """Whether ``module`` is one of this kind's explainable modules."""
        raise NotImplementedError

    def attach(self, recorder: Recorder, name: str, module: nn.Module) -> None:
        """Hook ``module`` (named ``name``) so that what it decides lands in ``recorder``."""
        raise NotImplementedError

    def write(self, output: CaseOutput) -> None:
        """Its maps, figures, ``explain.json`` entries, console lines and overview panels of one case."""
        raise NotImplementedError

    def conclude(self, output: CaseOutput) -> None:
        """What it writes after the overview (nothing by default)."""


def registered_kinds() -> list[AttentionKind]:
    """The kinds the method registry names (:func:`.recorder.attention_kinds`), each checked to be a kind."""
    kinds = []
    for kind in attention_kinds():
        if not isinstance(kind, AttentionKind):
            raise UserError(
                f"explain kind {type(kind).__name__} is not an AttentionKind (nnunet_sparseattn.explain.kinds)"
            )
        kinds.append(kind)
    return kinds


class RegionRouting(AttentionKind):
    """Attention with a ``Router`` (BSA, MDSA): its top-k key regions and region affinities; BSA's coarse attention."""

    key = "routed"
    described = "routed attention"

    def owns(self, module: nn.Module) -> bool:
        return isinstance(getattr(module, "router", None), Router)

    def attach(self, recorder: Recorder, name: str, module: nn.Module) -> None:
        def routing(router: nn.Module, args: tuple, output: Any) -> None:
            recorder.routing.append(
                RoutingRecord(
                    name,
                    recorder.patch,
                    output.indices[0].cpu().numpy(),
                    numpy_of(output.affinity[0]),
                    output.query_layout,
                    output.key_layout,
                )
            )

        def coarse(layer: nn.Module, args: tuple, output: Any) -> None:
            recorder.coarse.append(CoarseRecord(name, recorder.patch, numpy_of(output.weights[0]), args[3]))

        router, coarse_layer = module.get_submodule("router"), getattr(module, "coarse", None)
        recorder.keep(router.register_forward_hook(routing))
        if isinstance(coarse_layer, CoarseRegionAttention):
            recorder.keep(coarse_layer.register_forward_hook(coarse))

    def write(self, output: CaseOutput) -> None:
        for view in analysis.routed_views(output.recorder, output.modules[self.key], output.points, output.patch_size):
            if view.key_layout.num_regions > 1:  # one region (a small deep stage): dense, nothing to draw
                self._write_view(output, view)
        dense = [m for m in output.modules[self.key] if not any(r.module == m for r in output.recorder.routing)]
        for module in dense:
            output.summary["modules"].setdefault(module, {"kind": output.label_of(module)})["dense"] = True
        if dense:
            say(
                "dense attention (top-k keeps every region, nothing routed; one region: nothing drawn): "
                f"{', '.join(dense)}"
            )

    def _write_view(self, output: CaseOutput, view: analysis.RoutedView) -> None:
        folder = output.point_folder(view.point)
        maps = view.maps(output.geometry)
        files = [output.writer.write(folder, f"{file_name(view.module)}_{key}", value) for key, value in maps.items()]
        kind = output.label_of(view.module)
        figures.routing_figure(
            output.case.image,
            output.spacing,
            view.point.voxel,
            maps,
            folder / f"{file_name(view.module)}_routing.png",
            self._title(output, view, kind),
            structures=output.structures,
        )
        weights = None if view.weights is None or view.routed is None else view.weights[view.routed]
        entry = output.summary["modules"].setdefault(view.module, {"kind": kind, "points": {}})
        entry["points"][view.point.name] = {
            "query_token": list(view.query_token),
            "query_region": int(view.query_region),
            "regions": int(view.key_layout.num_regions),
            "region_size_tokens": list(view.query_layout.region),
            "map_shape": list(view.query_layout.spatial),
            "routed": None if view.routed is None else [int(r) for r in view.routed],
            "routing_weights": None if weights is None else [round(float(w), 4) for w in weights],
            "files": files + [f"{file_name(view.module)}_routing.png"],
        }
        routed_text = (
            "dense (every region)"
            if view.routed is None or weights is None
            else ", ".join(f"{int(r)} ({w:.2f})" for r, w in zip(view.routed, weights))
        )
        say(
            f"{view.point.name} {output.coords(view.point)}: {view.module} query region {view.query_region} of "
            f"{view.key_layout.num_regions} -> key regions {routed_text}"
        )
        if view.routed is not None and "routing" in maps:
            output.overview[view.point.name].append(
                (
                    f"{kind} {view.module}:\n{len(view.routed)} of {view.key_layout.num_regions} regions routed",
                    "routing",
                    maps["routing"],
                    maps["regions"] == 2,
                )
            )

    @staticmethod
    def _title(output: CaseOutput, view: analysis.RoutedView, kind: str) -> str:
        k = "every one" if view.routed is None else len(view.routed)
        return (
            f"{kind} attention {view.module}, query: {view.point.name} {output.coords(view.point)}\n"
            f"its feature map ({'x'.join(map(str, view.query_layout.spatial))} tokens for the "
            f"{'x'.join(map(str, output.patch_size))} window) is cut into {view.key_layout.num_regions} regions of "
            f"{'x'.join(map(str, view.query_layout.region))} tokens; the query's region ({view.query_region}) "
            f"attends to {k} of them"
        )

    def conclude(self, output: CaseOutput) -> None:
        """With a reference: how often the routed key regions hold foreground (:func:`.analysis.routing_foreground`)."""
        if output.reference is None or not output.modules[self.key]:
            return
        stats = analysis.routing_foreground(
            output.recorder,
            output.modules[self.key],
            output.geometry,
            output.patches,
            output.reference,
            output.model.labels,
        )
        output.summary["routing_foreground"] = stats
        say_routing(stats)


def say_routing(stats: dict[str, dict]) -> None:
    for module, per_label in stats.items():
        for label, s in per_label.items():
            say(
                f"routing vs reference, {module}: queries in {label} ({s['queries']} voxels) route to key regions "
                f"holding foreground {100 * s['routed_with_foreground']:.0f}% of the time; "
                f"{100 * s['all_with_foreground']:.0f}% of all key regions hold foreground"
            )


class SwinWindows(AttentionKind):
    """The bilateral network's ISAM Swin blocks. Their window weights are computed only for the windows asked for: a
    pre-hook on the block sees the map's shape and asks its ``WindowWeights`` for the windows that hold the query
    points of this sliding window (``Recorder.window_requests``); a hook on ``WindowWeights`` reads the weights."""

    key = "window"
    described = "Swin window attention"
    asked_for_points = True

    def owns(self, module: nn.Module) -> bool:
        return isinstance(module, SwinBlock)

    def attach(self, recorder: Recorder, name: str, module: nn.Module) -> None:
        assert isinstance(module, SwinBlock)
        block = module
        spatial: dict[str, tuple[int, ...]] = {}  # the block's map, while it runs

        def request(_: nn.Module, args: tuple) -> None:
            voxels = recorder.window_requests.get(recorder.patch)
            if not voxels:
                return
            shape = spatial["map"] = tuple(int(s) for s in args[0].shape[1:-1])
            shift = block.shifts(shape)
            wanted = {
                locate_in_windows(token_of(v, shape, recorder.patch_size), shape, block.window, shift)[0]
                for v in voxels
            }
            block.attn.weights.windows = tuple(sorted(wanted))

        def record(_: nn.Module, args: tuple, output: Any) -> None:
            windows = tuple(block.attn.weights.windows or ())
            shape = spatial["map"]  # set by the block's pre-hook, with the windows
            recorder.windows.append(
                WindowRecord(
                    name, recorder.patch, shape, block.window, block.shifts(shape), windows, numpy_of(output[0])
                )
            )

        def end_request(*_: object) -> None:
            block.attn.weights.windows = None

        recorder.keep(block.register_forward_pre_hook(request))
        recorder.keep(block.attn.weights.register_forward_hook(record))
        recorder.keep(block.register_forward_hook(end_request))
        recorder.on_close(end_request)

    def write(self, output: CaseOutput) -> None:
        windows = analysis.window_views(output.recorder, output.points, output.patch_size)
        for point in output.points:
            groups: dict[str, list[analysis.WindowView]] = {}
            for view in windows:
                if view.point == point:
                    groups.setdefault(view.module.rsplit(".blocks.", 1)[0], []).append(view)
            for stage, views in groups.items():
                self._write_stage(output, point, stage, views)

    def _write_stage(
        self, output: CaseOutput, point: analysis.QueryPoint, stage: str, views: list[analysis.WindowView]
    ) -> None:
        folder = output.point_folder(point)
        blocks = []
        for view in views:
            maps = view.maps(output.geometry)
            for key, value in maps.items():
                output.writer.write(folder, f"{file_name(view.module)}_{key}", value)
            blocks.append((f"block {view.module.rsplit('.', 1)[-1]} (window {view.window})", maps))
        figures.window_figure(
            output.case.image,
            output.spacing,
            point.voxel,
            blocks,
            folder / f"{file_name(stage)}_window.png",
            f"{stage}: Swin window attention of the query ({point.name} {output.coords(point)}), token "
            f"{views[0].token} of a {'x'.join(map(str, views[0].spatial))} map",
            structures=output.structures,
        )
        entry = output.summary["modules"].setdefault(stage, {"kind": "ISAM (Swin window attention)", "points": {}})
        entry["points"][point.name] = {
            "token": list(views[0].token),
            "windows": [int(v.window) for v in views],
            "figure": f"{file_name(stage)}_window.png",
        }
        say(
            f"{point.name} {output.coords(point)}: {stage} token {views[0].token}, windows "
            f"{[v.window for v in views]} -> points/{point.slug}/{file_name(stage)}_window.png"
        )
        output.overview[point.name].append(
            (
                f"Swin {stage}, block 0:\nweights in the query's window",
                "window",
                blocks[0][1]["window"],
                blocks[0][1]["query"],
            )
        )


class ChannelWeights(AttentionKind):
    """The bilateral network's FSAM: the per-channel weights of its gate, per sliding window."""

    key = "channel"
    described = "FSAM"

    def owns(self, module: nn.Module) -> bool:
        return isinstance(module, FSAM)

    def attach(self, recorder: Recorder, name: str, module: nn.Module) -> None:
        def record(_: nn.Module, args: tuple, output: Any) -> None:
            recorder.channels.append(ChannelRecord(name, recorder.patch, numpy_of(output[0].flatten())))

        recorder.keep(module.get_submodule("gate").register_forward_hook(record))

    def write(self, output: CaseOutput) -> None:
        records = output.recorder.channels
        if not records:
            return
        names = list(dict.fromkeys(r.module for r in records))
        stacked = [(n, np.stack([r.weights for r in records if r.module == n])) for n in names]
        figures.channel_figure(
            stacked,
            output.out / "fsam_channel_weights.png",
            f"FSAM channel weights ({len(output.patches)} sliding window(s))",
        )
        for n, w in stacked:
            output.summary["modules"][n] = {
                "kind": "FSAM",
                "channel_weights_mean": [round(float(v), 4) for v in w.mean(0)],
            }
        say(f"FSAM channel weights of {len(names)} stage(s) -> fsam_channel_weights.png")


class Rendering(AttentionKind):
    """The bilateral network's attention rendering: the voxels it refined in each sliding window."""

    key = "rendering"
    described = "rendering"

    def owns(self, module: nn.Module) -> bool:
        return isinstance(module, AttentionRendering)

    def attach(self, recorder: Recorder, name: str, module: nn.Module) -> None:
        def record(_: nn.Module, args: tuple, output: Any) -> None:
            recorder.rendered.append(
                RenderRecord(name, recorder.patch, output[1].index[0].cpu().numpy(), tuple(args[0].shape[2:]))
            )

        recorder.keep(module.register_forward_hook(record))

    def write(self, output: CaseOutput) -> None:
        if not output.recorder.rendered:
            return
        refined = refined_map(output.recorder, output.geometry, output.patches)
        name = output.writer.write(output.out, "rendering_refined", refined)
        figures.rendering_figure(
            output.case.image,
            output.spacing,
            output.points[0].voxel,
            refined,
            output.seg,
            output.model.labels,
            output.out / "rendering.png",
            f"attention rendering: {int(refined.sum())} voxels of the image refined "
            f"(the most uncertain of each sliding window)",
        )
        output.summary["modules"]["rendering"] = {
            "kind": "attention rendering",
            "refined_voxels": int(refined.sum()),
            "map": name,
        }
        say(f"attention rendering refined {int(refined.sum())} voxels -> rendering.png")


def refined_map(recorder: Recorder, geometry: Geometry, patches: list[Patch]) -> np.ndarray:
    """1 on every original voxel whose network voxel the rendering module refined in some sliding window."""
    by_index = {p.index: p for p in patches}
    refined = np.zeros(geometry.original, dtype=np.uint8)
    for record in recorder.rendered:
        patch = by_index[record.patch]
        local = np.stack(np.unravel_index(record.index, record.shape), axis=1)
        for voxel in local:
            network = list(patch.start)
            for j, axis in enumerate(patch.spatial_axes):
                network[axis] = patch.start[axis] + int(voxel[j])
            original = geometry.original_voxel(network)
            if all(0 <= o < s for o, s in zip(original, geometry.original)):
                refined[original] = 1
    return refined
