"""The pictures of ``explain``: every map drawn back on the original image, 3D images as the three planes through the
query point (and, for routing, the maximum over each plane's normal, so that routed regions off the plane show too).
Titles say what is drawn; colour bars say what the shade means; legends name the classes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

__all__ = [
    "Structures",
    "case_figure",
    "channel_figure",
    "label_colours",
    "overview_figure",
    "rendering_figure",
    "routing_figure",
    "window_figure",
]

AXIS_NAMES = ("z", "y", "x")
QUERY_COLOUR = "#ff00ff"  # magenta: apart from the class colours (tab10) and the point's cyan
POINT_COLOUR = "#00e5ff"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def label_colours(num_labels: int) -> list:
    """One colour per label value (0 unused), the same in every picture of the demo and of explain."""
    plt = _plt()
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(max(num_labels, 1) + 1)]


def _display(image: np.ndarray) -> np.ndarray:
    """``(C, *S)`` -> what to show: RGB for a 3-channel 2D image, else the first channel, windowed to its 1-99 %."""
    if image.shape[0] == 3 and image.shape[1] == 1:
        rgb = np.moveaxis(image[:, 0], 0, -1).astype(np.float64)
        lo, hi = np.percentile(rgb, (1, 99))
        return np.clip((rgb - lo) / max(hi - lo, 1e-8), 0, 1)[None]
    data = image[0].astype(np.float64)
    lo, hi = np.percentile(data, (1, 99))
    return np.clip((data - lo) / max(hi - lo, 1e-8), 0, 1)


class Planes:
    """The views of an image of spatial shape ``shape`` through ``point``: one for a 2D image (``(1, Y, X)``), the
    three planes for a 3D one. ``spacing`` (the reader's, per axis) gives the aspect ratio."""

    def __init__(self, shape: Sequence[int], spacing: Sequence[float], point: Sequence[int]):
        self.shape, self.spacing, self.point = tuple(shape), tuple(float(s) for s in spacing), tuple(point)
        self.is_2d = self.shape[0] == 1
        self.axes = [0] if self.is_2d else [0, 1, 2]

    def title(self, axis: int) -> str:
        if self.is_2d:
            return "image"
        return f"plane {AXIS_NAMES[axis]} = {self.point[axis]}"

    def cut(self, volume: np.ndarray, axis: int) -> np.ndarray:
        """The plane normal to ``axis`` through the point (volume: spatial axes first, optional RGB last)."""
        return np.take(volume, self.point[axis], axis=axis)

    def project(self, volume: np.ndarray, axis: int) -> np.ndarray:
        return volume.max(axis=axis)

    def aspect(self, axis: int) -> float:
        rows, cols = [a for a in range(3) if a != axis]
        return self.spacing[rows] / self.spacing[cols] if not self.is_2d else 1.0

    def point_2d(self, axis: int) -> tuple[int, int]:
        rows, cols = [a for a in range(3) if a != axis]
        return self.point[rows], self.point[cols]


def _show_image(ax, planes: Planes, shown: np.ndarray, axis: int, projected: bool = False) -> None:
    base = shown[0] if planes.is_2d else (shown.mean(axis=axis) if projected else planes.cut(shown, axis))
    ax.imshow(base, cmap="gray", vmin=0, vmax=1, aspect=planes.aspect(axis), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _mark_point(ax, planes: Planes, axis: int) -> None:
    r, c = planes.point_2d(axis)
    ax.plot([c], [r], marker="+", markersize=12, markeredgewidth=2, color=POINT_COLOUR)


def _outline(ax, mask2d: np.ndarray, colour: str = QUERY_COLOUR, style: str = "solid") -> None:
    """The outline of ``mask2d``, closed where the mask touches the picture's border (padded by one pixel)."""
    if not mask2d.any():
        return
    h, w = mask2d.shape
    padded = np.pad(mask2d.astype(float), 1)
    ax.contour(
        np.arange(-1, w + 1),
        np.arange(-1, h + 1),
        padded,
        levels=[0.5],
        colors=[colour],
        linewidths=1.5,
        linestyles=style,
    )
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)


def _plane(planes: Planes, volume: np.ndarray, axis: int, projected: bool) -> np.ndarray:
    """What a panel shows of ``volume`` (spatial axes): the plane through the point, or the maximum along ``axis``."""
    if planes.is_2d:
        return volume[0]
    return planes.project(volume, axis) if projected else planes.cut(volume, axis)


@dataclass(frozen=True)
class Structures:
    """A label map outlined on the attention pictures in the class colours, so that where the attention goes can be
    read against the anatomy: ``name`` says whose labels they are (the reference, or the prediction)."""

    label_map: np.ndarray
    labels: dict
    name: str

    @property
    def colours(self) -> list:
        return label_colours(max([v for v in self.labels if isinstance(v, int)], default=1))


def _structures(ax, planes: Planes, structures: Optional[Structures], axis: int, projected: bool) -> None:
    """Thin outlines of the structures, through the point or projected like the panel."""
    if structures is None:
        return
    colours = structures.colours
    for value in np.unique(structures.label_map):
        if value <= 0 or value >= len(colours):
            continue
        mask = _plane(planes, structures.label_map == value, axis, projected)
        if mask.any() and not mask.all():
            ax.contour(mask.astype(float), levels=[0.5], colors=[colours[int(value)]], linewidths=0.9)


def _legend_structures(fig, structures: Optional[Structures]) -> None:
    if structures is not None:
        _legend_labels(fig, structures.labels, structures.colours, outlines=structures.name)


def _overlay(ax, planes: Planes, values: np.ndarray, axis: int, vmax: float, cmap: str, projected: bool):
    masked = np.ma.masked_less_equal(_plane(planes, values, axis, projected), 0)
    return ax.imshow(
        masked, cmap=cmap, vmin=0, vmax=vmax, alpha=0.65, aspect=planes.aspect(axis), interpolation="nearest"
    )


def _legend_labels(
    fig,
    labels: dict,
    colours: list,
    loc: str = "lower center",
    ncol: Optional[int] = None,
    outlines: Optional[str] = None,
) -> None:
    """The class colours named; ``outlines`` names the label map drawn as outlines (then a title says so)."""
    from matplotlib.patches import Patch as LegendPatch

    handles = [LegendPatch(color=colours[v], label=f"{v}: {n}") for v, n in labels.items() if isinstance(v, int)]
    if handles:
        fig.legend(
            handles=handles,
            loc=f"outside {loc}",
            ncol=ncol or len(handles),
            fontsize=9,
            frameon=False,
            title=None if outlines is None else f"structures ({outlines}; outlined on the attention panels)",
            title_fontsize=8,
        )


def _labels_on(ax, planes: Planes, labels_vol: np.ndarray, axis: int, colours: list) -> None:
    from matplotlib.colors import ListedColormap

    plane = labels_vol[0] if planes.is_2d else planes.cut(labels_vol, axis)
    cmap = ListedColormap(colours)
    ax.imshow(
        np.ma.masked_equal(plane, 0),
        cmap=cmap,
        vmin=-0.5,
        vmax=len(colours) - 0.5,
        alpha=0.55,
        aspect=planes.aspect(axis),
        interpolation="nearest",
    )


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=90)
    _plt().close(fig)
    return path


def case_figure(
    image: np.ndarray,
    spacing: Sequence[float],
    point: Sequence[int],
    prediction: np.ndarray,
    labels: dict,
    path: Path,
    reference: Optional[np.ndarray] = None,
    title: str = "",
) -> Path:
    """Rows: the image, the prediction, the reference (when given); columns: the planes through ``point``."""
    plt = _plt()
    planes = Planes(prediction.shape, spacing, point)
    shown = _display(image)
    colours = label_colours(max([v for v in labels if isinstance(v, int)], default=1))
    rows = [("image", None), ("prediction", prediction)] + ([("reference", reference)] if reference is not None else [])
    fig, axes = plt.subplots(
        len(rows),
        len(planes.axes),
        figsize=(3.3 * len(planes.axes), 3.0 * len(rows) + 0.6),
        squeeze=False,
        layout="constrained",
    )
    for r, (name, labels_vol) in enumerate(rows):
        for c, axis in enumerate(planes.axes):
            ax = axes[r][c]
            _show_image(ax, planes, shown, axis)
            if labels_vol is not None:
                _labels_on(ax, planes, labels_vol, axis, colours)
            ax.set_title(f"{name}, {planes.title(axis)}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    _legend_labels(fig, labels, colours)
    return _save(fig, path)


def _routing_rows(maps: dict[str, np.ndarray], planes: Planes, query: np.ndarray) -> list[tuple]:
    """The routing figure's rows: (name, values, projected, colour map, colour bar label)."""
    weight = "routing weight\n(softmax of the region affinity)"
    rows = []
    if "routing" in maps:
        rows.append(("routed key regions", maps["routing"], False, "viridis", weight))
        if not planes.is_2d:
            rows.append(("routed key regions, projected", maps["routing"], True, "viridis", weight))
    if "coarse" in maps:
        rows.append(
            (
                "coarse attention to every region",
                maps["coarse"],
                False,
                "magma",
                "coarse attention weight\n(mean over heads)",
            )
        )
    if not rows:  # dense and without a coarse branch: only the query region
        rows.append(
            ("query region (dense attention: every region)", np.zeros(query.shape, np.float32), False, "viridis", "")
        )
    return rows


def routing_figure(
    image: np.ndarray,
    spacing: Sequence[float],
    point: Sequence[int],
    maps: dict[str, np.ndarray],
    path: Path,
    title: str,
    structures: Optional[Structures] = None,
) -> Path:
    """The query's region (magenta outline), its routed key regions shaded by routing weight, through the point and, in
    3D, projected along each plane's normal (so that routed regions off the three planes show too); BSA's coarse
    attention over all regions as a heat map; ``structures`` outlined."""
    plt = _plt()
    planes = Planes(maps["regions"].shape, spacing, point)
    shown = _display(image)
    query = maps["regions"] == 2
    rows = _routing_rows(maps, planes, query)
    ncols = len(planes.axes)
    fig, axes = plt.subplots(
        len(rows), ncols, figsize=(3.3 * ncols + 1.4, 3.0 * len(rows) + 1.3), squeeze=False, layout="constrained"
    )
    for r, (name, values, projected, cmap, bar) in enumerate(rows):
        vmax = float(values.max()) if values.max() > 0 else 1.0
        mappable = None
        for c, axis in enumerate(planes.axes):
            ax = axes[r][c]
            _show_image(ax, planes, shown, axis, projected)
            mappable = _overlay(ax, planes, values, axis, vmax, cmap, projected)
            _structures(ax, planes, structures, axis, projected)
            _outline(ax, _plane(planes, query, axis, projected), style="dashed" if projected else "solid")
            _mark_point(ax, planes, axis)
            where = f"max along {AXIS_NAMES[axis]} (all {AXIS_NAMES[axis]})" if projected else planes.title(axis)
            ax.set_title(f"{name}\n{where}", fontsize=8)
        if bar and mappable is not None:
            fig.colorbar(mappable, ax=list(axes[r]), shrink=0.85, label=bar)
    fig.suptitle(
        f"{title}\nmagenta outline: the query's region (dashed where projected); cyan +: the query point; "
        "unshaded: regions the query does not attend to",
        fontsize=9,
    )
    _legend_structures(fig, structures)
    return _save(fig, path)


def window_figure(
    image: np.ndarray,
    spacing: Sequence[float],
    point: Sequence[int],
    blocks: Sequence[tuple[str, dict[str, np.ndarray]]],
    path: Path,
    title: str,
    structures: Optional[Structures] = None,
) -> Path:
    """One row per Swin block: the query token's attention weights over its window's tokens (mean over heads);
    ``structures`` outlined."""
    plt = _plt()
    planes = Planes(blocks[0][1]["window"].shape, spacing, point)
    shown = _display(image)
    ncols = len(planes.axes)
    fig, axes = plt.subplots(
        len(blocks), ncols, figsize=(3.0 * ncols + 1.4, 2.6 * len(blocks) + 0.8), squeeze=False, layout="constrained"
    )
    for r, (name, maps) in enumerate(blocks):
        values = maps["window"]
        vmax = float(values.max()) if values.max() > 0 else 1.0
        mappable = None
        for c, axis in enumerate(planes.axes):
            ax = axes[r][c]
            _show_image(ax, planes, shown, axis)
            mappable = _overlay(ax, planes, values, axis, vmax, "inferno", False)
            _structures(ax, planes, structures, axis, False)
            _outline(ax, _plane(planes, maps["query"], axis, False) > 0)
            ax.set_title(f"{name}, {planes.title(axis)}", fontsize=8)
        if mappable is not None:
            fig.colorbar(mappable, ax=list(axes[r]), shrink=0.85, label="attention weight")
    fig.suptitle(
        f"{title}\nshade: weight of each token of the query's window (mean over heads); magenta: the query token",
        fontsize=9,
    )
    _legend_structures(fig, structures)
    return _save(fig, path)


def channel_figure(modules: Sequence[tuple[str, np.ndarray]], path: Path, title: str) -> Path:
    """FSAM's channel weights per stage: a bar per channel (mean over the sliding windows; whiskers: min to max)."""
    plt = _plt()
    fig, axes = plt.subplots(
        len(modules), 1, figsize=(9, 2.4 * len(modules) + 0.6), squeeze=False, layout="constrained"
    )
    for ax, (name, weights) in zip(axes[:, 0], modules):
        mean = weights.mean(axis=0)
        lo, hi = mean - weights.min(axis=0), weights.max(axis=0) - mean
        ax.bar(
            np.arange(len(mean)),
            mean,
            color="#4c72b0",
            yerr=[lo, hi] if len(weights) > 1 else None,
            error_kw={"elinewidth": 0.6},
        )
        ax.set_ylim(0, 1)
        ax.set_xlim(-0.5, len(mean) - 0.5)
        ax.set_ylabel("weight (sigmoid)")
        ax.set_title(f"{name}: {len(mean)} channels", fontsize=9)
    axes[-1, 0].set_xlabel("channel")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def rendering_figure(
    image: np.ndarray,
    spacing: Sequence[float],
    point: Sequence[int],
    refined: np.ndarray,
    prediction: np.ndarray,
    labels: dict,
    path: Path,
    title: str,
) -> Path:
    """The voxels the rendering module refined (the most uncertain ones), on the prediction: through ``point`` and,
    in 3D, counted over each plane's normal."""
    plt = _plt()
    planes = Planes(refined.shape, spacing, point)
    shown = _display(image)
    colours = label_colours(max([v for v in labels if isinstance(v, int)], default=1))
    rows = [False] if planes.is_2d else [False, True]
    ncols = len(planes.axes)
    fig, axes = plt.subplots(
        len(rows), ncols, figsize=(3.3 * ncols + 1.8, 3.1 * len(rows) + 0.9), squeeze=False, layout="constrained"
    )
    for r, projected in enumerate(rows):
        for c, axis in enumerate(planes.axes):
            ax = axes[r][c]
            _show_image(ax, planes, shown, axis, projected)
            if not projected:
                _labels_on(ax, planes, prediction, axis, colours)
                plane = refined[0] if planes.is_2d else planes.cut(refined, axis)
                rr, cc = np.nonzero(plane)
                ax.scatter(cc, rr, s=3, c="#ffe000", linewidths=0)
                ax.set_title(f"refined voxels on the prediction\n{planes.title(axis)}", fontsize=8)
            else:
                counts = refined.astype(np.float32).sum(axis=axis)
                mappable = ax.imshow(
                    np.ma.masked_equal(counts, 0), cmap="plasma", aspect=planes.aspect(axis), interpolation="nearest"
                )
                ax.set_title(f"refined voxels, count over {AXIS_NAMES[axis]}", fontsize=8)
                if c == ncols - 1:
                    fig.colorbar(mappable, ax=axes[r][-1], shrink=0.85, label="count")
    fig.suptitle(f"{title}\nyellow: voxels whose logits the point head replaced", fontsize=9)
    _legend_labels(fig, labels, colours, loc="lower center")
    return _save(fig, path)


def overview_figure(
    image: np.ndarray,
    spacing: Sequence[float],
    prediction: np.ndarray,
    labels: dict,
    rows: Sequence[tuple[str, Sequence[int], Sequence[tuple[str, str, np.ndarray, Optional[np.ndarray]]]]],
    path: Path,
    title: str,
    structures: Optional[Structures] = None,
) -> Path:
    """One row per query point: the prediction through the point, then one panel per attention module (routing
    weights, or window weights), on the first plane (3D: the routing projected along that plane's normal, so that
    every routed region shows); ``structures`` (default: the prediction) outlined on the attention panels."""
    plt = _plt()
    shown = _display(image)
    colours = label_colours(max([v for v in labels if isinstance(v, int)], default=1))
    outlined = structures or Structures(prediction, labels, "prediction")
    ncols = 1 + max(len(panels) for _, _, panels in rows)
    fig, axes = plt.subplots(
        len(rows), ncols, figsize=(3.4 * ncols + 1.0, 3.2 * len(rows) + 1.1), squeeze=False, layout="constrained"
    )
    for r, (name, point, panels) in enumerate(rows):
        planes = Planes(prediction.shape, spacing, point)
        axis = planes.axes[0]
        ax = axes[r][0]
        _show_image(ax, planes, shown, axis)
        _labels_on(ax, planes, prediction, axis, colours)
        _mark_point(ax, planes, axis)
        ax.set_title(f"{name}\nprediction, {planes.title(axis)}", fontsize=8)
        for c in range(1, ncols):
            ax = axes[r][c]
            if c - 1 >= len(panels):
                ax.axis("off")
                continue
            label, kind, values, query = panels[c - 1]
            projected = kind == "routing" and not planes.is_2d
            _show_image(ax, planes, shown, axis, projected)
            vmax = float(values.max()) if values.max() > 0 else 1.0
            mappable = _overlay(
                ax, planes, values, axis, vmax, "viridis" if kind == "routing" else "inferno", projected
            )
            _structures(ax, planes, outlined, axis, projected)
            if query is not None:
                _outline(ax, _plane(planes, query, axis, projected) > 0, style="dashed" if projected else "solid")
            _mark_point(ax, planes, axis)
            where = f"max along {AXIS_NAMES[axis]} (every slice)" if projected else planes.title(axis)
            ax.set_title(f"{label}\n{where}", fontsize=8)
            fig.colorbar(mappable, ax=ax, shrink=0.7, label="routing weight" if kind == "routing" else "attention")
    fig.suptitle(
        f"{title}\nshade: where the query attends (routing weight of each routed key region, or Swin window weight); "
        "magenta: the query's region or token; cyan +: the query point",
        fontsize=9,
    )
    _legend_structures(fig, outlined)
    return _save(fig, path)
