"""Where a voxel of the user's image sits in what the network saw, and back: nnU-Net's transpose, crop, resampling and
padding, then the sliding window, the token of a feature map and its region.

nnU-Net's preprocessing (``DefaultPreprocessor.run_case_npy``) transposes the image's axes by the plans'
``transpose_forward``, crops it to the bounding box of its non-zero voxels (``crop_to_nonzero``; the box is
``bbox_used_for_cropping`` of the case's properties) and resamples the crop to the configuration's spacing
(``compute_new_shape``; skimage's ``resize`` and nnU-Net's ``map_coordinates`` step both align voxel CENTRES:
``x_in = (x_out + 0.5) * N_in / N_out - 0.5``). The predictor then pads the result to at least the patch size,
centred (``pad_nd_image``), and cuts it into nnU-Net's sliding windows.

Every step is a per-axis affine map, simplest in EDGE coordinates, where voxel ``i`` spans ``[i, i + 1)`` and its
centre is ``i + 0.5``: resampling is a pure scaling ``e_out = e_in * N_out / N_in``, cropping and padding are
shifts, the transpose permutes axes. :meth:`Geometry.to_network` and :meth:`Geometry.to_original` are that map and
its inverse; a voxel is mapped through its centre. Inside a patch, a feature map of ``S`` tokens covers the patch's
``P`` voxels evenly (strided convolutions; nnU-Net's patch sizes are multiples of the strides): token
``floor(x * S / P)`` holds patch voxel ``x``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import numpy.typing as npt

__all__ = [
    "Geometry",
    "Patch",
    "choose_patch",
    "lookup",
    "patches_from_slicers",
    "region_id_map",
    "token_of",
    "token_of_original",
]

Slicer = tuple[Union[slice, int], ...]


@dataclass(frozen=True)
class Geometry:
    """How nnU-Net placed an image's voxels in the network input (one case). Axes: ``original`` as the image reader
    returns them (spatial axes only); the others in nnU-Net's transposed order."""

    original: tuple[int, ...]  # the image's spatial shape, as nnU-Net's reader returns it
    transpose: tuple[int, ...]  # plans' transpose_forward: transposed axis i is original axis transpose[i]
    crop_start: tuple[int, ...]  # bbox_used_for_cropping's lower corner (transposed axes)
    cropped: tuple[int, ...]  # shape after cropping, before resampling
    resampled: tuple[int, ...]  # the preprocessed shape
    pad_below: tuple[int, ...]  # the predictor's padding before each axis (pad_nd_image)

    @classmethod
    def from_properties(
        cls,
        original: Sequence[int],
        transpose: Sequence[int],
        properties: dict,
        resampled: Sequence[int],
        pad_below: Sequence[int],
    ) -> "Geometry":
        """From the properties nnU-Net's preprocessor filled in (``bbox_used_for_cropping``,
        ``shape_after_cropping_and_before_resampling``)."""
        bbox = properties["bbox_used_for_cropping"]
        return cls(
            tuple(int(s) for s in original),
            tuple(int(t) for t in transpose),
            tuple(int(lo) for lo, _ in bbox),
            tuple(int(s) for s in properties["shape_after_cropping_and_before_resampling"]),
            tuple(int(s) for s in resampled),
            tuple(int(p) for p in pad_below),
        )

    @property
    def ndim(self) -> int:
        return len(self.original)

    def _scale(self) -> np.ndarray:
        return np.array(self.resampled, dtype=float) / np.array(self.cropped, dtype=float)

    def to_network(self, edge: npt.ArrayLike) -> np.ndarray:
        """Edge coordinates in the original image (its axes) -> edge coordinates in the padded network input."""
        e = np.asarray(edge, dtype=float)
        transposed = e[list(self.transpose)]
        return (transposed - np.array(self.crop_start)) * self._scale() + np.array(self.pad_below)

    def to_original(self, edge: npt.ArrayLike) -> np.ndarray:
        """Inverse of :meth:`to_network`."""
        e = np.asarray(edge, dtype=float)
        transposed = (e - np.array(self.pad_below)) / self._scale() + np.array(self.crop_start)
        out = np.empty(self.ndim)
        out[list(self.transpose)] = transposed
        return out

    def network_voxel(self, voxel: Sequence[int]) -> tuple[int, ...]:
        """The network-input voxel whose span holds the centre of original ``voxel``."""
        return tuple(int(v) for v in np.floor(self.to_network(np.asarray(voxel, dtype=float) + 0.5)))

    def original_voxel(self, voxel: Sequence[int]) -> tuple[int, ...]:
        """The original voxel whose span holds the centre of network-input ``voxel``."""
        return tuple(int(v) for v in np.floor(self.to_original(np.asarray(voxel, dtype=float) + 0.5)))

    def axis_network_index(self, axis: int) -> np.ndarray:
        """For network (transposed) axis ``axis``: the network-input index of every original voxel along original axis
        ``transpose[axis]`` (by its centre), -1 where the crop left it out."""
        n = self.original[self.transpose[axis]]
        local = np.arange(n) + 0.5 - self.crop_start[axis]
        index = np.floor(local * self._scale()[axis]).astype(np.int64) + self.pad_below[axis]
        inside = (local >= 0) & (local < self.cropped[axis])
        return np.where(inside, index, -1)


@dataclass(frozen=True)
class Patch:
    """One of nnU-Net's sliding windows: ``index`` in the predictor's order (= the network call that ran it); per
    network axis either a fixed index (a 2D configuration's slice axis) or the start of the patch."""

    index: int
    fixed: tuple[int | None, ...]  # per network axis: the slice index for axes the patch does not span, else None
    start: tuple[int, ...]  # per network axis: first voxel (the fixed index for fixed axes)
    size: tuple[int, ...]  # per network axis: voxels (1 for fixed axes)

    @property
    def spatial_axes(self) -> tuple[int, ...]:
        """The network axes the patch spans (the network's own spatial axes)."""
        return tuple(a for a, f in enumerate(self.fixed) if f is None)

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(self.size[a] for a in self.spatial_axes)

    def contains(self, voxel: Sequence[int]) -> bool:
        return all(s <= v < s + n for v, s, n in zip(voxel, self.start, self.size))

    def local(self, voxel: Sequence[int]) -> tuple[int, ...]:
        """Patch-local coordinates (the patch's spatial axes) of a network-input voxel inside it."""
        return tuple(int(voxel[a]) - self.start[a] for a in self.spatial_axes)

    def centre_distance(self, voxel: Sequence[int]) -> float:
        centre = [s + n / 2 for s, n in zip(self.start, self.size)]
        return math.dist([v + 0.5 for v in voxel], centre)


def patches_from_slicers(slicers: Sequence[Slicer]) -> list[Patch]:
    """nnU-Net's sliding-window slicers (``_internal_get_sliding_window_slicers``: a channel slice, then per axis a
    slice or, for a 2D configuration's slice axis, an int) as :class:`Patch` es, in the predictor's order."""
    out = []
    for i, slicer in enumerate(slicers):
        fixed: list[int | None] = []
        start: list[int] = []
        size: list[int] = []
        for s in slicer[1:]:
            if isinstance(s, slice):
                fixed.append(None)
                start.append(int(s.start))
                size.append(int(s.stop) - int(s.start))
            else:
                fixed.append(int(s))
                start.append(int(s))
                size.append(1)
        out.append(Patch(i, tuple(fixed), tuple(start), tuple(size)))
    return out


def choose_patch(patches: Sequence[Patch], voxel: Sequence[int]) -> Patch:
    """The patch that holds network-input ``voxel`` nearest its centre (first in nnU-Net's order on ties)."""
    holding = [p for p in patches if p.contains(voxel)]
    if not holding:
        raise ValueError(f"no sliding window holds network-input voxel {tuple(voxel)}")
    return min(holding, key=lambda p: (p.centre_distance(voxel), p.index))


def token_of(local: Sequence[int], map_shape: Sequence[int], patch_size: Sequence[int]) -> tuple[int, ...]:
    """The token of a feature map of ``map_shape`` that holds patch-local voxel ``local``."""
    return tuple(int(x) * int(s) // int(p) for x, s, p in zip(local, map_shape, patch_size))


def token_of_original(geometry: Geometry, patch: Patch, map_shape: Sequence[int]) -> list[np.ndarray]:
    """For each of the patch's spatial axes, the token (of a map of ``map_shape``) of every original voxel along the
    original axis it comes from, -1 where the voxel is not in the patch (nor, on a fixed axis, in its slice)."""
    out = []
    for axis in range(geometry.ndim):
        index = geometry.axis_network_index(axis)
        if patch.fixed[axis] is not None:
            out.append(np.where(index == patch.fixed[axis], 0, -1))
            continue
        local = index - patch.start[axis]
        j = patch.spatial_axes.index(axis)
        inside = (index >= 0) & (local >= 0) & (local < patch.size[axis])
        out.append(np.where(inside, local * int(map_shape[j]) // patch.size[axis], -1))
    return out


def lookup(geometry: Geometry, patch: Patch, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """A value per token of a feature map (``values``, the map's shape) drawn onto the original image: every original
    voxel takes the value of its token, ``fill`` outside the patch."""
    tokens = token_of_original(geometry, patch, values.shape)
    # network axis a runs along original axis transpose[a]: index the map with per-axis arrays broadcast to the
    # original image's layout
    index, valid = [], np.ones(geometry.original, dtype=bool)
    spatial = patch.spatial_axes
    for axis in spatial:
        shape = [1] * geometry.ndim
        shape[geometry.transpose[axis]] = -1
        t = tokens[axis].reshape(shape)
        valid = valid & (t >= 0)
        index.append(np.clip(t, 0, None))
    for axis in range(geometry.ndim):
        if axis not in spatial:
            shape = [1] * geometry.ndim
            shape[geometry.transpose[axis]] = -1
            valid = valid & (tokens[axis].reshape(shape) >= 0)
    drawn = np.broadcast_to(values[tuple(np.broadcast_arrays(*index))] if index else values, geometry.original)
    return np.where(valid, drawn, fill)


def region_id_map(map_shape: Sequence[int], region: Sequence[int], grid: Sequence[int]) -> np.ndarray:
    """The region (row-major over ``grid``, as the routing numbers them) of every token of a map of ``map_shape``."""
    ids = np.zeros(tuple(int(s) for s in map_shape), dtype=np.int64)
    for axis, (r, g) in enumerate(zip(region, grid)):
        shape = [1] * len(map_shape)
        shape[axis] = -1
        ids = ids * int(g) + (np.arange(map_shape[axis]) // int(r)).reshape(shape)
    return ids
