"""What the records say about one query point, as maps in the original image's geometry; and how routing relates to the
reference's foreground."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from nnunet_sparseattn.errors import UserError
from nnunet_sparseattn.explain.geometry import Geometry, Patch, choose_patch, lookup, region_id_map, token_of
from nnunet_sparseattn.explain.recorder import Recorder, RoutingRecord, WindowRecord
from nnunet_sparseattn.layers.routing import RegionLayout
from nnunet_sparseattn.layers.window_attention import locate_in_windows, window_token_positions

__all__ = [
    "QueryPoint",
    "RoutedView",
    "check_inside",
    "WindowView",
    "default_points",
    "locate_points",
    "parse_point",
    "pool_routing_foreground",
    "routed_views",
    "routing_foreground",
    "window_views",
]


@dataclass(frozen=True)
class QueryPoint:
    """A voxel of the user's image (the reader's axes, 0-based) and where the network saw it."""

    name: str
    voxel: tuple[int, ...]
    network: tuple[int, ...]  # the network-input voxel (transposed, resampled, padded)
    patch: Patch  # the sliding window that holds it nearest its centre

    @property
    def local(self) -> tuple[int, ...]:
        return self.patch.local(self.network)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "_", self.name).strip("_").lower()


def parse_point(text: str, ndim: int) -> tuple[int, ...]:
    """``z,y,x`` (``y,x`` for a 2D image) as integers, refused in one line otherwise."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    wanted = "z,y,x" if ndim == 3 else "y,x"
    if len(values) != ndim:
        raise UserError(f"--point {text!r}: give {ndim} integer voxel coordinates {wanted} (0-based, the image's own)")
    return values


def check_inside(given: tuple[int, ...], spatial: tuple[int, ...], is_2d: bool) -> tuple[int, ...]:
    """The point as a voxel of the image's spatial axes (a 2D image's leading axis of 1 added); refused in one line
    when it lies outside the image."""
    voxel = (0, *given) if is_2d else tuple(given)
    if len(voxel) != len(spatial) or any(not 0 <= v < s for v, s in zip(voxel, spatial)):
        shown = spatial[1:] if is_2d else spatial
        raise UserError(
            f"point {','.join(map(str, given))} lies outside the image ({'x'.join(map(str, shown))} "
            "voxels): give 0 <= coordinate < size on every axis"
        )
    return voxel


def locate_points(
    named: Sequence[tuple[str, tuple[int, ...]]],
    spatial: tuple[int, ...],
    is_2d: bool,
    geometry: Geometry,
    patches: Sequence[Patch],
) -> list[QueryPoint]:
    """Map each (name, voxel) to the network input and its sliding window; a point outside the image, or in the border
    nnU-Net crops away, is refused in one line."""
    out = []
    for name, given in named:
        voxel = check_inside(given, spatial, is_2d)
        network = geometry.network_voxel(voxel)
        transposed = [voxel[a] for a in geometry.transpose]
        if any(not 0 <= t - lo < n for t, lo, n in zip(transposed, geometry.crop_start, geometry.cropped)):
            raise UserError(
                f"point {','.join(map(str, given))} lies in the zero border nnU-Net crops away before the "
                "network sees the image: pick a point inside the image's non-zero part"
            )
        out.append(QueryPoint(name, voxel, network, choose_patch(patches, network)))
    return out


def default_points(seg: np.ndarray, probabilities: np.ndarray, labels: dict) -> list[tuple[str, tuple[int, ...]]]:
    """The centroid of each predicted structure (the structure's voxel nearest to it, so that the query lies inside
    even a curved one) and the most uncertain voxel (smallest margin between the two most probable classes)."""
    points = []
    for value, name in labels.items():
        if not isinstance(value, int):
            continue
        where = np.argwhere(seg == value)
        if len(where) == 0:
            continue
        nearest = where[np.argmin(((where - where.mean(axis=0)) ** 2).sum(axis=1))]
        points.append((f"{name} centroid", tuple(int(v) for v in nearest)))
    if probabilities.shape[0] >= 2:
        top2 = np.sort(probabilities, axis=0)[-2:]
        margin = top2[1] - top2[0]
    else:
        margin = np.abs(probabilities[0] - 0.5)
    points.append(("most uncertain voxel", tuple(int(v) for v in np.unravel_index(np.argmin(margin), margin.shape))))
    return points


def _region_of(token: Sequence[int], layout: RegionLayout) -> int:
    index = 0
    for t, r, g in zip(token, layout.region, layout.grid):
        index = index * g + t // r
    return index


@dataclass
class RoutedView:
    """One routed attention module at one query point: the query's region and the key regions it routed to."""

    module: str
    point: QueryPoint
    query_token: tuple[int, ...]
    query_region: int
    query_layout: RegionLayout
    key_layout: RegionLayout
    routed: Optional[np.ndarray]  # the key regions (ascending); None: dense attention, every region
    weights: Optional[np.ndarray]  # routing weights over every key region (softmax of the affinities)
    coarse: Optional[np.ndarray]  # BSA: the coarse attention over every region, mean over heads

    @property
    def dense(self) -> bool:
        return self.routed is None

    def key_ids(self, geometry: Geometry) -> np.ndarray:
        ids = region_id_map(self.key_layout.spatial, self.key_layout.region, self.key_layout.grid)
        return lookup(geometry, self.point.patch, ids, fill=-1).astype(np.int64)

    def query_ids(self, geometry: Geometry) -> np.ndarray:
        ids = region_id_map(self.query_layout.spatial, self.query_layout.region, self.query_layout.grid)
        return lookup(geometry, self.point.patch, ids, fill=-1).astype(np.int64)

    def maps(self, geometry: Geometry) -> dict[str, np.ndarray]:
        """``routing``: each routed key region's routing weight (0 elsewhere); ``regions``: 1 on the routed key
        regions, 2 on the query's region; ``coarse`` (BSA): every region's coarse attention weight."""
        keys, query = self.key_ids(geometry), self.query_ids(geometry)
        out: dict[str, np.ndarray] = {}
        regions = np.zeros(geometry.original, dtype=np.uint8)
        if self.routed is not None and self.weights is not None:
            routed = np.isin(keys, self.routed)
            out["routing"] = np.where(routed, self.weights[np.clip(keys, 0, None)], 0.0).astype(np.float32)
            regions[routed] = 1
        regions[query == self.query_region] = 2
        out["regions"] = regions
        if self.coarse is not None:
            out["coarse"] = np.where(keys >= 0, self.coarse[np.clip(keys, 0, None)], 0.0).astype(np.float32)
        return out


def routed_views(
    recorder: Recorder, modules: Sequence[str], points: Sequence[QueryPoint], patch_size: Sequence[int]
) -> list[RoutedView]:
    """A view per (routed module, point), from the records of the point's sliding window. A module whose router did
    not run there attends densely (its top-k keeps every region); its coarse attention (BSA) is shown all the same."""
    views = []
    for point in points:
        for module in modules:
            routing = _one(recorder.routing, module, point.patch.index)
            coarse = _one(recorder.coarse, module, point.patch.index)
            if routing is None and coarse is None:
                continue
            layout = routing.query_layout if routing is not None else coarse.layout
            key_layout = routing.key_layout if routing is not None else layout
            token = token_of(point.local, layout.spatial, patch_size)
            region = _region_of(token, layout)
            views.append(
                RoutedView(
                    module,
                    point,
                    token,
                    region,
                    layout,
                    key_layout,
                    routing.indices[region] if routing is not None else None,
                    routing.weights()[region] if routing is not None else None,
                    coarse.weights[:, region].mean(axis=0) if coarse is not None else None,
                )
            )
    return views


def _one(records: Sequence, module: str, patch: int):
    found = [r for r in records if r.module == module and r.patch == patch]
    return found[-1] if found else None


@dataclass
class WindowView:
    """One Swin block at one query point: the attention weights of the query's token over the tokens of its window
    (mean over heads)."""

    module: str
    point: QueryPoint
    spatial: tuple[int, ...]
    token: tuple[int, ...]
    window: int
    positions: np.ndarray  # (N, ndim) map positions of the window's tokens
    valid: np.ndarray  # (N,) False for padding
    weights: np.ndarray  # (N,)

    def maps(self, geometry: Geometry) -> dict[str, np.ndarray]:
        """``window``: the query token's attention weight on every token of its window (0 elsewhere);
        ``query``: 1 on the query's token."""
        values = np.zeros(self.spatial, dtype=np.float32)
        pos = self.positions[self.valid]
        values[tuple(pos.T)] = self.weights[self.valid]
        query = np.zeros(self.spatial, dtype=np.float32)
        query[self.token] = 1
        return {
            "window": lookup(geometry, self.point.patch, values).astype(np.float32),
            "query": lookup(geometry, self.point.patch, query).astype(np.uint8),
        }


def window_views(recorder: Recorder, points: Sequence[QueryPoint], patch_size: Sequence[int]) -> list[WindowView]:
    views = []
    for point in points:
        for record in recorder.windows:
            if record.patch != point.patch.index:
                continue
            views.extend(_window_view(record, point, patch_size))
    return views


def _window_view(record: WindowRecord, point: QueryPoint, patch_size: Sequence[int]) -> list[WindowView]:
    token = token_of(point.local, record.spatial, patch_size)
    window, inside = locate_in_windows(token, record.spatial, record.window, record.shift)
    if window not in record.windows:
        return []
    weights = record.weights[record.windows.index(window)][:, inside].mean(axis=0)  # (N,), mean over heads
    positions, valid = window_token_positions(window, record.spatial, record.window, record.shift)
    return [WindowView(record.module, point, record.spatial, token, window, positions.numpy(), valid.numpy(), weights)]


# ------------------------------------------------------------------------------------- routing vs the reference
def routing_foreground(
    recorder: Recorder,
    modules: Sequence[str],
    geometry: Geometry,
    patches: Sequence[Patch],
    reference: np.ndarray,
    labels: dict,
) -> dict[str, dict]:
    """For every routed module and foreground label: over the reference's voxels of that label (each a query, in
    every sliding window that holds it), the share of the key regions its region routed to that contain foreground
    (any label), beside the share of all key regions that do; also excluding the query's own region, and the same for
    regions that contain the label itself."""
    by_index = {p.index: p for p in patches}
    out: dict[str, dict] = {}
    for module in modules:
        records = [r for r in recorder.routing if r.module == module]
        if not records:
            continue
        per_label: dict[str, dict] = {}
        for value, name in labels.items():
            if not isinstance(value, int):
                continue
            sums = np.zeros(6)
            queries = 0
            for record in records:
                patch = by_index[record.patch]
                counts = _label_counts(record, geometry, patch, reference, value)
                if counts is None:
                    continue
                n, stats = counts
                sums += stats
                queries += n
            if queries:
                shares = sums / queries
                per_label[name] = {
                    "queries": int(queries),
                    "routed_with_foreground": float(shares[0]),
                    "all_with_foreground": float(shares[1]),
                    "routed_with_foreground_other": float(shares[2]),
                    "all_with_foreground_other": float(shares[3]),
                    "routed_with_label": float(shares[4]),
                    "all_with_label": float(shares[5]),
                }
        out[module] = per_label
    return out


def _label_counts(
    record: RoutingRecord, geometry: Geometry, patch: Patch, reference: np.ndarray, value: int
) -> Optional[tuple[int, np.ndarray]]:
    lq, lk = record.query_layout, record.key_layout
    query = lookup(geometry, patch, region_id_map(lq.spatial, lq.region, lq.grid), fill=-1).astype(np.int64)
    keys = lookup(geometry, patch, region_id_map(lk.spatial, lk.region, lk.grid), fill=-1).astype(np.int64)
    inside = (reference == value) & (query >= 0)
    if not inside.any():
        return None
    nk = lk.num_regions
    foreground = np.zeros(nk, dtype=bool)
    foreground[np.unique(keys[(reference > 0) & (keys >= 0)])] = True
    labelled = np.zeros(nk, dtype=bool)
    labelled[np.unique(keys[(reference == value) & (keys >= 0)])] = True
    regions, counts = np.unique(query[inside], return_counts=True)
    stats = np.zeros(6)
    k = record.indices.shape[1]
    for region, count in zip(regions, counts):
        routed = record.indices[region]
        others = routed[routed != region] if lq == lk else routed
        rest = np.setdiff1d(np.arange(nk), [region]) if lq == lk else np.arange(nk)
        stats += count * np.array(
            [
                foreground[routed].sum() / k,
                foreground.mean(),
                foreground[others].mean() if len(others) else 0.0,
                foreground[rest].mean() if len(rest) else 0.0,
                labelled[routed].sum() / k,
                labelled.mean(),
            ]
        )
    return int(counts.sum()), stats


def pool_routing_foreground(per_case: Sequence[dict[str, dict]]) -> dict[str, dict]:
    """:func:`routing_foreground` of several cases as one: every share weighted by its case's query voxels."""
    pooled: dict[str, dict] = {}
    for stats in per_case:
        for module, per_label in stats.items():
            for label, s in per_label.items():
                into = pooled.setdefault(module, {}).setdefault(label, {"queries": 0})
                n = s["queries"]
                for key, value in s.items():
                    if key != "queries":
                        into[key] = (into.get(key, 0.0) * into["queries"] + value * n) / (into["queries"] + n)
                into["queries"] += n
    return pooled
