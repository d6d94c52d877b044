"""Attention layers: the n-dimensional routed (bi-level) sparse-attention core."""

from .sparse_attention import (
    RoutedAttention,
    build_block_mask,
    compute_routing,
    flex_available,
    routed_attention,
    routed_attention_reference,
    select_backend,
)
from .routing import RegionLayout, from_regions, region_affinity, region_layout, region_pool, route, to_regions

__all__ = [
    "RegionLayout",
    "RoutedAttention",
    "build_block_mask",
    "compute_routing",
    "flex_available",
    "from_regions",
    "region_affinity",
    "region_layout",
    "region_pool",
    "route",
    "routed_attention",
    "routed_attention_reference",
    "select_backend",
    "to_regions",
]
