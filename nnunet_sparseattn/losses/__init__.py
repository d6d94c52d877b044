"""Losses added on top of nnU-Net's own (Dice + CE / BCE)."""

from nnunet_sparseattn.losses.narrow_band import (
    NarrowBandCompoundLoss,
    NarrowBandLoss,
    narrow_band,
    narrow_band_radii_per_scale,
    radius_in_voxels,
)

__all__ = [
    "NarrowBandCompoundLoss",
    "NarrowBandLoss",
    "narrow_band",
    "narrow_band_radii_per_scale",
    "radius_in_voxels",
]
